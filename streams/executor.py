"""Executors: stateless consumers of the dispatch topics that run the work.

- Bounded concurrency: at most ``concurrency`` attempts in flight per process; the consumer
  pauses its partitions while the local queues are full.
- Weighted by priority without starvation: free slots go to high, normal and low in the
  ratio of ``weights`` (6:3:1 by default) while all three wait; an idle class's share goes
  to the others.
- At-least-once: a dispatch message's offset is committed only once every message before
  it in its partition has finished, so a crash re-delivers unfinished work. The execution id
  travels with every attempt, so a re-run is recognisable at the target, and the task's owner
  ignores a second outcome for the same attempt.
- Outcomes go back to the task's owner as commands (``ReportExecutionStarted``,
  ``ReportExecutionOutcome``): retries, timeouts and overlap stay its decisions. They are
  batched per partition of ``commands`` for a few milliseconds (``streams.batcher``): one
  message to the owner carries many reports.
- Cancellation reaches the work: the task processor also puts a cancelled
  ``ExecutionCompleted`` on the dispatch topics, keyed like the dispatch, so it lands on the
  partition, and so normally the executor, that got the dispatch. That executor cancels the
  attempt's asyncio task (the HTTP runner then sends the work's cancel request, a handler gets
  ``CancelledError``, a shell command's process group gets SIGTERM, then SIGKILL) or drops
  the dispatch if it is still queued or arrives later. The
  execution already ended ``cancelled`` at its owner, so nothing is reported for it. An
  executor that no longer holds the partition does not see the cancellation; the attempt's
  new owner does (it reads the partition from the last commit, dispatch then cancellation).
  While all slots are busy and the consumer is paused, a cancellation waits like any message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from schemas.commands import ReportExecutionOutcome, ReportExecutionStarted
from schemas.envelope import decode_event
from schemas.errors import DecodeError
from schemas.events import ExecutionCompleted, ExecutionDispatched
from schemas.secrets import SecretError, open_work, scrub
from schemas.topics import PRIORITIES
from streams import metrics
from streams.batcher import ReportBatcher
from streams.connections import kafka_options, track_topics
from streams.deadletter import dead_letter_record
from streams.fence import TopicFence, fenced_http_client
from streams.runners import Attempt, Cancellation, Runners, RunResult
from streams.settings import Settings, topic_name
from streams.shell import ShellRunner

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class OffsetTracker:
    """Per partition: which offsets are in flight, so commits never pass unfinished work.

    Kafka keeps one committed offset per partition, so the oldest unfinished dispatch holds
    back everything after it: a successor after a crash would run again all the work that
    finished behind it (hundreds of repeated requests per kill were seen). So each commit
    also says, in its metadata, which offsets between the committed one and the next were
    still in flight (:func:`encode_in_flight`); a successor skips the others.
    """

    def __init__(self) -> None:
        self._inflight: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._finished_before: dict[TopicPartition, _Finished] = {}

    def started(self, tp: TopicPartition, offset: int) -> None:
        self._inflight.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        self._inflight.get(tp, set()).discard(offset)

    def committable(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offset to commit per partition (the oldest unfinished one, else the next), and
        in its metadata the offsets after it still in flight."""
        result = {}
        for tp, nxt in self._next.items():
            inflight = self._inflight.get(tp)
            if not inflight:
                result[tp] = OffsetAndMetadata(nxt, "")
            else:
                base = min(inflight)
                result[tp] = OffsetAndMetadata(base, encode_in_flight(base, nxt, inflight))
        return result

    def resume(self, tp: TopicPartition, committed: OffsetAndMetadata | None) -> None:
        """Take over ``tp`` from where its last owner committed: remember what it finished."""
        self.forget([tp])
        if committed is not None and committed.offset >= 0:
            finished = decode_in_flight(committed.offset, committed.metadata)
            if finished is not None:
                self._finished_before[tp] = finished

    def finished_before(self, tp: TopicPartition, offset: int) -> bool:
        """Whether the partition's last owner already finished this offset (so it is not run again)."""
        finished = self._finished_before.get(tp)
        return finished is not None and finished.contains(offset)

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._inflight.pop(tp, None)
            self._next.pop(tp, None)
            self._finished_before.pop(tp, None)


METADATA_LIMIT = 3000
"""Characters of commit metadata used (brokers accept 4096 by default)."""


@dataclass(frozen=True)
class _Finished:
    """Offsets in ``[base, limit)`` whose bit is 0 in ``in_flight`` were finished."""

    base: int
    limit: int
    in_flight: bytes

    def contains(self, offset: int) -> bool:
        if not self.base <= offset < self.limit:
            return False
        i = offset - self.base
        return not self.in_flight[i >> 3] & (1 << (i & 7))


def encode_in_flight(base: int, nxt: int, inflight: set[int]) -> str:
    """Commit metadata naming the offsets in ``[base, nxt)`` still in flight: ``v1:<limit>:<bitmap>``.

    A bitmap (zlib, base64) over ``[base, limit)``; when it does not fit :data:`METADATA_LIMIT`,
    ``limit`` is lowered (offsets from ``limit`` on are then run again, as without metadata).
    """
    limit = nxt
    while limit > base:
        bits = bytearray((limit - base + 7) // 8)
        for offset in inflight:
            if offset < limit:
                i = offset - base
                bits[i >> 3] |= 1 << (i & 7)
        text = f"v1:{limit}:{base64.b64encode(zlib.compress(bytes(bits))).decode()}"
        if len(text) <= METADATA_LIMIT:
            return text
        limit = base + (limit - base) // 2
    return ""


def decode_in_flight(base: int, metadata: str | None) -> _Finished | None:
    """The finished offsets a commit's metadata names, or None (no or unreadable metadata)."""
    if not metadata or not metadata.startswith("v1:"):
        return None
    try:
        _, limit, packed = metadata.split(":", 2)
        bits = zlib.decompress(base64.b64decode(packed, validate=True))
        finished = _Finished(base, int(limit), bits)
    except (ValueError, zlib.error):
        return None
    return finished if len(bits) * 8 >= finished.limit - base else None


class WeightedQueues:
    """One FIFO per priority class; ``pop`` serves them by weighted round robin."""

    def __init__(self, weights: tuple[int, int, int]) -> None:
        self.queues: dict[str, deque[ConsumerRecord[bytes, bytes]]] = {p: deque() for p in PRIORITIES}
        self._cycle = [p for p, w in zip(PRIORITIES, weights, strict=True) for _ in range(max(w, 1))]
        self._pos = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def push(self, priority: str, record: ConsumerRecord[bytes, bytes]) -> None:
        self.queues[priority].append(record)

    def drop(self, tps: Iterable[TopicPartition]) -> None:
        """Forget the queued records of partitions this process no longer owns."""
        gone = {(tp.topic, tp.partition) for tp in tps}
        for priority, queue in self.queues.items():
            self.queues[priority] = deque(r for r in queue if (r.topic, r.partition) not in gone)

    def pop(self) -> ConsumerRecord[bytes, bytes] | None:
        for _ in range(len(self._cycle)):
            priority = self._cycle[self._pos]
            self._pos = (self._pos + 1) % len(self._cycle)
            if self.queues[priority]:
                return self.queues[priority].popleft()
        return None


@dataclass
class ExecutorStats:
    """Counters of one executor process (exposed for tests, benchmarks and metrics)."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    skipped_finished: int = 0
    """Dispatches a previous owner of the partition had finished, not run again."""
    cancelled: int = 0
    """Attempts stopped (running or not yet started) because their execution was cancelled."""
    in_flight: int = 0
    peak_in_flight: int = 0
    by_priority: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PRIORITIES, 0))


class Executor:
    """Consumes ``dispatch.<priority>``, runs each attempt, reports back on ``commands``."""

    def __init__(self, settings: Settings, *, worker_id: str | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id or settings.worker_id
        self.stats = ExecutorStats()
        self._queues = WeightedQueues(settings.executor_weights)
        self._offsets = OffsetTracker()
        self._slots = asyncio.Semaphore(settings.executor_concurrency)
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        """Execution ids cancelled lately (bounded): their dispatches, queued or late, are dropped."""
        self._running: dict[str, tuple[asyncio.Future[RunResult], Cancellation]] = {}
        """Attempts running, by execution id, so a cancellation can stop them."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_partition: dict[asyncio.Task[None], TopicPartition] = {}
        self._wakeup = asyncio.Event()
        self._topic_priority = {settings.topics.dispatch(p): p for p in PRIORITIES}
        self._commands = settings.topics.commands
        self._keyring = settings.secret_keyring()  # a bad key configuration stops the start

    async def run(self) -> None:
        """Run until cancelled."""
        group = topic_name(self.settings, "executors")
        kafka = kafka_options(self.settings)
        consumer = AIOKafkaConsumer(
            **kafka,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=1000,
            session_timeout_ms=int(self.settings.session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(self.settings.session_timeout_seconds * 250),
        )
        producer = AIOKafkaProducer(**kafka, acks="all", linger_ms=1)
        admin = AIOKafkaAdminClient(**kafka)
        consumer.subscribe(list(self._topic_priority), listener=_Handover(self, consumer, admin, group))
        async with fenced_http_client(self.settings, self.settings.executor_concurrency) as http:
            await admin.start()
            await producer.start()
            await consumer.start()
            await track_topics(self.settings.topics.all, admin, producer)
            self._batcher = await self._new_batcher(producer)
            runners = Runners(
                http,
                producer,
                self.settings.allowed_handlers,
                TopicFence.from_settings(self.settings),
                self.settings.http_response_limit_bytes,
                ShellRunner.from_settings(self.settings),
            )
            dispatcher = asyncio.create_task(self._dispatch_loop(producer, runners))
            committer = asyncio.create_task(self._commit_loop(consumer))
            lag = asyncio.create_task(metrics.measure_lag(self.settings, {group: list(self._topic_priority)}))
            try:
                await self._fetch_loop(consumer, producer)
            finally:
                dispatcher.cancel()
                committer.cancel()
                lag.cancel()
                for task in list(self._tasks):
                    task.cancel()
                with contextlib.suppress(Exception):
                    await self._batcher.flush()
                with contextlib.suppress(Exception):
                    await consumer.commit(self._offsets.committable())
                await consumer.stop()
                await producer.stop()
                await admin.close()

    async def _new_batcher(self, producer: AIOKafkaProducer) -> ReportBatcher:
        partitions = await producer.partitions_for(self._commands)

        async def produce(key: bytes, value: bytes, partition: int) -> asyncio.Future[Any]:
            delivery: asyncio.Future[Any] = await producer.send(
                self._commands, key=key, value=value, partition=partition
            )
            return delivery

        return ReportBatcher(
            produce,
            len(partitions),
            f"executor/{self.worker_id}",
            window=self.settings.executor_report_window_seconds,
            max_size=self.settings.executor_report_batch_size,
        )

    async def _fetch_loop(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        capacity = self.settings.executor_concurrency
        paused = False
        while True:
            backlog = len(self._queues)
            if backlog >= capacity and not paused:
                consumer.pause(*consumer.assignment())
                paused = True
            elif paused and backlog < capacity // 2:
                consumer.resume(*consumer.assignment())
                paused = False
            batch = await consumer.getmany(timeout_ms=100)
            for tp, records in batch.items():
                priority = self._topic_priority.get(tp.topic, "normal")
                for record in records:
                    self._offsets.started(tp, record.offset)
                    if self._offsets.finished_before(tp, record.offset):
                        self.stats.skipped_finished += 1
                        self._offsets.finished(tp, record.offset)
                        continue
                    if self._is_cancellation(record):
                        self._offsets.finished(tp, record.offset)
                        continue
                    self._queues.push(priority, record)
            if batch:
                self._wakeup.set()

    async def _dispatch_loop(self, producer: AIOKafkaProducer, runners: Runners) -> None:
        while True:
            await self._slots.acquire()
            record = self._queues.pop()
            while record is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                record = self._queues.pop()
            task = asyncio.create_task(self._execute(record, producer, runners))
            self._tasks.add(task)
            self._task_partition[task] = TopicPartition(record.topic, record.partition)
            task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._task_partition.pop(task, None)

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        # Work finished since the last commit runs again after a crash: commit often.
        while True:
            await asyncio.sleep(self.settings.executor_commit_interval_seconds)
            offsets = {tp: o for tp, o in self._offsets.committable().items() if tp in consumer.assignment()}
            if offsets:
                try:
                    await consumer.commit(offsets)
                except Exception as exc:  # a rebalance in progress; the next round retries
                    log.warning("executor: commit failed: %s", exc)

    def _is_cancellation(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Whether ``record`` is a cancellation (applied here, at once, not queued behind work)."""
        value = record.value or b""
        # A cheap filter first: decoding every dispatch twice would cost the hot path.
        if b"ExecutionCompleted" not in value:
            return False
        try:
            event = decode_event(value)
        except DecodeError:
            return False  # dead-lettered by the dispatch path
        if not isinstance(event, ExecutionCompleted) or event.status != "cancelled":
            return False  # not something the task processor puts here: dead-lettered
        self.cancel(event.execution_id)
        return True

    def cancel(self, execution_id: str) -> None:
        """Stop the execution's attempt if it runs here, and drop its dispatch if it comes later.

        Idempotent: a cancellation delivered twice, or after the attempt ended, changes nothing.
        """
        self._cancelled[execution_id] = None
        if len(self._cancelled) > 100_000:
            self._cancelled.popitem(last=False)
        running = self._running.get(execution_id)
        if running is not None and not running[0].done():
            future, cancellation = running
            cancellation.requested = True  # read by the runner's cleanup: stop the external work too
            future.cancel()

    def _first_time(self, key: tuple[str, int]) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > 100_000:
            self._seen.popitem(last=False)
        return True

    async def _execute(
        self, record: ConsumerRecord[bytes, bytes], producer: AIOKafkaProducer, runners: Runners
    ) -> None:
        tp = TopicPartition(record.topic, record.partition)
        cancelled = False
        try:
            await self._execute_record(record, producer, runners)
        except asyncio.CancelledError:
            cancelled = True  # stopped, not finished: the offset must not be committed past it
            raise
        finally:
            if not cancelled:
                self._offsets.finished(tp, record.offset)
            self._slots.release()

    async def _execute_record(
        self, record: ConsumerRecord[bytes, bytes], producer: AIOKafkaProducer, runners: Runners
    ) -> None:
        try:
            event = decode_event(record.value or b"")
        except DecodeError as exc:
            await producer.send(self.settings.topics.dead_letter, **dead_letter_record(record, exc))
            return
        if not isinstance(event, ExecutionDispatched):
            await producer.send(
                self.settings.topics.dead_letter,
                **dead_letter_record(record, DecodeError(f"expected ExecutionDispatched, got {event.type}")),
            )
            return
        # Reports carry the dispatch's correlation id: one id from the request (or tick) that
        # caused the run to its outcome.
        correlation = _correlation_of(record.value or b"")
        # Every record logged while this attempt runs names it (this task's context only).
        structlog.contextvars.bind_contextvars(
            task_id=event.task_id, execution_id=event.execution_id, correlation_id=correlation
        )
        if not self._first_time((event.execution_id, event.attempt)):
            self.stats.duplicates += 1
            return
        if event.execution_id in self._cancelled:
            self.stats.cancelled += 1  # cancelled while queued: the owner already ended it
            return
        stats = self.stats
        stats.started += 1
        stats.in_flight += 1
        metrics.IN_FLIGHT.inc()
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        stats.by_priority[str(event.priority)] = stats.by_priority.get(str(event.priority), 0) + 1
        cancellation = Cancellation()
        try:
            started_at = _now()
            if event.attempt == 1:
                late = metrics.lateness(event.slot, started_at)
                if late is not None:
                    metrics.START_LATENESS.observe(late)
            started = ReportExecutionStarted(
                command_id=str(uuid.uuid4()), task_id=event.task_id, tenant=event.tenant,
                actor=f"executor:{self.worker_id}", at=started_at, execution_id=event.execution_id,
                attempt=event.attempt, worker=self.worker_id, started_at=started_at,
            )  # fmt: skip
            budget = (event.deadline - _now()).total_seconds()
            run = asyncio.ensure_future(self._run(event, runners, budget, cancellation))
            self._running[event.execution_id] = (run, cancellation)
            # "Running" is reported only for work that is still running after a short while:
            # the outcome carries started_at anyway, and for quick work the extra command
            # would be a third of the task owner's load.
            delay = self.settings.executor_started_report_after_seconds
            done, _ = await asyncio.wait({run}, timeout=max(delay, 0.0))
            if not done:
                # Nothing waits for this one: a lost "running" report only delays the view.
                (await self._report(producer, started, correlation)).add_done_callback(_ignore_failure)
            try:
                result = await run
            except asyncio.CancelledError:
                if self._stopped_by_cancellation(cancellation):
                    return
                raise
            finished_at = _now()
            delivered = await self._report(
                producer,
                ReportExecutionOutcome(
                    command_id=str(uuid.uuid4()), task_id=event.task_id, tenant=event.tenant,
                    actor=f"executor:{self.worker_id}", at=finished_at, execution_id=event.execution_id,
                    attempt=event.attempt, worker=self.worker_id, status=result.status, error=result.error,
                    result=result.result, started_at=started_at, finished_at=finished_at,
                ),
                correlation,
            )  # fmt: skip
            # The offset may be committed once this returns: the outcome must be on the broker.
            await delivered
            metrics.outcome(result.status)
            if result.status == "succeeded":
                stats.succeeded += 1
            else:
                stats.failed += 1
        finally:
            stats.in_flight -= 1
            metrics.IN_FLIGHT.dec()
            # Only this attempt's entry: a later attempt of the execution may have replaced it.
            if self._running.get(event.execution_id, (None, None))[1] is cancellation:
                del self._running[event.execution_id]

    def _stopped_by_cancellation(self, cancellation: Cancellation) -> bool:
        """After the attempt's run raised CancelledError: True when the execution was cancelled
        (counted; no outcome is reported, the owner already ended it ``cancelled``), False when
        this task itself is being cancelled (a shutdown; the attempt is not finished)."""
        current = asyncio.current_task()
        if not cancellation.requested or (current is not None and current.cancelling()):
            return False
        self.stats.cancelled += 1
        return True

    async def _run(
        self, event: ExecutionDispatched, runners: Runners, budget: float, cancellation: Cancellation | None = None
    ) -> RunResult:
        """Run the attempt with its secrets decrypted, here and only here; none leaks into the outcome."""
        try:
            work, params, clears = open_work(
                event.work,
                event.params,
                keyring=self._keyring,
                tenant=event.tenant,
                task_id=event.task_id,
                accept_clear=self.settings.secret_accept_clear_headers,
            )
        except SecretError as exc:
            return RunResult("failed", error=f"secret at {exc}")
        attempt = Attempt(
            event.task_id, event.tenant, event.execution_id, event.attempt, params, cancellation or Cancellation()
        )
        result = await runners.run(work, attempt, budget)
        if not clears:
            return result
        # The target may echo a credential (in a body, or an error quoting a header).
        return RunResult(result.status, scrub(result.result, clears), scrub(result.error, clears))

    async def _report(
        self,
        producer: AIOKafkaProducer,
        command: ReportExecutionStarted | ReportExecutionOutcome,
        correlation: str | None = None,
    ) -> asyncio.Future[None]:
        return await self._batcher.add(command, correlation)

    async def resend_recent_reports(self) -> int:
        """Send again the reports of the last seconds (see :meth:`ReportBatcher.resend_recent`);
        how many batches. Nothing before the executor has started."""
        batcher: ReportBatcher | None = getattr(self, "_batcher", None)
        if batcher is None:
            return 0
        return await batcher.resend_recent()


class _Handover(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped base
    """Hand dispatch partitions over with what was finished, so the next owner skips it."""

    def __init__(self, executor: Executor, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, group: str) -> None:
        self.executor = executor
        self.consumer = consumer
        self.admin = admin
        self.group = group

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        offsets = self.executor._offsets
        gone = set(revoked)
        # Let what runs for these partitions finish, briefly: committed as finished, the next
        # owner skips it; cut off, the next owner runs it again while it still runs here.
        running = [t for t, tp in self.executor._task_partition.items() if tp in gone]
        if running:
            await asyncio.wait(running, timeout=self.executor.settings.session_timeout_seconds / 4)
        mine = {tp: o for tp, o in offsets.committable().items() if tp in gone}
        if mine:
            try:
                await self.consumer.commit(mine)
            except Exception as exc:  # the next owner then repeats more; never worse than that
                log.warning("executor: commit on revoke failed: %s", exc)
        offsets.forget(revoked)
        self.executor._queues.drop(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if not assigned:
            return
        try:
            committed = await self.admin.list_consumer_group_offsets(self.group, partitions=list(assigned))
        except Exception as exc:  # without it everything after the committed offset runs again
            log.warning("executor: could not read what the last owner finished: %s", exc)
            committed = {}
        for tp in assigned:
            self.executor._offsets.resume(tp, committed.get(tp))


def _correlation_of(raw: bytes) -> str | None:
    """The correlation id of an (already validated) event envelope."""
    try:
        found = orjson.loads(raw).get("correlationid")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def _ignore_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("executor: a report could not be sent: %s", future.exception())
