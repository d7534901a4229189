"""End to end against the real Kafka and FerretDB: projector, dead letters, lag, replay and switch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo.asynchronous.database import AsyncDatabase

from projections.projector import STATUS_COLLECTION, Projector, ensure_indexes
from projections.read import CollectionNames, active_collections, switch_collections, tenant_stats
from projections.replay import replay
from schemas.events import Event
from tests.conftest import Infra, Names
from tests.projections.history import TaskHistory, dump, envelope_bytes, full_history

Db = AsyncDatabase[dict[str, Any]]
pytestmark = pytest.mark.slow


async def create_topics(bootstrap: str, *topics: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 4, 1) for t in topics])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, key=key.encode(), value=value)
        await producer.flush()
    finally:
        await producer.stop()


def as_messages(events: list[Event]) -> list[tuple[str, bytes]]:
    return [(e.task_id, envelope_bytes(e)) for e in events]


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def first_dead_letter(infra: Infra, names: Names) -> Any:
    """The body of the first message on the test's dead-letter topic."""
    dead = AIOKafkaConsumer(names.topic("dead-letter"), bootstrap_servers=infra.bootstrap, auto_offset_reset="earliest")
    await dead.start()
    try:
        record = await asyncio.wait_for(dead.getone(), 20)
    finally:
        await dead.stop()
    return orjson.loads(record.value)


@contextlib.asynccontextmanager
async def running(projector: Projector) -> AsyncIterator[Projector]:
    task = asyncio.create_task(projector.run())
    try:
        yield projector
    finally:
        projector.stop()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def topic(infra: Infra, names: Names) -> str:
    events, dead = names.topic("task-events"), names.topic("dead-letter")
    await create_topics(infra.bootstrap, events, dead)
    return events


def histories() -> list[TaskHistory]:
    return [full_history("alpha", "acme"), full_history("beta", "acme"), full_history("gamma", "globex")]


async def test_projector_builds_views_dead_letters_poison_and_reports_lag(
    infra: Infra, names: Names, mongo_db: Db, topic: str
) -> None:
    hs = histories()
    events = [e for h in hs for e in h.events]
    half = len(hs[0].events) // 2
    messages = as_messages(hs[0].events[:half])
    messages.append(("alpha", b"{not an envelope"))  # poison, in the middle of alpha's history
    messages += as_messages(hs[0].events[half:]) + as_messages(hs[1].events + hs[2].events)
    await produce(infra.bootstrap, topic, messages)
    await ensure_indexes(mongo_db, CollectionNames())

    projector = Projector(infra.bootstrap, topic, names.topic("projector"), mongo_db, status_interval=0.2)
    async with running(projector):

        async def all_applied() -> bool:
            return await mongo_db["audit"].count_documents({}) == len(events)

        await eventually(all_applied, what="every event in the audit view")
        lag = await projector.lag()
        assert lag.events_behind == 0 and lag.seconds_behind == 0.0 and lag.last_event_at is not None

        async def status_caught_up() -> bool:
            doc = await mongo_db[STATUS_COLLECTION].find_one({"_id": names.topic("projector")})
            return doc is not None and doc["events_behind"] == 0 and doc["applied_total"] == len(events)

        await eventually(status_caught_up, what="projection_status caught up")

    tasks = {d["_id"]: d for d in await mongo_db["tasks"].find().to_list()}
    assert {t: d["status"] for t, d in tasks.items()} == {"alpha": "deleted", "beta": "deleted", "gamma": "deleted"}
    assert tasks["alpha"]["counters"]["runs"] == 5 and tasks["alpha"]["version"] == len(hs[0].events)
    assert await mongo_db["executions"].count_documents({"task_id": "alpha"}) == 6
    acme = await tenant_stats(mongo_db, "acme", CollectionNames())
    assert acme["executions"]["succeeded"] == 4 and acme["tasks"]["deleted"] == 2
    status = await mongo_db[STATUS_COLLECTION].find_one({"_id": names.topic("projector")})
    assert status is not None and status["dead_letters_total"] == 1

    body = await first_dead_letter(infra, names)
    assert body["source_topic"] == topic and body["payload"] == "{not an envelope"
    assert body["reason"] and isinstance(body["source_partition"], int) and isinstance(body["source_offset"], int)


async def test_restarted_projector_applies_the_rest_exactly_once(
    infra: Infra, names: Names, mongo_db: Db, topic: str
) -> None:
    hs = histories()
    first = [e for h in hs for e in h.events[:10]]
    rest = [e for h in hs for e in h.events[10:]]
    group = names.topic("projector")
    await produce(infra.bootstrap, topic, as_messages(first))
    async with running(Projector(infra.bootstrap, topic, group, mongo_db)):

        async def first_applied() -> bool:
            return await mongo_db["audit"].count_documents({}) == len(first)

        await eventually(first_applied, what="the first events")
    await produce(infra.bootstrap, topic, as_messages(rest))
    async with running(Projector(infra.bootstrap, topic, group, mongo_db)):

        async def all_applied() -> bool:
            return await mongo_db["audit"].count_documents({}) == len(first) + len(rest)

        await eventually(all_applied, what="the rest")

    # A replay from zero is the reference: the restarted views must be identical.
    report = await replay(infra.bootstrap, topic, mongo_db, switch=False)
    assert await dump(mongo_db, report.collections) == await dump(mongo_db, CollectionNames())


async def test_replay_rebuilds_equal_views_and_the_live_projector_follows_the_switch(
    infra: Infra, names: Names, mongo_db: Db, topic: str
) -> None:
    hs = histories()
    events = [e for h in hs for e in h.events]
    await produce(infra.bootstrap, topic, as_messages(events))
    projector = Projector(infra.bootstrap, topic, names.topic("projector"), mongo_db)
    async with running(projector):

        async def all_applied() -> bool:
            return await mongo_db["audit"].count_documents({}) == len(events)

        await eventually(all_applied, what="the live views")
        live = await dump(mongo_db, CollectionNames())

        report = await replay(infra.bootstrap, topic, mongo_db)
        assert report.events_applied == len(events) and report.undecodable == 0 and report.seconds > 0
        assert sum(report.end_offsets.values()) == len(events)
        assert report.collections != CollectionNames() and report.previous == CollectionNames()
        assert await active_collections(mongo_db) == report.collections
        assert await dump(mongo_db, report.collections) == live

        # Events after the switch land in the new collections.
        late = TaskHistory("delta", "acme")
        late.created()
        await produce(infra.bootstrap, topic, as_messages(late.events))

        async def late_applied() -> bool:
            return await mongo_db[report.collections.tasks].find_one({"_id": "delta"}) is not None

        await eventually(late_applied, what="the live projector writing to the replayed views")
    stats = await tenant_stats(mongo_db, "acme")
    assert stats["tasks"]["active"] == 1


async def test_switch_after_the_projector_moved_past_the_replay_end_leaves_no_gap(
    infra: Infra, names: Names, mongo_db: Db, topic: str
) -> None:
    hs = histories()
    first = [e for h in hs for e in h.events[:12]]
    rest = [e for h in hs for e in h.events[12:]]
    await produce(infra.bootstrap, topic, as_messages(first))
    async with running(Projector(infra.bootstrap, topic, names.topic("projector"), mongo_db)):

        async def audited(n: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return await mongo_db["audit"].count_documents({}) == n

            return check

        await eventually(await audited(len(first)), what="the first events")
        report = await replay(infra.bootstrap, topic, mongo_db, switch=False)
        assert report.events_applied == len(first)
        # The live projector moves on into the old collections before the switch...
        await produce(infra.bootstrap, topic, as_messages(rest))
        await eventually(await audited(len(first) + len(rest)), what="the rest in the old views")
        # ... so after the switch it must go back to the replay's end offsets for the new ones.
        await switch_collections(mongo_db, report.collections, report.generation, report.end_offsets)

        async def new_views_complete() -> bool:
            return await mongo_db[report.collections.audit].count_documents({}) == len(first) + len(rest)

        await eventually(new_views_complete, what="the events after the replay end in the new views")
        # audit is written last in a batch, so every other view is complete too.
        assert await dump(mongo_db, report.collections) == await dump(mongo_db, CollectionNames())


async def test_an_event_the_server_refuses_is_dead_lettered_and_the_views_go_on(
    infra: Infra, names: Names, mongo_db: Db, topic: str
) -> None:
    alpha = full_history("alpha", "acme").events
    created = full_history("delta", "acme").events[0]
    assert created.type == "TaskCreated"
    # Keys with a dot cannot be stored by FerretDB (the API refuses them; another producer may not).
    unstorable = created.model_copy(update={"definition": created.definition.model_copy(update={"params": {"a.b": 1}})})
    await produce(infra.bootstrap, topic, as_messages([unstorable, *alpha]))
    projector = Projector(infra.bootstrap, topic, names.topic("projector"), mongo_db, status_interval=0.2,
                          retry_initial=0.05)  # fmt: skip
    async with running(projector):

        async def alpha_applied() -> bool:
            doc = await mongo_db["tasks"].find_one({"_id": "alpha"})
            return doc is not None and doc["version"] == len(alpha)

        await eventually(alpha_applied, what="alpha's history in the views", within=60)
    assert projector.dead_letters_total == 1
    body = await first_dead_letter(infra, names)
    assert body["source_topic"] == topic and orjson.loads(body["payload"])["id"] == unstorable.event_id


async def test_projector_rides_out_failures_reading_the_live_views(
    infra: Infra, names: Names, mongo_db: Db, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alias lookup of every batch failing (the server going away) neither stops the
    projector at start nor later: it retries, or goes on with the views it knows."""
    from pymongo.errors import AutoReconnect

    from projections import projector as projector_module

    real = projector_module.active_views
    calls = 0

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls <= 2 or calls % 3 == 0:  # fails before any views are known, then every third time
            raise AutoReconnect("connection closed")
        return await real(*args, **kwargs)

    monkeypatch.setattr(projector_module, "active_views", flaky)
    h = full_history("alpha", "acme")
    await produce(infra.bootstrap, topic, as_messages(h.events))
    projector = Projector(infra.bootstrap, topic, names.topic("projector"), mongo_db, retry_initial=0.05, max_records=5)
    async with running(projector):

        async def applied() -> bool:
            return await mongo_db["audit"].count_documents({}) == len(h.events)

        await eventually(applied, what="every event applied despite failing alias lookups")
    assert calls > 6


async def test_a_rebalance_between_two_projectors_neither_loses_nor_doubles_an_update(
    infra: Infra, names: Names, mongo_db: Db, topic: str
) -> None:
    """A second projector joins while events flow (partitions move to it mid-stream), then
    leaves (they move back to the first, which must not trust what it held for them before):
    the views equal a replay of the topic, statistics included, so no event was lost or
    applied twice by the two owners."""
    hs = [full_history(f"task-{i}", "acme" if i % 2 else "globex") for i in range(12)]
    thirds = [
        [e for h in hs for e in h.events[k * len(h.events) // 3 : (k + 1) * len(h.events) // 3]] for k in range(3)
    ]
    total = sum(len(t) for t in thirds)
    group = names.topic("projector")
    a = Projector(infra.bootstrap, topic, group, mongo_db, max_records=7)
    b = Projector(infra.bootstrap, topic, group, mongo_db, max_records=7)

    def applied(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await mongo_db["audit"].count_documents({}) == n

        return check

    await produce(infra.bootstrap, topic, as_messages(thirds[0]))
    async with running(a):
        await eventually(applied(len(thirds[0])), what="the first third")
        async with running(b):

            async def b_owns_some() -> bool:
                return bool(b._owned) and len(a._owned) < 4

            await eventually(b_owns_some, what="b taking partitions over")
            await produce(infra.bootstrap, topic, as_messages(thirds[1]))
            await eventually(applied(len(thirds[0]) + len(thirds[1])), what="the second third", within=60)
            await produce(infra.bootstrap, topic, as_messages(thirds[2]))
        # b left while the last third was coming: a owns every partition again.
        await eventually(applied(total), what="everything", within=60)
        await asyncio.sleep(1.0)  # the last batch's other views
    assert b.applied_total > 0
    report = await replay(infra.bootstrap, topic, mongo_db, switch=False)
    assert report.events_applied == total
    assert await dump(mongo_db, report.collections) == await dump(mongo_db, CollectionNames())
