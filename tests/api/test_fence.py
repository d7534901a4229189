"""Issue 11, end to end against the real broker: tenant B's Kafka work aimed at the deployment's
own ``commands`` topic, to pause tenant A's task, is refused at the API (422) and, when sent
straight to Kafka past the API, by the executor (nothing produced, A's task untouched). The
API also refuses HTTP work aimed literally at internal addresses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.commands import CreateTask, PauseTask, TriggerTask
from schemas.envelope import command_envelope, encode
from schemas.specs import KafkaWork, TaskDefinition
from tests.api.conftest import Keys, Running, Stack, _running, auth, new_tenant, settings_for
from tests.integration.harness import HttpTarget

A_TASK = {"name": "nightly", "work": {"kind": "handler", "name": "noop"}}


def _pause_of(task_id: str, tenant: str, note: str) -> dict[str, Any]:
    """The forged command B's work carries: a PauseTask naming A, as JSON on the wire."""
    pause = PauseTask(
        command_id=str(uuid.uuid4()), task_id=task_id, tenant=tenant, actor="mallory", at=_now(), note=note
    )
    value: dict[str, Any] = orjson.loads(encode(command_envelope(pause, source="mallory")))
    return value


def _now() -> datetime:
    return datetime.now(UTC)


async def _create_a_task(api: Running, tenant: str) -> str:
    r = await api.http.post("/v1/tasks?wait=20", json=A_TASK, headers=auth(tenant))
    assert r.status_code == 200, r.text
    return str(r.json()["task_id"])


async def _commands_for(stack: Stack, key: str, marker: str) -> list[bytes]:
    """Every message on the deployment's commands topic keyed ``key`` whose value holds ``marker``."""
    consumer = AIOKafkaConsumer(
        f"{stack.prefix}commands", bootstrap_servers=stack.infra.bootstrap, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    try:
        found: list[bytes] = []
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                return found
            found += [
                r.value
                for records in batch.values()
                for r in records
                if r.key == key.encode() and r.value and marker.encode() in r.value
            ]
    finally:
        await consumer.stop()


async def test_kafka_work_aimed_at_the_commands_topic_is_refused_at_the_api(api: Running, warm: Stack) -> None:
    tenant_a, tenant_b = new_tenant(), new_tenant()
    a_task = await _create_a_task(api, tenant_a)
    work = {
        "kind": "kafka",
        "topic": f"{warm.prefix}commands",
        "key": f"{tenant_a}/{a_task}",
        "value": _pause_of(f"{tenant_a}/{a_task}", tenant_a, "paused by B"),
    }
    body = {"name": "innocent", "work": work}
    r = await api.http.post("/v1/tasks", json=body, headers=auth(tenant_b))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    [error] = r.json()["errors"]
    assert error["field"] == "definition.work.topic" and error["pointer"] == "#/work/topic"
    assert "one of this deployment's own topics" in error["message"]

    # The update path is fenced the same way.
    own = await _create_a_task(api, tenant_b)
    r = await api.http.put(f"/v1/tasks/{own}", json=body, headers=auth(tenant_b))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "definition.work.topic", r.text
    for internal in ("__consumer_offsets", "__transaction_state", f"{warm.prefix}scheduler-tasks-changelog"):
        r = await api.http.post("/v1/tasks", json={**body, "work": {**work, "topic": internal}}, headers=auth(tenant_b))
        assert r.status_code == 422, (internal, r.text)


async def test_kafka_work_sent_past_the_api_is_refused_by_the_executor(api: Running, warm: Stack) -> None:
    tenant_a, tenant_b = new_tenant(), new_tenant()
    a_task = await _create_a_task(api, tenant_a)
    a_internal = f"{tenant_a}/{a_task}"
    note = f"paused by B {uuid.uuid4().hex}"
    evil = KafkaWork(topic=f"{warm.prefix}commands", key=a_internal, value=_pause_of(a_internal, tenant_a, note))
    b_task = f"{tenant_b}/evil"
    create = CreateTask(
        command_id=str(uuid.uuid4()), task_id=b_task, tenant=tenant_b, actor="mallory", at=_now(),
        definition=TaskDefinition(name="innocent", work=evil),
    )  # fmt: skip
    trigger = TriggerTask(
        command_id=str(uuid.uuid4()), task_id=b_task, tenant=tenant_b, actor="mallory", at=_now(), trigger_id="go"
    )
    producer = AIOKafkaProducer(bootstrap_servers=warm.infra.bootstrap, acks="all")
    await producer.start()
    try:
        for command in (create, trigger):
            value = encode(command_envelope(command, source="mallory"))
            await producer.send_and_wait(f"{warm.prefix}commands", key=b_task.encode(), value=value)
    finally:
        await producer.stop()

    # B's execution ends failed, with the fence's reason.
    deadline = time.monotonic() + 30
    while True:
        r = await api.http.get("/v1/tasks/evil/executions", headers=auth(tenant_b))
        items = r.json().get("items", []) if r.status_code == 200 else []
        if items and items[0]["status"] in ("succeeded", "failed"):
            break
        assert time.monotonic() < deadline, f"B's execution never finished: {r.status_code} {r.text}"
        await asyncio.sleep(0.2)
    assert items[0]["status"] == "failed", items[0]
    assert "one of this deployment's own topics; Kafka work may never produce to it" in items[0]["error"]

    # Nothing was produced: the forged pause never reached the commands topic, A's task is as it was.
    assert await _commands_for(warm, a_internal, note) == []
    r = await api.http.get(f"/v1/tasks/{a_task}", headers=auth(tenant_a))
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["paused_note"], r.json()["revision"]) == ("active", None, 1)


@pytest.fixture
async def default_api(warm: Stack, keys: Keys) -> AsyncIterator[Running]:
    """The API with the deployment defaults of the fences: nothing allowed."""
    async for running in _running(settings_for(warm, keys, kafka_work_topics=[], http_allow_networks=[])):
        yield running


async def test_by_default_no_kafka_topic_is_allowed(default_api: Running) -> None:
    body = {"name": "t", "work": {"kind": "kafka", "topic": "orders.created", "value": {}}}
    r = await default_api.http.post("/v1/tasks", json=body, headers=auth(new_tenant()))
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "definition.work.topic"
    assert "SCHED_KAFKA_WORK_TOPICS" in r.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    ("work", "field"),
    [
        ({"kind": "http", "url": "http://127.0.0.1:8000/metrics"}, "definition.work.url"),
        ({"kind": "http", "url": "http://2130706433:8000/metrics"}, "definition.work.url"),
        ({"kind": "http", "url": "http://[::ffff:127.0.0.1]:8000/metrics"}, "definition.work.url"),
        ({"kind": "http", "url": "http://localhost:8000/metrics"}, "definition.work.url"),
        ({"kind": "http", "url": "http://169.254.169.254/latest/meta-data/"}, "definition.work.url"),
        (
            {"kind": "http", "url": "https://engine.example/runs", "poll": {"status_url": "http://0.0.0.0/{job_id}"}},
            "definition.work.poll.status_url",
        ),
        (
            {"kind": "http", "url": "https://engine.example/runs", "cancel": {"url": "http://10.0.0.5/stop"}},
            "definition.work.cancel.url",
        ),
    ],
)
async def test_http_work_aimed_literally_at_internal_addresses_is_refused(
    default_api: Running, work: dict[str, Any], field: str
) -> None:
    r = await default_api.http.post("/v1/tasks", json={"name": "t", "work": work}, headers=auth(new_tenant()))
    assert r.status_code == 422, r.text
    [error] = r.json()["errors"]
    assert error["field"] == field and "not allowed for HTTP work" in error["message"], error


async def test_http_work_reaches_an_allowed_network(api: Running) -> None:
    # The session's worker allows 127.0.0.0/8 (tests/integration/harness.py): the same kind of
    # target the default refuses (tests/integration/test_fence_e2e.py) is reached.
    target = await HttpTarget().start()
    try:
        tenant = new_tenant()
        body = {"name": "local", "work": {"kind": "http", "method": "POST", "url": target.url}}
        r = await api.http.post("/v1/tasks?wait=20", json=body, headers=auth(tenant))
        assert r.status_code == 200, r.text
        task_id = r.json()["task_id"]
        r = await api.http.post(f"/v1/tasks/{task_id}/trigger?wait=20", headers=auth(tenant))
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while True:
            items = (await api.http.get(f"/v1/tasks/{task_id}/executions", headers=auth(tenant))).json()["items"]
            if items and items[0]["status"] in ("succeeded", "failed"):
                break
            assert time.monotonic() < deadline, "the execution never finished"
            await asyncio.sleep(0.2)
        assert items[0]["status"] == "succeeded", items[0]
        assert items[0]["result"] == {"status_code": 200, "body": '{"ok": true}'}
        assert len(target.requests) == 1
    finally:
        await target.stop()


async def test_a_handler_outside_the_allow_list_is_refused(warm: Stack, keys: Keys) -> None:
    async for running in _running(settings_for(warm, keys, allowed_handlers=["noop"])):
        body = {"name": "t", "work": {"kind": "handler", "name": "echo"}}
        r = await running.http.post("/v1/tasks", json=body, headers=auth(new_tenant()))
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "definition.work.name"
        body = {"name": "t", "work": {"kind": "handler", "name": "noop"}}
        r = await running.http.post("/v1/tasks", json=body, headers=auth(new_tenant()))
        assert r.status_code == 202, r.text
