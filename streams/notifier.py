"""The notifier process (``scheduler notifier``): tells webhooks, Kafka topics and mailboxes
about outcomes, by the rules of each task and of each tenant.

**What it reads.** ``task-events``, in a consumer group (``<prefix><app id>-notifier``), at least
once: offsets are committed only after every notification of a batch was delivered or
dead-lettered. ``ExecutionCompleted`` is on ``task-events`` as well as on ``outcomes`` (the same
event, the same id); reading it from ``task-events`` keeps it behind its task's
``TaskCreated``/``TaskUpdated`` in the same partition, so the rules that apply to an outcome are
always known when it arrives, which two topics consumed side by side would not promise.

**Per-task rules** come with the definition: the notifier keeps task id -> (tenant, name,
``retry.max_attempts``, rules) in memory and in its own collection ``notifier_tasks`` (written
before the offsets of the events that changed it are committed, so a restart resumes with them).
**Per-tenant rules** are on the compacted ``notification-rules`` topic (key: tenant): read whole
at start, then tailed; the notifier also writes them to the ``notification_rules`` view, which
``GET /v1/notification-rules`` shows.

**Deliveries.** Each (event, rule scope, receiver) has a deterministic delivery id
(:func:`schemas.notifications.delivery_id`). Every delivery is recorded in ``notifications``
(id, tenant, task, execution, event, channel, status, attempts, last error, times), upserted by
id; a delivery already ``delivered`` or ``dead_lettered`` is not sent again when its event is
read again (a redelivery, a restart, a new consumer group). Event ids seen lately are also
skipped in memory. A failing send is retried with exponential backoff (tenacity,
``SCHED_NOTIFY_ATTEMPTS`` in all); then, or at once for a refusal that retrying cannot cure (a
fenced address or topic, no SMTP server, an undecryptable secret), it goes to ``dead-letter``
with the reason.

**Fences.** Webhooks go through the executor's fenced HTTP client (no loopback, private or
metadata address unless ``SCHED_HTTP_ALLOW_NETWORKS``; checked on the address connected to),
Kafka notifications only to topics Kafka work may use (``SCHED_KAFKA_WORK_TOPICS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import ssl
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any, Literal

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, RebalanceInProgressError
from prometheus_client import Counter, Histogram
from pydantic import Field, SecretStr, ValidationError
from pymongo import AsyncMongoClient, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from schemas.envelope import decode_event
from schemas.errors import DecodeError
from schemas.events import (
    Event,
    ExecutionCompleted,
    SlotsMissed,
    TaskCreated,
    TaskDeleted,
    TaskPaused,
    TaskUpdated,
)
from schemas.notifications import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TENANT_RULES_SUBJECT,
    EmailChannel,
    KafkaChannel,
    Notification,
    NotificationEvent,
    NotificationRule,
    TenantNotificationRules,
    WebhookChannel,
    channel_key,
    delivery_id,
    sign,
)
from schemas.secrets import Keyring, SecretError, is_token
from streams import metrics
from streams.connections import kafka_options, mongo_options, track_topics
from streams.deadletter import dead_letter_value
from streams.fence import AddressRefused, TopicFence, fenced_http_client
from streams.settings import Settings, topic_name

log = logging.getLogger(__name__)

DELIVERIES = "notifications"
"""Collection of delivery records, one per delivery id (``GET /v1/executions/{id}/notifications``)."""
RULES_VIEW = "notification_rules"
"""Collection of each tenant's rules as last put (``GET /v1/notification-rules``), ``_id`` = tenant."""
TASKS = "notifier_tasks"
"""The notifier's own collection of what it needs of each task (name, retries, rules)."""
FINAL = frozenset({"delivered", "dead_lettered"})
"""Statuses of a delivery that is not attempted again."""
SPECIFICITY: tuple[NotificationEvent, ...] = (
    "retries_exhausted",
    "timed_out",
    "failed",
    "paused_after_failures",
    "missed",
    "succeeded",
)
"""Order in which a notification's ``event`` is chosen among the events it matched."""

Scope = Literal["task", "tenant"]
NOTIFYING = (ExecutionCompleted, SlotsMissed, TaskPaused)
"""The events that can notify (see :func:`event_kinds`)."""

SENT = Counter("scheduler_notifications", "Notifications handled by this notifier, by channel and final status.",
               ["channel", "status"])  # fmt: skip
LATENCY = Histogram(
    "scheduler_notification_latency_seconds",
    "From the event notified about to its notification delivered (measured by the notifier).",
    buckets=metrics.LATENESS_BUCKETS,
)


class NotifierSettings(Settings):
    """The deployment's settings plus what only the notifier needs; ``SCHED_<NAME>`` each."""

    notify_attempts: int = Field(default=5, ge=1, le=20)
    """Sends of one notification before it is dead-lettered (the first included)."""
    notify_backoff_seconds: float = Field(default=0.5, gt=0, le=60)
    """Wait before the second send; doubled after each failure."""
    notify_backoff_max_seconds: float = Field(default=30.0, gt=0, le=3600)
    """Longest wait between two sends."""
    notify_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    """Timeout of one send (a webhook request, a Kafka produce, an SMTP session)."""
    notify_concurrency: int = Field(default=200, ge=1, le=10_000)
    """Sends in flight at once."""
    notify_max_age_seconds: float = Field(default=86_400.0, gt=0)
    """Events older than this when read are not notified (a notifier started on a long history,
    or down for longer, does not flood receivers with stale news); their rules are still learnt."""
    notify_batch_size: int = Field(default=500, ge=1, le=10_000)
    """Most events read (and notified, then committed) at once."""

    smtp_host: str | None = None
    """SMTP server of the email channel; unset: email notifications are dead-lettered."""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    """Its port (25, 587 with ``starttls``, 465 with ``ssl``)."""
    smtp_from: str = "scheduler@localhost"
    """``From`` address of notification emails."""
    smtp_tls: Literal["none", "starttls", "ssl"] = "none"
    """``starttls``: upgrade the connection; ``ssl``: TLS from the start; ``none``: plain (a local relay)."""
    smtp_username: str | None = None
    """SMTP login, when the server wants one."""
    smtp_password: SecretStr | None = None
    """Password of ``smtp_username``."""


# ---------------------------------------------------------------------------------------------
# What an event means for rules (pure)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskInfo:
    """What the notifier keeps of a task."""

    tenant: str
    name: str
    max_attempts: int
    rules: tuple[NotificationRule, ...]


def task_info(event: TaskCreated | TaskUpdated) -> TaskInfo:
    """The notifier's view of a task from its latest definition."""
    definition = event.definition
    return TaskInfo(event.tenant, definition.name, definition.retry.max_attempts, tuple(definition.notifications))


def event_kinds(event: Event, max_attempts: int) -> list[NotificationEvent]:
    """The notification events ``event`` is, for a task of ``max_attempts`` attempts per execution."""
    kinds: list[NotificationEvent] = []
    match event:
        case ExecutionCompleted(status="succeeded"):
            kinds.append("succeeded")
        case ExecutionCompleted(status="failed" | "timed_out"):
            kinds.append("failed" if event.status == "failed" else "timed_out")
            if max_attempts > 1 and event.attempts >= max_attempts:
                kinds.append("retries_exhausted")
        case SlotsMissed():
            kinds.append("missed")
        case TaskPaused(reason="consecutive_failures"):
            kinds.append("paused_after_failures")
        case _:
            pass
    return kinds


def public_id(tenant: str, task_id: str) -> str:
    """A task id as the API shows it: without the ``<tenant>/`` namespace."""
    prefix = f"{tenant}/"
    return task_id[len(prefix) :] if task_id.startswith(prefix) else task_id


def notification(event: Event, kinds: Sequence[NotificationEvent], id_: str, task_name: str | None) -> Notification:
    """The message telling a rule about ``event`` (which is ``kinds``, those the rule asked for)."""
    event_kind = next(k for k in SPECIFICITY if k in kinds)
    facts: dict[str, Any] = {}
    execution_id = status = error = None
    attempts = None
    if isinstance(event, ExecutionCompleted):
        execution_id, status, error, attempts = event.execution_id, event.status, event.error, event.attempts
        facts = {"scheduled_for": event.scheduled_for, "duration_ms": event.duration_ms}
    elif isinstance(event, SlotsMissed):
        facts = {"first_slot": event.first_slot, "last_slot": event.last_slot, "count": event.count,
                 "reason": event.reason}  # fmt: skip
    elif isinstance(event, TaskPaused):
        facts = {"failures": event.failures, "note": event.note}
    return Notification(
        delivery_id=id_,
        event=event_kind,
        events=[k for k in SPECIFICITY if k in kinds],
        tenant=event.tenant,
        task_id=public_id(event.tenant, event.task_id),
        task_name=task_name,
        execution_id=execution_id,
        status=status,
        attempts=attempts,
        error=error,
        event_id=event.event_id,
        occurred_at=event.at,
        details=orjson.loads(orjson.dumps({k: v for k, v in facts.items() if v is not None})),
    )


def email_message(message: Notification, sender: str, to: Sequence[str]) -> EmailMessage:
    """The plain-text email of a notification."""
    mail = EmailMessage()
    name = message.task_name or message.task_id
    # A task name may hold line breaks: in a header they would be refused (or inject headers).
    mail["Subject"] = " ".join(f"[scheduler] {name}: {message.event.replace('_', ' ')}".split())
    mail["From"] = sender
    mail["To"] = ", ".join(to)
    # Receivers (and tests) deduplicate on the delivery id, as webhooks do.
    mail["Message-ID"] = f"<{message.delivery_id}@scheduler>"
    lines = [
        f"Task:       {name} ({message.task_id})",
        f"Tenant:     {message.tenant}",
        f"Event:      {', '.join(message.events)}",
    ]
    if message.execution_id is not None:
        lines += [f"Execution:  {message.execution_id}", f"Status:     {message.status}",
                  f"Attempts:   {message.attempts}"]  # fmt: skip
    if message.error:
        lines.append(f"Error:      {message.error}")
    lines += [f"{k.replace('_', ' ').capitalize() + ':':<12}{v}" for k, v in message.details.items()]
    lines += [f"At:         {message.occurred_at.isoformat()}", f"Delivery:   {message.delivery_id}"]
    mail.set_content("\n".join(lines) + "\n")
    return mail


# ---------------------------------------------------------------------------------------------
# The process
# ---------------------------------------------------------------------------------------------


class DeliveryFailed(Exception):
    """A send failed in a way a later attempt may not (the receiver failed, timed out...)."""


class DeliveryRefused(Exception):
    """A send that no retry can make succeed (fenced, not configured, secret unusable)."""


@dataclass
class Pending:
    """One delivery to make: a rule told about an event."""

    id: str
    scope: Scope
    subject: str
    """What the rule's secret is bound to: the task id, or :data:`TENANT_RULES_SUBJECT`."""
    pointer: str
    """Where the rule's webhook secret is (for decryption)."""
    rule: NotificationRule
    message: Notification
    record: ConsumerRecord[bytes, bytes]
    task_id: str


@dataclass
class Handled:
    """What a batch changed (tasks' rules) and sent (delivery records), to record."""

    tasks: dict[str, TaskInfo | None]
    deliveries: list[dict[str, Any]]


class Notifier:
    """Reads ``task-events`` and the tenants' rules; delivers and records notifications."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self.keyring: Keyring | None = settings.secret_keyring()
        self.fence = TopicFence.from_settings(settings)
        self.group = topic_name(settings, f"{settings.app_id}-notifier")
        self.tenant_rules: dict[str, tuple[NotificationRule, ...]] = {}
        self._tasks: OrderedDict[str, TaskInfo | None] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.notify_concurrency)
        self._mongo: AsyncMongoClient[dict[str, Any]] | None = None
        self._db: AsyncDatabase[dict[str, Any]] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._http: aiohttp.ClientSession | None = None
        self._finishing: asyncio.Task[None] | None = None
        """Recording the previous batch (see :meth:`run`)."""

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in hand."""
        self._stopping.set()

    async def run(self) -> None:
        """Notify until :meth:`stop`; clients are opened here and closed on the way out."""
        s = self.settings
        self._mongo = AsyncMongoClient(s.mongo_url, tz_aware=True, appname="scheduler-notifier", **mongo_options(s))
        self._db = self._mongo[s.mongo_database]
        self._producer = AIOKafkaProducer(**kafka_options(s), acks="all", linger_ms=2, client_id="scheduler-notifier")
        self._http = fenced_http_client(s, s.notify_concurrency)
        # No group: every notifier reads every tenant's rules, from the start of the topic.
        rules = AIOKafkaConsumer(s.topics.notification_rules, **kafka_options(s), group_id=None,
                                 enable_auto_commit=False, auto_offset_reset="earliest",
                                 client_id="scheduler-notifier-rules")  # fmt: skip
        events = AIOKafkaConsumer(
            **kafka_options(s),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.notify_batch_size,
            client_id="scheduler-notifier",
        )
        tail: asyncio.Task[None] | None = None
        lag: asyncio.Task[None] | None = None
        try:
            await self._producer.start()
            await track_topics(s.topics.all, self._producer)
            await self._db[DELIVERIES].create_index([("tenant", 1), ("execution_id", 1)])
            await rules.start()
            await self._read_rules(rules, until_end=True)
            tail = asyncio.create_task(self._read_rules(rules, until_end=False))
            events.subscribe([s.topics.task_events], listener=_ForgetOnRebalance(self._tasks))
            await events.start()
            if s.metrics_port is not None:  # nobody would read it otherwise
                lag = asyncio.create_task(metrics.measure_lag(s, {self.group: [s.topics.task_events]}))
            log.info("notifier ready: %d tenants with rules", len(self.tenant_rules))
            while not self._stopping.is_set():
                if tail.done():  # the rules would go stale: stop, and let the supervisor restart us
                    tail.result()
                    raise RuntimeError("reading the notification rules stopped")
                batch = await events.getmany(timeout_ms=200, max_records=s.notify_batch_size)
                records = [r for part in batch.values() for r in part]
                if not records:
                    continue
                offsets = {tp: part[-1].offset + 1 for tp, part in batch.items() if part}
                done = await self.handle(records)
                # Recording a batch and committing its offsets happen while the next batch is
                # sent, so it does not wait for them (outcome to webhook p50 47-100 -> 38-47 ms,
                # p99 119-885 -> 93-196 ms here); one at a time, in order, and the offsets are
                # this batch's own, never those of a batch still being sent.
                if self._finishing is not None:
                    await self._finishing
                self._finishing = asyncio.create_task(self._finish(done, events, offsets))
            if self._finishing is not None:
                await self._finishing
        finally:
            if self._finishing is not None and not self._finishing.done():
                self._finishing.cancel()
            for task in (tail, lag):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            for close in (events.stop, rules.stop, self._producer.stop, self._http.close, self._mongo.close):
                with contextlib.suppress(Exception):
                    await close()

    # -- tenants' rules -------------------------------------------------------------------------

    async def _read_rules(self, consumer: AIOKafkaConsumer, *, until_end: bool) -> None:
        """Apply the rules topic: from its start to its end (``until_end``), or forever."""
        if until_end:
            tps: set[TopicPartition] = set()
            for _ in range(120):  # the subscription is assigned once the topic's metadata is known
                tps = consumer.assignment()
                if tps:
                    break
                await asyncio.sleep(0.25)
            else:
                topic = self.settings.topics.notification_rules
                raise RuntimeError(f"topic {topic} has no partitions (scheduler topics creates it)")
            ends = await consumer.end_offsets(list(tps))
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                await self._apply_rules_batch(await consumer.getmany(timeout_ms=500))
            return
        while True:
            await self._apply_rules_batch(await consumer.getmany(timeout_ms=1000))

    async def _apply_rules_batch(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        for records in batch.values():
            for record in records:
                await self._apply_rules(record)

    async def _apply_rules(self, record: ConsumerRecord[bytes, bytes]) -> None:
        tenant = (record.key or b"").decode(errors="replace")
        db = self._database()
        if record.value is None:  # a tombstone: the tenant's rules are gone
            self.tenant_rules.pop(tenant, None)
            await db[RULES_VIEW].delete_one({"_id": tenant})
            return
        try:
            put = TenantNotificationRules.model_validate_json(record.value)
            if put.tenant != tenant:
                raise ValueError(f"rules of tenant {put.tenant!r} under key {tenant!r}")
        except (ValidationError, ValueError) as exc:
            await self._send_dead_letter(record, record.value, f"notification rules not applied: {exc}", exc)
            return
        self.tenant_rules[tenant] = tuple(put.rules)
        doc = {"tenant": tenant, "rules": put.model_dump(mode="json")["rules"], "actor": put.actor, "at": put.at}
        await db[RULES_VIEW].replace_one({"_id": tenant}, doc, upsert=True)

    # -- events ---------------------------------------------------------------------------------

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> Handled:
        """Learn the tasks of a batch of ``task-events`` records and deliver what they notify;
        what is to be recorded (:meth:`_finish`) before the batch's offsets are committed."""
        pending: dict[str, Pending] = {}
        changed: dict[str, TaskInfo | None] = {}
        oldest = datetime.now(UTC) - timedelta(seconds=self.settings.notify_max_age_seconds)
        events: list[tuple[ConsumerRecord[bytes, bytes], Event]] = []
        for record in records:
            try:
                events.append((record, decode_event(record.value or b"")))
            except DecodeError as exc:
                await self._send_dead_letter(record, record.value or b"", str(exc), exc)
        # The tasks this batch notifies about that are not in memory (after a restart): one query.
        await self._load_tasks(
            {e.task_id for _, e in events if isinstance(e, NOTIFYING) and e.task_id not in self._tasks}
        )
        for record, event in events:
            if event.event_id in self._seen:
                continue
            self._remember(event.event_id)
            if isinstance(event, TaskCreated | TaskUpdated):
                changed[event.task_id] = self._cache(event.task_id, task_info(event))
            elif isinstance(event, TaskDeleted):
                changed[event.task_id] = self._cache(event.task_id, None)
            if event.at < oldest or not isinstance(event, NOTIFYING):
                continue
            info = self._tasks.get(event.task_id)
            kinds = event_kinds(event, info.max_attempts if info else 1)
            if kinds:
                for p in self._pending(event, kinds, info, record):
                    pending.setdefault(p.id, p)
        return Handled(changed, await self._deliver_all(list(pending.values())) if pending else [])

    async def _finish(self, done: Handled, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        """Record what a batch changed and delivered, then commit its offsets."""
        if done.tasks:
            await self._save_tasks(done.tasks)
        if done.deliveries:
            await self._write(DELIVERIES, [UpdateOne({"_id": d["_id"]}, {"$set": d}, upsert=True)
                                           for d in done.deliveries])  # fmt: skip
        # Partitions revoked meanwhile are read again by their new owner, which skips what the
        # records above say was delivered: a rebalance is no reason to stop.
        owned = consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in owned}
        try:
            if mine:
                await consumer.commit(mine)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            log.warning("offsets not committed (%r); their new owner reads them again", exc)

    def _pending(
        self, event: Event, kinds: list[NotificationEvent], info: TaskInfo | None, record: ConsumerRecord[bytes, bytes]
    ) -> Iterable[Pending]:
        scopes: list[tuple[Scope, str, str, tuple[NotificationRule, ...]]] = [
            ("task", event.task_id, "/notifications", info.rules if info else ()),
            ("tenant", TENANT_RULES_SUBJECT, "/rules", self.tenant_rules.get(event.tenant, ())),
        ]
        for scope, subject, base, rules in scopes:
            for i, rule in enumerate(rules):
                wanted = [k for k in kinds if k in rule.on]
                if not wanted:
                    continue
                id_ = delivery_id(event.event_id, scope, rule.channel)
                message = notification(event, wanted, id_, info.name if info else None)
                yield Pending(id_, scope, subject, f"{base}/{i}/channel/secret", rule, message, record, event.task_id)

    def _remember(self, event_id: str) -> None:
        self._seen[event_id] = None
        if len(self._seen) > 100_000:
            self._seen.popitem(last=False)

    def _cache(self, task_id: str, info: TaskInfo | None) -> TaskInfo | None:
        self._tasks[task_id] = info
        self._tasks.move_to_end(task_id)
        if len(self._tasks) > self.settings.state_cache_size:
            self._tasks.popitem(last=False)
        return info

    async def _load_tasks(self, task_ids: set[str]) -> None:
        """Put the tasks ``task_ids`` in memory from the notifier's collection; one unknown there
        (deleted, or older than the history read) is remembered as None: tenant rules still apply."""
        if not task_ids:
            return
        if self._finishing is not None:
            await self._finishing  # the previous batch's tasks must be in MongoDB first
        found = {d["_id"]: d for d in await self._database()[TASKS].find({"_id": {"$in": sorted(task_ids)}}).to_list()}
        for task_id in task_ids:
            doc = found.get(task_id)
            if doc is None:
                self._cache(task_id, None)
                continue
            rules = tuple(NotificationRule.model_validate(r) for r in doc.get("rules", []))
            self._cache(task_id, TaskInfo(doc["tenant"], doc["name"], int(doc["max_attempts"]), rules))

    async def _save_tasks(self, changed: dict[str, TaskInfo | None]) -> None:
        ops = [
            UpdateOne(
                {"_id": task_id},
                {
                    "$set": {
                        "tenant": info.tenant,
                        "name": info.name,
                        "max_attempts": info.max_attempts,
                        "rules": [r.model_dump(mode="json") for r in info.rules],
                    }
                },
                upsert=True,
            )
            for task_id, info in changed.items()
            if info is not None
        ]
        gone = [task_id for task_id, info in changed.items() if info is None]
        await self._write(TASKS, ops)
        if gone:
            await self._database()[TASKS].delete_many({"_id": {"$in": gone}})

    async def _write(self, collection: str, ops: list[UpdateOne]) -> None:
        # FerretDB answers nothing to an update of 100 statements or more: chunks of 50.
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(PyMongoError), wait=wait_exponential(multiplier=0.2, max=5), reraise=True
        ):
            with attempt:
                for start in range(0, len(ops), 50):
                    await self._database()[collection].bulk_write(ops[start : start + 50], ordered=False)

    # -- deliveries -----------------------------------------------------------------------------

    async def _deliver_all(self, pending: list[Pending]) -> list[dict[str, Any]]:
        """Send what was not delivered or dead-lettered before; the records of the sends."""
        ids = [p.id for p in pending]
        cursor = self._database()[DELIVERIES].find({"_id": {"$in": ids}}, {"status": 1})
        done = {d["_id"] for d in await cursor.to_list() if d.get("status") in FINAL}
        todo = [p for p in pending if p.id not in done]
        return list(await asyncio.gather(*(self._deliver(p) for p in todo)))

    async def _deliver(self, p: Pending) -> dict[str, Any]:
        """Send one notification with retries; dead-letter it if it keeps failing; its record."""
        s = self.settings
        attempts = 0
        error: str | None = None
        status = "delivered"
        first = datetime.now(UTC)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(s.notify_attempts),
                wait=wait_exponential(
                    multiplier=s.notify_backoff_seconds, min=s.notify_backoff_seconds, max=s.notify_backoff_max_seconds
                ),
                retry=retry_if_exception_type(DeliveryFailed),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    async with self._slots:
                        try:
                            await asyncio.wait_for(self._send(p), s.notify_timeout_seconds)
                        except TimeoutError:
                            raise DeliveryFailed(f"no answer within {s.notify_timeout_seconds:g} s") from None
        except Exception as exc:  # one bad notification must not stop all the others
            if not isinstance(exc, DeliveryFailed | DeliveryRefused):
                log.exception("notification %s could not be sent", p.id)
            status = "dead_lettered"
            error = str(exc) or type(exc).__name__
            reason = f"notification {p.id} to {channel_key(p.rule.channel)} failed after {attempts} attempt(s): {error}"
            log.warning("%s", reason)
            await self._send_dead_letter(p.record, p.message.model_dump_json().encode(), reason, exc)
        finished = datetime.now(UTC)
        SENT.labels(channel=p.rule.channel.kind, status=status).inc()
        if status == "delivered":
            LATENCY.observe(max((finished - p.message.occurred_at).total_seconds(), 0.0))
        return {
            "_id": p.id,
            "tenant": p.message.tenant,
            "task_id": p.task_id,
            "execution_id": p.message.execution_id,
            "event_id": p.message.event_id,
            "event": p.message.event,
            "events": p.message.events,
            "scope": p.scope,
            "channel": p.rule.channel.kind,
            "target": channel_key(p.rule.channel).partition(":")[2],
            "status": status,
            "attempts": attempts,
            "last_error": error,
            "first_attempt_at": first,
            "at": finished,
        }

    async def _send(self, p: Pending) -> None:
        channel = p.rule.channel
        body = p.message.model_dump_json().encode()
        match channel:
            case WebhookChannel():
                await self._post(p, channel, body)
            case KafkaChannel():
                refusal = self.fence.refusal(channel.topic, p.message.tenant)
                if refusal is not None:
                    raise DeliveryRefused(refusal)
                assert self._producer is not None
                try:
                    await self._producer.send_and_wait(channel.topic, key=p.message.task_id.encode(), value=body)
                except KafkaError as exc:
                    raise DeliveryFailed(f"Kafka: {exc!r}") from None
            case EmailChannel():
                await self._mail(p, channel)

    async def _post(self, p: Pending, channel: WebhookChannel, body: bytes) -> None:
        secret = self._secret(p, channel.secret)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "scheduler-notifier",
            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
            DELIVERY_HEADER: p.id,
            EVENT_HEADER: p.message.event,
        }
        assert self._http is not None
        try:
            async with self._http.post(channel.url, data=body, headers=headers, allow_redirects=False) as response:
                if not 200 <= response.status < 300:
                    raise DeliveryFailed(f"webhook answered HTTP {response.status}")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                raise DeliveryRefused(str(exc.os_error)) from None
            raise DeliveryFailed(f"webhook unreachable: {exc}") from None
        except AddressRefused as exc:
            raise DeliveryRefused(str(exc)) from None
        except aiohttp.ClientError as exc:
            raise DeliveryFailed(f"webhook: {exc!r}") from None

    def _secret(self, p: Pending, secret: str) -> str:
        """The clear webhook secret; secrets are only ever stored encrypted."""
        if not is_token(secret):
            raise DeliveryRefused(f"{p.pointer}: the webhook secret is not encrypted (produce it with schemas.secrets)")
        if self.keyring is None:
            raise DeliveryRefused(f"{p.pointer}: this notifier has no secret keys (SCHED_SECRET_KEYS)")
        try:
            value = self.keyring.decrypt(secret, tenant=p.message.tenant, task_id=p.subject, pointer=p.pointer)
        except SecretError as exc:
            raise DeliveryRefused(str(exc)) from None
        return str(value)

    async def _mail(self, p: Pending, channel: EmailChannel) -> None:
        s = self.settings
        if s.smtp_host is None:
            raise DeliveryRefused("no SMTP server is configured (SCHED_SMTP_HOST)")
        message = email_message(p.message, s.smtp_from, channel.to)
        try:
            await asyncio.to_thread(_smtp_send, s, message)
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"SMTP: {exc!r}") from None

    # -- shared ---------------------------------------------------------------------------------

    def _database(self) -> AsyncDatabase[dict[str, Any]]:
        assert self._db is not None, "run() opens the database"
        return self._db

    async def _send_dead_letter(
        self, record: ConsumerRecord[bytes, bytes], payload: bytes, reason: str, error: Exception
    ) -> None:
        assert self._producer is not None
        value = dead_letter_value(topic=record.topic, partition=record.partition, offset=record.offset,
                                  payload=payload, error=_Reason(reason, error))  # fmt: skip
        await self._producer.send_and_wait(self.settings.topics.dead_letter, key=record.key, value=value)


class _Reason(Exception):
    """A dead-letter reason (its ``error_type`` is that of the error behind it)."""

    def __init__(self, reason: str, error: Exception) -> None:
        super().__init__(reason)
        self.field = getattr(error, "field", None)


class _ForgetOnRebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped here
    """Forgets the tasks in memory when partitions move: a partition that comes back may have
    had its tasks changed by another notifier meanwhile (they are read again from MongoDB)."""

    def __init__(self, tasks: OrderedDict[str, TaskInfo | None]) -> None:
        self._tasks = tasks

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._tasks.clear()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._tasks.clear()


def _smtp_send(settings: NotifierSettings, message: EmailMessage) -> None:
    """Send ``message`` over the configured SMTP server (blocking: run in a thread)."""
    timeout = settings.notify_timeout_seconds
    host = settings.smtp_host or ""
    context = ssl.create_default_context()
    smtp: smtplib.SMTP = (
        smtplib.SMTP_SSL(host, settings.smtp_port, timeout=timeout, context=context)
        if settings.smtp_tls == "ssl"
        else smtplib.SMTP(host, settings.smtp_port, timeout=timeout)
    )
    with smtp:
        if settings.smtp_tls == "starttls":
            smtp.starttls(context=context)
        if settings.smtp_username is not None:
            password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
            smtp.login(settings.smtp_username, password)
        smtp.send_message(message)


async def main(settings: NotifierSettings | None = None) -> None:
    """Run a notifier until SIGINT or SIGTERM."""
    import signal

    from streams.admin import ensure_topics

    settings = settings or NotifierSettings()
    await ensure_topics(settings)
    notifier = Notifier(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, notifier.stop)
    await notifier.run()
