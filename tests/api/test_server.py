"""Through a real uvicorn server (``python -m api``): HTTP end to end, live events, metrics, shutdown."""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.api.conftest import AUDIENCE, ISSUER, SECRET, Keys, Stack, auth, free_port, new_tenant
from tests.integration.harness import REPO

TASK = {"name": "streamed", "work": {"kind": "handler", "name": "noop"}}


@dataclass
class Server:
    """A ``python -m api`` process."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Any


@pytest.fixture
def server(warm: Stack, keys: Keys, tmp_path: Any) -> Iterator[Server]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    env.update(
        SCHED_KAFKA_BOOTSTRAP=warm.infra.bootstrap,
        SCHED_MONGO_URL=warm.infra.mongo_url,
        SCHED_MONGO_DATABASE=warm.database,
        SCHED_TOPIC_PREFIX=warm.prefix,
        SCHED_PARTITIONS="4",
        SCHED_JWT_HS256_SECRET=SECRET,
        SCHED_JWT_JWKS_FILE=str(keys.jwks_file),
        SCHED_JWT_AUDIENCE=AUDIENCE,
        SCHED_JWT_ISSUER=ISSUER,
        SCHED_API_PORT=str(port),
        SCHED_SSE_HEARTBEAT_SECONDS="1",
        SCHED_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    log = (tmp_path / "api.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "api"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError("the API did not start: " + (tmp_path / "api.log").read_text()[-3000:])
        time.sleep(0.1)
    try:
        yield Server(url, proc, tmp_path / "api.log")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def _parse(line: str, event: dict[str, Any], events: list[dict[str, Any]], comments: list[str]) -> None:
    """Fold one line of a text/event-stream into ``event`` / ``events`` / ``comments``."""
    if line.startswith(":"):
        comments.append(line)
    elif line == "":
        if "event" in event:
            events.append(dict(event))
        event.clear()
    else:
        name, _, value = line.partition(": ")
        event[name] = orjson.loads(value) if name == "data" else value


async def test_through_uvicorn_with_live_events_and_metrics(server: Server) -> None:
    tenant, stranger = new_tenant(), new_tenant()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        assert (await http.get("/readyz")).json()["status"] == "ok"
        openapi = (await http.get("/openapi.json")).json()
        assert openapi["paths"]["/v1/tasks"]["post"]["summary"] == "Create a task"

        async def act() -> str:
            noise = await http.post("/v1/tasks?wait=20", json=TASK, headers=auth(stranger))
            assert noise.status_code == 200, noise.text
            r = await http.post("/v1/tasks?wait=20", json=TASK, headers=auth(tenant))
            assert r.status_code == 200, r.text
            task_id = str(r.json()["task_id"])
            r = await http.post(f"/v1/tasks/{task_id}/pause?wait=20", json={"note": "n"}, headers=auth(tenant))
            assert r.status_code == 200, r.text
            return task_id

        events: list[dict[str, Any]] = []
        comments: list[str] = []
        event: dict[str, Any] = {}
        async with http.stream("GET", "/v1/events/stream", headers=auth(tenant, ["viewer"])) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            async with asyncio.timeout(30):
                async for line in lines:
                    _parse(line, event, events, comments)
                    if ": connected" in comments:
                        break
                actions = asyncio.create_task(act())
                async for line in lines:
                    _parse(line, event, events, comments)
                    # Both events, then a heartbeat (1 s) so that a stray event would have shown.
                    if len(events) >= 2 and comments[-1] == ": keepalive" and line == "":
                        break
            task_id = await actions
        assert [e["event"] for e in events] == ["TaskCreated", "TaskPaused"], events
        for e in events:
            assert e["data"]["task_id"] == task_id and "tenant" not in e["data"]
            assert e["id"] == e["data"]["event_id"]
        assert events[1]["data"]["note"] == "n"

        # Metrics: counted by route template and status, commands by outcome.
        deadline = time.monotonic() + 5
        while True:
            metrics = (await http.get("/metrics")).text
            if 'route="/v1/events/stream"' in metrics or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert 'scheduler_api_requests_total{method="POST",route="/v1/tasks",status="200"} 2.0' in metrics
        assert 'route="/v1/tasks/{task_id}/pause",status="200"' in metrics
        assert 'route="/v1/events/stream",status="200"' in metrics
        assert 'scheduler_api_commands_total{command="CreateTask",outcome="accepted"} 2.0' in metrics
        assert "scheduler_api_request_duration_seconds_bucket" in metrics

    # SIGTERM: a clean, prompt exit (uvicorn re-raises the signal once it has shut down).
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log.read_text()


def test_bad_input_keeps_the_connection_open(server: Server) -> None:
    """Regression (issue 11, item 4): a lone surrogate or a huge cursor answered 500, and uvicorn
    then closed the connection (a surrogate in a key was even accepted, mangled). Now each is a
    422 naming the field, and the next request reuses the same socket."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {**auth(new_tenant()), "Content-Type": "application/json"}
    cursor = base64.urlsafe_b64encode(b'{"k":"tasks:created_at","p":0,"x":{"v":9223372036854775808},"i":"t/1"}')
    bad: list[tuple[str, str, bytes | None, str]] = [
        ("POST", "/v1/tasks", b'{"name": "n", "work": {"kind": "handler", "name": "noop"}, "params": {"k": "\\ud800"}}',
         "definition.params.k"),
        ("POST", "/v1/tasks", b'{"name": "n", "work": {"kind": "handler", "name": "noop"}, "params": {"\\udfff": 1}}',
         "definition.params"),
        ("GET", "/v1/tasks?cursor=" + cursor.decode().rstrip("="), None, "cursor"),
    ]  # fmt: skip
    try:
        connection.connect()
        sock = connection.sock
        for method, url, body, field in bad:
            connection.request(method, url, body=body, headers=headers)
            response = connection.getresponse()
            problem = orjson.loads(response.read())
            assert response.status == 422, problem
            assert [e["field"] for e in problem["errors"]] == [field], problem
            assert not response.will_close, response.getheaders()
            connection.request("GET", "/v1/tasks", headers=headers)
            response = connection.getresponse()
            assert response.status == 200, response.read()
            response.read()
            assert connection.sock is sock, "the server closed the connection"
    finally:
        connection.close()
    assert "Traceback" not in server.log.read_text()
