"""The task processor: a Faust app that owns each task's state by partition.

Shape (see DESIGN.md):

- ``commands`` (keyed by task id) is co-partitioned with the ``task-state`` table, so the
  worker that owns a partition owns its tasks: partition ownership replaces locks.
- The command agent (concurrency 1, so offsets never pass an unapplied message) applies each
  message of its partitions in order: a command (load the task's state, decide with the pure
  core, save, publish the events), a batch of commands (executors' outcome reports), or a
  tick from the firing loop (wake every task of that partition that is due). Undecodable
  input goes to ``dead-letter``.
- The parts: :class:`~streams.store.StateStore` (the table and a decoded cache),
  :class:`~streams.publisher.Publisher` (events to their topics), :class:`~streams.firing.Firing`
  (the due-index of the owned partitions and the ticks on their way).

Crash safety under at-least-once: Faust flushes the producer before it commits offsets, so
an uncommitted message is applied again after a crash. The decider is deterministic and
remembers recent command ids, so a command applied again yields the same events (same ids)
or none; a tick applied again finds nothing due, or wakes with the same command ids (derived
from the tick id) what it did not get to. The one gap left, a changelog write that reached
the broker while the command's events did not, is closed by keeping each task's last events
in its stored state and sending them again, after recovery, for tasks touched in the last
``RESEND_WINDOW`` seconds whose events are not on ``task-events`` (``streams.resend``); every
consumer deduplicates by event id or sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaProducer

from scheduler import Decision, TaskState, decision, next_wakeup, rejection
from schemas.commands import Command, Wake
from schemas.control import CommandBatch, Tick
from schemas.envelope import control_envelope, decode_command_object, decode_message_correlated, encode
from schemas.errors import DecodeError, InvalidCommand
from schemas.ids import uuid5_text
from streams import faust_consumer, metrics, runtime
from streams.calendars import CalendarFollower
from streams.connections import faust_options, kafka_options, track_topics
from streams.executor import Executor
from streams.firing import Firing
from streams.offsets import OffsetWatch
from streams.publisher import Publisher
from streams.resend import published_event_ids
from streams.settings import Settings, topic_name
from streams.store import StateStore, Stored, claim_data_dir, partition_for

log = logging.getLogger(__name__)

_FAILED_WAKE_RETRY_SECONDS = 60.0
"""How long a task whose wake the decider failed on waits before it is woken again."""


def _command_json(command: Command | InvalidCommand) -> Any:
    """What a dead letter of a command from a batch carries: the command (or the invalid one's reason)."""
    if isinstance(command, InvalidCommand):
        return {"task_id": command.task_id, "reason": str(command)}
    return command.model_dump(mode="json")


RESEND_WINDOW = 60.0
"""Seconds: after recovery, the last events of tasks applied this recently are sent again if
they are not on ``task-events``."""
RESEND_CLOCK_MARGIN = 5.0
"""Seconds read before the window too: a record's timestamp is its producer's clock."""

WAKE_NAMESPACE = uuid.UUID("3b0f8a2e-6c1d-5e47-9a13-5d7c2b9e4f61")
"""Namespace of the ids of the ``Wake`` commands a tick applies (derived from tick and task)."""

COVERED_POLL_SECONDS = 0.003
"""How often the firing loop looks for tasks falling due while ticks are on their way."""

TICK_KEY = b"tick"
BATCH_KEY = b"batch"
"""Keys of the control messages; they address a partition, not a task."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ProcessorStats:
    """Counters of the task processor (exposed for tests and metrics)."""

    commands: int = 0
    batches: int = 0
    forwarded: int = 0
    resent_events: int = 0
    index_rebuilds: int = 0
    last_rebuild_seconds: float = 0.0
    tasks_owned: int = 0
    apply_seconds: float = 0.0
    offsets_skipped: int = 0
    """Offsets of ``commands`` never handed to the agent (streams/offsets.py)."""


@dataclass(frozen=True)
class _Source:
    """Where a message came from, for dead letters and for the partition it was applied in."""

    topic: str
    partition: int
    offset: int


class TaskProcessor:
    """The Faust app with its topics, table, agent, firing loop and (optionally) executor."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = ProcessorStats()
        self.firing = Firing(settings.tick_resend_seconds)
        self.ready = False
        self.source = f"scheduler/worker/{settings.worker_id}"
        self._fire_now = asyncio.Event()
        self._tick_sends: set[asyncio.Future[None]] = set()
        self._topics_tracked = False
        if settings.store.startswith("rocksdb"):
            self._data_dir_lock = claim_data_dir(settings.data_dir)
        self.app = faust_consumer.App(
            topic_name(settings, settings.app_id),
            **faust_options(settings),
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
            # At a rebalance, finish the message being applied before giving partitions up
            # (faust's default).
            stream_wait_empty=True,
            # Failover time after a crash is bounded by the session timeout.
            broker_session_timeout=settings.session_timeout_seconds,
            broker_heartbeat_interval=settings.session_timeout_seconds / 4,
            # Every payload is already bytes (orjson envelopes, encoded states).
            key_serializer="raw",
            value_serializer="raw",
        )
        self.app.fetch_max_wait_ms = settings.fetch_max_wait_ms
        self.commands = self.app.topic(
            settings.topics.commands,
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
        )
        mb = 1024 * 1024
        table = self.app.Table(
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
        self.table = table
        self.store = StateStore(table, settings.partitions, settings.state_cache_size)
        self.offsets = OffsetWatch()
        # The other topics are only written, straight through the app's producer: a Topic.send
        # inside an agent is "attached" to the source offset and published only at the next
        # commit (every 2.8 s), and its per-message machinery cost more than the decision
        # itself. Sending now is as safe: Faust flushes this producer before it commits offsets.
        self.publisher = Publisher(settings, self._send, self.source)
        table.on_recover(self._on_recovered)
        self.app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]  # mode types receivers narrowly
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self.app.agent(self.commands, name="task-processor", concurrency=1)(self._process)
        # Every tenant's calendars, read whole from the compacted topic and followed; the
        # firing loop waits until they are read, so no excluded slot runs for lack of them.
        self.calendars = CalendarFollower(settings)
        self.app.task(self._follow_calendars)
        self.app.task(self._firing_loop)
        self.app.task(self._report_stats)
        self.app.task(self._measure_lag)
        self.executor: Executor | None = None
        self._background: set[asyncio.Future[None]] = set()
        if settings.executor_enabled:
            self.executor = Executor(settings)
            self.app.task(self._run_executor)

    async def _send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None) -> Any:
        return await self.app.producer.send(topic, key, value, partition, None, None)

    # ------------------------------------------------------------------ the agent

    async def _process(self, stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for event in stream.events():
            started = time.perf_counter()
            message = event.message
            skipped = self.offsets.handed(message.partition, message.offset)
            if skipped is not None:
                self._skipped(message.topic, message.partition, skipped)
            await self.apply(event.key, event.value, _Source(message.topic, message.partition, message.offset))
            self.stats.apply_seconds += time.perf_counter() - started
            yield None

    async def apply(self, key: bytes | None, raw: bytes, source: _Source) -> None:
        """Apply one message of ``commands``: a command, a batch of commands, or a tick."""
        try:
            message, correlation = decode_message_correlated(raw)
        except InvalidCommand as exc:
            await self._apply_one(key, exc, raw, source, None)
            return
        except DecodeError as exc:
            await self._dead(source, key, raw, exc)
            return
        match message:
            case Tick():
                await self._apply_tick(message, source)
            case CommandBatch():
                await self._apply_batch(message, key, raw, source)
            case _:
                await self._apply_one(key, message, raw, source, correlation)

    async def _apply_one(
        self,
        key: bytes | None,
        command: Command | InvalidCommand,
        raw: bytes,
        source: _Source,
        correlation: str | None,
    ) -> None:
        """Load, decide, save, publish: one command (or the rejection of an invalid one); its
        events carry the command's ``correlation`` id."""
        if key != command.task_id.encode():
            self.stats.commands += 1
            await self._dead(source, key, raw, DecodeError("message key must be the task id", field="key"))
            return
        await self._decide(key, command, source, correlation, raw)

    async def _decide(
        self,
        key: bytes,
        command: Command | InvalidCommand,
        source: _Source,
        correlation: str | None,
        raw: bytes | None = None,
    ) -> None:
        """Load, decide, save, publish one command (``raw``: its bytes, for a dead letter;
        None: the command's own JSON)."""
        self.stats.commands += 1
        state = self.store.load(key)
        try:
            if isinstance(command, InvalidCommand):
                decided = rejection(command, state)
            else:
                decided = decision(command, state, self.calendars.book.of(command.tenant))
        except Exception as exc:
            # The decider is total by design; should a defect (or a calendar it cannot evaluate)
            # make it raise, the message goes to dead-letter and the partition moves on, rather
            # than the agent stopping on it and every successor stopping on it again.
            log.exception("decider failed on a command for %s", command.task_id)
            payload = raw if raw is not None else orjson.dumps(_command_json(command))
            await self._dead(source, key, payload, exc)
            return
        await self._commit(key, decided, source.partition, correlation)

    async def _commit(self, key: bytes, decided: Decision, partition: int, correlation: str | None) -> None:
        if not decided.events:
            return
        # Dumped once, for the changelog and for the events' envelopes.
        dumped = [e.model_dump(mode="json") for e in decided.events]
        self.store.save(key, decided.state, decided.events, partition, dumped)
        # Where the key hashes to, as almost always: then the producer need not hash it again.
        # (A command another client's partitioner put elsewhere is applied where it landed;
        # its events still go where its key hashes to, with the task's other events.)
        hashed = partition if partition_for(key, self.settings.partitions) == partition else None
        await self.publisher.events(key, decided.events, correlation, hashed, dumped)
        self._track(key.decode(), decided.state, partition)

    def _track(self, task_id: str, state: TaskState | None, partition: int) -> None:
        if state is None:
            self.firing.track(task_id, "", partition, None)
        else:
            self.firing.track(task_id, state.tenant, partition, next_wakeup(state))

    async def _apply_batch(self, batch: CommandBatch, key: bytes | None, raw: bytes, source: _Source) -> None:
        """Apply each command of a batch as if it had come alone, in this partition."""
        self.stats.batches += 1
        for item in batch.commands:
            try:
                command: Command | InvalidCommand = decode_command_object(item)
            except InvalidCommand as exc:
                command = exc
            except DecodeError as exc:
                await self._dead(source, key, orjson.dumps(item), exc)
                continue
            item_key = command.task_id.encode()
            if partition_for(item_key, self.settings.partitions) != source.partition:
                # Applied here, its state would land on another partition's changelog: send it
                # on its own, keyed by task, to the partition that owns it.
                self.stats.forwarded += 1
                await self._send(source.topic, item_key, orjson.dumps(item), None)
                continue
            # Each report keeps the correlation id of its own envelope, not the batch's.
            found = item.get("correlationid") if isinstance(item, dict) else None
            correlation = found if isinstance(found, str) else None
            # Keyed by its own task id: decided as is (no key to check, no bytes to keep).
            await self._decide(item_key, command, source, correlation, None)

    async def _apply_tick(self, tick: Tick, source: _Source) -> None:
        """Wake every task of this partition that is due at or before the tick's time."""
        partition = source.partition
        for task_id, tenant in self.firing.take_due(partition, tick.at):
            key = task_id.encode()
            wake = Wake(
                command_id=uuid5_text(WAKE_NAMESPACE, f"{tick.tick_id}\x1f{task_id}"),
                task_id=task_id,
                tenant=tenant,
                actor="system",
                at=tick.at,
            )
            state = self.store.load(key)
            try:
                decided = decision(wake, state, self.calendars.book.of(tenant))
            except Exception as exc:
                # As for a command (see _decide): the task's wake is dead-lettered, the tick's other
                # tasks still fire, and this one is looked at again a minute later, not every tick.
                log.exception("decider failed waking %s", task_id)
                await self._dead(source, key, orjson.dumps(wake.model_dump(mode="json")), exc)
                retry = tick.at + timedelta(seconds=max(self.settings.tick_resend_seconds, _FAILED_WAKE_RETRY_SECONDS))
                self.firing.track(task_id, tenant, partition, retry)
                continue
            await self._commit(key, decided, partition, tick.tick_id)  # a wake's cause is its tick
            if not decided.events and state is not None:
                # Nothing to do although the index said so: look again a little later rather
                # than at every tick.
                wakeup = next_wakeup(state)
                later = tick.at + timedelta(seconds=self.settings.tick_resend_seconds)
                self.firing.track(task_id, tenant, partition, None if wakeup is None else max(wakeup, later))
        # The partition can take its next tick now.
        self._fire_now.set()

    async def _dead(self, source: _Source, key: bytes | None, raw: bytes, error: Exception) -> None:
        await self.publisher.dead_letter(
            topic=source.topic, partition=source.partition, offset=source.offset, key=key, payload=raw, error=error
        )

    # ------------------------------------------------------------------ ownership

    async def _on_assigned(self, sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        # Recovery of the new assignment is about to start: fire nothing until it is done.
        assigned = kwargs.get("assigned", args[0] if args else set())
        self.offsets.keep({tp.partition for tp in assigned if tp.topic == self.commands.get_topic_name()})
        self.ready = False
        metrics.WORKER_READY.set(0)
        self.store.clear_cache()

    def _skipped(self, topic: str, partition: int, skipped: range) -> None:
        log.error(
            "%s[%d]: offsets %d-%d were never handed to the processor (faust skipped them at a "
            "rebalance); their commands are not applied",
            topic, partition, skipped.start, skipped.stop - 1,
        )  # fmt: skip
        self.stats.offsets_skipped += len(skipped)
        metrics.COMMANDS_SKIPPED.inc(len(skipped))

    async def _on_revoked(self, sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        self.ready = False
        metrics.WORKER_READY.set(0)
        self.store.clear_cache()

    async def _on_recovered(self) -> None:
        """Rebuild the due-index from the table (active partitions only) and resend recent events."""
        started = time.perf_counter()
        await self._track_topics()
        self.firing.clear()
        cutoff = time.time() - RESEND_WINDOW
        resend: list[tuple[bytes, Stored]] = []
        for key, doc, entry, partition in self.store.entries():
            self.firing.restore(entry.task_id, entry.tenant, partition, entry.wakeup)
            if entry.applied_at >= cutoff and doc["last_events"]:
                resend.append((key, Stored.from_doc(doc, partition)))
        read = time.perf_counter() - started
        # Only what never reached task-events (a crash between changelog and events): the
        # rest is there already, and a dispatch sent twice can reach two executors.
        published = await published_event_ids(
            self.settings.kafka_bootstrap,
            self.publisher.events_topic,
            {stored.partition for _, stored in resend},
            int((cutoff - RESEND_CLOCK_MARGIN) * 1000),
            options=kafka_options(self.settings),
        )
        missing = 0
        for key, stored in resend:
            events = [e for e in stored.last_events if published is None or e.event_id not in published]
            if events:
                missing += 1
                self.stats.resent_events += len(events)
                await self.publisher.events(key, events)
        self.stats.index_rebuilds += 1
        self.stats.tasks_owned = len(self.firing)
        self.stats.last_rebuild_seconds = time.perf_counter() - started
        log.info(
            "due-index rebuilt: %d tasks in %.3fs (table read %.3fs); of %d tasks touched in the last %.0fs, "
            "%d had events missing from task-events, resent",
            len(self.firing), self.stats.last_rebuild_seconds, read, len(resend), RESEND_WINDOW, missing,
        )  # fmt: skip
        # What is alive now (modules, Faust, the due-index) lives long: never scan it again.
        runtime.freeze()
        self.ready = True
        metrics.WORKER_READY.set(1)
        metrics.TASKS_OWNED.set(len(self.firing))
        self._fire_now.set()
        if self.executor is not None:
            # A second line of defence for reports sent while partitions moved (the consumer's
            # guard, streams/faust_consumer.py, is the first): this process's executor sends its
            # recent ones again (applied ones are ignored). Every processor recovers after a
            # rebalance, so every executor hosted by one does.
            reports = asyncio.ensure_future(self._resend_reports())
            self._background.add(reports)
            reports.add_done_callback(self._background.discard)

    async def _track_topics(self) -> None:
        """The app's producer refreshes the metadata of this deployment's topics only (see
        :func:`streams.connections.track_topics`); the consumer tracks its subscription."""
        producer = getattr(self.app.producer, "_producer", None)  # aiokafka's, once started
        if producer is not None and not self._topics_tracked:
            self._topics_tracked = True
            await track_topics([*self.settings.topics.all, *self.app.tables.changelog_topics], producer)

    async def _resend_reports(self) -> None:
        assert self.executor is not None
        try:
            batches = await self.executor.resend_recent_reports()
        except Exception:
            log.exception("could not send the executor's recent reports again after a rebalance")
            return
        log.info("after the rebalance, the executor's reports of the last seconds sent again: %d batches", batches)

    # ------------------------------------------------------------------ firing

    async def _firing_loop(self) -> None:
        tick = self.settings.firing_tick_seconds
        commands = self.commands.get_topic_name()
        worker = self.settings.worker_id
        while True:
            self._fire_now.clear()
            if self.ready and self.calendars.caught_up.is_set():
                now = _now()
                for partition in self.firing.to_tick(now, time.monotonic()):
                    message = Tick(tick_id=str(uuid.uuid4()), partition=partition, at=now, worker=worker)
                    value = encode(control_envelope(message, self.source, "system", now))
                    self._send_tick(commands, value, partition)
            await self._sleep(tick)

    def _send_tick(self, topic: str, value: bytes, partition: int) -> None:
        """Send a tick without the producer's linger, and without waiting for it: a tick's wait is
        every due task's.

        A record sent the usual way waits up to ``producer_linger_ms`` for company. Handed to the
        same producer as a closed one-record batch, it leaves with the next request: at 30 fires/s
        the median from slot to dispatch went from 9.3 to 3.7 ms. Handing over a batch waits while
        the partition's previous one is still queued (for as long as the broker is away), so
        the firing loop does not wait on it. A tick that fails is logged and, like a lost one,
        sent again after ``tick_resend_seconds``.
        """
        sending = asyncio.ensure_future(self._send_unlingered(topic, TICK_KEY, value, partition))
        self._tick_sends.add(sending)
        sending.add_done_callback(self._tick_sent)

    async def _send_unlingered(self, topic: str, key: bytes, value: bytes, partition: int) -> None:
        producer: AIOKafkaProducer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]  # Faust's aiokafka driver
        batch = producer.create_batch()
        batch.append(key=key, value=value, timestamp=None)
        batch.close()
        await producer.send_batch(batch, topic, partition=partition)

    def _tick_sent(self, sending: asyncio.Future[None]) -> None:
        self._tick_sends.discard(sending)
        if not sending.cancelled() and (error := sending.exception()) is not None:
            log.warning("a tick was not sent (sent again in %.0fs): %r", self.settings.tick_resend_seconds, error)

    async def _sleep(self, longest: float) -> None:
        """Until the next wakeup of a partition free to tick, a tick is applied, or ``longest``;
        every few milliseconds while ticks are on their way (tasks may fall due behind them)."""
        delay = longest
        nxt = self.firing.next_time()
        if nxt is not None:
            delay = min(delay, max((nxt - _now()).total_seconds(), 0.0))
        if self.firing.covered():
            delay = min(delay, COVERED_POLL_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._fire_now.wait(), delay)

    async def _report_stats(self) -> None:
        """Log the processor's throughput every 10 seconds."""
        every = 10.0
        last_commands, last_apply, last_wakes, last_ticks = 0, 0.0, 0, 0
        while True:
            await asyncio.sleep(every)
            st, fs = self.stats, self.firing.stats
            metrics.TASKS_OWNED.set(len(self.firing))
            n = st.commands - last_commands
            log.info(
                "processor: %.0f commands/s, %.3f ms per command, %.0f ticks/s, %.0f wakes/s, %d tasks due-indexed",
                n / every, (st.apply_seconds - last_apply) / max(n, 1) * 1000,
                (fs.ticks_sent - last_ticks) / every, (fs.wakes_applied - last_wakes) / every, len(self.firing),
            )  # fmt: skip
            last_commands, last_apply, last_wakes, last_ticks = (
                st.commands, st.apply_seconds, fs.wakes_applied, fs.ticks_sent,
            )  # fmt: skip

    async def _measure_lag(self) -> None:
        """Keep ``scheduler_consumer_lag_messages`` of the processor's group on ``commands``."""
        await metrics.measure_lag(self.settings, {self.app.conf.id: [self.commands.get_topic_name()]})

    async def _follow_calendars(self) -> None:
        await self.calendars.run()

    async def _run_executor(self) -> None:
        assert self.executor is not None
        await self.executor.run()
