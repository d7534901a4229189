"""The live projector: a Kafka consumer group on ``task-events`` that keeps the views up to date.

Per batch (``getmany``, up to ``max_records``): decode, fold every event into the documents it
touches and write each of them once (see :mod:`projections.store`), send undecodable messages
to the dead-letter topic, record how far it got in ``projection_offsets``, then commit the
Kafka offsets. Errors of the view store are retried with backoff (tenacity) and nothing is
committed past an event that is not applied, so after a crash the events since the last
commit come again and the folds' guards make them no-ops.

The projector holds the documents it wrote for the partitions it owns (the guard on FerretDB,
see :mod:`projections.store`): it forgets them when partitions are revoked or assigned, and a
revocation waits for the batch being written, so the next owner never reads a document this
process is about to overwrite.

After a replay switched the views to fresh collections (a new *generation*), the projector
writes to the new collections and seeks back to the offsets the replay read up to, so the
events it had applied to the old collections meanwhile are applied to the new ones too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from bson.errors import InvalidDocument
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    ConnectionFailure,
    ExecutionTimeout,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from projections.read import ActiveViews, CollectionNames, active_collections, active_views
from projections.store import Positioned, ViewStore, probe
from schemas.envelope import decode_event
from schemas.errors import DecodeError
from streams.connections import track_topics
from streams.deadletter import dead_letter_value

log = logging.getLogger(__name__)

STATUS_COLLECTION = "projection_status"
"""One document per consumer group: lag and progress, for dashboards and readiness checks."""
PROGRESS_COLLECTION = "projection_offsets"
"""One document per (consumer group, view generation): the next offset per partition."""


REFUSALS = 3
"""Times the server must refuse an event, applied alone, before it is dead-lettered."""


def _refused(exc: BaseException) -> bool:
    """Whether the server answered and refused the write (retrying the same will not help), as
    opposed to being unreachable, failing over or timing out."""
    if isinstance(exc, ConnectionFailure | ServerSelectionTimeoutError | ExecutionTimeout | WTimeoutError):
        return False
    # pymongo raises KeyError on FerretDB's answer to some refused bulk writes (no nModified).
    return isinstance(exc, PyMongoError | InvalidDocument | KeyError | ValueError | OverflowError)


def _unreachable(exc: BaseException) -> bool:
    """A view store error worth retrying as it is: the server did not answer (or failed over)."""
    return isinstance(exc, PyMongoError) and not _refused(exc)


def _log_retry(what: str) -> Any:
    def log_it(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("projector: %s failed (%s); retrying in %.1fs", what, exc, wait)

    return log_it


@dataclass(frozen=True)
class Lag:
    """How far the projector is behind the topic (over the partitions it owns)."""

    events_behind: int
    """Sum over owned partitions of end offset minus position."""
    seconds_behind: float | None
    """0 when caught up; else now minus the Kafka timestamp of the last applied event (None if
    nothing was applied yet by this process)."""
    last_event_at: datetime | None
    partitions: dict[int, int] = field(default_factory=dict)
    """Events behind, per owned partition."""


class Projector:
    """Consumes ``topic`` in consumer group ``group_id`` and writes the views into ``db``.

    ``collections`` are the view names used until a replay switches to others (then the names
    in ``view_aliases`` win). The dead-letter topic defaults to the topic's name with
    ``task-events`` replaced by ``dead-letter``. ``cache_documents`` bounds the documents per view
    held in memory for the owned partitions.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        db: AsyncDatabase[Any],
        collections: CollectionNames | None = None,
        *,
        dead_letter_topic: str | None = None,
        max_records: int = 500,
        poll_timeout: float = 0.5,
        status_interval: float = 5.0,
        retry_initial: float = 0.2,
        retry_max: float = 30.0,
        cache_documents: int = 20_000,
        kafka: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.db = db
        self.collections = collections or CollectionNames()
        self.dead_letter_topic = dead_letter_topic or _dead_letter_topic_for(topic)
        self.max_records = max_records
        self.poll_timeout = poll_timeout
        self.status_interval = status_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.cache_documents = cache_documents
        self.applied_total = 0
        self.dead_letters_total = 0
        # ``kafka``: the security options of the clients (streams.connections.kafka_options).
        clients: dict[str, Any] = {**(kafka or {}), "bootstrap_servers": bootstrap}
        self._consumer = AIOKafkaConsumer(
            **clients,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Events of an aborted transaction never happened.
            isolation_level="read_committed",
        )
        self._producer = AIOKafkaProducer(**clients, acks="all")
        self._views: ActiveViews | None = None
        self._store: ViewStore | None = None
        # Partitions owned now; a batch is written under the lock, and a revocation takes it.
        self._owned: set[int] = set()
        self._lock = asyncio.Lock()
        self._revoking = False
        # Per partition, the highest offset any projector may have written (None: unknown);
        # shared with every store (see ViewStore.high_water), recorded before each write.
        self._high_water: dict[int, int | None] = {}
        self._unknown_until: dict[int, int] = {}
        # Per partition, the offset the next applied batch must start at or before (after a seek).
        self._required: dict[int, int] = {}
        self._last_event_at: datetime | None = None
        self._status_written = 0.0
        self._stopping = asyncio.Event()
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Kafka and join the group."""
        await self._producer.start()
        await track_topics([self.dead_letter_topic], self._producer)
        self._consumer.subscribe([self.topic], listener=_Listener(self))
        await self._consumer.start()
        self._started = True

    async def close(self) -> None:
        """Leave the group and disconnect (uncommitted events come again to the next owner)."""
        if self._started:
            self._started = False
            await self._consumer.stop()
            await self._producer.stop()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in hand."""
        self._stopping.set()

    async def run(self) -> None:
        """Start if needed, then apply batches until :meth:`stop` (or cancellation)."""
        if not self._started:
            await self.start()
        try:
            while not self._stopping.is_set():
                await self.step()
            await self._write_status(force=True)
        finally:
            await self.close()

    # -- one batch ---------------------------------------------------------------------------

    async def step(self) -> int:
        """Poll one batch and apply it; returns how many messages it consumed."""
        await self._refresh_views()
        batch = await self._consumer.getmany(timeout_ms=int(self.poll_timeout * 1000), max_records=self.max_records)
        items: list[Positioned] = []
        dead: list[tuple[Any, Exception]] = []
        next_offsets: dict[TopicPartition, int] = {}
        last_timestamp: int | None = None
        for tp in sorted(batch, key=lambda t: t.partition):
            required = self._required.get(tp.partition)
            if required is not None and batch[tp] and batch[tp][0].offset > required:
                # The fetcher's own offset reset raced our seek and won: going on would leave a
                # gap in the views, so seek again and drop what came.
                self._consumer.seek(tp, required)
                continue
            self._required.pop(tp.partition, None)
            for record in batch[tp]:
                next_offsets[tp] = record.offset + 1
                last_timestamp = record.timestamp
                try:
                    event = decode_event(record.value or b"")
                except DecodeError as exc:
                    dead.append((record, exc))
                    continue
                items.append(Positioned(event, tp.partition, record.offset))
        if not next_offsets:
            await self._write_status()
            return 0
        async with self._lock:
            # Partitions revoked since the poll are the next owner's now: leave their events.
            next_offsets = {tp: o for tp, o in next_offsets.items() if tp.partition in self._owned}
            items = [i for i in items if i.partition in self._owned]
            dead = [(r, e) for r, e in dead if r.partition in self._owned]
            if not next_offsets:
                return 0
            assert self._views is not None and self._store is not None
            try:
                raised = await self._raise_high_water(self._views.generation, items)
                refused = await self._apply_with_retry(self._store, items)
                # Only now: this batch was folded against the marks from before it.
                self._high_water.update(raised)
            except _Revoked:
                log.info("projector: partitions revoked while writing; the next owner applies the batch")
                return 0
            if refused:
                records = {(r.partition, r.offset): r for tp in batch for r in batch[tp]}
                dead.extend((records[(item.partition, item.offset)], error) for item, error in refused)
            for record, error in dead:
                await self._dead_letter(record, error)
            await self._save_progress(self._views.generation, next_offsets)
        await self._commit(next_offsets)
        self.applied_total += len(items)
        self.dead_letters_total += len(dead)
        if last_timestamp is not None:
            self._last_event_at = datetime.fromtimestamp(last_timestamp / 1000, UTC)
        await self._write_status()
        return sum(len(records) for records in batch.values())

    def _retrying(self, what: str, **options: Any) -> AsyncRetrying:
        """Retry ``what`` with exponential backoff while the view store is unreachable."""
        settings: dict[str, Any] = {
            "retry": retry_if_exception(_unreachable),
            "wait": wait_exponential(multiplier=self.retry_initial, min=self.retry_initial, max=self.retry_max),
            "before_sleep": _log_retry(what),
            "reraise": True,
        }
        return AsyncRetrying(**(settings | options))

    async def _apply_with_retry(self, store: ViewStore, items: list[Positioned]) -> list[tuple[Positioned, Exception]]:
        """Apply a batch, retrying while the server is unreachable; returns the events it refused.

        Every write is idempotent, so a failed batch is simply applied again. When the server
        answers but refuses the batch (a document it cannot store, say), the events are applied
        one at a time, and an event refused alone ``REFUSALS`` times in a row goes to the
        dead-letter topic instead of stopping every view for every tenant.

        :raises _Revoked: the partitions were revoked while the server was unreachable.
        """
        try:
            async for attempt in self._retrying("writing the views", stop=self._stop_if_revoking):
                with attempt:
                    await store.apply(items)
            return []
        except Exception as exc:
            if self._revoking:
                raise _Revoked from exc
            if not _refused(exc):
                raise
            log.warning("projector: the server refused a batch (%r); applying its events one by one", exc)
        refused: list[tuple[Positioned, Exception]] = []
        for item in items:
            error = await self._apply_alone(store, item)
            if error is not None:
                refused.append((item, error))
        return refused

    async def _apply_alone(self, store: ViewStore, item: Positioned) -> Exception | None:
        refusals = 0

        def counted(exc: BaseException) -> bool:
            nonlocal refusals
            if _refused(exc):
                refusals += 1
                return True
            return isinstance(exc, PyMongoError)

        def stop(state: RetryCallState) -> bool:
            return refusals >= REFUSALS or self._revoking

        try:
            async for attempt in self._retrying("writing one event", retry=retry_if_exception(counted), stop=stop):
                with attempt:
                    await store.apply([item])
        except Exception as exc:
            if self._revoking:
                raise _Revoked from exc
            if refusals >= REFUSALS:
                return exc
            raise
        return None

    def _stop_if_revoking(self, state: RetryCallState) -> bool:
        return self._revoking

    async def _dead_letter(self, record: Any, exc: Exception) -> None:
        value = dead_letter_value(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            payload=record.value,
            error=exc,
        )
        await self._producer.send_and_wait(self.dead_letter_topic, value=value, key=record.key)
        log.warning("projector: %s[%d]@%d dead-lettered: %s", record.topic, record.partition, record.offset, exc)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            # Lost the partitions in a rebalance: the next owner re-applies, harmlessly.
            log.warning("projector: commit failed (%s); the events will be applied again", exc)

    # -- view generations and positions ------------------------------------------------------

    async def _refresh_views(self) -> None:
        """Follow a switch of the live views; an unreachable server is not a reason to stop.

        While the server is unreachable, the projector goes on with the views it knows (the
        writes then wait in :meth:`_apply_with_retry`); before it knows any, it waits here.
        A switch is recorded only once the partitions are positioned for it.
        """
        if self._views is not None:
            try:
                views = await active_views(self.db, self.collections)
            except PyMongoError as exc:
                log.warning("projector: reading the live views failed (%s); going on with them", exc)
                return
            if views.generation == self._views.generation:
                return
            async with self._lock:
                await self._position(self._consumer.assignment(), views)
                await self._use(views)
            log.info("projector: views switched to generation %s", views.generation)
            return
        async for attempt in self._retrying("reading the live views"):
            with attempt:
                await self._use(await active_views(self.db, self.collections))

    async def _use(self, views: ActiveViews) -> None:
        """Write to ``views`` from now on (a fresh store: nothing of the old views is held)."""
        if self._store is None or self._views is None or views.generation != self._views.generation:
            self._store = ViewStore(
                self.db,
                views.collections,
                await probe(self.db),
                cache_limit=self.cache_documents,
                retire_reservations=True,
            )
            self._store.high_water = self._high_water
        self._views = views

    async def _position(self, partitions: Iterable[TopicPartition], views: ActiveViews) -> None:
        """Seek owned partitions to where ``views`` need them.

        That is the progress recorded for this generation; for a replayed generation without
        progress yet, the offsets the replay read up to; else the committed offsets stand.
        """
        progress = await self.db[PROGRESS_COLLECTION].find_one({"_id": self._progress_id(views.generation)})
        offsets: dict[str, int] = (progress or {}).get("offsets", {})
        written: dict[str, int] = (progress or {}).get("written", {})
        for tp in partitions:
            high: int | None
            if str(tp.partition) in written:
                high = int(written[str(tp.partition)])
            elif progress is None:
                # Nothing recorded: nothing written here by a projector, or (a replayed
                # generation) everything up to where the replay read.
                high = views.end_offsets.get(tp.partition, 0) - 1
            else:
                high = None  # recorded by a projector that kept no high-water mark: read always
            self._high_water[tp.partition] = high
            self._unknown_until.pop(tp.partition, None)
            offset = offsets.get(str(tp.partition))
            if offset is None and views.end_offsets:
                offset = views.end_offsets.get(tp.partition, 0)
            if offset is not None:
                self._consumer.seek(tp, offset)
                self._required[tp.partition] = offset

    async def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = list(assigned)
        partitions = {tp.partition for tp in assigned}
        if self._store is not None:
            # Another projector may have written these partitions' documents since we held them.
            self._store.forget(partitions)
        self._owned |= partitions
        if self._views is None:
            # Positioning needs to know the live views (a replay's end offsets): wait for them.
            async for attempt in self._retrying("reading the live views"):
                with attempt:
                    await self._use(await active_views(self.db, self.collections))
        assert self._views is not None
        await self._position(assigned, self._views)

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        partitions = {tp.partition for tp in revoked}
        # Let the batch in hand finish (or give up if the store is unreachable) before the next
        # owner starts: it would read documents this process is about to overwrite.
        self._revoking = True
        try:
            async with self._lock:
                self._owned -= partitions
                if self._store is not None:
                    self._store.forget(partitions)
        finally:
            self._revoking = False

    async def _save_progress(self, generation: str, offsets: dict[TopicPartition, int]) -> None:
        fields: dict[str, Any] = {f"offsets.{tp.partition}": offset for tp, offset in offsets.items()}
        fields.update(group_id=self.group_id, generation=generation, topic=self.topic)
        async for attempt in self._retrying("saving progress", retry=retry_if_exception(_is_mongo_error)):
            with attempt:
                await self.db[PROGRESS_COLLECTION].update_one(
                    {"_id": self._progress_id(generation)}, {"$set": fields}, upsert=True
                )

    async def _raise_high_water(self, generation: str, items: list[Positioned]) -> dict[int, int]:
        """Record, before writing ``items``, that their offsets may be written from now on;
        returns the new marks (the caller holds them once the batch is written).

        A later owner of the partition reads the mark on assignment: beyond it, nothing was
        written, so a new execution's document need not be read (see ``ViewStore``).
        """
        highest: dict[int, int] = {}
        for item in items:
            highest[item.partition] = max(item.offset, highest.get(item.partition, -1))
        raised: dict[int, int] = {}
        for partition, offset in highest.items():
            mark = self._high_water.get(partition)
            if mark is None:
                # Unknown (views written by an older projector): known again once this batch
                # reaches the end the partition had when it was assigned.
                until = self._unknown_until.get(partition)
                if until is None:
                    tp = TopicPartition(self.topic, partition)
                    until = self._unknown_until[partition] = (await self._consumer.end_offsets([tp]))[tp]
                if offset + 1 >= until:
                    raised[partition] = offset
            elif mark < offset:
                raised[partition] = offset
        if not raised:
            return raised
        fields: dict[str, Any] = {f"written.{p}": o for p, o in raised.items()}
        async for attempt in self._retrying("recording the high-water mark", retry=retry_if_exception(_is_mongo_error)):
            with attempt:
                await self.db[PROGRESS_COLLECTION].update_one(
                    {"_id": self._progress_id(generation)}, {"$set": fields}, upsert=True
                )
        for partition in raised:
            self._unknown_until.pop(partition, None)
        return raised

    def _progress_id(self, generation: str) -> str:
        return f"{self.group_id}|{generation}"

    # -- lag ---------------------------------------------------------------------------------

    async def lag(self) -> Lag:
        """Events and seconds behind the end of the owned partitions."""
        partitions = sorted(self._consumer.assignment(), key=lambda t: t.partition)
        if not partitions:
            return Lag(0, 0.0, self._last_event_at)
        ends = await self._consumer.end_offsets(partitions)
        behind: dict[int, int] = {}
        for tp in partitions:
            position = await self._consumer.position(tp)
            behind[tp.partition] = max(0, ends[tp] - position)
        total = sum(behind.values())
        seconds: float | None
        if total == 0:
            seconds = 0.0
        elif self._last_event_at is None:
            seconds = None
        else:
            seconds = max(0.0, (datetime.now(UTC) - self._last_event_at).total_seconds())
        return Lag(total, seconds, self._last_event_at, behind)

    async def _write_status(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._status_written < self.status_interval:
            return
        self._status_written = time.monotonic()
        try:
            lag = await self.lag()
        except KafkaError as exc:
            log.debug("projector: lag unavailable: %s", exc)
            return
        doc = {
            "topic": self.topic,
            "group_id": self.group_id,
            "generation": self._views.generation if self._views else None,
            "collections": self._views.collections.as_dict() if self._views else None,
            "events_behind": lag.events_behind,
            "seconds_behind": lag.seconds_behind,
            "last_event_at": lag.last_event_at,
            "partitions": {str(p): n for p, n in lag.partitions.items()},
            "applied_total": self.applied_total,
            "dead_letters_total": self.dead_letters_total,
            "updated_at": datetime.now(UTC),
        }
        try:
            await self.db[STATUS_COLLECTION].update_one({"_id": self.group_id}, {"$set": doc}, upsert=True)
        except PyMongoError as exc:
            log.warning("projector: writing the status failed: %s", exc)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.projector._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.projector._on_assigned(assigned)


class _Revoked(Exception):
    """The partitions of a batch were revoked before it could be written."""


def _is_mongo_error(exc: BaseException) -> bool:
    return isinstance(exc, PyMongoError)


def _dead_letter_topic_for(topic: str) -> str:
    suffix = "task-events"
    if topic.endswith(suffix):
        return topic[: -len(suffix)] + "dead-letter"
    return f"{topic}.dead-letter"


async def ensure_indexes(db: AsyncDatabase[Any], collections: CollectionNames | None = None) -> None:
    """Create the read indexes of the views (idempotent); defaults to the live collections."""
    names = collections or await active_collections(db)
    tasks, executions, audit = db[names.tasks], db[names.executions], db[names.audit]
    await tasks.create_index([("tenant", ASCENDING), ("status", ASCENDING)])
    await tasks.create_index([("next_run", ASCENDING), ("status", ASCENDING)])
    await tasks.create_index([("type", ASCENDING), ("status", ASCENDING)])
    await tasks.create_index([("tenant", ASCENDING), ("created_at", DESCENDING)])
    await executions.create_index([("task_id", ASCENDING), ("status", ASCENDING)])
    await executions.create_index([("scheduled_for", DESCENDING)])
    await executions.create_index([("worker", ASCENDING), ("status", ASCENDING)])
    await executions.create_index([("status", ASCENDING), ("next_retry_at", ASCENDING)])
    await executions.create_index([("tenant", ASCENDING), ("scheduled_for", DESCENDING)])
    await audit.create_index([("tenant", ASCENDING), ("at", ASCENDING)])
    await audit.create_index([("task_id", ASCENDING), ("sequence", ASCENDING)])
    # The API's ?wait looks up what a command caused.
    await audit.create_index([("causation_id", ASCENDING)])
    await db[names.stats].create_index([("tenant", ASCENDING)])
    # The occurrence log reads a task's schedule documents by kind and its facts by slot range.
    await db[names.occurrences].create_index([("task_id", ASCENDING), ("kind", ASCENDING), ("slot_us", ASCENDING)])
