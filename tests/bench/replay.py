"""Replay: rebuilding every view from the topic, with its time, rate and memory.

    .venv/bin/python -m tests.bench.replay --events 1000000

Uses the running local stack (or SCHED_KAFKA_BOOTSTRAP / SCHED_MONGO_URL). Produces
``--events`` synthetic but realistic events to a fresh 8-partition topic (``--tasks`` tasks
created, then round after round of executions over all of them: dispatched, started for one
in two, completed, with a failed attempt and a retry now and then and a pause and resume
here and there), then replays the topic into fresh collections of a fresh database with
:func:`projections.replay.replay`, as ``python -m projections.replay`` does. Reports the
replay's time, rate, documents read back and written, and the peak resident memory of this
process during the replay (sampled); the database and the topic are removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import AsyncMongoClient

from projections.replay import ReplayProgress, replay
from schemas.events import Event
from tests.bench.common import rss_mb, run_and_print
from tests.projections.history import T0, TaskHistory, definition, envelope_bytes


@dataclass
class Result:
    events: int
    tasks: int
    produce_s: float
    replay_s: float
    applied: int
    reads: int
    writes: int
    rss_before_mb: float
    rss_peak_mb: float
    views: dict[str, int]
    store_seconds: dict[str, float]
    raw_docs: int = 0
    raw_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.applied / self.replay_s if self.replay_s > 0 else 0.0

    def table(self) -> str:
        docs = ", ".join(f"{name} {n}" for name, n in self.views.items())
        return "\n".join(
            [
                f"replay: {self.applied}/{self.events} events of {self.tasks} tasks in {self.replay_s:.1f}s "
                f"= {self.rate:.0f} events/s",
                f"  produced in {self.produce_s:.1f}s; documents read back {self.reads}, written {self.writes}",
                "  time in the store: "
                + ", ".join(f"{k} {v:.1f}s" for k, v in self.store_seconds.items())
                + f" ({1000 * self.store_seconds.get('write', 0.0) / max(1, self.writes):.2f} ms a document written)",
                f"  the same documents written straight with pymongo (bulks of 50, by _id): {self.raw_docs} in "
                f"{self.raw_s:.1f}s ({1000 * self.raw_s / max(1, self.raw_docs):.2f} ms a document)",
                f"  memory: {self.rss_before_mb:.0f} MB before, {self.rss_peak_mb:.0f} MB peak during the replay",
                f"  views: {docs}",
            ]
        )


def synthetic(events: int, tasks: int) -> Iterator[Event]:
    """``events`` events of ``tasks`` tasks, interleaved as concurrent traffic would be."""
    histories = [
        TaskHistory(f"bench/t{i}", tenant=f"tenant{i % 7}", definition=definition(kind="http" if i % 3 else "handler"))
        for i in range(tasks)
    ]
    produced = 0
    for h in histories:
        yield h.created()
        produced += 1
    round_ = 0
    while produced < events:
        round_ += 1
        for i, h in enumerate(histories):
            slot = T0 + timedelta(minutes=round_)
            ex_id, dispatched = h.dispatched(slot, next_slot=slot + timedelta(minutes=1))
            batch: list[Event] = [dispatched]
            if (i + round_) % 2:
                batch.append(h.started(ex_id))
            if (i + round_) % 17 == 0:
                batch.append(h.attempt_failed(ex_id))
                batch.append(h.dispatched(slot, attempt=2, reason="retry")[1])
            batch.append(h.finished(ex_id, status="failed" if (i + round_) % 23 == 0 else "succeeded"))
            if (i + round_) % 41 == 0:
                batch += [h.paused(), h.resumed()]
            h.events.clear()
            for event in batch:
                if produced >= events:
                    return
                yield event
                produced += 1


async def produce(bootstrap: str, topic: str, events: int, tasks: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 8, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        pending: list[asyncio.Future[Any]] = []
        for event in synthetic(events, tasks):
            pending.append(await producer.send(topic, key=event.task_id.encode(), value=envelope_bytes(event)))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def write_straight(db: Any, collections: dict[str, str]) -> tuple[int, float]:
    """Write the replayed documents again, straight with pymongo, into scratch collections:
    the server's own cost for the same documents (audit inserted, the rest replaced by ``_id``)."""
    from pymongo import InsertOne, ReplaceOne

    docs = {name: await db[coll].find({}).to_list() for name, coll in collections.items()}
    started = time.monotonic()
    for name, found in docs.items():
        ops: list[Any] = [
            InsertOne(d) if name == "audit" else ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in found
        ]
        for i in range(0, len(ops), 50):
            await db[f"raw_{name}"].bulk_write(ops[i : i + 50], ordered=False)
    return sum(len(found) for found in docs.values()), time.monotonic() - started


async def run(bootstrap: str, mongo_url: str, events: int, tasks: int, quiet: bool = False) -> Result:
    """Produce, replay into a fresh database, measure, clean up."""
    topic = f"replaybench{uuid.uuid4().hex[:8]}.task-events"
    database = f"replaybench{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    await produce(bootstrap, topic, events, tasks)
    produce_s = time.monotonic() - started
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    pid = os.getpid()
    before = peak = rss_mb(pid)
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.2)

    def show(progress: ReplayProgress) -> None:
        if not quiet:
            print(f"replay: {progress}, {rss_mb(pid):.0f} MB", flush=True)

    sampler = asyncio.create_task(sample())
    try:
        db = client[database]
        report = await replay(bootstrap, topic, db, on_progress=show, progress_interval=5.0)
        stop.set()
        await sampler
        views = {name: await db[coll].count_documents({}) for name, coll in report.collections.as_dict().items()}
        raw_docs, raw_s = await write_straight(db, report.collections.as_dict())
        return Result(
            events, tasks, produce_s, report.seconds, report.events_applied, report.reads, report.writes,
            before, peak, views, report.store_seconds or {}, raw_docs, raw_s,
        )  # fmt: skip
    finally:
        stop.set()
        await client.drop_database(database)
        await client.close()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=5_000)
    args = parser.parse_args()
    return run_and_print(lambda bootstrap, mongo: run(bootstrap, mongo, args.events, args.tasks))


if __name__ == "__main__":
    sys.exit(main())
