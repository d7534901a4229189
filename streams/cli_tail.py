"""``scheduler tail``: live events and outcomes straight from Kafka, filtered by task, tag or status.

An operator's tool: it reads ``task-events`` (or, with ``--outcomes``, the public ``outcomes``
topic) of the deployment named by ``SCHED_TOPIC_PREFIX``, for every tenant unless ``--tenant``
says which. A task's tags come from its ``TaskCreated`` / ``TaskUpdated`` events when the tail
sees them, else from the tasks view (looked up once per task).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import click
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas.envelope import decode_event
from schemas.errors import DecodeError
from schemas.events import Event, ExecutionCompleted, TaskCreated, TaskUpdated
from streams.cli_client import CliError, CliSettings, ExitCode, load_settings
from streams.settings import topic_name

TagLookup = Callable[[str], Awaitable[list[str]]]


@dataclass(frozen=True)
class TailFilter:
    """Which events ``tail`` shows; every set criterion must hold."""

    tenant: str | None = None
    """Only this tenant's events."""
    task: str | None = None
    """Only this task: ``<tenant>/<id>``, or the id a client sees (matched as the end of it)."""
    tag: str | None = None
    """Only tasks with this tag."""
    status: str | None = None
    """Only outcomes (``ExecutionCompleted``) with this status, e.g. ``failed``."""
    types: frozenset[str] = frozenset()
    """Only these event types (empty: all)."""

    def task_matches(self, task_id: str) -> bool:
        """Whether ``task_id`` (internal, ``<tenant>/<id>``) is the task asked for."""
        if self.task is None:
            return True
        return task_id == self.task or ("/" not in self.task and task_id.endswith("/" + self.task))

    def matches(self, event: Event, tags: list[str] | None) -> bool:
        """Whether ``event`` passes, given its task's ``tags`` (None: not needed or unknown)."""
        if self.tenant is not None and event.tenant != self.tenant:
            return False
        if not self.task_matches(event.task_id):
            return False
        if self.types and event.type not in self.types:
            return False
        if self.status is not None and not (isinstance(event, ExecutionCompleted) and event.status == self.status):
            return False
        return self.tag is None or (tags is not None and self.tag in tags)


def describe(event: Event) -> str:
    """A short human summary of what an event says, after its type and task."""
    parts: list[str] = []
    execution_id = getattr(event, "execution_id", None)
    if execution_id:
        parts.append(f"execution {execution_id}")
    if isinstance(event, ExecutionCompleted):
        parts.append(event.status)
        if event.duration_ms is not None:
            parts.append(f"{event.duration_ms} ms")
        if event.error:
            parts.append(f"error: {event.error}")
    for name in ("attempt", "reason", "error", "note", "command_type"):
        value = getattr(event, name, None)
        if value is not None and not isinstance(event, ExecutionCompleted):
            parts.append(f"{name} {value}")
    return ", ".join(parts)


def as_record(event: Event) -> dict[str, Any]:
    """The event as one JSON line for scripts (the wire fields, secrets stay as sent: encrypted)."""
    record: dict[str, Any] = json.loads(event.model_dump_json())
    return record


class _Tags:
    """Tags per task: learned from definitions in the stream, else read once from the tasks view."""

    def __init__(self, lookup: TagLookup) -> None:
        self._known: dict[str, list[str]] = {}
        self._lookup = lookup

    async def of(self, event: Event) -> list[str]:
        if isinstance(event, TaskCreated | TaskUpdated):
            self._known[event.task_id] = list(event.definition.tags)
        if event.task_id not in self._known:
            self._known[event.task_id] = await self._lookup(event.task_id)
        return self._known[event.task_id]


def _view_lookup(settings: CliSettings) -> tuple[TagLookup, Callable[[], Awaitable[None]]]:
    """A lookup of a task's tags in the tasks view, and how to close it."""
    from pymongo import AsyncMongoClient
    from pymongo.errors import PyMongoError

    from projections.read import active_collections

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url, serverSelectionTimeoutMS=3000)
    db = client[settings.mongo_database]

    async def lookup(task_id: str) -> list[str]:
        try:
            names = await active_collections(db)
            doc = await db[names.tasks].find_one({"_id": task_id}, {"tags": 1})
        except PyMongoError as exc:
            raise CliError(f"cannot read the tasks view for --tag: {exc}", ExitCode.UNAVAILABLE) from None
        return list((doc or {}).get("tags") or [])

    return lookup, client.close


async def existing_partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic``; :class:`CliError` (not found, 3) when it does not exist.

    Asked by listing the topics: a metadata request naming a missing topic makes a broker with
    ``auto.create.topics.enable`` (the default, and the local stack's) create it, so a mistyped
    ``SCHED_TOPIC_PREFIX`` would leave a stray topic behind and be "found" the next time.

    :raises KafkaError: the broker cannot be reached.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            raise CliError(f"topic {topic} does not exist (is SCHED_TOPIC_PREFIX right?)", ExitCode.NOT_FOUND)
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [
        TopicPartition(topic, p["partition"]) for p in sorted(described["partitions"], key=lambda p: p["partition"])
    ]


async def run_tail(
    settings: CliSettings,
    flt: TailFilter,
    *,
    outcomes: bool,
    from_beginning: bool,
    limit: int | None,
    seconds: float | None,
    as_json: bool,
) -> int:
    """Print matching events until ``limit`` were shown, ``seconds`` passed, or Ctrl-C; the count shown.

    :raises CliError: Kafka cannot be reached (exit 5).
    """
    # aiokafka logs every refused connection; the one line of the CliError says it instead.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    topic = topic_name(settings, "outcomes" if outcomes else "task-events")
    try:
        partitions = await existing_partitions(settings.kafka_bootstrap, topic)
    except KafkaError as exc:
        raise CliError(
            f"cannot read {topic} from Kafka at {settings.kafka_bootstrap}: {exc}", ExitCode.UNAVAILABLE
        ) from None
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        request_timeout_ms=10_000,
    )
    lookup, close_lookup = _view_lookup(settings) if flt.tag is not None else (_no_tags, _nothing)
    tags = _Tags(lookup)
    shown = 0
    try:
        try:
            await consumer.start()
            consumer.assign(partitions)
            if from_beginning:
                await consumer.seek_to_beginning(*partitions)
            else:
                await consumer.seek_to_end(*partitions)
            for tp in partitions:
                await consumer.position(tp)  # resolve now: events from here on are shown
        except KafkaError as exc:
            raise CliError(
                f"cannot read {topic} from Kafka at {settings.kafka_bootstrap}: {exc}", ExitCode.UNAVAILABLE
            ) from None
        click.echo(f"tailing {topic} ({len(partitions)} partitions); Ctrl-C stops", err=True)
        deadline = None if seconds is None else time.monotonic() + seconds
        while (limit is None or shown < limit) and (deadline is None or time.monotonic() < deadline):
            batch = await consumer.getmany(timeout_ms=300, max_records=500)
            for record in sorted((r for rs in batch.values() for r in rs), key=lambda r: r.timestamp):
                try:
                    event = decode_event(record.value or b"")
                except DecodeError:
                    continue
                if not flt.task_matches(event.task_id):
                    continue
                known = await tags.of(event) if flt.tag is not None else None
                if not flt.matches(event, known):
                    continue
                if as_json:
                    click.echo(json.dumps(as_record(event)))
                else:
                    # Plain lines, never wrapped by rich: a terminal wraps them, grep reads them whole.
                    click.echo(f"{event.at:%Y-%m-%d %H:%M:%S} {event.type:<20} {event.task_id}  {describe(event)}")
                shown += 1
                if limit is not None and shown >= limit:
                    break
            sys.stdout.flush()
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        await close_lookup()
    return shown


async def _no_tags(task_id: str) -> list[str]:
    return []


async def _nothing() -> None:
    return None


@click.command()
@click.option("--task", help="only this task (<tenant>/<id>, or the id the API shows)")
@click.option("--tenant", help="only this tenant")
@click.option("--tag", help="only tasks with this tag")
@click.option("--status", help="only outcomes with this status (succeeded, failed, timed_out, cancelled, ...)")
@click.option("--type", "types", multiple=True, help="only this event type (repeatable), e.g. ExecutionCompleted")
@click.option("--outcomes", is_flag=True, help="read the public outcomes topic instead of task-events")
@click.option("--from-beginning", is_flag=True, help="start at the oldest event kept, not at the end")
@click.option("--max", "limit", type=click.IntRange(1), help="stop after this many events")
@click.option("--seconds", type=click.FloatRange(0, min_open=True), help="stop after this long")
@click.option("--json", "as_json", is_flag=True, help="one JSON event per line")
def tail(
    task: str | None,
    tenant: str | None,
    tag: str | None,
    status: str | None,
    types: tuple[str, ...],
    outcomes: bool,
    from_beginning: bool,
    limit: int | None,
    seconds: float | None,
    as_json: bool,
) -> None:
    """Show events and outcomes live from Kafka (SCHED_KAFKA_BOOTSTRAP, SCHED_TOPIC_PREFIX)."""
    flt = TailFilter(tenant=tenant, task=task, tag=tag, status=status, types=frozenset(types))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run_tail(
                load_settings(CliSettings),
                flt,
                outcomes=outcomes,
                from_beginning=from_beginning,
                limit=limit,
                seconds=seconds,
                as_json=as_json,
            )
        )
