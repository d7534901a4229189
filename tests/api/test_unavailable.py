"""Kafka or MongoDB unreachable: 503 with Retry-After, and no command is accepted unseen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.api.conftest import Keys, Running, Stack, _running, auth, free_port, new_tenant, settings_for

TASK = {"name": "t", "work": {"kind": "handler", "name": "noop"}}


async def _commands_of(stack: Stack, tenant: str, since: dict[int, int]) -> list[bytes]:
    """The commands of ``tenant`` put on the session's commands topic after ``since``. The
    session's worker and executors write there too (ticks, reports of other tests' tasks), so
    offsets alone do not say whether this tenant's command got through."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.infra.bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        topic = f"{stack.prefix}commands"
        partitions = [TopicPartition(topic, p) for p in since]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        found: list[bytes] = []
        for tp in partitions:
            consumer.seek(tp, since[tp.partition])
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found += [r.value for r in records if r.value is not None and tenant.encode() in r.value]
        return found
    finally:
        await consumer.stop()


async def _command_offsets(stack: Stack) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.infra.bootstrap, group_id=None)
    await consumer.start()
    try:
        topic = f"{stack.prefix}commands"
        partitions = [TopicPartition(topic, p) for p in range(4)]
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


@pytest.fixture
async def no_kafka(stack: Stack, keys: Keys) -> AsyncIterator[Running]:
    """The API with its producer pointed at a closed port (MongoDB is fine)."""
    settings = settings_for(stack, keys, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    async for running in _running(settings):
        yield running


@pytest.fixture
async def no_mongo(stack: Stack, keys: Keys) -> AsyncIterator[Running]:
    """The API with MongoDB at a closed port (Kafka is fine)."""
    url = f"mongodb://127.0.0.1:{free_port()}/"
    async for running in _running(settings_for(stack, keys, mongo_url=url, mongo_timeout_ms=300)):
        yield running


async def test_kafka_unreachable_is_503_and_nothing_is_accepted(no_kafka: Running, stack: Stack) -> None:
    http, tenant = no_kafka.http, new_tenant()
    before = await _command_offsets(stack)
    headers = {**auth(tenant), "Idempotency-Key": "while-kafka-is-down"}
    started = time.monotonic()
    r = await http.post("/v1/tasks?wait=5", json=TASK, headers=headers)
    assert r.status_code == 503, r.text
    assert time.monotonic() - started < 10, "the answer must come within the bounded timeouts"
    assert int(r.headers["Retry-After"]) > 0
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "/problems/unavailable" and "not accepted" in r.json()["detail"]

    # Reads still work (they come from MongoDB), readiness says why it is not ready.
    assert (await http.get("/v1/tasks", headers=auth(tenant))).status_code == 200
    r = await http.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["mongo"] == "ok" and r.json()["checks"]["kafka"] != "ok"
    assert "Retry-After" in r.headers
    assert (await http.get("/healthz")).status_code == 200

    # Nothing reached the commands topic, and the metrics say so.
    await asyncio.sleep(1)
    assert await _commands_of(stack, tenant, before) == []
    metrics = (await http.get("/metrics")).text
    assert 'scheduler_api_commands_total{command="CreateTask",outcome="unavailable"} 1.0' in metrics
    assert 'outcome="accepted"' not in metrics


async def test_mongo_unreachable_is_503_for_reads_and_commands(no_mongo: Running) -> None:
    http, tenant = no_mongo.http, new_tenant()
    for method, url in (
        ("GET", "/v1/tasks"),
        ("GET", "/v1/tasks/00000000-0000-4000-8000-000000000000"),
        ("GET", "/v1/stats"),
        ("POST", "/v1/tasks/00000000-0000-4000-8000-000000000000/pause"),
    ):
        started = time.monotonic()
        r = await http.request(method, url, headers=auth(tenant))
        assert r.status_code == 503, (url, r.status_code, r.text)
        assert int(r.headers["Retry-After"]) > 0
        assert r.headers["content-type"] == "application/problem+json"
        assert time.monotonic() - started < 5
    r = await http.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["kafka"] == "ok" and r.json()["checks"]["mongo"] != "ok"


async def test_ready_when_both_answer(cold_api: Running) -> None:
    r = await cold_api.http.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "checks": {"kafka": "ok", "mongo": "ok"}}


async def test_mongo_unreachable_still_accepts_creates_unchecked(no_mongo: Running, stack: Stack, keys: Keys) -> None:
    """Creates need nothing of the views and are accepted during their outage (see the outage test);
    the quota and Idempotency-Key checks, which live in MongoDB, are then skipped and counted."""
    http, tenant = no_mongo.http, new_tenant()
    for headers in (auth(tenant), {**auth(tenant), "Idempotency-Key": "during-outage"}):
        started = time.monotonic()
        r = await http.post("/v1/tasks", json=TASK, headers=headers)
        assert r.status_code == 202, r.text
        assert time.monotonic() - started < 5
    metrics = (await http.get("/metrics")).text
    assert 'scheduler_api_limits_unchecked_total{command="CreateTask"} 2.0' in metrics
    # An operator who prefers the limits to availability turns that off.
    url = f"mongodb://127.0.0.1:{free_port()}/"
    settings = settings_for(stack, keys, mongo_url=url, mongo_timeout_ms=300, limits_fail_open=False)
    async for strict in _running(settings):
        r = await strict.http.post("/v1/tasks", json=TASK, headers=auth(tenant))
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, r.text
