"""Stop the MongoDB-compatible server for 30 s: commands are still accepted, reads answer 503,
and the views catch up completely once it is back."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest

from deploy import stack
from tests.integration.harness import REPO, Bus, WorkerProc, free_port, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.failure, pytest.mark.stack]

SECRET = "outage-test-secret-with-32-bytes-or-more"
OUTAGE = 30.0


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


async def test_mongo_outage_accepts_commands_and_views_catch_up(tmp_path: Path) -> None:
    shared = stack.StackConfig.from_env()
    cfg = stack.StackConfig(tmp_path / "stack", shared.cache, free_port(), free_port(), free_port())
    await asyncio.to_thread(stack.up, cfg)
    prefix = f"mo{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = worker_env(cfg.bootstrap, cfg.mongo_url, prefix, tmp_path / "worker")
    env.update(SCHED_MONGO_DATABASE=prefix, SCHED_JWT_HS256_SECRET=SECRET, SCHED_API_PORT=str(port))
    bus = await Bus(cfg.bootstrap, prefix).start()
    worker = WorkerProc(env, tmp_path / "worker.log", "wm").start()
    projector = _start(["projector"], env, tmp_path / "projector.log")
    api = _start(["api"], env, tmp_path / "api.log")
    token = jwt.encode(
        {"sub": "ops", "tenant": "acme", "roles": ["admin"], "exp": datetime.now(UTC) + timedelta(hours=1)},
        SECRET,
        algorithm="HS256",
    )
    body = {"name": "n", "schedule": None, "work": {"kind": "handler", "name": "noop"}}
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as http:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the API did not become ready"
                await asyncio.sleep(0.5)
            first = await http.post("/v1/tasks", json=body, params={"wait": 20})
            assert first.status_code == 200, first.text
            first_id = first.json()["task_id"]

            await asyncio.to_thread(stack.down, cfg, 30.0, "ferretdb")
            accepted: list[str] = []
            read_statuses: set[int] = set()
            ended = time.monotonic() + OUTAGE
            while time.monotonic() < ended:
                created = await http.post("/v1/tasks", json=body)
                assert created.status_code == 202, created.text  # written to Kafka, nothing lost
                accepted.append(created.json()["task_id"])
                read = await http.get(f"/v1/tasks/{first_id}")
                read_statuses.add(read.status_code)
                if read.status_code == 503:
                    assert read.headers.get("Retry-After")
                    assert read.headers["content-type"].startswith("application/problem+json")
                await asyncio.sleep(2)
            assert read_statuses == {503}
            assert (await http.get("/readyz")).status_code == 503

            await asyncio.to_thread(stack.up, cfg)
            deadline = time.monotonic() + 120
            missing = set(accepted)
            while missing and time.monotonic() < deadline:
                for task_id in list(missing):
                    got = await http.get(f"/v1/tasks/{task_id}")
                    if got.status_code == 200:
                        missing.discard(task_id)
                await asyncio.sleep(1)
            assert not missing, f"{len(missing)} of {len(accepted)} accepted tasks never became visible"
            # Every event reached the views: each task's view is at its last sequence.
            for task_id in accepted:
                view = (await http.get(f"/v1/tasks/{task_id}")).json()
                sequences = [e.sequence for e in bus.events(f"acme/{task_id}")]
                assert sequences and view["version"] == max(sequences)
            print(f"accepted {len(accepted)} creates during a {OUTAGE:.0f}s outage; all visible afterwards")
    finally:
        for proc in (api, projector):
            proc.terminate()
        for proc in (api, projector):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        worker.stop()
        await bus.stop()
        await asyncio.to_thread(stack.down, cfg)
        for name in ("api", "projector"):
            log = tmp_path / f"{name}.log"
            print(f"--- {name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-10:]))
