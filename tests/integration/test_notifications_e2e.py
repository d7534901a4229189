"""Notifications end to end against the real broker and FerretDB: a worker runs a failing task,
the notifier (its own process) tells a webhook (signature checked), a Kafka topic and a local
SMTP server (aiosmtpd); redelivered events send nothing twice; a failing webhook is retried,
then dead-lettered; a fenced webhook address is refused where it is sent."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from pymongo import AsyncMongoClient

from schemas.commands import CreateTask, DeleteTask, TriggerTask
from schemas.envelope import encode, event_envelope
from schemas.events import TaskPaused
from schemas.notifications import DELIVERY_HEADER, SIGNATURE_HEADER, TenantNotificationRules, verify_signature
from schemas.secrets import Keyring, new_key, parse_keys, seal_definition
from schemas.specs import HandlerWork, IntervalSchedule, RetryPolicy, TaskDefinition
from streams.notifier import DELIVERIES, RULES_VIEW
from tests.conftest import Infra
from tests.integration.harness import Bus, HttpTarget, WorkerProc, free_port, new_id, now, until

pytestmark = pytest.mark.slow

KEYS = {"notify-test": new_key()}
RING = Keyring(parse_keys(KEYS))
SECRET = "webhook-secret-of-the-e2e-test"
TENANT = "acme"


@dataclass
class Mailbox:
    """An aiosmtpd handler keeping every message it receives."""

    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(message_from_bytes(envelope.content if isinstance(envelope.content, bytes) else b""))
        return "250 OK"


@dataclass
class Deployment:
    prefix: str
    env: dict[str, str]
    tmp: Path
    mailbox: Mailbox
    notifier: WorkerProc


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"ntf{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture(scope="module")
def smtp_port(mailbox: Mailbox) -> Iterator[int]:
    """A local SMTP server delivering to ``mailbox``: its port."""
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        yield smtp.port
    finally:
        smtp.stop()


@pytest.fixture(scope="module")
def worker_settings(prefix: str, smtp_port: int) -> dict[str, str]:
    return dict(
        SCHED_MONGO_DATABASE=prefix, SCHED_SECRET_KEYS=json.dumps(KEYS), SCHED_KAFKA_WORK_TOPICS='["alerts.**"]',
        SCHED_SMTP_HOST="127.0.0.1", SCHED_SMTP_PORT=str(smtp_port), SCHED_SMTP_FROM="scheduler@test.example",
        SCHED_NOTIFY_ATTEMPTS="3", SCHED_NOTIFY_BACKOFF_SECONDS="0.1", SCHED_NOTIFY_TIMEOUT_SECONDS="5",
    )  # fmt: skip


@pytest.fixture(scope="module")
def deployment(
    prefix: str, worker: WorkerProc, mailbox: Mailbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The module's worker (conftest.py) with a notifier process next to it, on the same settings."""
    tmp: Path = tmp_path_factory.mktemp("notify")
    notifier = WorkerProc(worker.env, tmp / "notifier.log", None, ("notifier",)).start()
    deployment = Deployment(prefix, worker.env, tmp, mailbox, notifier)
    try:
        yield deployment
    finally:
        # The notifier running now: a test may have replaced the first one.
        deployment.notifier.stop()
        print(deployment.notifier.tail())


@pytest.fixture
def bus_follows() -> tuple[str, ...]:
    return ("task-events", "outcomes", "dead-letter")


@pytest.fixture
def webhook(target: HttpTarget) -> HttpTarget:
    return target


@pytest.fixture
async def deliveries(infra: Infra, deployment: Deployment) -> AsyncIterator[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    try:
        yield client[deployment.prefix][DELIVERIES]
    finally:
        await client.close()


def failing_task(rules: list[dict[str, Any]], *, attempts: int = 2) -> tuple[str, TaskDefinition]:
    task_id = f"{TENANT}/fails-{new_id()[:8]}"
    definition = TaskDefinition.model_validate(
        {
            "name": "nightly report",
            "work": HandlerWork(name="fail", params={"message": "disk full"}).model_dump(),
            "retry": RetryPolicy(max_attempts=attempts, initial_backoff_seconds=0).model_dump(),
            "notifications": rules,
        }
    )
    return task_id, seal_definition(definition, keyring=RING, tenant=TENANT, task_id=task_id)


async def create_and_run(bus: Bus, task_id: str, definition: TaskDefinition, trigger: str = "t1") -> str:
    """Create the task and run it now; the execution id once it completed."""
    await bus.send(CreateTask(command_id=new_id(), task_id=task_id, tenant=TENANT, actor="t", at=now(),
                              definition=definition))  # fmt: skip
    await bus.send(TriggerTask(command_id=new_id(), task_id=task_id, tenant=TENANT, actor="t", at=now(),
                               trigger_id=trigger))  # fmt: skip

    def done() -> list[Any]:
        return [e for e in bus.events(task_id, "ExecutionCompleted") if e.trigger_id == trigger]

    await bus.wait_for(lambda: bool(done()), 60, "the execution to complete")
    return str(done()[0].execution_id)


def hook_rule(url: str, on: list[str] | None = None) -> dict[str, Any]:
    return {"on": on or ["failed", "retries_exhausted"], "channel": {"kind": "webhook", "url": url, "secret": SECRET}}


async def kafka_messages(bootstrap: str, topic: str, count: int, within: float = 30) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    try:
        while len(out) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out += [orjson.loads(r.value or b"{}") for r in records]
    finally:
        await consumer.stop()
    return out


async def test_a_failing_task_notifies_by_webhook_kafka_and_email(
    infra: Infra, deployment: Deployment, bus: Bus, webhook: HttpTarget, deliveries: Any
) -> None:
    topic = f"alerts.{deployment.prefix}"
    rules = [
        hook_rule(webhook.url),
        {"on": ["retries_exhausted"], "channel": {"kind": "kafka", "topic": topic}},
        {"on": ["failed"], "channel": {"kind": "email", "to": ["ops@acme.example"]}},
        {"on": ["succeeded"], "channel": {"kind": "email", "to": ["nobody@acme.example"]}},  # does not match
    ]
    task_id, definition = failing_task(rules)
    execution_id = await create_and_run(bus, task_id, definition)

    await bus.wait_for(lambda: len(webhook.requests) >= 1, 30, "the webhook")
    request = webhook.requests[0]
    body = request["body"].encode()
    assert verify_signature(SECRET, request["headers"][SIGNATURE_HEADER], body, now=time.time())
    assert not verify_signature("some-other-secret-value", request["headers"][SIGNATURE_HEADER], body, now=time.time())
    sent = orjson.loads(body)
    assert request["headers"][DELIVERY_HEADER] == sent["delivery_id"]
    assert sent["event"] == "retries_exhausted" and sent["events"] == ["retries_exhausted", "failed"]
    assert (sent["task_id"], sent["execution_id"], sent["status"]) == (task_id.split("/")[1], execution_id, "failed")
    assert sent["attempts"] == 2 and "disk full" in sent["error"]

    (message,) = await kafka_messages(infra.bootstrap, topic, 1)
    assert (message["execution_id"], message["event"]) == (execution_id, "retries_exhausted")

    await bus.wait_for(lambda: len(deployment.mailbox.messages) >= 1, 30, "the email")
    mail = deployment.mailbox.messages[0]
    assert mail["To"] == "ops@acme.example" and mail["From"] == "scheduler@test.example"
    text = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    for expected in ("nightly report", execution_id, "failed", "disk full"):
        assert expected in text

    async def recorded() -> list[dict[str, Any]] | None:
        docs: list[dict[str, Any]] = await deliveries.find({"execution_id": execution_id}).to_list()
        return docs if len(docs) >= 3 else None

    docs = await until(recorded, 20, "three delivery records")
    assert sorted((d["channel"], d["status"], d["attempts"]) for d in docs) == [
        ("email", "delivered", 1), ("kafka", "delivered", 1), ("webhook", "delivered", 1),
    ]  # fmt: skip
    assert len(deployment.mailbox.messages) == 1  # the "succeeded" rule did not match


async def test_a_redelivered_event_or_a_replay_sends_nothing_twice(
    infra: Infra, deployment: Deployment, bus: Bus, webhook: HttpTarget
) -> None:
    task_id, definition = failing_task([hook_rule(webhook.url, ["failed"])], attempts=1)
    await create_and_run(bus, task_id, definition, "first")
    await bus.wait_for(lambda: len(webhook.requests) >= 1, 30, "the first webhook")

    # The same event again on task-events (a producer retry, a resend after a rebalance)...
    (raw,) = [r for r in bus.raw["task-events"] if r.key == task_id.encode() and b"ExecutionCompleted" in r.value]
    await bus.send_raw("task-events", raw.key, raw.value)
    # ...then another run of the task: it is behind the copy in the same partition, so once its
    # webhook arrives the copy was read.
    await create_and_run(bus, task_id, definition, "second")
    await bus.wait_for(lambda: len(webhook.requests) >= 2, 30, "the second webhook")

    # A notifier of another consumer group reads the whole log again: the deliveries recorded
    # as delivered are not sent again; a third run proves it read that far.
    deployment.notifier.stop()
    env = {**deployment.env, "SCHED_APP_ID": "replayed"}
    deployment.notifier = WorkerProc(env, deployment.tmp / "notifier2.log", None, ("notifier",)).start()
    await create_and_run(bus, task_id, definition, "third")
    await bus.wait_for(lambda: len(webhook.requests) >= 3, 60, "the third webhook")
    await asyncio.sleep(1)
    ids = [r["headers"][DELIVERY_HEADER] for r in webhook.requests]
    assert len(ids) == 3 == len(set(ids)), ids


async def test_a_failing_webhook_is_retried_then_dead_lettered(
    deployment: Deployment, bus: Bus, deliveries: Any
) -> None:
    failing = await HttpTarget(fail_first=1000).start()
    try:
        task_id, definition = failing_task([hook_rule(failing.url, ["failed"])], attempts=1)
        execution_id = await create_and_run(bus, task_id, definition)

        def letters() -> list[dict[str, Any]]:
            return [orjson.loads(r.value) for r in bus.raw["dead-letter"] if execution_id.encode() in r.value]

        await bus.wait_for(lambda: bool(letters()), 30, "the dead letter")
        (letter,) = letters()
        assert "failed after 3 attempt(s)" in letter["reason"] and "HTTP 503" in letter["reason"]
        assert orjson.loads(letter["payload"])["execution_id"] == execution_id
        (delivery,) = {r["headers"][DELIVERY_HEADER] for r in failing.requests}
        assert len(failing.requests) == 3  # one delivery, sent three times
        doc = await until(lambda: deliveries.find_one({"_id": delivery}), 10, "the delivery record")
        assert (doc["status"], doc["attempts"], doc["execution_id"]) == ("dead_lettered", 3, execution_id)
        assert doc["last_error"] == "webhook answered HTTP 503"
    finally:
        await failing.stop()


async def test_a_webhook_to_a_fenced_address_is_refused_where_it_is_sent(deployment: Deployment, bus: Bus) -> None:
    # Loopback is allowed in these tests (SCHED_HTTP_ALLOW_NETWORKS); cloud metadata is not.
    task_id, definition = failing_task([hook_rule("http://169.254.169.254/latest/meta-data", ["failed"])], attempts=1)
    await create_and_run(bus, task_id, definition)

    def letters() -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in bus.raw["dead-letter"] if b"169.254.169.254" in r.value]

    await bus.wait_for(lambda: bool(letters()), 30, "the dead letter")
    reason = letters()[0]["reason"]
    assert "after 1 attempt(s)" in reason and "link-local" in reason


async def test_a_notifier_on_a_new_deployment_applies_rules_put_after_it_started(
    infra: Infra, deployment: Deployment, tmp_path: Path
) -> None:
    # Its topics do not exist yet: the notifier creates them and must still read the rules topic
    # (a consumer assigned before the topic's metadata arrived saw no partition and died).
    prefix = f"ntf{uuid.uuid4().hex[:8]}"
    env = {**deployment.env, "SCHED_TOPIC_PREFIX": f"{prefix}.", "SCHED_MONGO_DATABASE": prefix}
    notifier = WorkerProc(env, tmp_path / "notifier.log", None, ("notifier",)).start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    bus = Bus(infra.bootstrap, prefix)
    try:
        await bus.start(follow=())
        put = TenantNotificationRules(
            tenant=TENANT,
            actor="t",
            at=now(),
            rules=[{"on": ["missed"], "channel": {"kind": "kafka", "topic": "alerts.x"}}],
        )
        await bus.send_raw("notification-rules", TENANT.encode(), put.model_dump_json().encode())
        view = await until(lambda: client[prefix][RULES_VIEW].find_one({"_id": TENANT}), 40, "the rules view")
        assert view["rules"][0]["channel"]["topic"] == "alerts.x" and notifier.alive()
    finally:
        notifier.stop()
        print(notifier.tail())
        await bus.stop()
        await client.drop_database(prefix)
        await client.close()


async def test_missed_slots_notify(infra: Infra, deployment: Deployment, bus: Bus) -> None:
    # Every second, each run lasting 2.5 s, overlap "skip": slots are missed while one runs.
    topic = f"alerts.missed.{deployment.prefix}"
    task_id = f"{TENANT}/slow-{new_id()[:8]}"
    definition = TaskDefinition.model_validate(
        {
            "name": "slow",
            "schedule": IntervalSchedule(every_seconds=1).model_dump(),
            "work": HandlerWork(name="sleep", params={"seconds": 2.5}).model_dump(),
            "overlap": "skip",
            "notifications": [{"on": ["missed"], "channel": {"kind": "kafka", "topic": topic}}],
        }
    )
    await bus.send(CreateTask(command_id=new_id(), task_id=task_id, tenant=TENANT, actor="t", at=now(),
                              definition=definition))  # fmt: skip
    try:
        (message,) = await kafka_messages(infra.bootstrap, topic, 1)
        assert message["event"] == "missed" and message["details"]["reason"] == "overlap"
        assert message["task_id"] == task_id.split("/")[1] and message["details"]["count"] >= 1
    finally:
        await bus.send(DeleteTask(command_id=new_id(), task_id=task_id, tenant=TENANT, actor="t", at=now()))


async def test_a_pause_after_consecutive_failures_notifies(infra: Infra, deployment: Deployment, bus: Bus) -> None:
    # The worker pauses a task after consecutive failures (``pause_after_failures``); here the
    # event is put on task-events as the worker would, behind the task's creation.
    topic = f"alerts.paused.{deployment.prefix}"
    task_id, definition = failing_task(
        [{"on": ["paused_after_failures"], "channel": {"kind": "kafka", "topic": topic}}]
    )
    await bus.send(CreateTask(command_id=new_id(), task_id=task_id, tenant=TENANT, actor="t", at=now(),
                              definition=definition))  # fmt: skip
    await bus.wait_for(lambda: bool(bus.events(task_id, "TaskCreated")), 30, "the task")
    paused = TaskPaused(event_id=new_id(), task_id=task_id, tenant=TENANT, sequence=2, at=now(), causation_id=new_id(),
                        actor="system", revision=2, reason="consecutive_failures", failures=3)  # fmt: skip
    envelope = encode(event_envelope(paused, source="tests", correlation_id=None))
    await bus.send_raw("task-events", task_id.encode(), envelope)
    (message,) = await kafka_messages(infra.bootstrap, topic, 1)
    assert (message["event"], message["details"]["failures"], message["task_name"]) == (
        "paused_after_failures", 3, "nightly report",
    )  # fmt: skip
