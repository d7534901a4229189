"""Correlation ids end to end: ``X-Request-Id`` at the API -> the command -> every event it causes
on ``task-events`` (through the real broker, worker and executor), and back on the response."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from tests.api.conftest import Running, Stack, auth, new_tenant


async def _events_correlated(stack: Stack, ids: set[str], want: dict[str, set[str]], within: float) -> dict[str, Any]:
    """Envelope types on ``task-events`` by correlation id, until each id in ``want`` has its types."""
    consumer = AIOKafkaConsumer(
        f"{stack.prefix}task-events", bootstrap_servers=stack.infra.bootstrap, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    found: dict[str, set[str]] = {i: set() for i in ids}
    await consumer.start()
    try:
        deadline = time.monotonic() + within
        while not all(want[i] <= found[i] for i in want):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out: found {found}, wanted {want}")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    envelope = orjson.loads(record.value or b"{}")
                    if envelope.get("correlationid") in found:
                        found[envelope["correlationid"]].add(envelope["type"].rsplit(".", 1)[-1])
        return found
    finally:
        await consumer.stop()


async def test_request_id_follows_a_create_and_a_run_to_their_events(api: Running, warm: Stack) -> None:
    http, tenant = api.http, new_tenant()
    created_id, run_id = f"create-{uuid.uuid4().hex}", f"run-{uuid.uuid4().hex}"
    body = {"name": "correlated", "work": {"kind": "handler", "name": "noop"}}
    created = await http.post("/v1/tasks?wait=10", json=body, headers={**auth(tenant), "X-Request-Id": created_id})
    assert created.status_code in (200, 202), created.text
    assert created.headers["X-Request-Id"] == created_id
    task = created.json()["task_id"]
    run = await http.post(f"/v1/tasks/{task}/trigger", json={}, headers={**auth(tenant), "X-Request-Id": run_id})
    assert run.status_code == 202, run.text
    assert run.headers["X-Request-Id"] == run_id

    found = await _events_correlated(
        warm,
        {created_id, run_id},
        {created_id: {"TaskCreated"}, run_id: {"ExecutionDispatched", "ExecutionCompleted"}},
        within=60,
    )
    assert "ExecutionDispatched" not in found[created_id]


async def test_a_request_without_a_usable_id_gets_a_new_one(api: Running) -> None:
    first = await api.http.get("/healthz")
    second = await api.http.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    ids = {first.headers["X-Request-Id"], second.headers["X-Request-Id"]}
    assert len(ids) == 2 and "bad id with spaces" not in ids
    for rid in ids:
        uuid.UUID(rid)
    # Error answers carry it too.
    missing = await api.http.get("/v1/tasks/nope", headers={"X-Request-Id": "trace-42"})
    assert missing.status_code == 401 and missing.headers["X-Request-Id"] == "trace-42"
    await asyncio.sleep(0)
