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
from projections.read import PENDING_CREATES_COLLECTION, CollectionNames
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

    real = store._write

    async def stats_then_die(view: Any, *args: Any) -> Any:
        if view != "stats":
            await die()
        return await real(view, *args)

    store._write = stats_then_die  # type: ignore[method-assign]
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
    """An execution dispatched, started and completed within one batch is one write, not three;
    and every document the store knows to be new (folded from none) is inserted, not upserted:
    on FerretDB an insert costs a tenth of a replace."""
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
        store = ViewStore(db, names, await probe(db))
        folded = await store.apply(positioned(h.events))
        assert (len(folded.tasks), len(folded.executions), len(folded.stats), len(folded.audit)) == (1, 1, 1, 4)
        assert len(folded.occurrences) == 2  # the schedule segment, the run's dispatch (its completion names no slot)
        # One statement per document on the wire, each an insert: none of them existed.
        assert listener.statements == {
            ("insert", names.tasks): 1,
            ("insert", names.executions): 1,
            ("insert", names.stats): 1,
            ("insert", names.audit): 4,
            ("insert", names.occurrences): 2,
        }
        # The next run of the held task, opened and closed in one batch as in a busy drain: the
        # execution is inserted, the task and the statistics (held here) replaced.
        listener.statements.clear()
        reads = store.reads  # the task, execution and statistics of the first batch, not found
        first = len(h.events)
        ex2, _ = h.dispatched(T0 + timedelta(minutes=2))
        h.started(ex2)
        h.finished(ex2)
        store.high_water = {0: first - 1}
        await store.apply(positioned(h.events[first:], first_offset=first))
        assert listener.statements == {
            ("insert", names.executions): 1,
            ("update", names.tasks): 1,
            ("update", names.stats): 1,
            ("insert", names.audit): 3,
            ("insert", names.occurrences): 1,
        }
        assert store.reads == reads  # nothing read: all held, or new
    finally:
        await client.close()
    for key in (ex_id, ex2):
        execution = await mongo_db[names.executions].find_one({"_id": key})
        assert execution is not None and execution["status"] == "succeeded" and len(execution["timeline"]) == 3
    reference = CollectionNames().with_suffix("_ref")
    for item in positioned(h.events):
        await apply_events(mongo_db, reference, [item])
    assert await dump(mongo_db, names) == await dump(mongo_db, reference)


class StatementCounter(monitoring.CommandListener):
    """Counts the write statements sent per command and collection (``update``, ``insert``)."""

    def __init__(self) -> None:
        self.statements: dict[tuple[str, str], int] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        for command, field in (("update", "updates"), ("insert", "documents")):
            if event.command_name == command:
                n = len(event.command.get(field, ()))
                key = (command, event.command[command])
                self.statements[key] = self.statements.get(key, 0) + n

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_batch_applied_again_after_it_failed_part_way_changes_no_view(mongo_db: Db) -> None:
    """The held documents change only once a whole batch is written, so a batch that failed
    after some of its inserts went in is folded again from no document and its inserts meet
    what the first attempt wrote: those are read back, found equal, and not written again."""
    log = interleaved_log()
    once, retried = CollectionNames().with_suffix("_once"), CollectionNames().with_suffix("_retried")
    await apply_events(mongo_db, once, log)
    store = ViewStore(mongo_db, retried, await probe(mongo_db))
    half = len(log) // 2
    await store.apply(log[:half])
    # As the projector says: nothing beyond the first half was written yet, so the executions
    # the second half opens are new, not read, and inserted.
    store.high_water = {p: max(i.offset for i in log[:half] if i.partition == p) for p in (0, 1)}
    real = store._insert

    async def audit_fails(name: str, docs: list[Any]) -> None:
        if name == retried.audit:
            raise AutoReconnect("the connection drops before the audit is written")
        await real(name, docs)

    store._insert = audit_fails  # type: ignore[method-assign]
    with pytest.raises(AutoReconnect):
        await store.apply(log[half:])
    store._insert = real  # type: ignore[method-assign]
    reads = store.reads
    await store.apply(log[half:])
    opened = {k for i in log[half:] if (k := execution_key(i.event)) and opens_execution(i.event)}
    assert opened
    # The executions it opens were inserted by the first attempt: met, and read back.
    assert store.reads - reads == len(opened)
    assert await dump(mongo_db, retried) == await dump(mongo_db, once)
    # Delivered once more, to this store and to one holding nothing: still nothing changes.
    await store.apply(log)
    await apply_events(mongo_db, retried, log)
    assert await dump(mongo_db, retried) == await dump(mongo_db, once)


@pytest.mark.parametrize("pushed_down", [True, False])
async def test_an_insert_that_meets_a_document_the_store_did_not_know_ends_right(
    mongo_db: Db, pushed_down: bool
) -> None:
    """A store that wrongly holds an execution as absent (what its cache says, not the server)
    inserts it; the insert meets the document, which is read and folded into, and replaced only
    if that changes it (with the guard in the filter on MongoDB), so the view ends as if the
    store had known it, and an older copy never replaces a newer document."""
    h = TaskHistory("known")
    h.created()
    ex_id, _ = h.dispatched(T0 + timedelta(minutes=1))
    dispatched = len(h.events)
    h.started(ex_id)
    h.finished(ex_id)
    log = positioned(h.events)
    once, wrong = CollectionNames().with_suffix("_once"), CollectionNames().with_suffix("_wrong")
    await apply_events(mongo_db, once, log)
    caps = Capabilities(filters_pushed_down=pushed_down, ttl_indexes=False, server="test")
    store = ViewStore(mongo_db, wrong, caps)
    await store.apply(log[:dispatched])  # the execution is written at its dispatch
    store.executions.put(ex_id, 0, None)  # ... and then held as absent, wrongly
    # Its dispatch comes again with the rest: folded from nothing, then inserted, and that meets
    # the dispatched document.
    await store.apply(log[dispatched - 1 :])
    assert await dump(mongo_db, wrong) == await dump(mongo_db, once)
    # It holds what the server holds now (dates aside: the fixture's client reads them naive).
    held, stored = store.executions.get(ex_id), await mongo_db[wrong.executions].find_one({"_id": ex_id})
    assert held is not None and stored is not None
    assert (held["status"], held["version"], len(held["timeline"])) == ("succeeded", len(h.events), 3)
    assert (stored["status"], stored["version"], len(stored["timeline"])) == ("succeeded", len(h.events), 3)
    # Only the dispatch again, the execution held as absent again: folded from nothing it is a
    # document at the dispatch, older than the stored one, which it must not replace.
    store.executions.put(ex_id, 0, None)
    await store.apply(log[dispatched - 1 : dispatched])
    assert await dump(mongo_db, wrong) == await dump(mongo_db, once)
    held = store.executions.get(ex_id)
    assert held is not None and held["status"] == "succeeded"


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


@pytest.mark.parametrize("retire", [True, False])
async def test_the_live_store_retires_the_reservations_of_the_creates_it_wrote(mongo_db: Db, retire: bool) -> None:
    """The API counts a create's reservation until the views count the task: the live projector's
    store deletes it once the batch that created the task is written (a replay's store does not:
    it writes other collections than those the API counts from)."""
    log = interleaved_log()
    created = sorted({item.event.task_id for item in log})
    reservations = mongo_db[PENDING_CREATES_COLLECTION]
    await reservations.insert_many([{"_id": task_id, "tenant": "t", "at": T0} for task_id in [*created, "acme/z"]])
    store = ViewStore(mongo_db, CollectionNames(), await probe(mongo_db), retire_reservations=retire)
    await store.apply(log)
    left = sorted([doc["_id"] async for doc in reservations.find({})])
    assert left == (["acme/z"] if retire else sorted([*created, "acme/z"]))
    # The batch again (redelivery): nothing to retire is not an error.
    await store.apply(log)
