"""Two workers share the partitions; SIGKILL one and the other takes over: no slot lost, none doubled."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from schemas.commands import DeleteTask
from tests.conftest import Infra
from tests.integration.harness import (
    Bus,
    HttpTarget,
    WorkerProc,
    assert_every_slot_once,
    create_every_second_tasks,
    new_id,
    now,
    worker_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.failure]

TASKS = 16
SLOW_TASKS = 4
SLOW_SECONDS = 6.0
SESSION_TIMEOUT = "6"


async def test_sigkill_one_of_two_workers_loses_and_doubles_nothing(infra: Infra, tmp_path: Path) -> None:
    prefix = f"fo{uuid.uuid4().hex[:8]}"
    # Slow work holds each dispatch partition's committed offset back for seconds: the fast
    # work that finished behind it must not run again after the kill.
    target = await HttpTarget(delay=0.05, slow_paths={"/slow": SLOW_SECONDS}).start()
    bus = await Bus(infra.bootstrap, prefix).start(follow=("task-events", "outcomes", "dispatch.normal"))
    workers = [
        WorkerProc(
            worker_env(
                infra.bootstrap, infra.mongo_url, prefix, tmp_path / name / "data",
                SCHED_SESSION_TIMEOUT_SECONDS=SESSION_TIMEOUT,
            ),
            tmp_path / name / "worker.log", name,
        ).start()
        for name in ("wa", "wb")
    ]  # fmt: skip
    try:
        anchor = now().replace(microsecond=0) + timedelta(seconds=2)
        ids = await create_every_second_tasks(bus, "fo", TASKS, target.url, anchor)
        slow_url = target.url.replace("/work", "/slow")
        slow = await create_every_second_tasks(bus, "slow", SLOW_TASKS, slow_url, anchor, every=SLOW_SECONDS / 2)

        def writers() -> set[str]:
            return {bus.sources[e.event_id] for e in bus.events(type_="ExecutionDispatched")}

        # Both workers own partitions and fire their tasks.
        await bus.wait_for(lambda: len(writers()) == 2, 90, "both workers to dispatch")
        await asyncio.sleep(3)
        victim = workers[0]
        victim.kill()
        killed_at = now()
        # The survivor takes over after the session timeout and fires everything due.
        await asyncio.sleep(float(SESSION_TIMEOUT) + 12)
        survivor_source = f"scheduler/worker/{workers[1].worker_id}"
        taken_over = killed_at + timedelta(seconds=float(SESSION_TIMEOUT))
        per_task_after = {t for t in ids if any(e.at > taken_over for e in bus.events(t, "ExecutionCompleted"))}
        assert per_task_after == set(ids), f"tasks not firing after the takeover: {set(ids) - per_task_after}"
        stop_at = now()
        for task_id in [*ids, *slow]:
            await bus.send(DeleteTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now()))
        await bus.wait_for(lambda: len(bus.events(type_="TaskDeleted")) >= TASKS + SLOW_TASKS, 30, "deletes")
        await asyncio.sleep(2)  # let in-flight executions report

        # Every slot from the anchor until shortly before the stop: exactly one execution,
        # dispatched once (one event id) and completed once, whatever the worker.
        executions = assert_every_slot_once(bus, ids, anchor, stop_at - timedelta(seconds=3))
        # A rebalance resends only the events that never reached task-events (a crash between
        # changelog and events), not every recent one: each resent dispatch can reach a second
        # executor. Two rebalances here (the second worker joining, the kill).
        dispatch_copies = Counter(e.event_id for e in bus.events(topic="dispatch.normal"))
        resent_dispatches = sum(n - 1 for n in dispatch_copies.values())
        print(f"dispatches sent more than once: {resent_dispatches}")
        assert resent_dispatches <= 5, f"{resent_dispatches} dispatches were sent again"
        assert survivor_source in {bus.sources[e.event_id] for e in bus.events(type_="ExecutionDispatched")}
        # At the target every execution arrived; a second request with the same
        # Idempotency-Key (work re-run after the crash) is possible and is reported.
        keys = Counter(r["key"] for r in target.requests)
        doubled_at_target = {k: n for k, n in keys.items() if n > 1}
        print(f"executions {executions}, repeated requests at the target: {len(doubled_at_target)}")
        # Only work in flight at the kill runs again: a request still being answered then, or
        # answered within a commit interval (and its report's few milliseconds) before it.
        first = {}
        for r in target.requests:
            first.setdefault(r["key"], r)
        margin = timedelta(seconds=2)  # a commit interval, a report batch, a loaded machine
        repeated_too_old = [
            (r["path"], (killed_at - r["at"]).total_seconds())
            for key in doubled_at_target
            if (r := first[key])["at"] + timedelta(seconds=SLOW_SECONDS if r["path"] == "/slow" else 0.05) + margin
            < killed_at
        ]
        assert not repeated_too_old, f"finished long before the kill, yet run again: {repeated_too_old[:10]}"
    finally:
        for w in workers:
            w.stop()
        await bus.stop()
        await target.stop()
        for w in workers:
            print(f"--- {w.worker_id}\n{w.tail(15)}")
