"""The notifier's delivery shell with a fake send: what is retried, what is given up at once,
and what its record says. (The real sends are proven in tests/integration/test_notifications_e2e.py.)"""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import REGISTRY

from schemas.envelope import encode, event_envelope
from schemas.events import EventBase, ExecutionCompleted, TaskCreated
from schemas.notifications import KafkaChannel, NotificationRule, WebhookChannel
from schemas.secrets import Keyring, new_key, parse_keys
from schemas.specs import HandlerWork, TaskDefinition
from streams.notifier import (
    DeliveryFailed,
    DeliveryRefused,
    Handled,
    Notifier,
    NotifierSettings,
    Pending,
    notification,
)

T0 = datetime(2026, 11, 29, 12, tzinfo=UTC)


class FakeSends(Notifier):
    """A notifier whose sends play ``outcomes`` in turn: None succeeds, "slow" outlasts the
    timeout, an exception is raised; dead letters are kept."""

    def __init__(self, *outcomes: Any, keyring: Keyring | None = None) -> None:
        super().__init__(
            NotifierSettings(
                notify_attempts=3,
                notify_backoff_seconds=0.01,
                notify_backoff_max_seconds=0.02,
                notify_timeout_seconds=0.05,
            )
        )
        self.keyring = keyring
        self.outcomes = list(outcomes)
        self.letters: list[str] = []

    async def _send(self, p: Pending) -> None:
        outcome = self.outcomes.pop(0)
        if outcome == "slow":
            await asyncio.sleep(1)
        elif isinstance(outcome, Exception):
            raise outcome

    async def _send_dead_letter(self, record: Any, payload: bytes, reason: str, error: Exception) -> None:
        self.letters.append(reason)


def pending(secret: str = "a-secret-of-sixteen-chars") -> Pending:
    event = ExecutionCompleted(
        event_id="ev-1",
        task_id="acme/t",
        tenant="acme",
        sequence=3,
        at=T0,
        causation_id="c",
        actor="system",
        execution_id="ex-1",
        status="failed",
        attempts=1,
        error="boom",
        finished_at=T0,
    )
    rule = NotificationRule(on=["failed"], channel=WebhookChannel(url="https://hooks.example/x", secret=secret))
    record = ConsumerRecord("t.task-events", 0, 7, 0, 0, b"acme/t", b"{}", None, 6, 2, [])
    message = notification(event, ["failed"], "d-1", "t")
    return Pending("d-1", "task", "acme/t", "/notifications/0/channel/secret", rule, message, record, "acme/t")


@pytest.mark.parametrize(
    ("outcomes", "status", "attempts"),
    [
        ((None,), "delivered", 1),
        ((DeliveryFailed("HTTP 503"), None), "delivered", 2),
        # A receiver that does not answer in time is retried like one that fails.
        (("slow", "slow", None), "delivered", 3),
        ((DeliveryFailed("HTTP 503"),) * 3, "dead_lettered", 3),
        # A refusal (fenced address, no SMTP server) is not retried.
        ((DeliveryRefused("address 10.0.0.1 is private"),), "dead_lettered", 1),
        # Nor is an error of the notifier itself: it must not stop every other notification.
        ((ValueError("a header value holds a line break"),), "dead_lettered", 1),
    ],
)
async def test_retries_then_dead_letter(outcomes: tuple[Any, ...], status: str, attempts: int) -> None:
    notifier = FakeSends(*outcomes)
    labels = {"channel": "webhook", "status": status}
    before = REGISTRY.get_sample_value("scheduler_notifications_total", labels) or 0.0
    record = await notifier._deliver(pending())
    assert REGISTRY.get_sample_value("scheduler_notifications_total", labels) == before + 1
    assert (record["status"], record["attempts"]) == (status, attempts)
    assert (record["_id"], record["execution_id"], record["channel"], record["target"]) == (
        "d-1",
        "ex-1",
        "webhook",
        "https://hooks.example/x",
    )
    if status == "dead_lettered":
        (letter,) = notifier.letters
        assert f"failed after {attempts} attempt(s)" in letter and record["last_error"] in letter
    else:
        assert notifier.letters == [] and record["last_error"] is None


def test_the_webhook_secret_is_only_used_encrypted_and_for_its_own_place() -> None:
    ring = Keyring(parse_keys({"k": new_key()}))
    token = ring.encrypt(
        "a-secret-of-sixteen-chars", tenant="acme", task_id="acme/t", pointer="/notifications/0/channel/secret"
    )
    notifier = FakeSends(keyring=ring)
    assert notifier._secret(pending(token), token) == "a-secret-of-sixteen-chars"
    with pytest.raises(DeliveryRefused, match="not encrypted"):
        notifier._secret(pending(), "a-secret-of-sixteen-chars")
    moved = pending(token)
    moved.subject = "acme/another-task"
    with pytest.raises(DeliveryRefused, match="cannot be decrypted"):
        notifier._secret(moved, token)
    with pytest.raises(DeliveryRefused, match="no secret keys"):
        FakeSends()._secret(pending(token), token)


def test_an_email_subject_never_holds_a_line_break() -> None:
    from streams.notifier import email_message

    message = pending().message.model_copy(update={"task_name": "nightly\r\nBcc: everyone@example.com"})
    mail = email_message(message, "scheduler@acme.example", ["ops@acme.example"])
    assert mail["Subject"] == "[scheduler] nightly Bcc: everyone@example.com: failed"
    assert mail["Bcc"] is None


class FakeConsumer:
    """The part of a consumer :meth:`Notifier._finish` uses: an assignment and commits."""

    def __init__(self, owned: set[TopicPartition], error: Exception | None = None) -> None:
        self.owned = owned
        self.error = error
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)
        if self.error is not None:
            raise self.error


async def test_a_rebalance_during_a_batch_does_not_stop_the_notifier() -> None:
    kept, lost = TopicPartition("t", 0), TopicPartition("t", 1)
    notifier = FakeSends()
    consumer = FakeConsumer({kept})
    await notifier._finish(Handled({}, []), consumer, {kept: 8, lost: 3})  # type: ignore[arg-type]
    assert consumer.commits == [{kept: 8}]  # only what it still owns
    failing = FakeConsumer({kept}, CommitFailedError("rebalanced"))
    await notifier._finish(Handled({}, []), failing, {kept: 9})  # type: ignore[arg-type]
    assert failing.commits == [{kept: 9}]


def _record(event: EventBase, offset: int) -> ConsumerRecord[bytes, bytes]:
    value = encode(event_envelope(event, source="tests", correlation_id=None))
    return ConsumerRecord("t.task-events", 0, offset, 0, 0, event.task_id.encode(), value, None, 6, len(value), [])


async def test_a_task_learnt_in_the_batch_being_recorded_is_known_after_a_rebalance(mongo_db: Any) -> None:
    """Against FerretDB: batch N learns a task, and its record is still being written when a
    rebalance empties the memory; batch N+1's outcome of that task must still find its rules."""
    notifier = FakeSends(None)
    notifier._db = mongo_db
    at = datetime.now(UTC)
    base: dict[str, Any] = {"task_id": "acme/t", "tenant": "acme", "at": at, "causation_id": "c", "actor": "a"}
    rule = NotificationRule(on=["failed"], channel=KafkaChannel(topic="alerts"))
    definition = TaskDefinition(name="t", work=HandlerWork(name="fail"), notifications=[rule])
    created = TaskCreated(**base, event_id="e1", sequence=1, definition=definition, revision=1)
    done = await notifier.handle([_record(created, 0)])
    tp = TopicPartition("t.task-events", 0)

    async def slow_finish() -> None:
        await asyncio.sleep(0.5)
        await notifier._finish(done, FakeConsumer({tp}), {tp: 1})  # type: ignore[arg-type]

    notifier._finishing = asyncio.create_task(slow_finish())
    notifier._tasks.clear()  # what the rebalance listener does
    failed = ExecutionCompleted(**base, event_id="e2", sequence=2, execution_id="x1", status="failed", attempts=1,
                                finished_at=at)  # fmt: skip
    later = await notifier.handle([_record(failed, 1)])
    assert [(d["scope"], d["channel"], d["status"]) for d in later.deliveries] == [("task", "kafka", "delivered")]


async def test_a_webhook_to_a_name_of_a_loopback_address_is_refused_and_never_sent() -> None:
    # The API refuses literal addresses and `localhost`; any other name is resolved where the
    # notification is sent, by the executor's fenced client, and the address connected to is
    # what is checked. The machine's own host name (or `localhost`) resolves to loopback here.
    import socket

    from aiohttp import web

    from streams.fence import fenced_http_client
    from tests.integration.harness import serve

    host = socket.gethostname()
    try:
        if not all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, 80)):
            host = "localhost"
    except OSError:
        host = "localhost"
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner, port = await serve(app)
    ring = Keyring(parse_keys({"k": new_key()}))
    token = ring.encrypt(
        "a-secret-of-sixteen-chars", tenant="acme", task_id="acme/t", pointer="/notifications/0/channel/secret"
    )
    notifier = Notifier(NotifierSettings(notify_attempts=3, notify_backoff_seconds=0.01))
    notifier.keyring = ring
    letters: list[str] = []

    async def dead_letter(record: Any, payload: bytes, reason: str, error: Exception) -> None:
        letters.append(reason)

    notifier._send_dead_letter = dead_letter  # type: ignore[method-assign]
    notifier._http = fenced_http_client(notifier.settings, 4)
    p = pending(token)
    p.rule = NotificationRule(on=["failed"], channel=WebhookChannel(url=f"http://{host}:{port}/hook", secret=token))
    try:
        record = await notifier._deliver(p)
    finally:
        await notifier._http.close()
        await runner.cleanup()
    assert (record["status"], record["attempts"]) == ("dead_lettered", 1)  # a refusal is not retried
    assert "loopback" in record["last_error"] and len(letters) == 1
    assert hits == []
