"""Issue 12 end to end against the real broker: a worker process, commands on Kafka, HTTP work
served here. A backfill of 100 slots runs each once and never above its concurrency limit; a
second one cancelled midway stops dispatching; a task failing 3 times in a row is paused."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from schemas.commands import BackfillTask, CancelBackfill, CreateTask
from schemas.ids import execution_id_for_backfill
from schemas.specs import HttpWork, IntervalSchedule, OverlapPolicy, TaskDefinition
from tests.integration.harness import Bus, HttpTarget, new_id, now

pytestmark = pytest.mark.slow

HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"backfill{uuid.uuid4().hex[:8]}"


class CountingTarget(HttpTarget):
    """An HTTP target that also records how many requests it was serving at once, at most."""

    def __init__(self, delay: float = 0.0, fail_first: int = 0) -> None:
        super().__init__(fail_first=fail_first, delay=delay)
        self.serving = 0
        self.max_serving = 0

    async def _handle(self, request: web.Request) -> web.Response:
        self.serving += 1
        self.max_serving = max(self.max_serving, self.serving)
        try:
            return await super()._handle(request)
        finally:
            self.serving -= 1


async def _target(**kw: Any) -> CountingTarget:
    target = CountingTarget(**kw)
    await target.start()
    return target


async def _create_hourly(bus: Bus, url: str, anchor: datetime, **fields: Any) -> str:
    """A task firing every hour on ``anchor``'s minute: the backfills below are far in its past."""
    task_id = f"acme/bf-{new_id()[:8]}"
    definition = TaskDefinition(
        name="hourly",
        schedule=IntervalSchedule(every_seconds=3600, anchor=anchor),
        work=HttpWork(method="POST", url=url),
        overlap=OverlapPolicy.ALLOW_ALL,
        **fields,
    )
    await bus.send(
        CreateTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now(), definition=definition)
    )
    await bus.wait_for(lambda: bool(bus.events(task_id, "TaskCreated")), 30, "the task to be created")
    return task_id


def _backfill(task_id: str, backfill_id: str, start: datetime, slots: int, limit: int) -> BackfillTask:
    return BackfillTask(
        command_id=new_id(),
        task_id=task_id,
        tenant="acme",
        actor="t",
        at=now(),
        backfill_id=backfill_id,
        from_=start,
        to=start + slots * HOUR,
        max_concurrency=limit,
    )


def _anchor() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


async def test_backfill_of_100_slots_runs_each_once_within_its_limit(bus: Bus) -> None:
    target = await _target(delay=0.3)
    try:
        anchor = _anchor()
        task_id = await _create_hourly(bus, target.url, anchor)
        start = anchor - 200 * HOUR
        await bus.send(_backfill(task_id, "bf-100", start, 100, limit=5))
        await bus.wait_for(lambda: bool(bus.events(task_id, "BackfillEnded")), 120, "the backfill to end")
        (ended,) = bus.events(task_id, "BackfillEnded")
        assert ended.status == "completed" and ended.dispatched == 100
        (started,) = bus.events(task_id, "BackfillStarted")
        assert started.slots == 100

        expected = {execution_id_for_backfill(task_id, "bf-100", start + i * HOUR) for i in range(100)}
        # Each slot dispatched once (one first attempt), and completed once on the outcomes topic.
        dispatched = [e for e in bus.events(task_id, "ExecutionDispatched") if e.reason == "backfill"]
        assert Counter(e.execution_id for e in dispatched) == Counter(expected)
        assert all(e.backfill_id == "bf-100" for e in dispatched)
        await bus.wait_for(
            lambda: expected <= {e.execution_id for e in bus.events(task_id, topic="outcomes")}, 30, "the outcomes"
        )
        outcomes = [e for e in bus.events(task_id, topic="outcomes") if e.execution_id in expected]
        assert len(outcomes) == 100 and {e.status for e in outcomes} == {"succeeded"}
        assert {e.backfill_id for e in outcomes} == {"bf-100"}
        # The target saw each slot's execution once, never more than 5 at once (and did run 5 at once).
        keys = Counter(r["key"] for r in target.requests if r["key"] in expected)
        assert keys == Counter(expected), "a backfill slot ran twice or not at all"
        assert 2 <= target.max_serving <= 5, target.max_serving
        print(f"100 backfill slots: at most {target.max_serving} at once at the target")
    finally:
        await target.stop()


async def test_a_backfill_cancelled_midway_stops_dispatching(bus: Bus) -> None:
    target = await _target(delay=1.0)
    try:
        anchor = _anchor()
        task_id = await _create_hourly(bus, target.url, anchor)
        start = anchor - 300 * HOUR
        await bus.send(_backfill(task_id, "bf-cancel", start, 100, limit=3))
        await bus.wait_for(lambda: len(target.requests) >= 6, 60, "some backfill executions to run")
        await bus.send(
            CancelBackfill(
                command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now(), backfill_id="bf-cancel"
            )
        )
        await bus.wait_for(lambda: bool(bus.events(task_id, "BackfillEnded")), 30, "the backfill to be cancelled")
        (ended,) = bus.events(task_id, "BackfillEnded")
        assert ended.status == "cancelled" and 6 <= ended.dispatched < 100, ended
        # A dispatch sent just before the cancel may still reach the target while the cancel
        # travels; after a moment, nothing more may come.
        await asyncio.sleep(1)
        requested = len(target.requests)
        await asyncio.sleep(3)  # three rounds of 1 s work, had it gone on
        dispatched = [e for e in bus.events(task_id, "ExecutionDispatched") if e.reason == "backfill"]
        assert len(dispatched) == ended.dispatched, "a slot was dispatched after the cancel"
        assert dispatched[-1].sequence < ended.sequence
        assert len(target.requests) == requested, "the target got work after the cancel"
        assert {r["key"] for r in target.requests} <= {e.execution_id for e in dispatched}
        # The executions in flight at the cancel ended cancelled; none ended twice.
        outcomes = Counter(e.execution_id for e in bus.events(task_id, topic="outcomes"))
        assert set(outcomes.values()) == {1}
        statuses = Counter(e.status for e in bus.events(task_id, topic="outcomes"))
        assert statuses["cancelled"] >= 1 and sum(statuses.values()) == ended.dispatched, statuses
    finally:
        await target.stop()


async def test_a_task_failing_three_times_in_a_row_is_paused(bus: Bus) -> None:
    target = await _target(fail_first=10_000)  # every request answers 503
    try:
        task_id = f"acme/flaky-{new_id()[:8]}"
        definition = TaskDefinition(
            name="flaky",
            schedule=IntervalSchedule(every_seconds=1),
            work=HttpWork(method="POST", url=target.url),
            pause_after_failures=3,
        )
        await bus.send(
            CreateTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now(), definition=definition)
        )
        await bus.wait_for(lambda: bool(bus.events(task_id, "TaskPaused")), 60, "the task to pause")
        (paused,) = bus.events(task_id, "TaskPaused")
        assert paused.reason == "consecutive_failures" and paused.failures == 3
        assert paused.note is not None and paused.note.startswith("paused after 3 consecutive failures; last error:")
        await asyncio.sleep(3)  # three more slots, had it not paused
        assert len(bus.events(task_id, "ExecutionDispatched")) == 3
        failed = [e for e in bus.events(task_id, topic="outcomes")]
        assert [e.status for e in failed] == ["failed"] * 3
        assert len(target.requests) == 3
    finally:
        await target.stop()
