"""The trigger router: CloudEvents on ``triggers`` become ``TriggerTask`` commands.

Shape (``scheduler triggers``):

- **Rules index.** The task processor publishes each task's trigger rules to the compacted
  ``trigger-rules`` topic as it applies the task's creation, update or deletion (a tombstone
  when it has none; ``streams.publisher``). The router reads that topic in full before it
  routes anything, then keeps tailing it: a rule applies to events read a few milliseconds
  after the task processor applied the command that set it, without the views (MongoDB) or
  the projector on the path.
- **Routing** (:class:`Routing`, no I/O): each record of ``triggers`` is decoded (structured
  or binary mode, :func:`~schemas.triggers.decode_cloudevent`); an invalid one goes to
  ``dead-letter`` with the reason. A valid one whose (tenant, source, id) was seen within
  ``SCHED_TRIGGER_DEDUP_SECONDS`` is dropped; otherwise it is matched against the rules of its
  own tenant only, and each task matched gets one ``TriggerTask`` (keyed by task id) whose
  trigger id is derived from (task, source, id), so the task processor too runs it once.
- **Debounce**: the first event matching a debounced rule opens a window (from the record's
  timestamp); the run leaves when it closes, with the window's events in its params.
- **At least once.** The consumer group commits a partition's offset only after the commands
  of its records were acknowledged by Kafka, and never past the first record of a debounce
  window still open: after a crash or a rebalance the next owner reads the window's events
  again, and the same trigger id makes a run already sent harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import Counter
from pydantic import ValidationError

from schemas.commands import TriggerTask
from schemas.envelope import command_envelope, encode
from schemas.errors import DecodeError
from schemas.specs import TOLERANT
from schemas.triggers import (
    BATCH_MAX_BYTES,
    CloudEvent,
    TaskRules,
    TriggerRule,
    decode_cloudevent,
    dedup_key,
    first_match,
    trigger_id,
    trigger_params,
)
from streams import metrics
from streams.connections import kafka_options, track_topics
from streams.deadletter import dead_letter_record
from streams.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "/scheduler/triggers"
"""CloudEvents ``source`` of the commands the router produces."""
ACTOR = "trigger-router"
"""The ``actor`` of those commands."""
GROUP = "trigger-router"
"""Consumer group of the routers (after the deployment's prefix)."""
METADATA_PREFIX = "v1:"
"""Commit metadata of the router: ``v1:<the offset routed to>``."""
RECALL_SECONDS = 60.0
"""Longest a router spends, at an assignment, recalling the events its partitions routed before:
past it, it routes with what it recalled (the task processor still remembers recent trigger ids)."""
MAX_TASK_ID = 200
"""Longest task id a command carries (``schemas.commands``)."""
COMMAND_NAMESPACE = uuid.UUID("5e2d9c71-4a3b-5f6e-8d12-7c9b0a1e3f45")
"""Namespace of the command ids derived from trigger ids."""

RESULTS = ("received", "matched", "unmatched", "invalid", "deduplicated")
EVENTS = Counter(
    "scheduler_trigger_events",
    "CloudEvents read from the triggers topic by the router, by result (received counts all).",
    ["result"],
)
RUNS = Counter("scheduler_trigger_runs", "TriggerTask commands produced by the trigger router, by mode.", ["mode"])


# ---------------------------------------------------------------------------------------------
# The rules index
# ---------------------------------------------------------------------------------------------


@dataclass
class _TenantRules:
    """One tenant's rules, indexed by exact event type (a prefix type is checked one by one)."""

    rules: dict[str, list[TriggerRule]] = field(default_factory=dict)
    """Task id -> its rules."""
    by_type: dict[str, set[str]] = field(default_factory=dict)
    """Exact event type -> the tasks with a rule on it."""
    by_prefix: set[str] = field(default_factory=set)
    """The tasks with a rule on a type prefix."""

    def add(self, task_id: str, rules: list[TriggerRule]) -> None:
        self.rules[task_id] = rules
        for rule in rules:
            if rule.type.exact is not None:
                self.by_type.setdefault(rule.type.exact, set()).add(task_id)
            else:
                self.by_prefix.add(task_id)

    def drop(self, task_id: str) -> None:
        for rule in self.rules.pop(task_id, ()):
            if rule.type.exact is not None:
                tasks = self.by_type.get(rule.type.exact, set())
                tasks.discard(task_id)
                if not tasks:
                    self.by_type.pop(rule.type.exact, None)
        self.by_prefix.discard(task_id)


class RulesIndex:
    """Every task's trigger rules, by tenant, as read from ``trigger-rules``.

    Exact event types are indexed: an event is matched against the rules of the tasks with a
    rule on its type (or on a type prefix) only, not against every rule of its tenant.
    """

    def __init__(self) -> None:
        self._by_tenant: dict[str, _TenantRules] = {}
        self._tenant_of: dict[str, str] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record of ``trigger-rules``: a task's rules, or a tombstone.

        :raises DecodeError: the record is not a task's rules (nothing changes).
        """
        if key is None:
            raise DecodeError("a trigger-rules record must be keyed by task id", field="key")
        task_id = key.decode("utf-8", errors="replace")
        if value is None:
            self._drop(task_id)
            return
        try:
            # TOLERANT: rules accepted under older rules stay readable.
            rules = TaskRules.model_validate_json(value, context=TOLERANT)
        except ValidationError as exc:
            raise DecodeError(f"not a task's trigger rules: {exc.errors()[0].get('msg')}") from None
        # The key is the task the runs go to: it must be the rules' own task, of their tenant, and
        # a task id a command can carry. A record breaking that (the topic is writable by more
        # than the task processor) once made every matching event fail to become a command, and
        # the router crash on it again after each restart.
        if task_id != rules.task_id or not task_id.startswith(rules.tenant + "/") or len(task_id) > MAX_TASK_ID:
            raise DecodeError(
                f"the key must be the rules' task id, of their tenant, at most {MAX_TASK_ID} characters", field="key"
            )
        self._drop(task_id)
        if rules.rules:
            self._by_tenant.setdefault(rules.tenant, _TenantRules()).add(task_id, list(rules.rules))
            self._tenant_of[task_id] = rules.tenant

    def _drop(self, task_id: str) -> None:
        tenant = self._tenant_of.pop(task_id, None)
        if tenant is not None:
            found = self._by_tenant.get(tenant)
            if found is not None:
                found.drop(task_id)
                if not found.rules:
                    self._by_tenant.pop(tenant, None)

    def tasks(self, tenant: str) -> dict[str, list[TriggerRule]]:
        """The tasks of ``tenant`` that have rules: task id -> rules."""
        found = self._by_tenant.get(tenant)
        return {} if found is None else found.rules

    def candidates(self, tenant: str, event_type: str) -> list[tuple[str, list[TriggerRule]]]:
        """The tasks of ``tenant`` that may match an event of ``event_type``, with their rules,
        in task id order."""
        found = self._by_tenant.get(tenant)
        if found is None:
            return []
        ids = found.by_type.get(event_type, set()) | found.by_prefix
        return [(task_id, found.rules[task_id]) for task_id in sorted(ids)]

    def __len__(self) -> int:
        return len(self._tenant_of)


# ---------------------------------------------------------------------------------------------
# Routing (no I/O)
# ---------------------------------------------------------------------------------------------


class Seen:
    """The (tenant, source, id) of events seen within a time window, at most ``limit`` of them."""

    def __init__(self, window: float, limit: int) -> None:
        self.window = window
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, key: str, now: float) -> bool:
        """Remember ``key``; False when it was seen within the window already."""
        self._expire(now)
        if key in self._seen:
            return False
        if self.window > 0:
            self._seen[key] = now
            while len(self._seen) > self.limit:
                self._seen.popitem(last=False)
        return True

    def _expire(self, now: float) -> None:
        while self._seen:
            key, at = next(iter(self._seen.items()))
            if now - at < self.window:
                return
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)


@dataclass
class Window:
    """A debounce window: the events matched for one task and rule until it closes."""

    task_id: str
    tenant: str
    rule: TriggerRule
    closes_at: float
    """Epoch seconds."""
    events: list[CloudEvent] = field(default_factory=list)
    """The first events matched: as many as the run's params carry (``debounce_max_events``,
    ``BATCH_MAX_BYTES`` of them). Keeping every one let a flood of events grow the router without
    bound, and rebuild the same window after the restart that followed."""
    count: int = 0
    """Every event matched in the window."""
    size: int = 0
    """Bytes of the kept events' summaries."""
    first_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    """Per partition, the offset of its first event there: nothing at or after it is committed
    while the window is open, so a restart reads every event of the window again."""


@dataclass
class RouterStats:
    """Counters of one router (for tests; the metrics count the same)."""

    received: int = 0
    matched: int = 0
    unmatched: int = 0
    invalid: int = 0
    deduplicated: int = 0
    runs: int = 0


@dataclass(frozen=True)
class Routed:
    """What one record (or a closing window) leads to: commands to send, or a dead letter."""

    commands: list[TriggerTask] = field(default_factory=list)
    invalid: DecodeError | None = None


class Routing:
    """Decides what each record of ``triggers`` leads to; time comes in as arguments."""

    def __init__(self, settings: Settings, index: RulesIndex) -> None:
        self.index = index
        self.max_bytes = settings.trigger_max_event_bytes
        self.seen = Seen(settings.trigger_dedup_seconds, settings.trigger_dedup_max_events)
        self.windows: dict[tuple[str, int], Window] = {}
        self.stats = RouterStats()
        self._next: dict[TopicPartition, int] = {}
        self.replay_until: dict[TopicPartition, int] = {}
        """Per partition, the position its last owner had routed to (from its commit's metadata)."""

    def record(
        self,
        tp: TopicPartition,
        offset: int,
        timestamp: float,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        now: float,
    ) -> Routed:
        """Route one record read at ``now`` (epoch seconds; ``timestamp`` is the record's).

        A record the partition's last owner routed already (before the position its commit
        named, see :meth:`committable`) only rebuilds the debounce windows it was in: its other
        runs and its dead letter were sent.
        """
        self._next[tp] = offset + 1
        replaying = offset < self.replay_until.get(tp, 0)
        self._count("received")
        try:
            if value is not None and len(value) > self.max_bytes:
                raise DecodeError(f"the event is larger than {self.max_bytes} bytes")
            event = decode_cloudevent(value, headers)
        except DecodeError as exc:
            self._count("invalid")
            return Routed() if replaying else Routed(invalid=exc)
        if not self.seen.add(dedup_key(event), now) and not replaying:
            self._count("deduplicated")
            return Routed()
        try:
            return self._match(tp, offset, timestamp, event, now, replaying=replaying)
        except Exception as exc:
            # Matching is pure and total by design; should a defect (or an index entry no command
            # can carry) make it raise, the record is dead-lettered and the partition moves on,
            # rather than the router stopping on it and every successor stopping on it again.
            log.exception("trigger router: could not route %s[%d]@%d", tp.topic, tp.partition, offset)
            self._count("invalid")
            return Routed() if replaying else Routed(invalid=DecodeError(f"could not be routed: {exc!r}"))

    def _match(
        self, tp: TopicPartition, offset: int, timestamp: float, event: CloudEvent, now: float, *, replaying: bool
    ) -> Routed:
        commands: list[TriggerTask] = []
        windowed = False
        for task_id, rules in self.index.candidates(event.tenant, event.type):
            rule = first_match(rules, event)
            if rule is None:
                continue
            if rule.debounce_seconds is None:
                if not replaying:
                    commands.append(self._command(task_id, event, rule, [event], now, debounced=False))
                continue
            key = (task_id, rules.index(rule))
            window = self.windows.get(key)
            if window is None:
                opened = min(timestamp, now)
                window = Window(task_id, event.tenant, rule, opened + rule.debounce_seconds)
                self.windows[key] = window
            window.count += 1
            if len(window.events) < rule.debounce_max_events and window.size <= BATCH_MAX_BYTES:
                window.events.append(event)
                window.size += len(orjson.dumps(event.summary()))
            window.first_offsets.setdefault(tp, offset)
            windowed = True
        self._count("matched" if commands or windowed else "unmatched")
        return Routed(commands=commands)

    def due(self, now: float) -> list[TriggerTask]:
        """The runs of the debounce windows closed at ``now``."""
        out: list[TriggerTask] = []
        for key, window in list(self.windows.items()):
            if window.closes_at <= now:
                del self.windows[key]
                first = window.events[0]
                out.append(
                    self._command(
                        window.task_id, first, window.rule, window.events, now, debounced=True, count=window.count
                    )
                )
        return out

    def next_close(self) -> float | None:
        """When the next debounce window closes (epoch seconds), or None."""
        return min((w.closes_at for w in self.windows.values()), default=None)

    def committable(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offset each partition may commit: after every record routed, but not past the
        first record of an open window (its run has not left yet). The metadata names the
        position routed to (``v1:<offset>``): the next owner reads the records from the
        committed offset again only to rebuild the windows, and sends nothing else twice."""
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, nxt in self._next.items():
            hold = min((w.first_offsets[tp] for w in self.windows.values() if tp in w.first_offsets), default=nxt)
            routed = max(nxt, self.replay_until.get(tp, 0))
            offsets[tp] = OffsetAndMetadata(min(hold, nxt), f"{METADATA_PREFIX}{routed}")
        return offsets

    def resume(self, tp: TopicPartition, committed: OffsetAndMetadata | None) -> int | None:
        """Take ``tp`` over from its last owner's commit; the position it had routed to (None
        without a commit)."""
        if committed is None or committed.offset < 0:
            return None
        routed: int = committed.offset
        metadata = committed.metadata or ""
        if metadata.startswith(METADATA_PREFIX) and metadata[len(METADATA_PREFIX) :].isdigit():
            routed = max(routed, int(metadata[len(METADATA_PREFIX) :]))
        self.replay_until[tp] = routed
        return routed

    def remember(self, value: bytes | None, headers: Sequence[tuple[str, bytes]], timestamp: float) -> bool:
        """Remember an event routed before (by an earlier owner of its partition) as seen at its
        record's ``timestamp``; False when it is not a valid event (nothing to remember)."""
        try:
            event = decode_cloudevent(value, headers)
        except DecodeError:
            return False
        self.seen.add(dedup_key(event), timestamp)
        return True

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        """Drop the windows and positions of partitions this router no longer owns: their next
        owner reads them again from the committed offsets."""
        gone = set(partitions)
        self.windows = {k: w for k, w in self.windows.items() if not gone & w.first_offsets.keys()}
        for tp in gone:
            self._next.pop(tp, None)
            self.replay_until.pop(tp, None)

    def _command(
        self,
        task_id: str,
        event: CloudEvent,
        rule: TriggerRule,
        events: list[CloudEvent],
        now: float,
        *,
        debounced: bool,
        count: int | None = None,
    ) -> TriggerTask:
        tid = trigger_id(task_id, event, window=debounced)
        self.stats.runs += 1
        RUNS.labels(mode="debounce" if debounced else "event").inc()
        return TriggerTask(
            command_id=str(uuid.uuid5(COMMAND_NAMESPACE, tid)),
            task_id=task_id,
            tenant=event.tenant,
            actor=ACTOR,
            at=datetime.fromtimestamp(now, UTC),
            trigger_id=tid,
            params=trigger_params(rule, events, debounced=debounced, count=count),
        )

    def _count(self, result: str) -> None:
        setattr(self.stats, result, getattr(self.stats, result) + 1)
        EVENTS.labels(result=result).inc()


# ---------------------------------------------------------------------------------------------
# The process
# ---------------------------------------------------------------------------------------------


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka's abc is untyped
    def __init__(self, router: TriggerRouter) -> None:
        self.router = router

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.router.routing.forget(revoked)
        self.router.to_recall.difference_update(revoked)
        self.router.taken.difference_update(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        # Recalled by the routing loop before it routes their records: aiokafka may hand out
        # records of a new assignment before this callback has finished.
        self.router.to_recall.update(assigned)


class TriggerRouter:
    """Consumes ``triggers`` (consumer group) and ``trigger-rules`` (in full), produces commands."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.index = RulesIndex()
        self.routing = Routing(settings, self.index)
        self.ready = asyncio.Event()
        """Set once the rules were read to the end of ``trigger-rules``."""
        topics = settings.topics
        self._commands = topics.commands
        self._dead_letter = topics.dead_letter
        self._triggers = topics.triggers
        self._rules = topics.trigger_rules
        self._group = topics.name(GROUP)
        self._tail: asyncio.Task[None] | None = None
        self.to_recall: set[TopicPartition] = set()
        """Partitions assigned whose earlier events are not recalled yet (see :meth:`recall`)."""
        self.taken: set[TopicPartition] = set()
        """Partitions taken over (recalled) since they were assigned."""

    async def run(self) -> None:
        """Route until cancelled."""
        options = kafka_options(self.settings)
        producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True, linger_ms=1, client_id="triggers")
        rules = AIOKafkaConsumer(
            self._rules, **options, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False
        )
        events = AIOKafkaConsumer(
            **options,
            group_id=self._group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=int(self.settings.session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(self.settings.session_timeout_seconds * 250),
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )
        await producer.start()
        await track_topics(self.settings.topics.all, producer)
        try:
            await rules.start()
            tail: asyncio.Task[None] | None = None
            try:
                await self._load_rules(rules)
                tail = asyncio.create_task(self._tail_rules(rules))
                self._tail = tail
                self.ready.set()
                log.info("trigger router: %d tasks with trigger rules; routing", len(self.index))
                events.subscribe([self._triggers], listener=_Rebalance(self))
                await events.start()
                # scheduler_consumer_lag_messages of the router's group, as the other processes do.
                lag = asyncio.create_task(metrics.measure_lag(self.settings, {self._group: [self._triggers]}))
                try:
                    await self._route(events, producer)
                finally:
                    lag.cancel()
                    await events.stop()
            finally:
                if tail is not None:
                    tail.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await tail
                await rules.stop()
        finally:
            await producer.stop()

    async def recall(self, assigned: Sequence[TopicPartition]) -> None:
        """Take ``assigned`` partitions over from their last owner's commits: the records it
        routed after the committed offset only rebuild debounce windows (see
        :meth:`Routing.record`), and the events routed in the last ``SCHED_TRIGGER_DEDUP_SECONDS``
        are remembered, so an event delivered again after a restart or a rebalance still runs
        nothing (the task processor alone remembers only a task's last 64 trigger ids). Reads
        at most ``SCHED_TRIGGER_DEDUP_MAX_EVENTS`` records a partition."""
        if not assigned:
            return
        committed = await self._commits(assigned)
        ends: dict[TopicPartition, int] = {}
        for tp in assigned:
            routed = self.routing.resume(tp, committed.get(tp))
            if routed:
                ends[tp] = routed
        window = self.settings.trigger_dedup_seconds
        if window <= 0 or not ends:
            return
        started = time.perf_counter()
        reader = AIOKafkaConsumer(
            **kafka_options(self.settings), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await reader.start()
        try:
            since = int((self.clock() - window) * 1000)
            found = await reader.offsets_for_times(dict.fromkeys(ends, since))
            starts: dict[TopicPartition, int] = {}
            for tp, end in ends.items():
                at = found.get(tp)
                start = max(end if at is None else at.offset, end - self.settings.trigger_dedup_max_events, 0)
                if start < end:
                    starts[tp] = start
            if not starts:
                return
            reader.assign(list(starts))
            for tp, start in starts.items():
                reader.seek(tp, start)
            recalled = 0
            left = set(starts)
            deadline = time.monotonic() + RECALL_SECONDS
            while left and time.monotonic() < deadline:
                for tp, records in (await reader.getmany(*left, timeout_ms=500)).items():
                    for record in records:
                        if record.offset < ends[tp]:
                            recalled += self.routing.remember(
                                record.value, list(record.headers or ()), record.timestamp / 1000
                            )
                left = {tp for tp in left if await reader.position(tp) < ends[tp]}
            log.info(
                "trigger router: recalled %d events of the last %.0fs on %d partitions in %.2fs",
                recalled, window, len(starts), time.perf_counter() - started,
            )  # fmt: skip
        finally:
            await reader.stop()

    async def _commits(self, assigned: Sequence[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        """The group's commits (with their metadata) of ``assigned`` partitions."""
        admin = AIOKafkaAdminClient(**kafka_options(self.settings))
        try:
            await admin.start()
            found: dict[TopicPartition, OffsetAndMetadata] = await admin.list_consumer_group_offsets(
                self._group, partitions=list(assigned)
            )
            return found
        except Exception as exc:  # without them, records after the committed offsets route again
            log.warning("trigger router: could not read the group's commits: %r", exc)
            return {}
        finally:
            await admin.close()

    async def _load_rules(self, rules: AIOKafkaConsumer) -> None:
        """Read ``trigger-rules`` to its end as it is now."""
        while not rules.assignment():  # without a group, every partition, once metadata arrives
            self._apply_rules(await rules.getmany(timeout_ms=100))
        ends = await rules.end_offsets(list(rules.assignment()))
        while any([await rules.position(tp) < end for tp, end in ends.items()]):
            self._apply_rules(await rules.getmany(timeout_ms=200))

    async def _tail_rules(self, rules: AIOKafkaConsumer) -> None:
        while True:
            self._apply_rules(await rules.getmany(timeout_ms=500))

    def _apply_rules(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        for records in batch.values():
            for record in records:
                try:
                    self.index.apply(record.key, record.value)
                except DecodeError as exc:
                    log.warning("trigger-rules[%d]@%d ignored: %s", record.partition, record.offset, exc)

    async def _route(self, events: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        committed: dict[TopicPartition, OffsetAndMetadata] = {}
        while True:
            if self._tail is not None and self._tail.done():
                self._tail.result()  # its failure is the router's: stale rules must not route
                raise RuntimeError("the trigger-rules reader stopped")
            wait = 0.5
            closes = self.routing.next_close()
            if closes is not None:
                wait = min(wait, max(closes - self.clock(), 0.0))
            batch = await events.getmany(timeout_ms=int(wait * 1000))
            # Every partition is taken over before its first record is routed, whenever aiokafka
            # called the listener.
            take = self.to_recall | (batch.keys() - self.taken)
            if take:
                await self.recall(sorted(take))
                self.taken |= take
                self.to_recall.clear()
            sent: list[asyncio.Future[Any]] = []
            for tp, records in batch.items():
                for record in records:
                    now = self.clock()
                    routed = self.routing.record(
                        tp, record.offset, record.timestamp / 1000, record.value, list(record.headers or ()), now
                    )
                    if routed.invalid is not None:
                        log.warning("dead-letter: %s[%d]@%d: %s", tp.topic, tp.partition, record.offset, routed.invalid)
                        sent.append(
                            await producer.send(self._dead_letter, **dead_letter_record(record, routed.invalid))
                        )
                    sent += [await self._send(producer, c) for c in routed.commands]
            sent += [await self._send(producer, c) for c in self.routing.due(self.clock())]
            if sent:
                await asyncio.gather(*sent)  # acknowledged before the offsets move past them
            offsets = {tp: o for tp, o in self.routing.committable().items() if committed.get(tp) != o}
            if offsets:
                await events.commit(offsets)
                committed.update(offsets)

    async def _send(self, producer: AIOKafkaProducer, command: TriggerTask) -> asyncio.Future[Any]:
        value = encode(command_envelope(command, source=SOURCE, correlation_id=command.trigger_id))
        future: asyncio.Future[Any] = await producer.send(self._commands, key=command.task_id.encode(), value=value)
        return future
