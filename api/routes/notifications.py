"""Notifications: the tenant's rules (``/v1/notification-rules``) and an execution's deliveries
(``/v1/executions/{id}/notifications``).

Rules are put on the compacted ``notification-rules`` topic (keyed by tenant), not written to
MongoDB: the notifier applies them from the log and writes the ``notification_rules`` view this
API reads, so nothing bypasses the log. A ``PUT`` is therefore answered ``202``; the ``GET``
shows the rules once a notifier applied them (about a second).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path
from pydantic import Field

from api.commands import check_storable, now, secret_error
from api.deps import Admin, State, Viewer
from api.errors import ERROR_RESPONSES, FieldError, NotFound, Unprocessable, problem_responses
from api.models import _Public
from api.queries import public_task_id
from api.settings import ApiSettings
from schemas._types import WireModel
from schemas.notifications import (
    MAX_TENANT_RULES,
    TENANT_RULES_SUBJECT,
    KafkaChannel,
    NotificationEvent,
    NotificationRule,
    TenantNotificationRules,
    WebhookChannel,
)
from schemas.secrets import MARKER, SecretError, redact, seal_places, webhook_secret_places
from streams.fence import TopicFence, literal_url_refusal
from streams.notifier import DELIVERIES, RULES_VIEW

rules_router = APIRouter(prefix="/v1/notification-rules", tags=["notifications"], responses=ERROR_RESPONSES)
deliveries_router = APIRouter(prefix="/v1/executions", tags=["notifications"], responses=ERROR_RESPONSES)

RULES_EXAMPLE = {
    "rules": [
        {
            "on": ["failed", "retries_exhausted"],
            "channel": {"kind": "webhook", "url": "https://hooks.example/scheduler", "secret": "at-least-16-chars"},  # nosec B105
        },
        {"on": ["timed_out", "paused_after_failures"], "channel": {"kind": "email", "to": ["ops@example.com"]}},
    ]
}


class NotificationRulesPut(WireModel):
    """A tenant's notification rules, replacing the previous ones (an empty list removes them)."""

    rules: list[NotificationRule] = Field(max_length=MAX_TENANT_RULES)
    """Rules applied to every task of the tenant, besides each task's own ``notifications``."""


class NotificationRulesPublic(_Public):
    """A tenant's rules as the notifiers apply them; webhook secrets show as ``***``."""

    rules: list[NotificationRule]
    updated_by: str | None = None
    updated_at: datetime | None = None


class NotificationDelivery(_Public):
    """One notification sent (or given up on) about an event of an execution."""

    id: str
    """The delivery id: the ``X-Scheduler-Delivery`` header, ``delivery_id`` of the body."""
    execution_id: str | None = None
    task_id: str
    event: NotificationEvent
    events: list[NotificationEvent] = []
    scope: Literal["task", "tenant"]
    """Whether the rule is the task's own or the tenant's."""
    channel: Literal["webhook", "kafka", "email"]
    target: str
    """The URL, topic, or recipients."""
    status: Literal["delivered", "dead_lettered"]
    """``dead_lettered``: given up after the retries, or refused (fenced, not configured)."""
    attempts: int
    last_error: str | None = None
    at: datetime
    """When it was delivered or given up on."""


class NotificationDeliveryList(_Public):
    """An execution's notifications, oldest first."""

    items: list[NotificationDelivery]


def notification_problems(
    rules: list[NotificationRule], tenant: str, settings: ApiSettings, base: str
) -> list[tuple[str, str]]:
    """``(field path, reason)`` of every rule whose receiver the deployment fences off: a webhook
    URL whose host is literally a refused address (names are checked where it is sent), a Kafka
    topic Kafka work may not use. An early answer: the notifier checks again when it sends."""
    problems: list[tuple[str, str]] = []
    fence = TopicFence.from_settings(settings)
    for i, rule in enumerate(rules):
        channel = rule.channel
        if isinstance(channel, WebhookChannel):
            refusal = literal_url_refusal(channel.url, settings.http_allow_networks)
            if refusal is not None:
                problems.append((f"{base}.{i}.channel.url", refusal.replace("HTTP work", "webhooks")))
        elif isinstance(channel, KafkaChannel):
            refusal = fence.refusal(channel.topic, tenant)
            if refusal is not None:
                problems.append((f"{base}.{i}.channel.topic", refusal.replace("Kafka work", "notifications")))
    return problems


def _unprocessable(problems: list[tuple[str, str]], prefix: str | None) -> Unprocessable:
    errors = [
        FieldError(
            field=".".join(p for p in (prefix, path) if p), message=message, pointer="#/" + path.replace(".", "/")
        )
        for path, message in problems
    ]
    return Unprocessable("; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors)


@rules_router.put(
    "", status_code=202, summary="Replace the tenant's notification rules", responses=problem_responses(400, 413)
)
async def put_rules(
    state: State,
    principal: Admin,
    body: Annotated[NotificationRulesPut, Body(openapi_examples={"webhook and email": {"value": RULES_EXAMPLE}})],
) -> NotificationRulesPublic:
    """Replace the rules applied to every task of the tenant. Needs the admin role.

    Webhook secrets are encrypted before they leave the API and shown as `***`; send `***`
    back at the same place to keep a stored secret. A webhook URL or Kafka topic the
    deployment fences off is a 422 naming the field.
    """
    problems = notification_problems(body.rules, principal.tenant, state.settings, "rules")
    if problems:
        raise _unprocessable(problems, None)
    check_storable(body)
    stored = await state.views.db[RULES_VIEW].find_one({"_id": principal.tenant})
    doc: dict[str, Any] = body.model_dump(mode="json")
    try:
        seal_places(
            doc,
            webhook_secret_places(doc["rules"], "/rules"),
            keyring=state.keyring,
            tenant=principal.tenant,
            subject=TENANT_RULES_SUBJECT,
            stored=stored,
        )
    except SecretError as exc:
        raise secret_error(exc, None) from None
    put = TenantNotificationRules(tenant=principal.tenant, rules=doc["rules"], actor=principal.actor, at=now())
    topic = state.settings.topics.notification_rules
    await state.bus.publish(topic, principal.tenant.encode(), put.model_dump_json().encode(), what="notification rules")
    return NotificationRulesPublic.model_validate(
        {"rules": redact(doc["rules"]), "updated_by": put.actor, "updated_at": put.at}
    )


@rules_router.get("", summary="The tenant's notification rules")
async def get_rules(state: State, principal: Viewer) -> NotificationRulesPublic:
    """The rules the notifiers apply to every task of the tenant (empty when none)."""
    doc = await state.views.db[RULES_VIEW].find_one({"_id": principal.tenant})
    if doc is None:
        return NotificationRulesPublic(rules=[])
    rules = redact(doc.get("rules", []))
    for rule in rules:  # a secret put on the topic in clear (not through this API) is not shown either
        if isinstance(rule.get("channel"), dict) and "secret" in rule["channel"]:
            rule["channel"]["secret"] = MARKER
    return NotificationRulesPublic.model_validate(
        {"rules": rules, "updated_by": doc.get("actor"), "updated_at": doc.get("at")}
    )


@deliveries_router.get(
    "/{execution_id}/notifications", summary="An execution's notifications", responses=problem_responses(404)
)
async def execution_notifications(
    state: State,
    principal: Viewer,
    execution_id: Annotated[str, Path(description="The execution's id.", max_length=200)],
) -> NotificationDeliveryList:
    """Every notification sent about the execution (or given up on), by any rule, oldest first."""
    if await state.views.execution(principal.tenant, execution_id) is None:
        raise NotFound(f"execution {execution_id!r} not found")
    cursor = state.views.db[DELIVERIES].find({"tenant": principal.tenant, "execution_id": execution_id})
    docs = sorted(await cursor.to_list(1000), key=lambda d: d["at"])
    return NotificationDeliveryList(
        items=[
            NotificationDelivery.model_validate(
                {**d, "id": d["_id"], "task_id": public_task_id(principal.tenant, d["task_id"])}
            )
            for d in docs
        ]
    )
