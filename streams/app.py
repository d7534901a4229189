"""The task processor: a Faust app that owns each task's state by partition.

Shape (see DESIGN.md):

- ``commands`` (keyed by task id) is co-partitioned with the ``task-state`` table, so the
  worker that owns a partition owns its tasks: partition ownership replaces locks.
- The command agent (concurrency 1, so offsets never pass an unapplied message) decodes a
  command, applies the pure decider, stores the new state and sends the events: every
  event to ``task-events``, ``ExecutionDispatched`` to ``dispatch.<priority>``,
  ``ExecutionCompleted`` to ``outcomes``. Undecodable input goes to ``dead-letter``.
- The due-index holds the next wakeup of every owned task. It is rebuilt from the table
  once recovery completes and updated as commands are applied. The firing loop sends a
  ``Wake`` for each due task; the decider ignores a stale or repeated one.

Crash safety under at-least-once: Faust flushes the producer (events and changelog) before
it commits offsets, so an uncommitted command is re-applied after a crash. The decider is
deterministic and remembers recent command ids, so a re-applied command yields the same
events (same ids) or none. The one gap left, a changelog write that reached the broker while
the command's events did not, is closed by keeping each task's last events in its stored
state and sending them again, after recovery, for tasks touched in the last
``RESEND_WINDOW`` seconds; every consumer deduplicates by event id or sequence.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import orjson
from pydantic import TypeAdapter

from scheduler import TaskState, decide, evolve, next_wakeup
from scheduler.decider import reject_invalid
from schemas.commands import Command, Wake
from schemas.envelope import command_envelope, decode_command, encode, event_envelope
from schemas.errors import DecodeError, InvalidCommand
from schemas.events import Event, ExecutionCompleted, ExecutionDispatched
from schemas.specs import TOLERANT
from streams import faust_tuning, topics
from streams.deadletter import dead_letter_value
from streams.due_index import DueIndex
from streams.executor import Executor
from streams.settings import Settings, topic_name

log = logging.getLogger(__name__)

RESEND_WINDOW = 60.0
"""Seconds: after recovery, the last events of tasks applied this recently are sent again."""

_EVENTS = TypeAdapter(list[Event])


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Stored:
    """What the table keeps per task: the state, the last command's events, and when."""

    state: TaskState
    last_events: list[Event]
    applied_at: float

    def dump(self) -> bytes:
        wakeup = next_wakeup(self.state)
        return orjson.dumps(
            {
                "state": self.state.model_dump(mode="json"),
                "last_events": [e.model_dump(mode="json") for e in self.last_events],
                "applied_at": self.applied_at,
                # Denormalised for the due-index rebuild, which then validates no state.
                "index": [self.state.task_id, self.state.tenant, wakeup.isoformat() if wakeup else None],
            }
        )

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Stored:
        return cls(
            TaskState.model_validate(doc["state"], context=TOLERANT),
            _EVENTS.validate_python(doc["last_events"], context=TOLERANT),
            doc["applied_at"],
        )


@dataclass(frozen=True)
class IndexEntry:
    """What the due-index needs of a stored task, read without validating its state."""

    task_id: str
    tenant: str
    wakeup: datetime | None
    applied_at: float

    @classmethod
    def read(cls, doc: dict[str, Any]) -> IndexEntry:
        if "index" not in doc:  # written before the entry was denormalised
            stored = Stored.from_doc(doc)
            state = stored.state
            return cls(state.task_id, state.tenant, next_wakeup(state), stored.applied_at)
        task_id, tenant, wakeup = doc["index"]
        when = datetime.fromisoformat(wakeup) if wakeup is not None else None
        return cls(task_id, tenant, when, doc["applied_at"])


@dataclass
class ProcessorStats:
    """Counters of the task processor (exposed for tests and metrics)."""

    commands: int = 0
    events: int = 0
    rejected: int = 0
    dead_letters: int = 0
    wakes_sent: int = 0
    resent_events: int = 0
    index_rebuilds: int = 0
    last_rebuild_seconds: float = 0.0
    tasks_owned: int = 0
    apply_seconds: float = 0.0


class TaskProcessor:
    """The Faust app with its topics, table, agent, firing loop and (optionally) executor."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = ProcessorStats()
        self.index = DueIndex()
        self.tenants: dict[str, str] = {}
        self._woken: dict[str, tuple[datetime, datetime]] = {}
        """Task -> (when its last Wake was sent, when to send it again) until a Wake is applied."""
        self.ready = False
        self.source = f"scheduler/worker/{settings.worker_id}"
        faust_tuning.install(settings.fetch_max_wait_ms)
        self.app = faust.App(
            topic_name(settings, settings.app_id),
            broker=f"kafka://{settings.kafka_bootstrap}",
            store=settings.store,
            topic_partitions=settings.partitions,
            topic_replication_factor=1,
            datadir=str(settings.data_dir),
            web_enabled=False,
            autodiscover=False,
            processing_guarantee="at_least_once",
            producer_acks=-1,
            producer_linger_ms=settings.producer_linger_ms,
            consumer_auto_offset_reset="earliest",
            stream_wait_empty=False,
            # Failover time after a crash is bounded by the session timeout.
            broker_session_timeout=settings.session_timeout_seconds,
            broker_heartbeat_interval=settings.session_timeout_seconds / 4,
            # Every payload is already bytes (orjson envelopes, encoded states).
            key_serializer="raw",
            value_serializer="raw",
        )
        self.commands = self.app.topic(
            topic_name(settings, topics.COMMANDS),
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
        )
        # The other topics are only written, straight through the app's producer (see _send).
        self._names = {
            "events": topic_name(settings, topics.TASK_EVENTS),
            "outcomes": topic_name(settings, topics.OUTCOMES),
            "dead-letter": topic_name(settings, topics.DEAD_LETTER),
            **{p: topic_name(settings, topics.dispatch(p)) for p in topics.PRIORITIES},
        }
        # Decoded states of recently touched tasks: decoding the stored JSON on every
        # command cost more than deciding. Bounded, and cleared when partitions move.
        self._cache: OrderedDict[bytes, TaskState] = OrderedDict()
        mb = 1024 * 1024
        self.table = self.app.Table(
            "task-state",
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
            options={
                "write_buffer_size": settings.rocksdb_write_buffer_mb * mb,
                "max_write_buffer_number": 2,
                "block_cache_size": settings.rocksdb_block_cache_mb * mb,
            },
        )
        self.table.on_recover(self._on_recovered)
        self.app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]  # mode types receivers narrowly
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self.app.agent(self.commands, name="task-processor", concurrency=1)(self._process)
        self.app.task(self._firing_loop)
        self.app.task(self._report_stats)
        self.executor: Executor | None = None
        if settings.executor_enabled:
            self.executor = Executor(settings)
            self.app.task(self._run_executor)

    # ------------------------------------------------------------------ the agent

    async def _process(self, stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for event in stream.events():
            started = time.perf_counter()
            await self.apply(event.key, event.value, event.message)
            self.stats.apply_seconds += time.perf_counter() - started
            yield None

    async def apply(self, key: bytes | None, raw: bytes, message: Any) -> None:
        """Apply one command message: decide, store, send."""
        self.stats.commands += 1
        try:
            command: Command | None = decode_command(raw)
        except InvalidCommand as exc:
            command = None
            invalid = exc
        except DecodeError as exc:
            await self._dead(message, raw, exc)
            return
        task_id = command.task_id if command is not None else invalid.task_id
        if isinstance(command, Wake):
            self._woken.pop(task_id, None)
        if key != task_id.encode():
            await self._dead(message, raw, DecodeError("message key must be the task id", field="key"))
            return
        state = self._load(key)
        events = decide(command, state) if command is not None else reject_invalid(invalid, state)
        if not events:
            return
        for e in events:
            state = evolve(state, e)
        if state is None:
            del self.table[key]
            self._cache.pop(key, None)
        else:
            self.table[key] = Stored(state, list(events), time.time()).dump()
            self._remember(key, state)
        await self._send(key, events)
        self._index(task_id, state)

    def _load(self, key: bytes) -> TaskState | None:
        state = self._cache.get(key)
        if state is not None:
            self._cache.move_to_end(key)
            return state
        raw = self.table.get(key)
        if raw is None:
            return None
        # The state alone: validating the last events too doubled the cost of a cache miss.
        state = TaskState.model_validate(orjson.loads(raw)["state"], context=TOLERANT)
        self._remember(key, state)
        return state

    def _remember(self, key: bytes, state: TaskState) -> None:
        self._cache[key] = state
        self._cache.move_to_end(key)
        if len(self._cache) > self.settings.state_cache_size:
            self._cache.popitem(last=False)

    async def _send(self, key: bytes, events: Iterable[Event]) -> None:
        # Straight to the app's producer: a Topic.send inside an agent is "attached" to the
        # source offset and published only at the next commit (every 2.8 s), and its
        # per-message machinery cost more than the decision itself. Sending now is as safe:
        # Faust flushes this producer before it commits offsets (see the module docstring).
        producer = self.app.producer
        for e in events:
            self.stats.events += 1
            value = encode(event_envelope(e, source=self.source, correlation_id=None))
            await producer.send(self._names["events"], key, value, None, None, None)
            if isinstance(e, ExecutionDispatched):
                await producer.send(self._names[str(e.priority)], key, value, None, None, None)
            elif isinstance(e, ExecutionCompleted):
                await producer.send(self._names["outcomes"], key, value, None, None, None)
            elif e.type == "CommandRejected":
                self.stats.rejected += 1

    async def _dead(self, message: Any, raw: bytes, error: Exception) -> None:
        self.stats.dead_letters += 1
        log.warning("dead-letter: %s", error)
        value = dead_letter_value(
            topic=message.topic, partition=message.partition, offset=message.offset, payload=raw, error=error
        )
        await self.app.producer.send(self._names["dead-letter"], message.key, value, None, None, None)

    def _index(self, task_id: str, state: TaskState | None) -> None:
        if state is None:
            self.index.set(task_id, None)
            self.tenants.pop(task_id, None)
            self._woken.pop(task_id, None)
            return
        when = next_wakeup(state)
        woken = self._woken.get(task_id)
        if when is not None and woken is not None and when <= woken[0]:
            # A Wake sent at woken[0] covers everything due by then and is still on its way:
            # another one now would only double the load. Re-send only if it got lost.
            when = woken[1]
        self.index.set(task_id, when)
        self.tenants[task_id] = sys.intern(state.tenant)

    # ------------------------------------------------------------------ ownership

    async def _on_assigned(self, sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        # Recovery of the new assignment is about to start: fire nothing until it is done.
        self.ready = False
        self._cache.clear()

    async def _on_revoked(self, sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        self.ready = False
        self._cache.clear()

    async def _on_recovered(self) -> None:
        """Rebuild the due-index from the table (active partitions only) and resend recent events."""
        started = time.perf_counter()
        self.index.clear()
        self.tenants.clear()
        self._woken.clear()
        cutoff = time.time() - RESEND_WINDOW
        resend: list[tuple[bytes, list[Event]]] = []
        for key, raw in self.table.items():
            doc = orjson.loads(raw)
            entry = IndexEntry.read(doc)
            self.index.set(entry.task_id, entry.wakeup)
            self.tenants[entry.task_id] = sys.intern(entry.tenant)
            if entry.applied_at >= cutoff and doc["last_events"]:
                resend.append((key, Stored.from_doc(doc).last_events))
        read = time.perf_counter() - started
        for key, events in resend:
            self.stats.resent_events += len(events)
            await self._send(key, events)
        self.stats.index_rebuilds += 1
        self.stats.tasks_owned = len(self.tenants)
        self.stats.last_rebuild_seconds = time.perf_counter() - started
        log.info(
            "due-index rebuilt: %d tasks in %.3fs (table read %.3fs), %d tasks' last events resent",
            len(self.tenants), self.stats.last_rebuild_seconds, read, len(resend),
        )  # fmt: skip
        self.ready = True

    # ------------------------------------------------------------------ firing

    async def _firing_loop(self) -> None:
        # The worker configured logging by now. Per-message debug records of the Kafka and
        # Faust internals were created (and dropped) on the hot path: cap them at our level.
        level = logging.getLevelName(self.settings.log_level.upper())
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(level if isinstance(level, int) else logging.INFO)
        tick = self.settings.firing_tick_seconds
        resend = timedelta(seconds=self.settings.wake_resend_seconds)
        commands = self.commands.get_topic_name()
        while True:
            if not self.ready:
                await asyncio.sleep(tick)
                continue
            now = _now()
            for task_id, _when in self.index.pop_due(now):
                tenant = self.tenants.get(task_id)
                if tenant is None:
                    continue
                wake = Wake(command_id=str(uuid.uuid4()), task_id=task_id, tenant=tenant, actor="system", at=now)
                value = encode(command_envelope(wake, source=self.source))
                await self.app.producer.send(commands, task_id.encode(), value, None, None, None)
                self.stats.wakes_sent += 1
                # Should this Wake be lost, wake the task again; applying it replaces this entry.
                self._woken[task_id] = (now, now + resend)
                self.index.set(task_id, now + resend)
            nxt = self.index.next_time()
            delay = tick if nxt is None else min(tick, max((nxt - _now()).total_seconds(), 0.0))
            await asyncio.sleep(delay)

    async def _report_stats(self) -> None:
        """Log the processor's throughput every 10 seconds."""
        every = 10.0
        last_commands, last_apply, last_wakes = 0, 0.0, 0
        while True:
            await asyncio.sleep(every)
            st = self.stats
            n = st.commands - last_commands
            log.info(
                "processor: %.0f commands/s, %.3f ms per command, %.0f wakes/s, %d tasks due-indexed",
                n / every, (st.apply_seconds - last_apply) / max(n, 1) * 1000,
                (st.wakes_sent - last_wakes) / every, len(self.index),
            )  # fmt: skip
            last_commands, last_apply, last_wakes = st.commands, st.apply_seconds, st.wakes_sent

    async def _run_executor(self) -> None:
        assert self.executor is not None
        await self.executor.run()
