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
  ``ReportExecutionOutcome``): retries, timeouts and overlap stay its decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from schemas.commands import ReportExecutionOutcome, ReportExecutionStarted
from schemas.envelope import command_envelope, decode_event, encode
from schemas.errors import DecodeError
from schemas.events import ExecutionDispatched
from schemas.secrets import SecretError, open_work, scrub
from streams import topics
from streams.deadletter import dead_letter_record
from streams.runners import Attempt, Runners, RunResult
from streams.settings import Settings, topic_name

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class OffsetTracker:
    """Per partition: which offsets are in flight, so commits never pass unfinished work."""

    def __init__(self) -> None:
        self._inflight: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}

    def started(self, tp: TopicPartition, offset: int) -> None:
        self._inflight.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        self._inflight.get(tp, set()).discard(offset)

    def committable(self) -> dict[TopicPartition, int]:
        """The offset to commit per partition: the oldest unfinished one, else the next."""
        return {tp: min(self._inflight.get(tp) or {nxt}) for tp, nxt in self._next.items()}

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._inflight.pop(tp, None)
            self._next.pop(tp, None)


class WeightedQueues:
    """One FIFO per priority class; ``pop`` serves them by weighted round robin."""

    def __init__(self, weights: tuple[int, int, int]) -> None:
        self.queues: dict[str, deque[ConsumerRecord[bytes, bytes]]] = {p: deque() for p in topics.PRIORITIES}
        self._cycle = [p for p, w in zip(topics.PRIORITIES, weights, strict=True) for _ in range(max(w, 1))]
        self._pos = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def push(self, priority: str, record: ConsumerRecord[bytes, bytes]) -> None:
        self.queues[priority].append(record)

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
    in_flight: int = 0
    peak_in_flight: int = 0
    by_priority: dict[str, int] = field(default_factory=lambda: dict.fromkeys(topics.PRIORITIES, 0))


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
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._topic_priority = {topic_name(settings, topics.dispatch(p)): p for p in topics.PRIORITIES}
        self._commands = topic_name(settings, topics.COMMANDS)
        self._keyring = settings.secret_keyring()  # a bad key configuration stops the start

    async def run(self) -> None:
        """Run until cancelled."""
        consumer = AIOKafkaConsumer(
            *self._topic_priority,
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=topic_name(self.settings, "executors"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=1000,
            session_timeout_ms=int(self.settings.session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(self.settings.session_timeout_seconds * 250),
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all", linger_ms=1)
        limits = httpx.Limits(
            max_connections=self.settings.executor_concurrency,
            max_keepalive_connections=min(self.settings.executor_concurrency, 500),
        )
        async with httpx.AsyncClient(limits=limits) as http:
            await producer.start()
            await consumer.start()
            runners = Runners(http, producer, self.settings.allowed_handlers)
            dispatcher = asyncio.create_task(self._dispatch_loop(producer, runners))
            committer = asyncio.create_task(self._commit_loop(consumer))
            try:
                await self._fetch_loop(consumer, producer)
            finally:
                dispatcher.cancel()
                committer.cancel()
                for task in list(self._tasks):
                    task.cancel()
                with contextlib.suppress(Exception):
                    await consumer.commit(self._offsets.committable())
                await consumer.stop()
                await producer.stop()

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
            task.add_done_callback(self._tasks.discard)

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await asyncio.sleep(1.0)
            offsets = {tp: o for tp, o in self._offsets.committable().items() if tp in consumer.assignment()}
            if offsets:
                try:
                    await consumer.commit(offsets)
                except Exception as exc:  # a rebalance in progress; the next round retries
                    log.warning("executor: commit failed: %s", exc)

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
        try:
            await self._execute_record(record, producer, runners)
        finally:
            self._offsets.finished(tp, record.offset)
            self._slots.release()

    async def _execute_record(
        self, record: ConsumerRecord[bytes, bytes], producer: AIOKafkaProducer, runners: Runners
    ) -> None:
        try:
            event = decode_event(record.value or b"")
        except DecodeError as exc:
            await producer.send(topic_name(self.settings, topics.DEAD_LETTER), **dead_letter_record(record, exc))
            return
        if not isinstance(event, ExecutionDispatched):
            await producer.send(
                topic_name(self.settings, topics.DEAD_LETTER),
                **dead_letter_record(record, DecodeError(f"expected ExecutionDispatched, got {event.type}")),
            )
            return
        if not self._first_time((event.execution_id, event.attempt)):
            self.stats.duplicates += 1
            return
        stats = self.stats
        stats.started += 1
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        stats.by_priority[str(event.priority)] = stats.by_priority.get(str(event.priority), 0) + 1
        try:
            started_at = _now()
            started = ReportExecutionStarted(
                command_id=str(uuid.uuid4()), task_id=event.task_id, tenant=event.tenant,
                actor=f"executor:{self.worker_id}", at=started_at, execution_id=event.execution_id,
                attempt=event.attempt, worker=self.worker_id, started_at=started_at,
            )  # fmt: skip
            budget = (event.deadline - _now()).total_seconds()
            run = asyncio.ensure_future(self._run(event, runners, budget))
            # "Running" is reported only for work that is still running after a short while:
            # the outcome carries started_at anyway, and for quick work the extra command
            # would be a third of the task owner's load.
            delay = self.settings.executor_started_report_after_seconds
            done, _ = await asyncio.wait({run}, timeout=max(delay, 0.0))
            if not done:
                await self._report(producer, started)
            result = await run
            finished_at = _now()
            delivered = await self._report(
                producer,
                ReportExecutionOutcome(
                    command_id=str(uuid.uuid4()), task_id=event.task_id, tenant=event.tenant,
                    actor=f"executor:{self.worker_id}", at=finished_at, execution_id=event.execution_id,
                    attempt=event.attempt, worker=self.worker_id, status=result.status, error=result.error,
                    result=result.result, started_at=started_at, finished_at=finished_at,
                ),
            )  # fmt: skip
            # The offset may be committed once this returns: the outcome must be on the broker.
            await delivered
            if result.status == "succeeded":
                stats.succeeded += 1
            else:
                stats.failed += 1
        finally:
            stats.in_flight -= 1

    async def _run(self, event: ExecutionDispatched, runners: Runners, budget: float) -> RunResult:
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
        attempt = Attempt(event.task_id, event.tenant, event.execution_id, event.attempt, params)
        result = await runners.run(work, attempt, budget)
        if not clears:
            return result
        # The target may echo a credential (in a body, or an error quoting a header).
        return RunResult(result.status, scrub(result.result, clears), scrub(result.error, clears))

    async def _report(
        self, producer: AIOKafkaProducer, command: ReportExecutionStarted | ReportExecutionOutcome
    ) -> asyncio.Future[object]:
        envelope = command_envelope(command, source=f"executor/{self.worker_id}")
        delivery: asyncio.Future[object] = await producer.send(
            self._commands, key=command.task_id.encode(), value=encode(envelope)
        )
        return delivery
