"""The projector's document writes done straight with pymongo: what the view store alone allows.

Used by ``tests.bench.throughput --straight`` after its drain, on the same server and in the
same run: the events of the run's ``task-events`` are read back in batches as the projector
reads them (``getmany``, ``--straight-batch`` records), folded in memory with the projector's
own pure folds (:func:`projections.folds.fold`), and the documents each batch changes are then
written as the view store writes them: inserted when new, else replaced by ``_id``, audit and
occurrences inserted, in unordered bulks of at most 50, views in the store's order. Nothing else
runs in between (no Kafka, no reads, no fold), so the time is the server's for the same
documents: when the projector's visible rate is near it, the server is the limit. The same
writes with the new documents upserted (as the store wrote them before it inserted them) are
timed first, into other collections: what inserting saves.

The tasks' creations are written first, untimed: the drain is what is measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo import AsyncMongoClient, ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase

from projections.folds import Doc, ViewDocs, fold, touched
from projections.projector import ensure_indexes
from projections.read import CollectionNames
from projections.store import MAX_OPS_PER_WRITE
from schemas.envelope import decode_event
from schemas.events import Event, TaskCreated

Batch = list[tuple[Event, int, int]]


@dataclass
class Straight:
    """Documents written straight, and how long the server took (drain only)."""

    events: int = 0
    batches: int = 0
    seconds: float = 0.0
    """Time spent in the writes of the drain's batches."""
    documents: dict[str, int] = field(default_factory=dict)
    """Per ``<view> <insert|replace>``, documents written in the drain."""
    per_kind: dict[str, float] = field(default_factory=dict)
    """Per ``<view> <insert|replace>``, seconds spent writing them."""
    upserted_seconds: float = 0.0
    """The same writes with new documents upserted (``ReplaceOne``), as before the store inserted them."""
    upserted_per_kind: dict[str, float] = field(default_factory=dict)
    """Per ``<view> <insert|replace>`` (``insert``: upserted), seconds of those writes."""

    def table(self, fires: int) -> str:
        total = sum(self.documents.values())
        per_doc = self.seconds / total * 1000 if total else float("nan")
        upserted = ", ".join(
            f"{k} {self.upserted_per_kind[k] / v * 1000:.2f} ms"
            for k, v in sorted(self.documents.items())
            if k.endswith("insert") and k in self.upserted_per_kind
        )
        counts = ", ".join(
            f"{k} {v} in {self.per_kind.get(k, 0.0):.1f}s ({self.per_kind.get(k, 0.0) / v * 1000:.2f} ms)"
            for k, v in sorted(self.documents.items())
        )
        return (
            f"  straight: the drain's {total} documents ({self.events} events, {self.batches} batches) written "
            f"with pymongo in {self.seconds:.1f}s = {fires / self.seconds:.0f} fires/s, "
            f"{per_doc:.2f} ms a document\n            ({counts});\n"
            f"            new documents upserted instead, as before: {self.upserted_seconds:.1f}s = "
            f"{fires / self.upserted_seconds:.0f} fires/s ({upserted})"
        )


async def read_events(bootstrap: str, topic: str, batch: int, partitions_count: int) -> list[Batch]:
    """Every event of ``topic`` from the start, in the batches ``getmany`` gives."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(partitions_count)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        batches: list[Batch] = []
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            got = await consumer.getmany(timeout_ms=1000, max_records=batch)
            events: Batch = [
                (decode_event(r.value or b""), tp.partition, r.offset) for tp, records in got.items() for r in records
            ]
            if events:
                batches.append(events)
        return batches
    finally:
        await consumer.stop()


class _Writes:
    """The writes of the folded batches, as the view store sends them."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self.db = db
        self.state: dict[str, dict[str, Doc]] = {"tasks": {}, "executions": {}, "stats": {}}
        self.plan: list[list[tuple[str, str, list[Doc]]]] = []

    def add(self, events: Batch) -> None:
        """Fold a batch and plan its writes: ``(view, insert|replace, documents)`` in store order."""
        keys = touched(events)
        before = ViewDocs(
            tasks={k: self.state["tasks"].get(k) for k in keys.tasks},
            executions={k: self.state["executions"].get(k) for k in keys.executions},
            stats={k: self.state["stats"].get(k) for k in keys.stats},
        )
        folded = fold(before, events)
        writes: list[tuple[str, str, list[Doc]]] = []
        for view in ("stats", "executions", "occurrences", "tasks", "audit"):
            if view == "occurrences":
                writes.append((view, "insert", folded.occurrences.inserts))
                continue
            if view == "audit":
                writes.append((view, "insert", folded.audit))
                continue
            docs: dict[str, Doc] = getattr(folded, view)
            held: dict[str, Doc | None] = getattr(before, view)
            writes.append((view, "insert", [d for k, d in docs.items() if held.get(k) is None]))
            writes.append((view, "replace", [d for k, d in docs.items() if held.get(k) is not None]))
            self.state[view].update(docs)
        self.plan.append([w for w in writes if w[2]])

    async def run(
        self,
        names: CollectionNames,
        counts: dict[str, int] | None = None,
        seconds: dict[str, float] | None = None,
        *,
        upsert_new: bool = False,
    ) -> float:
        """Send the planned writes to ``names``; returns the seconds they took (adds documents
        and seconds per ``<view> <insert|replace>`` to ``counts`` and ``seconds``).

        ``upsert_new``: new tasks, executions and statistics as the store wrote them before it
        inserted them (``ReplaceOne``, upsert), for the comparison.
        """
        started = time.perf_counter()
        for writes in self.plan:
            for view, how, docs in writes:
                mark = time.perf_counter()
                collection = self.db[getattr(names, view)]
                upsert = upsert_new and view in ("tasks", "executions", "stats")
                for start in range(0, len(docs), MAX_OPS_PER_WRITE):
                    chunk = docs[start : start + MAX_OPS_PER_WRITE]
                    if how == "insert" and not upsert:
                        await collection.insert_many(chunk, ordered=False)
                    else:
                        ops = [ReplaceOne({"_id": d["_id"]}, d, upsert=upsert) for d in chunk]
                        await collection.bulk_write(ops, ordered=False)
                if counts is not None:
                    counts[f"{view} {how}"] = counts.get(f"{view} {how}", 0) + len(docs)
                if seconds is not None:
                    took = time.perf_counter() - mark
                    seconds[f"{view} {how}"] = seconds.get(f"{view} {how}", 0.0) + took
        return time.perf_counter() - started


async def straight(
    bootstrap: str, mongo_url: str, prefix: str, database: str, batch: int = 1000, partitions: int = 8
) -> Straight:
    """Write the documents the projector wrote for the events of ``<prefix>.task-events`` into
    fresh ``*_straight`` collections of ``database``, timing the drain (everything but creations);
    and the same with new documents upserted, into ``*_upserted``, first."""
    batches = await read_events(bootstrap, f"{prefix}.task-events", batch, partitions)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        db = mongo[database]
        setup, drain = _Writes(db), _Writes(db)
        result = Straight()
        for events in batches:
            created = [e for e in events if isinstance(e[0], TaskCreated)]
            rest = [e for e in events if not isinstance(e[0], TaskCreated)]
            if created:
                setup.add(created)
            if rest:
                drain.state = setup.state  # the drain folds on top of the created tasks
                drain.add(rest)
                result.events += len(rest)
                result.batches += 1
        # As before inserts (the same documents, new ones upserted), then as the store writes now.
        before, now = CollectionNames().with_suffix("_upserted"), CollectionNames().with_suffix("_straight")
        for names in (before, now):
            await ensure_indexes(db, names)  # the projector's read indexes cost every write
            await setup.run(names)
        result.upserted_seconds = await drain.run(before, None, result.upserted_per_kind, upsert_new=True)
        result.seconds = await drain.run(now, result.documents, result.per_kind)
        return result
    finally:
        await mongo.close()
