"""``POST /v1/events``: CloudEvents from producers without Kafka reach the ``triggers`` topic, for
the caller's tenant only; anything else is a problem naming the field, and nothing of it is sent."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from tests.api.conftest import Keys, Running, Stack, _running, auth, free_port, new_tenant, settings_for

ENDPOINT = "/v1/events"


def cloudevent(**attributes: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/ci/builds",
        "type": "com.acme.build.finished",
        "data": {"status": "passed"},
        **attributes,
    }


async def on_triggers(api: Running, tenant: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of the deployment's ``triggers`` topic whose event names ``tenant``."""
    settings = api.app.state.api.settings
    consumer = AIOKafkaConsumer(
        settings.topics.triggers,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        found: list[ConsumerRecord[bytes, bytes]] = []
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [r for r in records if orjson.loads(r.value or b"{}").get("tenant") == tenant]
        return found
    finally:
        await consumer.stop()


async def test_a_structured_event_is_put_on_triggers_for_the_callers_tenant(cold_api: Running) -> None:
    tenant = new_tenant()
    event = cloudevent(subject="build-42", time="2026-11-29T10:00:00Z", traceparent="00-abc-01")
    r = await cold_api.http.post(
        ENDPOINT,
        content=orjson.dumps(event),
        headers={**auth(tenant, ["operator"]), "Content-Type": "application/cloudevents+json"},
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"id": event["id"], "source": "/ci/builds", "status": "accepted"}
    (record,) = await on_triggers(cold_api, tenant)
    sent = orjson.loads(record.value or b"")
    assert sent == {**event, "tenant": tenant, "time": "2026-11-29T10:00:00Z"}
    assert record.key == f"{tenant}\x1f/ci/builds\x1f{event['id']}".encode()


async def test_a_binary_mode_event_is_put_on_triggers(cold_api: Running) -> None:
    tenant = new_tenant()
    headers = {
        **auth(tenant, ["operator"]),
        "ce-specversion": "1.0",
        "ce-id": "b-1",
        "ce-source": "/ci/builds",
        "ce-type": "com.acme.build.finished",
        "Content-Type": "application/json",
    }
    r = await cold_api.http.post(ENDPOINT, content=b'{"status": "passed"}', headers=headers)
    assert r.status_code == 202, r.text
    (record,) = await on_triggers(cold_api, tenant)
    sent = orjson.loads(record.value or b"")
    assert sent["id"] == "b-1" and sent["data"] == {"status": "passed"} and sent["tenant"] == tenant


async def test_an_event_claiming_another_tenant_is_refused_and_not_sent(cold_api: Running) -> None:
    tenant, other = new_tenant(), new_tenant()
    r = await cold_api.http.post(ENDPOINT, json=cloudevent(tenant=other), headers=auth(tenant, ["operator"]))
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == "tenant"
    headers = {**auth(tenant, ["operator"]), "ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
    r = await cold_api.http.post(ENDPOINT, content=b"{}", headers={**headers, "ce-tenant": other})
    assert r.status_code == 403, r.text
    assert await on_triggers(cold_api, other) == []
    assert await on_triggers(cold_api, tenant) == []


async def test_a_viewer_may_not_send_events(cold_api: Running) -> None:
    r = await cold_api.http.post(ENDPOINT, json=cloudevent(), headers=auth(new_tenant(), ["viewer"]))
    assert r.status_code == 403, r.text


async def test_what_is_not_a_cloudevent_is_a_422_naming_the_field(cold_api: Running) -> None:
    tenant = new_tenant()
    headers = auth(tenant, ["operator"])
    without_source = cloudevent()
    del without_source["source"]
    cases: list[tuple[bytes, dict[str, str], str, str]] = [
        (orjson.dumps(without_source), {}, "source", "missing"),
        (orjson.dumps(cloudevent(specversion="0.3")), {}, "specversion", "1.0"),
        (orjson.dumps(cloudevent(data={"a.b": 1})), {}, "data", "cannot be stored"),
        (json.dumps(cloudevent(data={"n": {"deep": 2**63}})).encode(), {}, "data.n.deep", "64 bits"),
        (orjson.dumps(cloudevent(data_base64="aGk=")), {}, "data_base64", "not supported"),
        (orjson.dumps(cloudevent(Tenant="x")), {}, "Tenant", "not a CloudEvents attribute"),
        (b'"\\ud800"', {}, "body", "not valid JSON"),
        (b"[]", {}, "body", "JSON object"),
        (b"not json", {}, "body", "not valid JSON"),
        (b"{}", {"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t"}, "source", "missing"),
        (b"{", {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}, "data", "not valid JSON"),
        (
            b"<a/>",
            {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t", "Content-Type": "text/xml"},
            "datacontenttype",
            "only JSON",
        ),
    ]
    for body, extra, field, fragment in cases:
        r = await cold_api.http.post(
            ENDPOINT, content=body, headers={**headers, "Content-Type": "application/json", **extra}
        )
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        (error,) = r.json()["errors"]
        assert error["field"] == field, (body, r.text)
        assert fragment in error["message"], (body, r.text)
    assert await on_triggers(cold_api, tenant) == []


async def test_an_event_larger_than_the_limit_is_a_413(cold_api: Running) -> None:
    limit = cold_api.app.state.api.settings.trigger_max_event_bytes
    event = cloudevent(data={"blob": "x" * limit})
    r = await cold_api.http.post(ENDPOINT, json=event, headers=auth(new_tenant(), ["operator"]))
    assert r.status_code == 413, r.text


async def test_a_task_with_trigger_rules_round_trips_through_the_views(api: Running) -> None:
    tenant = new_tenant()
    triggers = [
        {
            "type": {"prefix": "com.acme."},
            "source": "/ci/builds",
            "conditions": [
                {"pointer": "/status", "in": ["passed", "fixed"]},
                {"pointer": "/cancelled", "eq": None},
                {"pointer": "/draft", "exists": False},
            ],
            "debounce_seconds": 5,
        }
    ]
    body = {"name": "on builds", "work": {"kind": "handler", "name": "noop"}, "triggers": triggers}
    r = await api.http.post("/v1/tasks?wait=20", json=body, headers=auth(tenant))
    assert r.status_code == 200, r.text
    r = await api.http.get(f"/v1/tasks/{r.json()['task_id']}", headers=auth(tenant))
    assert r.status_code == 200, r.text
    (shown,) = r.json()["definition"]["triggers"]
    assert shown["conditions"] == triggers[0]["conditions"]
    assert shown["type"] == {"exact": None, "prefix": "com.acme."} and shown["source"]["exact"] == "/ci/builds"


async def test_a_rule_with_an_unknown_field_is_a_422_naming_it(cold_api: Running) -> None:
    body = {"name": "t", "work": {"kind": "handler", "name": "noop"}, "triggers": [{"type": "x", "sorce": "/a"}]}
    r = await cold_api.http.post("/v1/tasks", json=body, headers=auth(new_tenant()))
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["definition.triggers.0.sorce"]


async def test_a_rule_putting_the_event_in_a_sensitive_param_is_a_422(cold_api: Running) -> None:
    # The router puts the event in the run's params in clear: under a sensitive param it would
    # replace the task's secret with what an event says, in clear on Kafka and in the views.
    base = {"name": "t", "work": {"kind": "handler", "name": "noop"}, "params": {"token": "s3cret-value"}}
    for sensitive, rule in [
        (["/token"], {"type": "x", "params_key": "token"}),
        (["/token/inner"], {"type": "x", "params_key": "token"}),
        (["/event_count"], {"type": "x", "debounce_seconds": 5}),
    ]:
        body = {**base, "sensitive_params": sensitive, "triggers": [rule]}
        r = await cold_api.http.post("/v1/tasks", json=body, headers=auth(new_tenant()))
        assert r.status_code == 422, (body, r.text)
        assert [e["field"] for e in r.json()["errors"]] == ["definition.triggers"], r.text
        assert "triggers.0.params_key" in r.json()["detail"]


async def test_kafka_unreachable_is_a_503_and_the_event_is_not_accepted(stack: Stack, keys: Keys) -> None:
    settings = settings_for(stack, keys, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    async for running in _running(settings):
        r = await running.http.post(ENDPOINT, json=cloudevent(), headers=auth(new_tenant(), ["operator"]))
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "Retry-After" in r.headers
