"""The stack is real: transactions on the broker, documents and indexes on the server."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from tests.conftest import Infra, Names


async def _create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def _read_all(bootstrap: str, topic: str, group: str, expect: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: list[tuple[bytes, bytes]] = []
    try:
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=500)
            seen += [(m.key, m.value) for msgs in batch.values() for m in msgs]  # type: ignore[misc]
            if len(seen) >= expect:
                # One more poll proves nothing extra (an aborted write) shows up late.
                batch = await consumer.getmany(timeout_ms=500)
                seen += [(m.key, m.value) for msgs in batch.values() for m in msgs]  # type: ignore[misc]
                break
    finally:
        await consumer.stop()
    return seen


async def test_transactional_produce_and_consume(infra: Infra, names: Names) -> None:
    topic = names.topic("smoke")
    await _create_topic(infra.bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap, transactional_id=names.prefix)
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(10):
                await producer.send(topic, key=f"k{i}".encode(), value=f"committed-{i}".encode())
        # An aborted transaction must stay invisible to read_committed consumers.
        await producer.begin_transaction()
        await producer.send(topic, key=b"k-aborted", value=b"aborted")
        await producer.abort_transaction()
    finally:
        await producer.stop()

    seen = await _read_all(infra.bootstrap, topic, names.prefix, expect=10)
    assert sorted(v for _, v in seen) == sorted(f"committed-{i}".encode() for i in range(10))


async def test_documents_and_indexes(mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    tasks = mongo_db["tasks"]
    await tasks.create_index([("tenant", ASCENDING), ("status", ASCENDING)], name="tenant_status")
    await tasks.create_index([("created_at", DESCENDING)], name="created_desc")
    await tasks.insert_many([{"_id": f"t{i}", "tenant": "a" if i % 2 else "b", "status": "active",
                              "created_at": i} for i in range(6)])  # fmt: skip

    # A sequence-guarded upsert: the stale write (seq 1 after seq 2) must change nothing.
    await tasks.update_one({"_id": "t0", "seq": {"$exists": False}}, {"$set": {"seq": 2, "x": "new"}})
    stale = await tasks.update_one({"_id": "t0", "seq": {"$lt": 1}}, {"$set": {"seq": 1, "x": "old"}})
    assert stale.matched_count == 0

    found = [d["_id"] async for d in tasks.find({"tenant": "a", "status": "active"}).sort("created_at", -1)]
    assert found == ["t5", "t3", "t1"]
    assert (await tasks.find_one({"_id": "t0"}) or {})["x"] == "new"
    index_names = {ix["name"] async for ix in await tasks.list_indexes()}
    assert {"tenant_status", "created_desc"} <= index_names
