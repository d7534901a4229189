"""Rebuild every view from offset zero into fresh collections, then switch readers to them.

The replay captures the end offsets of every partition first, reads each partition (manual
assignment, no consumer group) from the beginning up to those offsets, applies the events with
the same code as the live projector into collections named with a fresh suffix, creates their
indexes, and finally records them as the live views in ``view_aliases``. A running projector
notices the new generation and continues from the replay's end offsets into the new
collections. The old collections are kept (``drop_old=True`` drops them) for a rollback.

The events are folded in memory in batches (:class:`projections.store.ViewStore` on fresh
collections: a document is read back only if it was dropped from memory for room) and each
touched document is written once per batch. Progress (events read, rate, time left) goes to an
``on_progress`` callback, which a CLI can drive.

Run it as ``python -m projections.replay`` (settings from ``SCHED_*``, see
:class:`projections.settings.ProjectionSettings`); it prints the progress as it goes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from projections.projector import ensure_indexes
from projections.read import CollectionNames, active_views, switch_collections
from projections.retention import DEFAULT_RETENTION, setup_retention
from projections.store import Positioned, ViewStore, probe
from schemas.envelope import decode_event
from schemas.errors import DecodeError

log = logging.getLogger(__name__)


class ReplayError(Exception):
    """The replay could not read the topic up to the captured end offsets."""


@dataclass(frozen=True)
class ReplayProgress:
    """How far a replay is: what :func:`replay` passes to its ``on_progress`` callback."""

    events_read: int
    """Messages read so far (applied or undecodable)."""
    events_total: int
    """Messages to read in all (from the partitions' start to the captured end offsets)."""
    seconds: float
    """Since the replay started reading."""
    done: bool = False
    """The last call: everything is read and written."""

    @property
    def rate(self) -> float:
        """Messages read per second so far."""
        return self.events_read / self.seconds if self.seconds > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        """Estimated time left at the rate so far (None before any rate is known)."""
        rate = self.rate
        return None if rate <= 0 else max(0.0, (self.events_total - self.events_read) / rate)

    def __str__(self) -> str:
        left = self.seconds_left
        eta = "?" if left is None else f"{left:.0f}s"
        share = 100.0 * self.events_read / self.events_total if self.events_total else 100.0
        return (
            f"{self.events_read}/{self.events_total} events ({share:.1f}%) in {self.seconds:.1f}s, "
            f"{self.rate:.0f}/s, {eta} left"
        )


ProgressCallback = Callable[[ReplayProgress], None]
"""Called with the progress every ``progress_interval`` seconds and once at the end."""


@dataclass(frozen=True)
class ReplayReport:
    """What a replay did."""

    generation: str
    collections: CollectionNames
    previous: CollectionNames
    events_applied: int
    undecodable: int
    """Messages skipped because they do not decode (the live projector dead-letters them)."""
    end_offsets: dict[int, int]
    seconds: float
    switched: bool
    reads: int = 0
    """Documents read back from the server (dropped from memory for room, then touched again)."""
    writes: int = 0
    """Documents written (each touched document once per batch)."""
    store_seconds: dict[str, float] | None = None
    """Seconds spent reading documents, folding and writing (the rest is reading the topic)."""

    @property
    def rate(self) -> float:
        """Events applied per second, over the whole replay."""
        return self.events_applied / self.seconds if self.seconds > 0 else 0.0


async def replay(
    bootstrap: str,
    topic: str,
    db: AsyncDatabase[Any],
    *,
    base: CollectionNames | None = None,
    generation: str | None = None,
    batch_size: int = 2000,
    switch: bool = True,
    drop_old: bool = False,
    retention: timedelta = DEFAULT_RETENTION,
    idle_timeout: float = 30.0,
    on_progress: ProgressCallback | None = None,
    progress_interval: float = 2.0,
    cache_limit: int = 50_000,
) -> ReplayReport:
    """Rebuild the views from the whole topic into fresh collections and (by default) switch to them.

    ``base`` are the plain view names the fresh ones are derived from (a suffix ``_r<generation>``
    is added). With ``switch=False`` the collections are built but readers keep the old ones.
    ``on_progress`` is called every ``progress_interval`` seconds and once when done;
    ``cache_limit`` bounds the documents per view held in memory.

    :raises ReplayError: a partition stopped advancing before its captured end offset.
    """
    started = time.monotonic()
    generation = generation or datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + uuid.uuid4().hex[:6]
    names = (base or CollectionNames()).with_suffix(f"_r{generation}")
    previous = (await active_views(db, base)).collections
    await ensure_indexes(db, names)
    await setup_retention(db, names, retention)
    store = ViewStore(db, names, await probe(db), fresh=True, cache_limit=cache_limit)

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    applied = undecodable = 0
    try:
        partitions = await _partitions(bootstrap, topic)
        consumer.assign(partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if ends[tp] > starts[tp]}
        total = sum(ends[tp] - starts[tp] for tp in partitions)
        read = 0
        reading_since = idle_since = last_report = time.monotonic()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=batch_size)
            items: list[Positioned] = []
            for tp in sorted(batch, key=lambda t: t.partition):
                for record in batch[tp]:
                    if record.offset >= ends[tp]:
                        continue  # appended after the replay started: the live projector's job
                    read += 1
                    try:
                        event = decode_event(record.value or b"")
                    except DecodeError:
                        undecodable += 1
                        continue
                    items.append(Positioned(event, tp.partition, record.offset))
            if items:
                await store.apply(items)
                applied += len(items)
            if on_progress is not None and time.monotonic() - last_report >= progress_interval:
                last_report = time.monotonic()
                on_progress(ReplayProgress(read, total, last_report - reading_since))
            progressed = bool(batch)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
                    consumer.pause(tp)
            if progressed:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > idle_timeout:
                raise ReplayError(f"partitions {sorted(tp.partition for tp in remaining)} stopped short of their end")
    finally:
        await consumer.stop()
    if on_progress is not None:
        on_progress(ReplayProgress(read, total, time.monotonic() - reading_since, done=True))

    end_offsets = {tp.partition: offset for tp, offset in ends.items()}
    if switch:
        await switch_collections(db, names, generation, end_offsets)
        if drop_old and previous != names:
            for name in previous.as_dict().values():
                await db.drop_collection(name)
    report = ReplayReport(
        generation=generation,
        collections=names,
        previous=previous,
        events_applied=applied,
        undecodable=undecodable,
        end_offsets=end_offsets,
        seconds=time.monotonic() - started,
        switched=switch,
        reads=store.reads,
        writes=store.writes,
        store_seconds=dict(store.seconds),
    )
    log.info(
        "replay %s: %d events applied (%d undecodable skipped) in %.2fs into %s",
        generation,
        applied,
        undecodable,
        report.seconds,
        names,
    )
    return report


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code") or not described.get("partitions"):
        raise ReplayError(f"topic {topic!r} not found")
    return [
        TopicPartition(topic, p["partition"]) for p in sorted(described["partitions"], key=lambda p: p["partition"])
    ]


async def _main() -> None:
    from projections.settings import ProjectionSettings

    settings = ProjectionSettings()
    logging.basicConfig(level=settings.log_level.upper())
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url, tz_aware=True)
    try:
        report = await replay(
            settings.kafka_bootstrap,
            settings.events_topic,
            client[settings.mongo_database],
            retention=timedelta(days=settings.retention_days),
            on_progress=lambda progress: print(f"replay: {progress}", flush=True),
        )
    finally:
        await client.close()
    print(
        f"replayed {report.events_applied} events in {report.seconds:.2f}s ({report.rate:.0f}/s) "
        f"({report.undecodable} undecodable skipped) into {report.collections.as_dict()}; "
        f"generation {report.generation} is live"
    )


if __name__ == "__main__":
    asyncio.run(_main())
