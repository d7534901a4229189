"""``make run``: the local stack, a worker, the trigger router, the projector, the API, and a sample schedule firing.

Starts Kafka and FerretDB (``deploy/stack.py``) unless ``SCHED_KAFKA_BOOTSTRAP`` is set,
then five processes (worker, trigger router, projector, notifier, API on ``SCHED_API_PORT``, default 8000), creates
a sample task through the REST API that fires every 5 seconds, and prints every outcome as
it arrives on the public ``outcomes`` topic, with the task's counters as the API shows them,
and the web dashboard's address with a development token.
Ctrl-C stops the processes; the stack keeps running (``make stack-down`` stops it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import httpx
import jwt
from aiokafka import AIOKafkaConsumer

from schemas.envelope import decode_event
from schemas.events import ExecutionCompleted
from schemas.secrets import new_key
from streams.admin import ensure_topics
from streams.settings import Settings

REPO = Path(__file__).resolve().parent.parent
LOGS = REPO / ".stack" / "logs"
DEV_SECRET = "local-development-secret-not-for-production"  # nosec B105  # the local demo only
TENANT = "demo"


def _say(message: str) -> None:
    click.echo(f"{datetime.now(UTC):%H:%M:%S} {message}")


def _token(secret: str) -> str:
    claims = {"sub": "make-run", "tenant": TENANT, "roles": ["admin"], "exp": datetime.now(UTC) + timedelta(hours=8)}
    return jwt.encode(claims, secret, algorithm="HS256")


def _dev_secret_keys() -> None:
    """Use a development key for sensitive fields unless keys are configured: written once under
    the stack's directory (owner-only), so secrets stored by an earlier run still decrypt."""
    if os.environ.get("SCHED_SECRET_KEYS") or os.environ.get("SCHED_SECRET_KEYS_FILE"):
        return
    path = Path(os.environ.get("SCHED_STACK_DIR", REPO / ".stack")) / "dev-secret-keys.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"dev-1": new_key()}, out)
        _say(f"wrote a development key for secrets to {path} (not for production)")
    os.environ["SCHED_SECRET_KEYS_FILE"] = str(path)


def _start(name: str, *args: str) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    with (LOGS / f"{name}.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    _say(f"{name} started (pid {proc.pid}, log {LOGS / f'{name}.log'})")
    return proc


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Progress:
    """What the demo has shown so far; read when it stops, however it stops."""

    outcomes: int = 0


async def _view(http: httpx.AsyncClient, task_id: str, attempts: int = 3) -> dict[str, Any] | None:
    """The task as the API shows it, or None if the API did not answer after ``attempts`` tries.

    A request can meet a kept-alive connection just as the server closes it (uvicorn closes idle
    connections after 5 s, the sample task's period): that is transient, and must not end the demo.
    """
    for attempt in range(attempts):
        try:
            response = await http.get(f"/v1/tasks/{task_id}")
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                return body
            if response.status_code < 500:
                return None
        except httpx.TransportError as exc:
            if attempt == attempts - 1:
                _say(f"the API did not answer ({type(exc).__name__}); going on")
                return None
        await asyncio.sleep(0.2 * (attempt + 1))
    return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _check_alive(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for name, proc in procs.items():
        if proc.poll() is not None:
            raise click.ClickException(f"the {name} exited (code {proc.returncode}); see {LOGS / f'{name}.log'}")


async def _run(
    settings: Settings, api: str, token: str, seconds: float | None, procs: dict[str, Any], progress: Progress
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=30) as http:
        deadline = time.monotonic() + 60
        while True:  # the API answers once it has started
            _check_alive(procs)
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/readyz")).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise click.ClickException(f"the API did not become ready; see {LOGS / 'api.log'}")
            await asyncio.sleep(0.5)

        consumer = AIOKafkaConsumer(settings.topics.outcomes, bootstrap_servers=settings.kafka_bootstrap, group_id=None)
        await consumer.start()
        await consumer.seek_to_end()
        body = {
            "name": "sample heartbeat",
            "schedule": {"kind": "interval", "every_seconds": 5},
            "work": {"kind": "handler", "name": "echo", "params": {"hello": "world", "api_token": "demo-token"}},  # nosec B105  # sample data
            "sensitive_params": ["/api_token"],  # stored encrypted, shown as ***
            "tags": ["demo"],
        }
        created = await http.post("/v1/tasks", json=body, params={"wait": 10})
        if created.status_code >= 300:
            raise click.ClickException(f"creating the sample task failed: {created.status_code} {created.text}")
        task_id = created.json()["task_id"]
        _say(f"created task {task_id} through the API: every 5 s, handler 'echo' (Ctrl-C to stop)")
        _say(f"try: curl -H 'Authorization: Bearer {token}' {api}/v1/tasks/{task_id}")
        # The token goes in the fragment: the page keeps it in the tab, no server or log sees it.
        _say(f"dashboard: {api}/ui/#token={token}")
        stop_at = None if seconds is None else time.monotonic() + seconds
        try:
            while stop_at is None or time.monotonic() < stop_at:
                _check_alive(procs)
                batch = await consumer.getmany(timeout_ms=500)
                for record in (r for records in batch.values() for r in records):
                    event = decode_event(record.value or b"")
                    if not isinstance(event, ExecutionCompleted) or not event.task_id.endswith(f"/{task_id}"):
                        continue
                    progress.outcomes += 1
                    started = event.started_at or event.finished_at
                    late = (started - (event.scheduled_for or started)).total_seconds() * 1000
                    view = await _view(http, task_id)
                    shown = "the API did not show the task"
                    if view is not None:
                        runs = view.get("counters", {}).get("runs")
                        shown = f"the API shows runs={runs}, next run {view.get('next_run')}"
                    _say(
                        f"{event.status}: slot {event.scheduled_for:%H:%M:%S}, started {late:.0f} ms after it; {shown}"
                    )
        finally:
            with contextlib.suppress(Exception):  # leave nothing firing behind
                await http.delete(f"/v1/tasks/{task_id}")
            await consumer.stop()


@click.command()
@click.option("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
@click.option("--prefix", default="demo.", help="topic prefix of this demo deployment")
def main(seconds: float | None, prefix: str) -> None:
    """Run the stack, a worker, the projector, the API and a sample schedule."""
    if not os.environ.get("SCHED_KAFKA_BOOTSTRAP"):
        from deploy import stack

        cfg = stack.StackConfig.from_env()
        _say("starting the local stack (the first time fetches Kafka and builds FerretDB: a few minutes)")
        try:
            stack.up(cfg)
        except stack.StackError as exc:
            raise click.ClickException(f"stack: {exc}") from None
        os.environ["SCHED_KAFKA_BOOTSTRAP"] = cfg.bootstrap
        os.environ["SCHED_MONGO_URL"] = cfg.mongo_url
        _say(f"stack up: kafka {cfg.bootstrap}, mongo {cfg.mongo_url}")
    os.environ["SCHED_TOPIC_PREFIX"] = prefix
    os.environ.setdefault("SCHED_MONGO_DATABASE", f"scheduler_{prefix.strip('.')}")
    os.environ.setdefault("SCHED_DATA_DIR", str(REPO / ".stack" / "worker" / prefix.strip(".")))
    os.environ.setdefault("SCHED_JWT_HS256_SECRET", DEV_SECRET)
    _dev_secret_keys()
    settings = Settings()
    asyncio.run(ensure_topics(settings))
    port = os.environ.setdefault("SCHED_API_PORT", "8000")
    api = f"http://127.0.0.1:{port}"

    # Stopped by SIGTERM or SIGHUP (a closed terminal, `timeout`, a service manager) as by
    # Ctrl-C: the processes it started run in sessions of their own and would outlive it.
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, _interrupt)
    procs = {
        "worker": _start("worker", "worker", "--worker-id", "demo-worker"),
        "triggers": _start("triggers", "triggers"),
        "projector": _start("projector", "projector"),
        "notifier": _start("notifier", "notifier"),
        "api": _start("api", "api"),
    }
    progress = Progress()
    try:
        asyncio.run(_run(settings, api, _token(os.environ["SCHED_JWT_HS256_SECRET"]), seconds, procs, progress))
    except KeyboardInterrupt:
        pass
    finally:
        _stop(procs)
        _say(f"stopped after {progress.outcomes} outcomes; the stack keeps running (make stack-down stops it)")
    if seconds is not None and progress.outcomes == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
