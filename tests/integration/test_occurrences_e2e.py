"""The occurrence log end to end, through a worker kill: SIGKILL the only worker, start another
after a while, and every slot from creation to deletion has a fate (none unaccounted), the
slots due while no worker ran among them (run late or recorded missed, as each task's catch-up
policy says), and the log equals what ``task-events`` says was dispatched and missed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from schemas.commands import CreateTask, DeleteTask
from schemas.specs import CatchUpMode, CatchUpPolicy, HandlerWork, IntervalSchedule, OverlapPolicy, TaskDefinition
from tests.conftest import Infra
from tests.integration.harness import REPO, Bus, WorkerProc, free_port, new_id, now, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.failure]

SECRET = "occurrences-e2e-secret-with-32-bytes-or-more"
SESSION_TIMEOUT = "6"
DOWN = 10.0
"""Seconds no worker runs (the killed one's session times out within them)."""


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _definition(mode: CatchUpMode, grace: float, anchor: datetime) -> TaskDefinition:
    return TaskDefinition(
        name=f"every second, {mode.value}",
        schedule=IntervalSchedule(every_seconds=1, anchor=anchor),
        work=HandlerWork(name="noop"),
        overlap=OverlapPolicy.ALLOW_ALL,
        catch_up=CatchUpPolicy(mode=mode, window_seconds=600, max_runs=1000),
        misfire_grace_seconds=grace,
    )


async def test_every_slot_of_a_task_that_went_through_a_worker_kill_has_a_fate(infra: Infra, tmp_path: Path) -> None:
    prefix = f"oc{uuid.uuid4().hex[:8]}"
    port = free_port()

    def env_for(name: str) -> dict[str, str]:
        env = worker_env(
            infra.bootstrap, infra.mongo_url, prefix, tmp_path / name / "data",
            SCHED_SESSION_TIMEOUT_SECONDS=SESSION_TIMEOUT,
        )  # fmt: skip
        env.update(SCHED_MONGO_DATABASE=prefix, SCHED_JWT_HS256_SECRET=SECRET, SCHED_API_PORT=str(port))
        return env

    bus = await Bus(infra.bootstrap, prefix).start()
    first = WorkerProc(env_for("wa"), tmp_path / "wa.log", "wa").start()
    second = WorkerProc(env_for("wb"), tmp_path / "wb.log", "wb")
    projector = _start(["projector"], env_for("p"), tmp_path / "projector.log")
    api = _start(["api"], env_for("api"), tmp_path / "api.log")
    token = jwt.encode(
        {"sub": "ops", "tenant": "acme", "roles": ["viewer"], "exp": datetime.now(UTC) + timedelta(hours=1)},
        SECRET,
        algorithm="HS256",
    )
    try:
        anchor = now().replace(microsecond=0) + timedelta(seconds=2)
        tasks = {
            # Every slot runs, late ones too (catch-up run_all, a wide grace).
            f"acme/all-{new_id()[:8]}": _definition(CatchUpMode.RUN_ALL, 600, anchor),
            # Slots late beyond a second: the latest runs, the others are recorded missed.
            f"acme/once-{new_id()[:8]}": _definition(CatchUpMode.RUN_ONCE, 1, anchor),
            # Slots late beyond a second are skipped.
            f"acme/skip-{new_id()[:8]}": _definition(CatchUpMode.SKIP, 1, anchor),
        }
        for task_id, definition in tasks.items():
            await bus.send(
                CreateTask(
                    command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now(), definition=definition
                )
            )
        await bus.wait_for(
            lambda: all(len(bus.events(t, "ExecutionCompleted")) >= 3 for t in tasks), 90, "the tasks to run"
        )
        first.kill()
        await asyncio.sleep(DOWN)
        second.start()
        restarted = now()
        await bus.wait_for(
            lambda: all(any(e.at > restarted for e in bus.events(t, "ExecutionCompleted")) for t in tasks),
            90,
            "the second worker to run the tasks",
        )
        await asyncio.sleep(3)
        for task_id in tasks:
            await bus.send(DeleteTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now()))
        await bus.wait_for(lambda: len(bus.events(type_="TaskDeleted")) >= len(tasks), 30, "the deletes")

        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as http:
            for task_id in tasks:
                events = bus.events(task_id)
                created = next(e for e in events if e.type == "TaskCreated")
                expected = _expected(events)
                log = await _settled_log(http, task_id.split("/", 1)[1], len(expected))
                fates = [o["fate"] for o in log]
                print(task_id, {f: fates.count(f) for f in set(fates)})
                assert "unaccounted" not in fates, log
                assert set(fates) <= {"fired", "missed", "not_run"}, log
                slots = [datetime.fromisoformat(o["slot"]) for o in log]
                assert slots[0] == created.next_slot, "the log starts at the task's first slot"
                assert slots == [slots[0] + timedelta(seconds=i) for i in range(len(slots))], "a slot is missing"
                got = {
                    datetime.fromisoformat(o["slot"]): (o["fate"], o.get("execution_id") or o.get("reason"))
                    for o in log
                }
                assert {s: v for s, v in got.items() if v[0] != "not_run"} == expected
                # The outage is in the log: slots due while no worker ran.
                down = [o for o in log if first_kill_window(o, restarted)]
                assert down, "no slot fell due while the worker was down"
                if "once" in task_id or "skip" in task_id:
                    assert any(o["fate"] == "missed" for o in down), down
                else:
                    assert all(o["fate"] == "fired" for o in down), down
    finally:
        first.kill()
        second.stop()
        _stop(api)
        _stop(projector)
        await bus.stop()
        print(second.tail(15))


def first_kill_window(occurrence: dict[str, Any], restarted: datetime) -> bool:
    """Whether a slot fell due in the last seconds before the second worker started."""
    slot = datetime.fromisoformat(occurrence["slot"])
    return restarted - timedelta(seconds=DOWN - 2) <= slot < restarted


def _expected(events: list[Any]) -> dict[datetime, tuple[str, str]]:
    """What ``task-events`` says of each handled slot: dispatched (execution id) or missed (reason)."""
    out: dict[datetime, tuple[str, str]] = {}
    for e in {e.event_id: e for e in events}.values():
        if e.type == "ExecutionDispatched" and e.reason in ("schedule", "buffered"):
            out[e.slot] = ("fired", e.execution_id)
        elif e.type == "SlotsMissed":
            slot = e.first_slot
            for _ in range(e.count):
                out[slot] = ("missed", e.reason)
                slot += timedelta(seconds=1)
    return out


async def _settled_log(http: httpx.AsyncClient, public_id: str, handled: int) -> list[dict[str, Any]]:
    """The whole log once the views show the deletion and every handled slot (the projector
    catches up), paged 50 at a time."""
    deadline = time.monotonic() + 90
    while True:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        ok = True
        while True:
            params = {"limit": "50", **({"cursor": cursor} if cursor else {})}
            r = await http.get(f"/v1/tasks/{public_id}/occurrences", params=params)
            if r.status_code != 200:
                ok = False
                break
            page = r.json()
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        task = await http.get(f"/v1/tasks/{public_id}", params={"include_deleted": "true"})
        done = task.status_code == 200 and task.json().get("status") == "deleted"
        if ok and done and sum(1 for o in items if o["fate"] in ("fired", "missed")) >= handled:
            return items
        assert time.monotonic() < deadline, f"the views did not settle: {r.status_code} {r.text[:500]}"
        await asyncio.sleep(1)
