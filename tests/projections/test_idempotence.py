"""Redelivery and replay change nothing: every view ends identical to applying each event once."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect

from projections.folds import execution_key, opens_execution
from projections.read import CollectionNames
from projections.store import Capabilities, Positioned, ViewStore, apply_events, probe
from tests.conftest import Infra
from tests.projections.history import T0, TaskHistory, dump, full_history, positioned

Db = AsyncDatabase[dict[str, Any]]


def interleaved_log() -> list[Positioned]:
    """Three tasks of two tenants over two partitions, interleaved as a broker would deliver them."""
    p0 = positioned(full_history("a", "acme").events, 0)
    b = full_history("b", "globex").events
    c = full_history("c", "acme").events
    p1 = positioned([e for pair in zip(b, c, strict=True) for e in pair], 1)
    merged: list[Positioned] = []
    for i in range(max(len(p0), len(p1))):
        merged.extend(p0[i : i + 1])
        merged.extend(p1[i : i + 1])
    return merged


async def test_every_event_twice_equals_once(mongo_db: Db) -> None:
    log = interleaved_log()
    once, twice = CollectionNames().with_suffix("_once"), CollectionNames().with_suffix("_twice")
    await apply_events(mongo_db, once, log)
    for item in log:
        await apply_events(mongo_db, twice, [item])
        await apply_events(mongo_db, twice, [item])
    assert await dump(mongo_db, twice) == await dump(mongo_db, once)


async def test_a_whole_batch_applied_again_equals_once(mongo_db: Db) -> None:
    log = interleaved_log()
    once, again = CollectionNames().with_suffix("_once"), CollectionNames().with_suffix("_again")
    await apply_events(mongo_db, once, log)
    await apply_events(mongo_db, again, log)
    await apply_events(mongo_db, again, log)
    assert await dump(mongo_db, again) == await dump(mongo_db, once)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_shuffled_redelivery_of_old_events_changes_nothing(mongo_db: Db, seed: int) -> None:
    rng = random.Random(seed)
    log = interleaved_log()
    once, noisy = CollectionNames().with_suffix("_once"), CollectionNames().with_suffix("_noisy")
    await apply_events(mongo_db, once, log)
    done = 0
    while done < len(log):
        size = rng.randint(1, 9)
        chunk = log[done : done + size]
        await apply_events(mongo_db, noisy, chunk)
        done += len(chunk)
        # At-least-once: any already-applied events may come again, in any order.
        old = rng.sample(log[:done], k=min(done, rng.randint(1, 12)))
        await apply_events(mongo_db, noisy, old)
    assert await dump(mongo_db, noisy) == await dump(mongo_db, once)


async def test_crash_between_views_then_redelivery_counts_once(mongo_db: Db) -> None:
    """Stats were written but the other views were not (crash), then the batch comes again."""
    log = interleaved_log()
    once, crashed = CollectionNames().with_suffix("_once"), CollectionNames().with_suffix("_crashed")
    await apply_events(mongo_db, once, log)
    half = len(log) // 2
    await apply_events(mongo_db, crashed, log[:half])
    store = ViewStore(mongo_db, crashed, await probe(mongo_db))

    async def die(*args: Any, **kwargs: Any) -> None:
        raise AutoReconnect("the process dies here")

    real = store._replace

    async def stats_then_die(name: str, docs: dict[str, Any], guard: str) -> None:
        if name != crashed.stats:
            await die()
        await real(name, docs, guard)

    store._replace = stats_then_die  # type: ignore[method-assign]
    with pytest.raises(AutoReconnect):
        await store.apply(log[half:])
    assert await mongo_db[crashed.stats].count_documents({}) > 0
    await apply_events(mongo_db, crashed, log[half:])
    assert await dump(mongo_db, crashed) == await dump(mongo_db, once)


async def test_a_failover_copy_at_a_later_offset_changes_no_view(mongo_db: Db) -> None:
    """A new owner of a partition re-sends the last events of recently touched tasks (same ids
    and sequences) at later offsets: no view changes, the statistics included (they were
    guarded by offset only and counted every copy again)."""
    log = interleaved_log()
    once, copied = CollectionNames().with_suffix("_once"), CollectionNames().with_suffix("_copied")
    await apply_events(mongo_db, once, log)
    await apply_events(mongo_db, copied, log)
    ends = {p: max(i.offset for i in log if i.partition == p) + 1 for p in (0, 1)}
    copies = [Positioned(i.event, i.partition, ends[i.partition] + n) for n, i in enumerate(log[-8:])]
    await apply_events(mongo_db, copied, copies)
    assert await dump(mongo_db, copied) == await dump(mongo_db, once)
    # The same log with the copies in it, replayed from scratch, gives the same views too.
    replayed = CollectionNames().with_suffix("_replayed")
    await apply_events(mongo_db, replayed, [*log, *copies])
    assert await dump(mongo_db, replayed) == await dump(mongo_db, once)


@pytest.mark.parametrize("pushed_down", [True, False])
async def test_guards_in_the_filter_or_held_here_give_the_same_views(mongo_db: Db, pushed_down: bool) -> None:
    """Both ways of writing (see :mod:`projections.store`) yield the same views, redelivery included."""
    log = interleaved_log()
    reference, other = CollectionNames().with_suffix("_ref"), CollectionNames().with_suffix("_other")
    await apply_events(mongo_db, reference, log)
    caps = Capabilities(filters_pushed_down=pushed_down, ttl_indexes=False, server="test")
    store = ViewStore(mongo_db, other, caps)
    for item in log:
        await store.apply([item])
        await ViewStore(mongo_db, other, caps).apply([item])  # a redelivery to a process holding nothing
    assert await dump(mongo_db, other) == await dump(mongo_db, reference)


async def test_a_batch_writes_each_touched_document_once(mongo_db: Db, infra: Infra) -> None:
    """An execution dispatched, started and completed within one batch is one write, not three."""
    h = TaskHistory("solo")
    h.created()
    ex_id, _ = h.dispatched(T0 + timedelta(minutes=1))
    h.started(ex_id)
    h.finished(ex_id)
    names = CollectionNames().with_suffix("_once")
    listener = StatementCounter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, event_listeners=[listener])
    try:
        db = client[mongo_db.name]
        folded = await apply_events(db, names, positioned(h.events))
        assert (len(folded.tasks), len(folded.executions), len(folded.stats), len(folded.audit)) == (1, 1, 1, 4)
        assert len(folded.occurrences) == 2  # the schedule segment, the run's dispatch (its completion names no slot)
        # One statement per document on the wire: 1 task, 1 execution, 1 stats (updates); 4 audit
        # and 2 occurrence inserts.
        assert listener.statements == {"update": 3, "insert": 6}
    finally:
        await client.close()
    execution = await mongo_db[names.executions].find_one({"_id": ex_id})
    assert execution is not None and execution["status"] == "succeeded" and len(execution["timeline"]) == 3


class StatementCounter(monitoring.CommandListener):
    """Counts the write statements sent per command (``update``, ``insert``)."""

    def __init__(self) -> None:
        self.statements: dict[str, int] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        for command, field in (("update", "updates"), ("insert", "documents")):
            if event.command_name == command:
                n = len(event.command.get(field, ()))
                self.statements[command] = self.statements.get(command, 0) + n

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_new_owner_reads_no_new_execution_and_still_ignores_copies(mongo_db: Db) -> None:
    """Beyond the high-water mark (nothing written there yet), an execution opened by an event
    new to its task cannot exist and is not read; a failover copy there (its task already past
    it) is read and changes nothing."""
    log = interleaved_log()
    once, owned = CollectionNames().with_suffix("_once"), CollectionNames().with_suffix("_owned")
    half = len(log) // 2
    await apply_events(mongo_db, once, log)
    await apply_events(mongo_db, owned, log[:half])
    marks: dict[int, int | None] = {
        p: max((i.offset for i in log[:half] if i.partition == p), default=-1) for p in (0, 1)
    }
    ends = {p: max(i.offset for i in log if i.partition == p) + 1 for p in (0, 1)}
    copies = [Positioned(i.event, i.partition, ends[i.partition] + 50 + n) for n, i in enumerate(log[:half])]
    store = ViewStore(mongo_db, owned, await probe(mongo_db))  # a new owner: holds nothing
    store.high_water = marks
    await store.apply(log[half:])
    tasks = {i.event.task_id for i in log[half:]}
    first: dict[str, bool] = {}  # execution -> whether its first event in the batch opens it
    for i in log[half:]:
        key = execution_key(i.event)
        if key is not None:
            first.setdefault(key, opens_execution(i.event))
    opened = sum(first.values())
    assert opened > 0
    # Tasks, stats (3 tenant-partitions) and the executions the batch does not open are read.
    assert store.reads == len(tasks) + 3 + len(first) - opened
    assert await dump(mongo_db, owned) == await dump(mongo_db, once)
    later = ViewStore(mongo_db, owned, await probe(mongo_db))
    later.high_water = {p: ends[p] - 1 for p in (0, 1)}
    await later.apply(copies)
    assert await dump(mongo_db, owned) == await dump(mongo_db, once)
