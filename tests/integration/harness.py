"""Test harness for end-to-end tests: real worker processes, a command client, an HTTP target."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.commands import Command, CreateTask
from schemas.envelope import command_envelope, decode_event, encode
from schemas.events import Event
from schemas.specs import (
    CatchUpMode,
    CatchUpPolicy,
    HandlerWork,
    HttpWork,
    IntervalSchedule,
    OverlapPolicy,
    TaskDefinition,
)
from streams.admin import ensure_topics
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def stop_group(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """Stop a process started in a session of its own, and what it started: SIGTERM to its
    group (a clean shutdown), SIGKILL if it is still running after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class WorkerProc:
    """A worker (``scheduler worker``), or another ``scheduler`` command (``worker_id`` None),
    in its own process, as in production."""

    def __init__(
        self, env: dict[str, str], log: Path, worker_id: str | None, command: tuple[str, ...] = ("worker",)
    ) -> None:
        self.env = env
        self.log = log
        self.worker_id = worker_id
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        named = ["--worker-id", self.worker_id] if self.worker_id else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *self.command, *named],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            start_new_session=True,
        )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no flush."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> None:
        if self.proc:
            stop_group(self.proc, timeout)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def worker_env(bootstrap: str, mongo_url: str, prefix: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    env.update(
        SCHED_KAFKA_BOOTSTRAP=bootstrap,
        SCHED_MONGO_URL=mongo_url,
        SCHED_TOPIC_PREFIX=f"{prefix}.",
        SCHED_DATA_DIR=str(data_dir),
        SCHED_PARTITIONS="4",
        SCHED_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning"),
        SCHED_HANDLER_MODULES='["streams.handlers"]',
        # Tests and benchmarks call HTTP targets on this machine: allowed explicitly, since
        # the default fences loopback off (tests that check the fence override it).
        SCHED_HTTP_ALLOW_NETWORKS='["127.0.0.0/8", "::1/128"]',
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class Bus:
    """Sends commands and follows a topic of events, as another service would."""

    bootstrap: str
    prefix: str
    producer: AIOKafkaProducer | None = None
    consumers: list[AIOKafkaConsumer] = field(default_factory=list)
    seen: dict[str, list[Event]] = field(default_factory=dict)
    raw: dict[str, list[Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """Event id -> the envelope's source (which worker wrote it)."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def topic(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    async def start(self, follow: tuple[str, ...] = ("task-events", "outcomes"), partitions: int = 4) -> Bus:
        # Create the topics first, as a deployment does: a send to a missing topic would let
        # the broker create it with its default partition count, breaking co-partitioning.
        await ensure_topics(
            Settings(kafka_bootstrap=self.bootstrap, topic_prefix=f"{self.prefix}.", partitions=partitions)
        )
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await self.producer.start()
        return await self.follow(follow)

    async def follow(self, names: tuple[str, ...]) -> Bus:
        """Follow more topics from their beginning (``raw``; events also decoded in ``seen``)."""
        for name in names:
            consumer = AIOKafkaConsumer(
                self.topic(name), bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                group_id=None, enable_auto_commit=False,
            )  # fmt: skip
            await consumer.start()
            self.consumers.append(consumer)
            self.seen[name] = []
            self.raw[name] = []
            self._tasks.append(asyncio.create_task(self._follow(name, consumer)))
        return self

    async def _follow(self, name: str, consumer: AIOKafkaConsumer) -> None:
        async for record in consumer:
            self.raw[name].append(record)
            if name not in ("dead-letter", "trigger-rules"):
                event = decode_event(record.value or b"")
                self.seen[name].append(event)
                self.sources[event.event_id] = orjson.loads(record.value or b"{}").get("source", "")

    async def send(self, command: Command) -> None:
        assert self.producer is not None
        envelope = command_envelope(command, source="tests")
        await self.producer.send_and_wait(self.topic("commands"), key=command.task_id.encode(), value=encode(envelope))

    async def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        assert self.producer is not None
        await self.producer.send_and_wait(self.topic(topic), key=key, value=value)

    def events(self, task_id: str | None = None, type_: str | None = None, topic: str = "task-events") -> list[Any]:
        return [
            e for e in self.seen[topic]
            if (task_id is None or e.task_id == task_id) and (type_ is None or e.type == type_)
        ]  # fmt: skip

    async def wait_for(self, predicate: Callable[[], bool], within: float, what: str = "condition") -> None:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within}s waiting for {what}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for consumer in self.consumers:
            await consumer.stop()
        if self.producer is not None:
            await self.producer.stop()


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on 127.0.0.1 at a port the system picks: the runner (``cleanup()`` stops
    serving) and the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """:func:`serve` for the length of a block: the port."""
    runner, port = await serve(app)
    try:
        yield port
    finally:
        await runner.cleanup()


@dataclass
class HttpTarget:
    """A local HTTP endpoint that records every request and can fail on demand."""

    fail_first: int = 0
    delay: float = 0.0
    slow_paths: dict[str, float] = field(default_factory=dict)
    """Delay per request path (e.g. ``{"/slow": 8}``), instead of ``delay``."""
    echo_headers: bool = False
    """Answer with the request's headers (as some real services do), e.g. to test scrubbing."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        record = {
            "key": request.headers.get("Idempotency-Key"),
            "attempt": request.headers.get("X-Scheduler-Attempt"),
            "at": now(),
            "body": await request.text(),
            "path": request.path,
            "headers": dict(request.headers),
        }
        self.requests.append(record)
        delay = self.slow_paths.get(request.path, self.delay)
        if delay:
            await asyncio.sleep(delay)
        if len(self.requests) <= self.fail_first:
            return web.json_response({"error": "failing on purpose"}, status=503)
        if self.echo_headers:
            return web.json_response({"ok": True, "headers": dict(request.headers)})
        return web.json_response({"ok": True})

    async def start(self) -> HttpTarget:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, port = await serve(app)
        self.url = f"http://127.0.0.1:{port}/work"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def assert_every_slot_once(bus: Bus, task_ids: list[str], first_slot: datetime, last_slot: datetime) -> int:
    """Every 1-second slot of every task in [first_slot, last_slot] was dispatched once (one
    event id per attempt) and completed once on the outcomes topic; returns the executions."""
    slots: dict[str, dict[datetime, set[str]]] = {t: {} for t in task_ids}
    attempts: Counter[tuple[str, int]] = Counter()
    for e in {e.event_id: e for e in bus.events(type_="ExecutionDispatched")}.values():
        attempts[(e.execution_id, e.attempt)] += 1
        if e.task_id in slots and e.slot is not None:
            slots[e.task_id].setdefault(e.slot, set()).add(e.execution_id)
    completed = Counter(e.execution_id for e in {e.event_id: e for e in bus.events(topic="outcomes")}.values())
    assert not attempts or max(attempts.values()) == 1, "an attempt was dispatched twice"
    total = 0
    for task_id in task_ids:
        slot = first_slot
        while slot <= last_slot:
            ids = slots[task_id].get(slot)
            assert ids is not None, f"{task_id}: slot {slot} never fired"
            assert len(ids) == 1, f"{task_id}: slot {slot} has executions {ids}"
            (execution_id,) = ids
            assert completed[execution_id] == 1, f"{task_id} {slot}: {completed[execution_id]} outcomes"
            total += 1
            slot += timedelta(seconds=1)
    return total


T = TypeVar("T")


async def until(check: Callable[[], Awaitable[T | None]], within: float, what: str, *, every: float = 0.1) -> T:
    """The first truthy value ``check()`` gives, asked every ``every`` seconds; an
    ``AssertionError`` naming ``what`` once ``within`` seconds passed without one."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(every)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def create_every_second_tasks(
    bus: Bus, prefix: str, count: int, url: str, anchor: datetime, every: float = 1.0
) -> list[str]:
    """Create ``count`` tasks that POST to ``url`` every second (or ``every``) from ``anchor``; every
    slot must run exactly once, so slots due while something is down run late (catch-up), never dropped."""
    definition = TaskDefinition(
        name="every second",
        schedule=IntervalSchedule(every_seconds=every, anchor=anchor),
        work=HttpWork(method="POST", url=url),
        overlap=OverlapPolicy.ALLOW_ALL,
        catch_up=CatchUpPolicy(mode=CatchUpMode.RUN_ALL, window_seconds=600),
        misfire_grace_seconds=600,
    )
    ids = [f"{prefix}-{i:02d}-{new_id()[:8]}" for i in range(count)]
    for task_id in ids:
        await bus.send(
            CreateTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now(), definition=definition)
        )
    return ids


STARTUP = 60.0
"""Seconds a cold worker may take to join its group and create its changelog (~5-15 s)."""


@contextmanager
def running_worker(env: dict[str, str], tmp: Path, worker_id: str) -> Iterator[WorkerProc]:
    """A worker process for the tests of a module; the tail of its log is printed at the end."""
    proc = WorkerProc(env, tmp / "worker.log", worker_id).start()
    try:
        yield proc
    finally:
        proc.stop()
        print(proc.tail())


@contextmanager
def running_router(env: dict[str, str], tmp: Path) -> Iterator[WorkerProc]:
    """A trigger router (``scheduler triggers``) next to the worker; its log's tail is printed at the end."""
    proc = WorkerProc(env, tmp / "triggers.log", None, ("triggers",)).start()
    try:
        yield proc
    finally:
        proc.stop()
        print(proc.tail())


async def ready_bus(
    bootstrap: str, prefix: str, *, wait: bool = True, follow: tuple[str, ...] = ("task-events", "outcomes")
) -> Bus:
    """A bus on ``prefix`` following the topics ``follow``, once a worker there applies commands
    (``wait``): a probe task is created and its ``TaskCreated`` awaited, so tests measure
    scheduling, not start-up."""
    bus = await Bus(bootstrap, prefix).start(follow)
    if wait:
        probe = f"probe-{new_id()}"
        definition = TaskDefinition(name="probe", work=HandlerWork(name="noop"))
        try:
            await bus.send(
                CreateTask(
                    command_id=new_id(), task_id=probe, tenant="acme", actor="tests", at=now(), definition=definition
                )
            )
            await bus.wait_for(lambda: bool(bus.events(probe, "TaskCreated")), STARTUP, "the worker to start")
        except BaseException:
            await bus.stop()
            raise
    return bus
