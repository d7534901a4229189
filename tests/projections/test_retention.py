"""Retention: FerretDB has no working TTL index, so the sweeper deletes old finished executions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from projections.read import CollectionNames
from projections.retention import RetentionSweeper, setup_retention
from projections.store import apply_events, probe
from tests.projections.history import T0, TaskHistory, positioned

Db = AsyncDatabase[dict[str, Any]]
NAMES = CollectionNames()


async def test_sweeper_deletes_only_executions_finished_before_the_retention(mongo_db: Db) -> None:
    h = TaskHistory("old-and-new")
    h.created()
    old, _ = h.dispatched(T0 + timedelta(minutes=1))
    h.finished(old, "succeeded", 10)
    h.missed(T0 + timedelta(minutes=2))  # a skipped record, finished when recorded
    h.now += timedelta(days=60)
    recent, _ = h.dispatched(T0 + timedelta(days=60))
    h.finished(recent, "failed", 10)
    running, _ = h.dispatched(T0 + timedelta(days=60, minutes=1))
    await apply_events(mongo_db, NAMES, positioned(h.events))
    assert await mongo_db["executions"].count_documents({}) == 4

    sweeper = RetentionSweeper(mongo_db, timedelta(days=90))
    deleted = await sweeper.sweep(now=T0 + timedelta(days=100))
    assert deleted == 2
    remaining = {d["_id"] for d in await mongo_db["executions"].find({}, {"_id": 1}).to_list()}
    assert remaining == {recent, running}
    assert await sweeper.sweep(now=T0 + timedelta(days=100)) == 0
    # Nothing else is touched.
    assert await mongo_db["tasks"].count_documents({}) == 1
    assert await mongo_db["audit"].count_documents({}) == len(h.events)


async def test_ferretdb_gets_a_sweeper_instead_of_a_ttl_index(mongo_db: Db) -> None:
    assert not (await probe(mongo_db)).ttl_indexes
    await mongo_db["executions"].insert_one({"_id": "x"})
    sweeper = await setup_retention(mongo_db, NAMES, timedelta(days=7))
    assert isinstance(sweeper, RetentionSweeper) and sweeper.retention == timedelta(days=7)
    indexes = await mongo_db["executions"].index_information()
    assert not any("expireAfterSeconds" in spec for spec in indexes.values())
