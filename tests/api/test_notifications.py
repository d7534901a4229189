"""Notification rules and deliveries through the API, against the session's worker and
projector plus a notifier process of this module (real broker and FerretDB)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.notifications import DELIVERY_HEADER, SIGNATURE_HEADER, TenantNotificationRules, verify_signature
from schemas.secrets import is_token
from tests.api.conftest import Running, Stack, auth, new_tenant
from tests.integration.harness import HttpTarget, WorkerProc, until

SECRET = "tenant-webhook-secret-0123456789"


@pytest.fixture(scope="module")
def notifier(warm: Stack) -> Iterator[WorkerProc]:
    env = {**warm.worker.env, "SCHED_MONGO_DATABASE": warm.database, "SCHED_NOTIFY_BACKOFF_SECONDS": "0.1"}
    proc = WorkerProc(env, warm.log_dir / "notifier.log", None, ("notifier",)).start()
    try:
        yield proc
    finally:
        proc.stop()
        print(proc.tail())


@pytest.fixture
async def webhook() -> AsyncIterator[HttpTarget]:
    target = await HttpTarget().start()
    try:
        yield target
    finally:
        await target.stop()


def _task(**extra: Any) -> dict[str, Any]:
    return {"name": "nightly", "work": {"kind": "handler", "name": "fail", "params": {"message": "disk full"}}, **extra}


def _fields(response: Any) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return [e["field"] for e in response.json()["errors"]]


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        (
            {"on": ["failed"], "channel": {"kind": "webhook", "url": "http://169.254.169.254/x", "secret": SECRET}},
            "notifications.0.channel.url",
        ),
        (
            {"on": ["failed"], "channel": {"kind": "webhook", "url": "http://10.1.2.3/x", "secret": SECRET}},
            "notifications.0.channel.url",
        ),
        ({"on": ["failed"], "channel": {"kind": "kafka", "topic": "PREFIX.commands"}}, "notifications.0.channel.topic"),
        (
            {"on": ["failed"], "channel": {"kind": "kafka", "topic": "alerts"}, "colour": "red"},
            "notifications.0.colour",
        ),
        (
            {"on": ["failed"], "channel": {"kind": "email", "to": ["a@b.example"], "cc": []}},
            "notifications.0.channel.cc",
        ),
        ({"on": ["whenever"], "channel": {"kind": "kafka", "topic": "alerts"}}, "notifications.0.on.0"),
    ],
)
async def test_bad_rules_are_422_naming_the_field(
    cold_api: Running, stack: Stack, rule: dict[str, Any], field: str
) -> None:
    rule = orjson.loads(orjson.dumps(rule).replace(b"PREFIX.", stack.prefix.encode()))
    tenant = new_tenant()
    r = await cold_api.http.post("/v1/tasks", json=_task(notifications=[rule]), headers=auth(tenant))
    assert f"definition.{field}" in _fields(r)
    r = await cold_api.http.put("/v1/notification-rules", json={"rules": [rule]}, headers=auth(tenant))
    assert field.replace("notifications.", "rules.") in _fields(r)


async def test_tenant_rules_and_an_executions_deliveries(
    api: Running, stack: Stack, notifier: WorkerProc, webhook: HttpTarget
) -> None:
    http, tenant = api.http, new_tenant()
    admin, viewer = auth(tenant, ["admin"], sub="alice"), auth(tenant, ["viewer"])
    rules = {"rules": [{"on": ["failed"], "channel": {"kind": "webhook", "url": webhook.url, "secret": SECRET}}]}

    # Put: 202, the secret never shown; on the topic it is encrypted.
    r = await http.put("/v1/notification-rules", json=rules, headers=admin)
    assert r.status_code == 202, r.text
    assert r.json()["rules"][0]["channel"]["secret"] == "***" and SECRET not in r.text
    assert (await http.put("/v1/notification-rules", json=rules, headers=viewer)).status_code == 403
    put = await _rules_on_topic(stack, tenant)
    token = put["rules"][0]["channel"]["secret"]
    assert is_token(token) and SECRET not in orjson.dumps(put).decode()

    # Get: once the notifier applied them; "***" sent back keeps the stored secret.
    async def shown() -> dict[str, Any] | None:
        body: dict[str, Any] = (await http.get("/v1/notification-rules", headers=viewer)).json()
        return body if body["rules"] else None

    got = await until(shown, 30, "the rules to be applied")
    assert got["rules"][0]["channel"] == {"kind": "webhook", "url": webhook.url, "secret": "***"}
    assert got["updated_by"] == "alice"
    r = await http.put("/v1/notification-rules", json=got | {"updated_by": None, "updated_at": None}, headers=admin)
    assert r.status_code == 422 and "updated_by" in str(_fields(r))  # not a field of a put
    r = await http.put("/v1/notification-rules", json={"rules": got["rules"]}, headers=admin)
    assert r.status_code == 202, r.text
    assert (await _rules_on_topic(stack, tenant, newest=True))["rules"][0]["channel"]["secret"] == token

    # A failing task, with its own rule too: both notify; the deliveries show per execution.
    own = [
        {"on": ["failed"], "channel": {"kind": "kafka", "topic": f"alerts.{tenant}"}},
        {"on": ["succeeded"], "channel": {"kind": "webhook", "url": webhook.url, "secret": "task-secret-0123456789"}},
    ]
    r = await http.post("/v1/tasks?wait=20", json=_task(notifications=own), headers=admin)
    assert r.status_code == 200, r.text
    task = r.json()["task"]
    assert task["definition"]["notifications"][1]["channel"]["secret"] == "***"
    r = await http.post(f"/v1/tasks/{task['id']}/trigger?wait=20", headers=admin)
    assert r.status_code == 200, r.text
    execution_id = r.json()["execution_id"]

    async def delivered() -> list[dict[str, Any]] | None:
        r = await http.get(f"/v1/executions/{execution_id}/notifications", headers=viewer)
        items: list[dict[str, Any]] = r.json()["items"] if r.status_code == 200 else []
        return items if len(items) == 2 else None

    items = await until(delivered, 30, "two deliveries")
    assert sorted((i["scope"], i["channel"], i["status"], i["event"]) for i in items) == [
        ("task", "kafka", "delivered", "failed"),
        ("tenant", "webhook", "delivered", "failed"),
    ]
    assert all(i["task_id"] == task["id"] and i["execution_id"] == execution_id for i in items)
    (request,) = webhook.requests
    body = request["body"].encode()
    assert verify_signature(SECRET, request["headers"][SIGNATURE_HEADER], body, now=time.time())
    hook = next(i for i in items if i["channel"] == "webhook")
    assert request["headers"][DELIVERY_HEADER] == hook["id"]

    # Another tenant sees none of it.
    stranger = auth(new_tenant(), ["admin"])
    assert (await http.get(f"/v1/executions/{execution_id}/notifications", headers=stranger)).status_code == 404
    assert (await http.get("/v1/notification-rules", headers=stranger)).json()["rules"] == []


async def _rules_on_topic(stack: Stack, tenant: str, newest: bool = False) -> dict[str, Any]:
    """The last rules message of ``tenant`` on the notification-rules topic (the second one when ``newest``)."""
    consumer = AIOKafkaConsumer(
        f"{stack.prefix}notification-rules", bootstrap_servers=stack.infra.bootstrap,
        auto_offset_reset="earliest", group_id=None,
    )  # fmt: skip
    await consumer.start()
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    try:
        while len(found) < (2 if newest else 1) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                found += [orjson.loads(r.value or b"{}") for r in records if r.key == tenant.encode()]
    finally:
        await consumer.stop()
    assert found, "no rules message"
    return found[-1]


async def test_a_secret_put_in_clear_on_the_rules_topic_is_not_shown(
    api: Running, stack: Stack, notifier: WorkerProc
) -> None:
    tenant = new_tenant()
    put = TenantNotificationRules(
        tenant=tenant, actor="a-service", at=datetime.now(UTC),
        rules=[{"on": ["failed"], "channel": {"kind": "webhook", "url": "https://h.example/x", "secret": SECRET}}],
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=stack.infra.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            f"{stack.prefix}notification-rules", put.model_dump_json().encode(), tenant.encode()
        )
    finally:
        await producer.stop()

    async def shown() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.http.get("/v1/notification-rules", headers=auth(tenant, ["viewer"]))).json()
        return body if body["rules"] else None

    got = await until(shown, 30, "the rules to be applied")
    assert got["rules"][0]["channel"]["secret"] == "***" and SECRET not in str(got)
