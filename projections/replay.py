"""Rebuild every view from offset zero into fresh collections, then switch readers to them.

The replay captures the end offsets of every partition first, reads each partition (manual
assignment, no consumer group) from the beginning up to those offsets, applies the events with
the same code as the live projector into collections named with a fresh suffix, creates their
indexes, and finally records them as the live views in ``view_aliases``. A running projector
notices the new generation and continues from the replay's end offsets into the new
collections. The old collections are kept (``drop_old=True`` drops them) for a rollback.

Run it as ``python -m projections.replay`` (settings from ``SCHED_*``, see
:class:`projections.settings.ProjectionSettings`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from projections.apply import Positioned, apply_events
from projections.projector import ensure_indexes
from projections.read import CollectionNames, active_views, switch_collections
from projections.retention import DEFAULT_RETENTION, setup_retention
from schemas.envelope import decode_event
from schemas.errors import DecodeError

log = logging.getLogger(__name__)


class ReplayError(Exception):
    """The replay could not read the topic up to the captured end offsets."""


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
) -> ReplayReport:
    """Rebuild the views from the whole topic into fresh collections and (by default) switch to them.

    ``base`` are the plain view names the fresh ones are derived from (a suffix ``_r<generation>``
    is added). With ``switch=False`` the collections are built but readers keep the old ones.

    :raises ReplayError: a partition stopped advancing before its captured end offset.
    """
    started = time.monotonic()
    generation = generation or datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + uuid.uuid4().hex[:6]
    names = (base or CollectionNames()).with_suffix(f"_r{generation}")
    previous = (await active_views(db, base)).collections
    await ensure_indexes(db, names)
    await setup_retention(db, names, retention)

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
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        idle_since = time.monotonic()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=batch_size)
            items: list[Positioned] = []
            for tp in sorted(batch, key=lambda t: t.partition):
                for record in batch[tp]:
                    if record.offset >= ends[tp]:
                        continue  # appended after the replay started: the live projector's job
                    try:
                        event = decode_event(record.value or b"")
                    except DecodeError:
                        undecodable += 1
                        continue
                    items.append(Positioned(event, tp.partition, record.offset))
            if items:
                await apply_events(db, names, items)
                applied += len(items)
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
        )
    finally:
        await client.close()
    print(
        f"replayed {report.events_applied} events in {report.seconds:.2f}s "
        f"({report.undecodable} undecodable skipped) into {report.collections.as_dict()}; "
        f"generation {report.generation} is live"
    )


if __name__ == "__main__":
    asyncio.run(_main())
