"""The task processor's parts, without a broker: firing, the state store, the report batcher,
and the agent's apply path (ticks, batches, commands) over a dict table and a recording producer."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.state import HOLD_MIN_SECONDS
from schemas.commands import CreateTask, ReportExecutionOutcome
from schemas.control import CommandBatch, Tick
from schemas.envelope import command_envelope, control_envelope, decode_event, decode_message, encode
from schemas.events import Event, ExecutionDispatched
from schemas.specs import HandlerWork, IntervalSchedule, TaskDefinition
from streams.app import TaskProcessor, _Source
from streams.batcher import ReportBatcher
from streams.due_index import DueIndex
from streams.firing import MAX_IN_FLIGHT, Firing
from streams.publisher import Publisher
from streams.settings import Settings
from streams.store import DataDirInUse, StateStore, claim_data_dir, partition_for

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PARTITIONS = 4


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def task_in(partition: int, n: int = 0) -> str:
    """A task id whose messages land in ``partition``."""
    found = [f"acme/t{i}" for i in range(1000) if partition_for(f"acme/t{i}".encode(), PARTITIONS) == partition]
    return found[n]


# -- firing -------------------------------------------------------------------------------------


def test_one_tick_per_due_partition_and_none_for_what_a_tick_on_its_way_covers() -> None:
    firing = Firing(resend_seconds=5)
    firing.track("a", "acme", 0, at(1))
    firing.track("b", "acme", 0, at(2))
    firing.track("c", "acme", 1, at(3))
    firing.track("d", "acme", 2, at(100))
    assert firing.to_tick(at(0), clock=0) == []
    assert firing.to_tick(at(5), clock=0) == [0, 1]  # two due tasks in partition 0: one tick
    assert firing.to_tick(at(6), clock=1) == []  # both still on their way
    assert firing.next_time() == at(100)  # only partition 2 is free to tick
    assert firing.take_due(0, at(5)) == [("a", "acme"), ("b", "acme")]
    assert firing.take_due(0, at(5)) == []  # a repeated tick finds nothing
    assert firing.stats.ticks_sent == 2 and firing.stats.wakes_applied == 2


def test_a_task_falling_due_behind_a_tick_on_its_way_gets_one_of_its_own() -> None:
    firing = Firing(resend_seconds=5)
    firing.track("a", "acme", 0, at(1))
    firing.track("b", "acme", 0, at(3))
    assert firing.to_tick(at(2), clock=0) == [0]  # covers a
    assert firing.to_tick(at(2.5), clock=0.01) == []  # nothing new due
    assert firing.to_tick(at(3), clock=0.02) == [0]  # b fell due after the first tick's time
    assert firing.covered()
    # Applying the second tick covers the first too.
    assert firing.take_due(0, at(3)) == [("a", "acme"), ("b", "acme")]
    assert not firing.covered()


def test_ticks_on_their_way_to_a_lagging_partition_are_bounded() -> None:
    firing = Firing(resend_seconds=5)
    for n in range(100):
        firing.track(f"t{n}", "acme", 0, at(n))
    sent = [firing.to_tick(at(n), clock=n / 1000) for n in range(100)]
    assert sum(len(s) for s in sent) == MAX_IN_FLIGHT


@given(st.lists(st.integers(0, 50), max_size=40), st.integers(0, 50), st.integers(0, 50))
def test_due_after_agrees_with_a_scan(wakeups: list[int], after: int, now: int) -> None:
    index = DueIndex()
    for n, w in enumerate(wakeups):
        index.set(f"t{n}", at(w))
    for n in range(0, len(wakeups), 3):
        index.set(f"t{n}", at(wakeups[n] + 7))  # moved: leaves a stale heap entry behind
    live = [index.get(f"t{n}") for n in range(len(wakeups))]
    expected = any(w is not None and at(after) < w <= at(now) for w in live)
    assert index.due_after(at(after), at(now), budget=10_000) == expected


def test_a_lost_tick_is_sent_again_after_the_resend_time() -> None:
    firing = Firing(resend_seconds=5)
    firing.track("a", "acme", 3, at(1))
    assert firing.to_tick(at(2), clock=10.0) == [3]
    assert firing.to_tick(at(3), clock=14.9) == []
    assert firing.to_tick(at(8), clock=15.0) == [3]
    assert firing.stats.ticks_resent == 1


def test_a_stale_tick_wakes_only_what_was_due_at_its_time() -> None:
    firing = Firing(resend_seconds=5)
    firing.track("a", "acme", 0, at(1))
    firing.track("b", "acme", 0, at(10))
    assert firing.take_due(0, at(5)) == [("a", "acme")]
    assert firing.get("b") == at(10)


def test_a_task_moving_partition_leaves_the_old_one() -> None:
    firing = Firing(resend_seconds=5)
    firing.track("a", "acme", 0, at(1))
    firing.track("a", "acme", 1, at(1))
    assert firing.take_due(0, at(5)) == []
    assert firing.take_due(1, at(5)) == [("a", "acme")]
    firing.track("b", "acme", 1, at(1))
    firing.track("b", "acme", 1, None)
    assert len(firing) == 0


# -- the state store ----------------------------------------------------------------------------


def test_store_saves_loads_and_lists_entries_with_their_partition() -> None:
    table: dict[bytes, bytes] = {}
    store = StateStore(table, PARTITIONS, cache_size=1)
    processor_state = _created_state("acme/x")
    store.save(b"acme/x", processor_state, [], partition=2)
    store.clear_cache()
    assert store.load(b"acme/x") == processor_state
    [(key, _doc, entry, partition)] = list(store.entries())
    assert (key, entry.task_id, entry.tenant, partition) == (b"acme/x", "acme/x", "acme", 2)
    store.save(b"acme/x", None, [], partition=2)
    assert table == {} and store.load(b"acme/x") is None


def _created_state(task_id: str) -> Any:
    from scheduler import decision

    create = CreateTask(
        command_id="c", task_id=task_id, tenant="acme", actor="a", at=T0,
        definition=TaskDefinition(name="n", schedule=IntervalSchedule(every_seconds=10, anchor=T0),
                                  work=HandlerWork(name="noop")),
    )  # fmt: skip
    return decision(create, None).state


# -- the report batcher -------------------------------------------------------------------------


class Recorder:
    """A producer that records (topic, key, value, partition) and acknowledges at once (or fails)."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, int | None]] = []
        self.fail = fail

    async def produce(self, key: bytes, value: bytes, partition: int) -> asyncio.Future[Any]:
        return await self.send("commands", key, value, partition)

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> asyncio.Future[Any]:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((topic, key, value, partition))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _outcome(task_id: str, n: int) -> ReportExecutionOutcome:
    return ReportExecutionOutcome(
        command_id=f"o{n}", task_id=task_id, tenant="acme", actor="executor:x", at=at(n), execution_id=f"e{n}",
        attempt=1, worker="x", status="succeeded", started_at=at(n), finished_at=at(n),
    )  # fmt: skip


async def test_reports_leave_batched_per_partition_within_the_window() -> None:
    producer = Recorder()
    batcher = ReportBatcher(producer.produce, PARTITIONS, "executor/x", window=0.01, max_size=100)
    tasks = [task_in(0, 0), task_in(0, 1), task_in(1, 0)]
    futures = [await batcher.add(_outcome(t, i)) for i, t in enumerate(tasks)]
    assert producer.sent == []  # held for the window
    await asyncio.gather(*futures)
    by_partition = {}
    for _topic, key, value, partition in producer.sent:
        message = decode_message(value)
        assert key == b"batch" and isinstance(message, CommandBatch) and message.partition == partition
        by_partition[partition] = [c["subject"] for c in message.commands]
    assert by_partition == {0: tasks[:2], 1: tasks[2:]}


async def test_a_full_batch_leaves_at_once_and_failures_reach_the_waiters() -> None:
    producer = Recorder()
    batcher = ReportBatcher(producer.produce, PARTITIONS, "executor/x", window=60, max_size=2)
    first = await batcher.add(_outcome(task_in(2, 0), 1))
    second = await batcher.add(_outcome(task_in(2, 1), 2))
    await asyncio.wait_for(asyncio.gather(first, second), 1)  # not held for 60 s
    failing = ReportBatcher(Recorder(fail=True).produce, PARTITIONS, "executor/x", window=0)
    lost = await failing.add(_outcome(task_in(2, 0), 3))
    with pytest.raises(ConnectionError):
        await lost


async def test_the_batches_of_the_last_seconds_are_sent_again_as_they_were() -> None:
    """After a rebalance a processor may have skipped a batch that arrived while partitions
    moved: the executor sends what it sent in the last ``keep_seconds`` again, same bytes (same
    command ids, so an applied report is ignored), and nothing older or beyond ``keep_bytes``."""
    producer = Recorder()
    batcher = ReportBatcher(producer.produce, PARTITIONS, "executor/x", window=0, keep_seconds=60)
    await asyncio.gather(*[await batcher.add(_outcome(task_in(p, 0), p)) for p in (0, 1)])
    first = list(producer.sent)
    assert len(first) == 2
    assert await batcher.resend_recent() == 2
    assert producer.sent[2:] == first
    # Past keep_seconds, a batch is forgotten.
    batcher.keep_seconds = 0.0
    await asyncio.sleep(0.01)
    await (await batcher.add(_outcome(task_in(2, 0), 3)))
    assert await batcher.resend_recent() == 0
    # At most keep_bytes are kept: the oldest go first.
    small = ReportBatcher(Recorder().produce, PARTITIONS, "executor/x", window=0, keep_bytes=1)
    await (await small.add(_outcome(task_in(0, 0), 1)))
    assert await small.resend_recent() == 0


# -- the agent's apply path ---------------------------------------------------------------------


def _processor() -> tuple[TaskProcessor, Recorder]:
    settings = Settings(store="memory://", partitions=PARTITIONS, executor_enabled=False, tick_resend_seconds=5)
    processor = TaskProcessor(settings)
    producer = Recorder()
    processor.store = StateStore({}, PARTITIONS, cache_size=100)
    processor.publisher = Publisher(settings, producer.send, "test")
    processor._send = producer.send  # type: ignore[method-assign]
    processor._send_unlingered = producer.send  # type: ignore[method-assign]  # ticks
    processor.ready = True
    return processor, producer


def _events(producer: Recorder) -> list[Event]:
    return [decode_event(value) for topic, _, value, _ in producer.sent if topic.endswith("task-events")]


def _create(task_id: str, every: float = 10) -> bytes:
    command = CreateTask(
        command_id=f"create-{task_id}", task_id=task_id, tenant="acme", actor="a", at=T0,
        definition=TaskDefinition(name="n", schedule=IntervalSchedule(every_seconds=every, anchor=at(10)),
                                  work=HandlerWork(name="noop")),
    )  # fmt: skip
    return encode(command_envelope(command, source="test"))


def _tick(partition: int, when: datetime, tick_id: str = "tick-1") -> bytes:
    tick = Tick(tick_id=tick_id, partition=partition, at=when, worker="w")
    return encode(control_envelope(tick, "test", "system", when))


async def test_a_tick_fires_every_due_task_of_its_partition_in_one_message() -> None:
    processor, producer = _processor()
    tasks = [task_in(1, n) for n in range(3)]
    other = task_in(2, 0)
    for offset, task_id in enumerate([*tasks, other]):
        source = _Source("commands", partition_for(task_id.encode(), PARTITIONS), offset)
        await processor.apply(task_id.encode(), _create(task_id), source)
    assert processor.firing.to_tick(at(10), clock=0) == [1, 2]

    await processor.apply(b"tick", _tick(1, at(10)), _Source("commands", 1, 10))
    dispatched = [e for e in _events(producer) if isinstance(e, ExecutionDispatched)]
    assert sorted(e.task_id for e in dispatched) == sorted(tasks)  # not the task of partition 2
    assert {e.slot for e in dispatched} == {at(10)}
    # Next wake: the 20 s slot, held behind the execution in flight (overlap skip) until its bound.
    assert all(processor.firing.get(t) == at(20 + HOLD_MIN_SECONDS) for t in tasks)

    # The same tick again (redelivered), and a stale one: nothing more.
    before = len(producer.sent)
    await processor.apply(b"tick", _tick(1, at(10)), _Source("commands", 1, 10))
    await processor.apply(b"tick", _tick(1, at(9), "tick-0"), _Source("commands", 1, 11))
    assert len(producer.sent) == before


async def test_a_batch_applies_each_report_and_forwards_what_belongs_elsewhere() -> None:
    processor, producer = _processor()
    mine, elsewhere = task_in(3, 0), task_in(0, 0)
    await processor.apply(mine.encode(), _create(mine), _Source("commands", 3, 0))
    await processor.apply(b"tick", _tick(3, at(10)), _Source("commands", 3, 1))
    [dispatched] = [e for e in _events(producer) if isinstance(e, ExecutionDispatched)]
    outcome = ReportExecutionOutcome(
        command_id="o1", task_id=mine, tenant="acme", actor="executor:x", at=at(11),
        execution_id=dispatched.execution_id, attempt=1, worker="x", status="succeeded",
        started_at=at(10), finished_at=at(11),
    )  # fmt: skip
    stray = _outcome(elsewhere, 7)
    batch = CommandBatch(
        batch_id="b1", partition=3,
        commands=[command_envelope(c, source="executor/x").model_dump(mode="json") for c in (outcome, stray)],
    )  # fmt: skip
    producer.sent.clear()
    await processor.apply(
        b"batch", encode(control_envelope(batch, "test", "system", at(11))), _Source("commands", 3, 2)
    )
    assert [e.type for e in _events(producer)] == ["ExecutionCompleted"]
    forwarded = [(key, value) for topic, key, value, _ in producer.sent if topic == "commands"]
    assert [k for k, _ in forwarded] == [elsewhere.encode()]
    assert orjson.loads(forwarded[0][1])["subject"] == elsewhere
    assert processor.stats.forwarded == 1


async def test_a_wake_that_finds_nothing_due_is_looked_at_later_not_every_tick() -> None:
    processor, _producer = _processor()
    task_id = task_in(0, 0)
    await processor.apply(task_id.encode(), _create(task_id), _Source("commands", 0, 0))
    # The index says due at 5 s, the task's own wakeup is 10 s: the wake yields nothing.
    processor.firing.track(task_id, "acme", 0, at(5))
    await processor.apply(b"tick", _tick(0, at(6)), _Source("commands", 0, 1))
    assert processor.firing.get(task_id) == at(11)  # max(wakeup 10 s, 6 s + resend 5 s)


def test_a_state_directory_serves_one_worker_at_a_time(tmp_path: Path) -> None:
    fd = claim_data_dir(tmp_path / "data")
    with pytest.raises(DataDirInUse, match=rf"in use by another worker \(pid {os.getpid()}\).*SCHED_DATA_DIR"):
        claim_data_dir(tmp_path / "data")
    os.close(fd)
    os.close(claim_data_dir(tmp_path / "data"))  # free again once the first worker is gone


async def test_a_tick_that_cannot_be_sent_is_logged_and_does_not_stop_the_firing_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Ticks leave without the producer's linger as one-record batches, which wait while the
    # partition's previous batch is queued (a broker away): the firing loop must not wait on
    # them, nor end when one fails (the tick is sent again after tick_resend_seconds).
    processor, _ = _processor()
    release = asyncio.Event()

    async def broker_away(topic: str, key: bytes, value: bytes, partition: int) -> None:
        await release.wait()
        raise ConnectionError("broker away")

    processor._send_unlingered = broker_away  # type: ignore[method-assign]
    processor._send_tick("p.commands", _tick(1, at(10)), 1)
    processor._send_tick("p.commands", _tick(2, at(10)), 2)  # not held behind the first
    assert len(processor._tick_sends) == 2
    release.set()
    with caplog.at_level(logging.WARNING, logger="streams.app"):
        await asyncio.sleep(0.01)
    assert not processor._tick_sends
    assert sum("a tick was not sent" in r.getMessage() for r in caplog.records) == 2
