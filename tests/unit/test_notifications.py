"""Notifications, pure parts: signatures, delivery ids, rule validation, which events notify,
the message and email built, and the webhook secret encrypted like the other secrets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.events import AttemptFailed, ExecutionCompleted, SlotsMissed, TaskPaused
from schemas.notifications import (
    EmailChannel,
    KafkaChannel,
    NotificationRule,
    WebhookChannel,
    delivery_id,
    sign,
    verify_signature,
)
from schemas.secrets import MARKER, Keyring, SecretError, is_token, new_key, parse_keys, redact, seal_definition
from schemas.specs import TaskDefinition
from streams.notifier import email_message, event_kinds, notification

SECRET = "a-webhook-secret-of-some-length"
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
BASE: dict[str, Any] = {
    "event_id": "ev-1", "task_id": "acme/nightly", "tenant": "acme", "sequence": 7, "at": T0,
    "causation_id": "c-1", "actor": "system",
}  # fmt: skip


def completed(status: str, attempts: int = 1, error: str | None = "boom") -> ExecutionCompleted:
    return ExecutionCompleted(
        **BASE,
        execution_id="ex-1",
        status=status,
        attempts=attempts,
        error=error,
        finished_at=T0,  # type: ignore[arg-type]
    )


# -- signatures ---------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    body = b'{"event":"failed"}'
    header = sign(SECRET, body, 1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_signature(SECRET, header, body, now=1_700_000_010)


@pytest.mark.parametrize(
    ("secret", "body", "now", "header"),
    [
        ("another-secret-of-some-length", b"{}", 1_700_000_000, None),  # wrong key
        (SECRET, b"{ }", 1_700_000_000, None),  # body changed
        (SECRET, b"{}", 1_700_000_301, None),  # too old: a replay
        (SECRET, b"{}", 1_700_000_000, "v1=abc"),  # no timestamp
        (SECRET, b"{}", 1_700_000_000, "garbage"),
        (SECRET, b"{}", 1_700_000_000, "t=1700000000,v1=" + "0" * 64),
    ],
)
def test_a_signature_that_does_not_match_is_refused(secret: str, body: bytes, now: int, header: str | None) -> None:
    header = header or sign(SECRET, b"{}", 1_700_000_000)
    assert not verify_signature(secret, header, body, now=now)


def test_delivery_ids_are_deterministic_per_event_scope_and_receiver() -> None:
    hook = WebhookChannel(url="https://hooks.example/x", secret=SECRET)
    same_receiver_new_secret = WebhookChannel(url="https://hooks.example/x", secret="enc:v1:k:abcdefabcdefabcdef")
    assert delivery_id("ev-1", "task", hook) == delivery_id("ev-1", "task", same_receiver_new_secret)
    others = {
        delivery_id("ev-2", "task", hook),
        delivery_id("ev-1", "tenant", hook),
        delivery_id("ev-1", "task", KafkaChannel(topic="alerts")),
        delivery_id("ev-1", "task", EmailChannel(to=["ops@acme.example"])),
    }
    assert delivery_id("ev-1", "task", hook) not in others and len(others) == 4


# -- rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"on": ["failed"], "channel": {"kind": "webhook", "url": "https://h.example", "secret": SECRET}, "x": 1}, "x"),
        ({"on": ["failed"], "channel": {"kind": "webhook", "url": "https://h.example", "secret": "short"}}, "secret"),
        ({"on": ["failed"], "channel": {"kind": "webhook", "url": "ftp://h.example", "secret": SECRET}}, "url"),
        ({"on": ["exploded"], "channel": {"kind": "kafka", "topic": "alerts"}}, "on"),
        ({"on": [], "channel": {"kind": "kafka", "topic": "alerts"}}, "on"),
        ({"on": ["failed"], "channel": {"kind": "kafka", "topic": "bad topic"}}, "topic"),
        ({"on": ["failed"], "channel": {"kind": "email", "to": ["not an address"]}}, "to"),
        ({"on": ["failed"], "channel": {"kind": "email", "to": [f"u{i}@a.example" for i in range(21)]}}, "to"),
        ({"on": ["failed"], "channel": {"kind": "email", "to": ["a@b.example"], "cc": []}}, "cc"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_field(rule: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        NotificationRule.model_validate(rule)
    locs = [".".join(str(p) for p in err["loc"]) for err in info.value.errors()]
    assert any(field in loc for loc in locs), locs


def test_more_than_ten_rules_on_a_task_are_refused() -> None:
    rule = {"on": ["failed"], "channel": {"kind": "kafka", "topic": "alerts"}}
    with pytest.raises(ValidationError, match="notifications"):
        TaskDefinition.model_validate(
            {"name": "t", "work": {"kind": "handler", "name": "noop"}, "notifications": [rule] * 11}
        )


# -- which events notify ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "max_attempts", "kinds"),
    [
        (completed("succeeded"), 1, ["succeeded"]),
        (completed("failed"), 1, ["failed"]),
        (completed("timed_out"), 1, ["timed_out"]),
        (completed("cancelled"), 1, []),
        (completed("failed", attempts=3), 3, ["failed", "retries_exhausted"]),
        (completed("timed_out", attempts=3), 3, ["timed_out", "retries_exhausted"]),
        # Cancelled during its retries: fewer attempts than allowed, not exhausted.
        (completed("failed", attempts=2), 3, ["failed"]),
        # A task that never retries has no retries to exhaust.
        (completed("failed", attempts=1), 1, ["failed"]),
        (
            SlotsMissed(**BASE, first_slot=T0, last_slot=T0 + timedelta(minutes=5), count=6, reason="overlap"),
            1,
            ["missed"],
        ),
        (TaskPaused(**BASE, revision=2, reason="consecutive_failures", failures=5), 1, ["paused_after_failures"]),
        (TaskPaused(**BASE, revision=2), 1, []),
        (AttemptFailed(**BASE, execution_id="ex-1", attempt=1, error="x"), 3, []),
    ],
)
def test_which_events_notify(event: Any, max_attempts: int, kinds: list[str]) -> None:
    assert event_kinds(event, max_attempts) == kinds


def test_the_message_names_task_execution_status_and_error() -> None:
    message = notification(completed("failed", attempts=3), ["failed", "retries_exhausted"], "d-1", "nightly tests")
    assert message.event == "retries_exhausted"
    assert (message.task_id, message.tenant, message.execution_id) == ("nightly", "acme", "ex-1")
    assert (message.status, message.error, message.attempts) == ("failed", "boom", 3)
    mail = email_message(message, "scheduler@acme.example", ["ops@acme.example"])
    text = mail.get_content()
    assert mail["Subject"] == "[scheduler] nightly tests: retries exhausted"
    assert mail["Message-ID"] == "<d-1@scheduler>"
    for expected in ("nightly tests (nightly)", "ex-1", "failed", "boom", "d-1"):
        assert expected in text


# -- the webhook secret is a secret ---------------------------------------------------------------


def test_a_webhook_secret_is_encrypted_shown_as_the_marker_and_kept_by_it() -> None:
    ring = Keyring(parse_keys({"k1": new_key()}))
    rule = {"on": ["failed"], "channel": {"kind": "webhook", "url": "https://h.example/x", "secret": SECRET}}
    definition = TaskDefinition.model_validate(
        {"name": "t", "work": {"kind": "handler", "name": "noop"}, "notifications": [rule]}
    )
    sealed = seal_definition(definition, keyring=ring, tenant="acme", task_id="acme/t")
    token = sealed.notifications[0].channel.secret  # type: ignore[union-attr]
    assert is_token(token)
    assert ring.decrypt(token, tenant="acme", task_id="acme/t", pointer="/notifications/0/channel/secret") == SECRET
    shown = redact(sealed.model_dump(mode="json"))
    assert shown["notifications"][0]["channel"]["secret"] == MARKER
    kept = seal_definition(
        TaskDefinition.model_validate(shown), keyring=ring, tenant="acme", task_id="acme/t", stored=sealed.model_dump()
    )
    assert kept.notifications[0].channel.secret == token  # type: ignore[union-attr]
    with pytest.raises(SecretError, match="/notifications/0/channel/secret"):
        seal_definition(definition, keyring=None, tenant="acme", task_id="acme/t")
