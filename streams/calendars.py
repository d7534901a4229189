"""The ``calendars`` topic: its wire form, an in-memory book of every calendar, and a follower.

The topic is compacted, has one partition and is small (calendars change rarely), so every
reader reads it whole from the beginning and keeps it in memory: the worker (to pass a
tenant's calendars to the decider) and the projector (to keep the ``calendars`` view).

Readers agree on each calendar whatever they read before: per key ``<tenant>/<name>`` a book
keeps the event of the highest revision it has seen, and an event whose revision is not above
it changes nothing (two writers racing to the same revision: the first on the topic wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas.calendars import Calendar, CalendarDeleted, CalendarUpserted, calendar_key, decode_calendar_event
from schemas.envelope import Envelope, decode_envelope, encode
from schemas.errors import DecodeError
from streams.connections import kafka_options
from streams.settings import Settings

log = logging.getLogger(__name__)

CALENDAR_TYPE_PREFIX = "scheduler.calendar."
"""CloudEvents ``type`` prefix of calendar events (``scheduler.calendar.CalendarUpserted``)."""
CALENDAR_NAMESPACE = uuid.UUID("8f1b6c0e-2d4a-5b7e-9c3f-1a6e5d4b2c90")
"""Namespace of calendar event ids (uuid5 of key, revision and request)."""

CalendarEventT = CalendarUpserted | CalendarDeleted


def calendar_event_id(tenant: str, name: str, revision: int, request: str) -> str:
    """The id of a calendar's event at ``revision`` made by ``request`` (e.g. its request id):
    two writers racing to the same revision get different ids, so the loser can tell."""
    return str(uuid.uuid5(CALENDAR_NAMESPACE, f"{calendar_key(tenant, name)}\x1f{revision}\x1f{request}"))


def encode_calendar_event(event: CalendarEventT, source: str, correlation_id: str | None = None) -> bytes:
    """The envelope of a calendar event as bytes (subject: the key ``<tenant>/<name>``)."""
    envelope = Envelope.model_construct(
        id=event.event_id,
        source=source,
        type=CALENDAR_TYPE_PREFIX + event.type,
        subject=event.key,
        time=event.at,
        tenant=event.tenant,
        actor=event.actor,
        causationid=None,
        correlationid=correlation_id,
        data=event.model_dump(mode="json"),
    )
    return encode(envelope)


def decode_calendar_message(raw: bytes) -> CalendarEventT:
    """Decode a message of the ``calendars`` topic.

    :raises DecodeError: not a calendar event envelope, or the event is invalid.
    """
    envelope = decode_envelope(raw, tolerant=True)
    if not envelope.type.startswith(CALENDAR_TYPE_PREFIX):
        raise DecodeError(f"not a calendar event: {envelope.type!r}", "type")
    data = dict(envelope.data)
    data.setdefault("type", envelope.type.removeprefix(CALENDAR_TYPE_PREFIX))
    try:
        event = decode_calendar_event(data)
    except ValidationError as exc:
        raise DecodeError(f"invalid calendar event: {exc.errors(include_url=False)[0]['msg']}", "data") from None
    if envelope.subject != event.key or envelope.tenant != event.tenant:
        raise DecodeError("the envelope's subject and tenant must be the event's key and tenant", "subject")
    return event


@dataclass
class CalendarBook:
    """Every tenant's calendars, as of the events applied (deleted ones as revisions only)."""

    _latest: dict[str, CalendarEventT] = field(default_factory=dict)
    _by_tenant: dict[str, dict[str, Calendar]] = field(default_factory=dict)

    def apply(self, event: CalendarEventT) -> bool:
        """Apply one event; False when its revision is not above the held one (ignored)."""
        held = self._latest.get(event.key)
        if held is not None and event.revision <= held.revision:
            return False
        self._latest[event.key] = event
        tenant = self._by_tenant.setdefault(event.tenant, {})
        if isinstance(event, CalendarUpserted):
            tenant[event.name] = event.calendar
        else:
            tenant.pop(event.name, None)
        return True

    def of(self, tenant: str) -> Mapping[str, Calendar]:
        """The tenant's calendars by name (read-only; empty when it has none)."""
        return MappingProxyType(self._by_tenant.get(tenant, {}))

    def __len__(self) -> int:
        return sum(len(c) for c in self._by_tenant.values())


OnEvents = Callable[[list[CalendarEventT]], Awaitable[None]]


class CalendarFollower:
    """Reads the whole ``calendars`` topic into a :class:`CalendarBook`, then follows it.

    ``caught_up`` is set once everything on the topic when the follower started is applied
    (at once when the topic does not exist: there is nothing to exclude). ``on_events``, when
    given, is awaited with each batch of events the book accepted (the projector writes them).
    """

    def __init__(self, settings: Settings, book: CalendarBook | None = None, on_events: OnEvents | None = None) -> None:
        self.settings = settings
        self.book = book or CalendarBook()
        self.on_events = on_events
        self.caught_up = asyncio.Event()
        self.topic = settings.topics.calendars

    async def run(self, retry_seconds: float = 2.0) -> None:
        """Follow the topic until cancelled; reconnects after Kafka errors."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as exc:
                log.warning("calendars: %r; reading again in %.0fs", exc, retry_seconds)
            except Exception:
                # Whatever went wrong, stopping would leave calendars stale for good: read again.
                log.exception("calendars: reading failed; reading again in %.0fs", retry_seconds)
            await asyncio.sleep(retry_seconds)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            **kafka_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="scheduler-calendars",
        )
        await consumer.start()
        try:
            partitions = await self._partitions(consumer)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            while True:
                if not self.caught_up.is_set() and await _reached(consumer, ends):
                    log.info("calendars: %d read from %s", len(self.book), self.topic)
                    self.caught_up.set()
                batches = await consumer.getmany(timeout_ms=500, max_records=1000)
                accepted: list[CalendarEventT] = []
                for records in batches.values():
                    for record in records:
                        event = self._decode(record.value, record.offset)
                        if event is not None and self.book.apply(event):
                            accepted.append(event)
                if accepted and self.on_events is not None:
                    await self.on_events(accepted)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        while True:
            # The consumer's own metadata covers only topics it already reads: ask the cluster.
            cluster = await consumer._client.fetch_all_metadata()
            numbers = cluster.partitions_for_topic(self.topic)
            if numbers:
                return [TopicPartition(self.topic, p) for p in sorted(numbers)]
            # Not created yet (an old deployment): nothing to exclude until it is.
            self.caught_up.set()
            await asyncio.sleep(2.0)

    def _decode(self, raw: bytes | None, offset: int) -> CalendarEventT | None:
        if raw is None:
            return None  # a tombstone: nothing to apply
        try:
            return decode_calendar_message(raw)
        except (DecodeError, orjson.JSONDecodeError) as exc:
            log.warning("calendars: message at offset %d skipped: %s", offset, exc)
            return None


async def _reached(consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]) -> bool:
    """Whether the consumer's position is at or past ``ends`` on every partition."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True
