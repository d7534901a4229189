"""Notifications: rules (per task and per tenant), the message sent, its signature, delivery ids.

A **rule** says on which outcomes (``on``) a **channel** is told: a webhook (a JSON body
``POST``-ed with an HMAC-SHA256 signature), a Kafka topic (the same JSON), or email (plain
text over SMTP). Per-task rules come with the task definition (``TaskDefinition.notifications``);
per-tenant rules are put with ``PUT /v1/notification-rules`` and travel as
:class:`TenantNotificationRules` on the compacted ``notification-rules`` topic, keyed by tenant.
The notifier (``streams/notifier.py``) applies both to what it reads on ``task-events``.

**Verifying a webhook.** Each request carries ``X-Scheduler-Signature: t=<unix seconds>,v1=<hex>``
where ``<hex>`` is HMAC-SHA256, keyed with the rule's secret, of ``"<t>." + raw body``;
``X-Scheduler-Delivery`` is the delivery id (the same on every retry and redelivery, so a
receiver deduplicates on it). A receiver recomputes the HMAC over the raw bytes and compares in
constant time, and refuses a ``t`` far from its clock (replays)::

    import hashlib, hmac, time

    def verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
        parts = dict(p.split("=", 1) for p in header.split(","))
        expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) <= tolerance

(:func:`verify_signature` is the same, with the time passed in.)

This module does no I/O and reads no clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from schemas._types import SECRET_MARKER, SECRET_TOKEN_PREFIX, UtcDatetime, WireModel

NotificationEvent = Literal[
    "succeeded",
    "failed",
    "retries_exhausted",
    "timed_out",
    "missed",
    "paused_after_failures",
]
"""What a rule can be told about.

- ``succeeded``, ``failed``, ``timed_out``: an execution ended so (its last attempt's outcome).
- ``retries_exhausted``: an execution failed or timed out after all ``retry.max_attempts``
  attempts of a task that retries (``max_attempts`` > 1); it is ``failed`` or ``timed_out`` too.
- ``missed``: slots did not run (``SlotsMissed``: catch-up, overlap, superseded...).
- ``paused_after_failures``: the task was paused after consecutive failures
  (``TaskPaused`` with reason ``consecutive_failures``).
"""

MAX_TASK_RULES = 10
"""Most notification rules of one task."""
MAX_TENANT_RULES = 50
"""Most notification rules of one tenant."""
MAX_RECIPIENTS = 20
"""Most recipients of one email rule."""
MIN_SECRET_CHARS = 16
"""Shortest webhook secret accepted: an HMAC key must not be guessable."""

SIGNATURE_HEADER = "X-Scheduler-Signature"
"""Header carrying ``t=<unix seconds>,v1=<hex hmac-sha256 of "t.body">``."""
DELIVERY_HEADER = "X-Scheduler-Delivery"
"""Header carrying the delivery id (stable over retries and redeliveries)."""
EVENT_HEADER = "X-Scheduler-Event"
"""Header carrying the notification's event (``failed``...)."""

TENANT_RULES_SUBJECT = "notification-rules"
"""What the secrets of per-tenant rules are bound to in place of a task id (see schemas/secrets.py)."""

_NAMESPACE = uuid.UUID("3f6c2a0e-9d4b-5c1e-8f7a-6b2d4e0c9a13")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"[^@\s<>,;\"']{{1,64}}@{_LABEL}(?:\.{_LABEL})+")


class WebhookChannel(WireModel):
    """``POST`` the notification as JSON to ``url``, signed with ``secret`` (see the module doc).

    Retried with exponential backoff while the receiver fails (not 2xx) or is unreachable,
    then dead-lettered. The URL is fenced like HTTP work: no loopback, private or metadata
    address unless the operator allows it (``SCHED_HTTP_ALLOW_NETWORKS``).
    """

    kind: Literal["webhook"] = "webhook"
    url: str = Field(min_length=1, max_length=4000)
    """``http://`` or ``https://`` URL of the receiver; no credentials in it."""
    secret: str = Field(max_length=4096)
    """HMAC-SHA256 key of the signature, at least 16 characters. A secret: encrypted at rest,
    shown as ``***``; send ``***`` back in an update to keep the stored one."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from schemas.specs import _http_url  # here: specs imports this module

        return _http_url(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        if value != SECRET_MARKER and not value.startswith(SECRET_TOKEN_PREFIX) and len(value) < MIN_SECRET_CHARS:
            raise ValueError(f"secret must be at least {MIN_SECRET_CHARS} characters")
        return value


class KafkaChannel(WireModel):
    """Produce the notification as JSON to ``topic``, keyed by task id.

    The topic must be allowed for Kafka work by the operator (``SCHED_KAFKA_WORK_TOPICS``);
    the deployment's own topics never are.
    """

    kind: Literal["kafka"] = "kafka"
    topic: str = Field(min_length=1, max_length=249)
    """The topic."""

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        from schemas.specs import _kafka_topic  # here: specs imports this module

        return _kafka_topic(value)


class EmailChannel(WireModel):
    """Send a plain-text email (task, execution, status, error) over the notifier's SMTP server."""

    kind: Literal["email"] = "email"
    to: list[str] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    """Recipients' addresses (1 to 20)."""

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if len(address) > 254 or not _EMAIL.fullmatch(address):
                raise ValueError(f"{address!r} is not an email address")
        return value


Channel = Annotated[WebhookChannel | KafkaChannel | EmailChannel, Field(discriminator="kind")]
"""Any channel, discriminated by ``kind``."""


class NotificationRule(WireModel):
    """Tell ``channel`` about the events listed in ``on``."""

    on: list[NotificationEvent] = Field(min_length=1, max_length=6)
    """The events that notify (see :data:`NotificationEvent`)."""
    channel: Channel
    """Where the notification goes."""


class TenantNotificationRules(WireModel):
    """A tenant's rules, as put on the compacted ``notification-rules`` topic (key: the tenant).

    The newest message of a tenant replaces its rules; webhook secrets in it are encrypted
    (bound to the tenant, :data:`TENANT_RULES_SUBJECT` and ``/rules/<i>/channel/secret``).
    """

    tenant: str = Field(min_length=1, max_length=200)
    rules: list[NotificationRule] = Field(default_factory=list, max_length=MAX_TENANT_RULES)
    actor: str
    """Who put them."""
    at: UtcDatetime
    """When the API accepted them."""


class Notification(WireModel):
    """The JSON sent to a webhook or a Kafka topic (and rendered as an email)."""

    delivery_id: str
    """Stable over retries and redeliveries: deduplicate on it."""
    event: NotificationEvent
    """The most specific event the rule matched (``retries_exhausted`` over ``failed``)."""
    events: list[NotificationEvent]
    """Every event of ``on`` this notification is about."""
    tenant: str
    task_id: str
    """The task's id as the API shows it (without the tenant)."""
    task_name: str | None = None
    execution_id: str | None = None
    status: str | None = None
    """The execution's status, for execution events."""
    attempts: int | None = None
    error: str | None = None
    event_id: str
    """The id of the scheduler event this notification is about."""
    occurred_at: UtcDatetime
    """When that event happened."""
    details: dict[str, Any] = Field(default_factory=dict)
    """Further facts: missed slots (``first_slot``, ``last_slot``, ``count``, ``reason``),
    consecutive ``failures`` of a pause."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Scheduler-Signature`` value of ``body`` sent at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, header: str, body: bytes, now: float, tolerance: float = 300) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at most ``tolerance`` seconds from ``now``."""
    try:
        parts = dict(p.strip().split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    return hmac.compare_digest(expected, given) and abs(now - timestamp) <= tolerance


def channel_key(channel: WebhookChannel | KafkaChannel | EmailChannel) -> str:
    """What identifies a channel's receiver (not its secret: a token changes with every update)."""
    match channel:
        case WebhookChannel():
            return f"webhook:{channel.url}"
        case KafkaChannel():
            return f"kafka:{channel.topic}"
        case EmailChannel():
            return "email:" + ",".join(sorted(a.lower() for a in channel.to))


def delivery_id(event_id: str, scope: str, channel: WebhookChannel | KafkaChannel | EmailChannel) -> str:
    """The deterministic id of telling ``channel`` about event ``event_id`` under a rule of
    ``scope`` (``task`` or ``tenant``): the same event redelivered gives the same id."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join((event_id, scope, channel_key(channel)))))
