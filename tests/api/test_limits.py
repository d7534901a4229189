"""Idempotency keys bound to their request, and per-tenant quotas, over two API processes' worth of apps.

Every app here is a separate API (its own Kafka producer and Mongo client) on the session's
deployment: what one remembers or counts, the other must see, so it lives in FerretDB.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from api.idempotency import COLLECTION
from tests.api.conftest import Keys, Running, Stack, _running, auth, new_tenant, settings_for

NOOP = {"name": "t", "work": {"kind": "handler", "name": "noop"}}


@asynccontextmanager
async def apis(warm: Stack, keys: Keys, count: int, **overrides: Any) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``count`` API apps of the deployment with the same settings, entered together."""
    async with AsyncExitStack() as stack:
        clients: list[httpx.AsyncClient] = []
        for _ in range(count):
            running: Running = await stack.enter_async_context(
                asynccontextmanager(_running)(settings_for(warm, keys, **overrides))
            )
            clients.append(running.http)
        yield clients


def _reused(r: httpx.Response) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"] == "/problems/idempotency-key-reused", problem
    assert [e["field"] for e in problem["errors"]] == ["Idempotency-Key"], problem
    assert "another request" in problem["detail"], problem


async def test_a_key_reused_with_another_request_is_a_422(warm: Stack, keys: Keys) -> None:
    """Regression (issue 11, item 5): a reused key with a different body returned the first result."""
    tenant = new_tenant()
    async with apis(warm, keys, 2) as (one, two):
        key = {**auth(tenant), "Idempotency-Key": "create-1"}
        first = await one.post("/v1/tasks?wait=20", json=NOOP, headers=key)
        assert first.status_code == 200, first.text
        task = first.json()["task_id"]
        # The same request again, through either process: the same ids, applied once.
        for http in (one, two):
            again = await http.post("/v1/tasks", json=NOOP, headers=key)
            assert again.status_code == 202 and again.json()["task_id"] == task, again.text
        # Another request under the same key, through the other process: refused.
        _reused(await two.post("/v1/tasks", json={**NOOP, "name": "other"}, headers=key))
        # The same key for another target or action is another request's key: fine.
        trigger_key = {**auth(tenant), "Idempotency-Key": "run-1"}
        r = await one.post(f"/v1/tasks/{task}/trigger?wait=20", json={"params": {"n": 1}}, headers=trigger_key)
        assert r.status_code == 200, r.text
        execution = r.json()["execution_id"]
        r = await two.post(f"/v1/tasks/{task}/trigger", json={"params": {"n": 1}}, headers=trigger_key)
        assert r.status_code == 202, r.text
        _reused(await two.post(f"/v1/tasks/{task}/trigger", json={"params": {"n": 2}}, headers=trigger_key))
        _reused(await one.post(f"/v1/tasks/{task}/trigger", json={"priority": "high", "params": {"n": 1}},
                               headers=trigger_key))  # fmt: skip
        pause_key = {**auth(tenant), "Idempotency-Key": "pause-1"}
        assert (await one.post(f"/v1/tasks/{task}/pause", json={"note": "a"}, headers=pause_key)).status_code == 202
        _reused(await two.post(f"/v1/tasks/{task}/pause", json={"note": "b"}, headers=pause_key))
        cancel_key = {**auth(tenant), "Idempotency-Key": "cancel-1"}
        r = await one.post(f"/v1/executions/{execution}/cancel", json={"reason": "a"}, headers=cancel_key)
        assert r.status_code == 202, r.text
        _reused(await two.post(f"/v1/executions/{execution}/cancel", json={"reason": "b"}, headers=cancel_key))
        update_key = {**auth(tenant), "Idempotency-Key": "update-1"}
        r = await one.put(f"/v1/tasks/{task}", json={**NOOP, "name": "u"}, headers=update_key)
        assert r.status_code == 202, r.text
        _reused(await two.put(f"/v1/tasks/{task}", json={**NOOP, "name": "v"}, headers=update_key))
        newer = {**update_key, "If-Match": '"99"'}  # another precondition, another request
        _reused(await two.put(f"/v1/tasks/{task}", json={**NOOP, "name": "u"}, headers=newer))
        # Spelling the defaults out is the same request.
        r = await two.post("/v1/tasks", json={**NOOP, "tags": [], "params": {}}, headers=key)
        assert r.status_code == 202 and r.json()["task_id"] == task, r.text


async def test_an_expired_key_may_be_used_afresh(warm: Stack, keys: Keys) -> None:
    tenant = new_tenant()
    async with apis(warm, keys, 1, idempotency_key_ttl_seconds=3600) as (http,):
        key = {**auth(tenant), "Idempotency-Key": "old"}
        assert (await http.post("/v1/tasks", json=NOOP, headers=key)).status_code == 202
        _reused(await http.post("/v1/tasks", json={**NOOP, "name": "new"}, headers=key))
        async with AsyncMongoClient(warm.infra.mongo_url, tz_aware=True) as mongo:
            records = mongo[warm.database][COLLECTION]
            changed = await records.update_many(
                {"tenant": tenant}, {"$set": {"at": datetime.now(UTC) - timedelta(hours=2)}}
            )
            assert changed.modified_count == 1
        r = await http.post("/v1/tasks", json={**NOOP, "name": "new"}, headers=key)
        assert r.status_code == 202, r.text
        _reused(await http.post("/v1/tasks", json=NOOP, headers=key))  # now bound to the new request


async def _until(http: httpx.AsyncClient, url: str, headers: dict[str, str], status: int) -> None:
    """Poll ``url`` until it answers ``status`` (the views lag the commands)."""
    deadline = time.monotonic() + 20
    while (r := await http.get(url, headers=headers)).status_code != status:
        assert time.monotonic() < deadline, r.text
        await asyncio.sleep(0.1)


def _quota_exceeded(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "/problems/quota-exceeded", r.text
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    return retry_after


async def test_task_quota_holds_over_a_burst_of_creates_in_two_processes(warm: Stack, keys: Keys) -> None:
    """Regression (issue 11, item 8): one tenant could create tasks without bound.

    The burst is sent before the views show any of it: the pending creates are counted.
    """
    tenant, other = new_tenant(), new_tenant()
    overrides = {"quota_overrides": {tenant: {"max_tasks": 3}}}
    async with apis(warm, keys, 2, **overrides) as (one, two):
        headers = auth(tenant)
        burst = await asyncio.gather(*(http.post("/v1/tasks", json=NOOP, headers=headers) for http in [one, two] * 4))
        accepted = [r for r in burst if r.status_code == 202]
        for r in burst:
            if r.status_code != 202:
                _quota_exceeded(r)
        # Racing requests may refuse each other early, never let the tenant past its quota.
        assert 1 <= len(accepted) <= 3, [r.status_code for r in burst]
        for _ in range(3 - len(accepted)):
            # For the moment the projector has written a batch's statistics but not its tasks, a
            # task is counted twice: refused early (never late); it fits once the batch is written.
            deadline = time.monotonic() + 10
            while (r := await one.post("/v1/tasks", json=NOOP, headers=headers)).status_code == 429:
                assert time.monotonic() < deadline, r.text
                await asyncio.sleep(0.2)
            assert r.status_code == 202, r.text
            accepted.append(r)
        _quota_exceeded(await two.post("/v1/tasks", json=NOOP, headers=headers))
        # A retried create (same Idempotency-Key) is the same task, not another one.
        keyed = {**headers, "Idempotency-Key": "k"}
        _quota_exceeded(await one.post("/v1/tasks", json=NOOP, headers=keyed))
        # Another tenant has its own quota (the default).
        assert (await two.post("/v1/tasks", json=NOOP, headers=auth(other))).status_code == 202
        # Deleting a task makes room, once the view shows it deleted.
        task = accepted[0].json()["task_id"]
        await _until(one, f"/v1/tasks/{task}", headers, 200)
        r = await one.delete(f"/v1/tasks/{task}?wait=20", headers=headers)
        assert r.status_code == 200, r.text
        await _until(one, f"/v1/tasks/{task}", headers, 404)
        r = await two.post("/v1/tasks", json=NOOP, headers=keyed)
        assert r.status_code == 202, r.text
        assert (await one.post("/v1/tasks", json=NOOP, headers=keyed)).json()["task_id"] == r.json()["task_id"]
        _quota_exceeded(await one.post("/v1/tasks", json=NOOP, headers=headers))
        # Once the views caught up, they hold exactly the quota's worth of live tasks.
        deadline = time.monotonic() + 20
        while len(live := (await one.get("/v1/tasks", headers=headers)).json()["items"]) < 3:
            assert time.monotonic() < deadline, live
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        assert len((await two.get("/v1/tasks", headers=headers)).json()["items"]) == 3


async def test_trigger_quota_per_minute_is_shared_by_processes(warm: Stack, keys: Keys) -> None:
    """Regression (issue 11, item 8): one tenant could trigger runs without bound."""
    tenant = new_tenant()
    async with apis(warm, keys, 2, quota_triggers_per_minute=3) as (one, two):
        headers = auth(tenant)
        r = await one.post("/v1/tasks?wait=20", json=NOOP, headers=headers)
        assert r.status_code == 200, r.text
        url = f"/v1/tasks/{r.json()['task_id']}/trigger"
        if time.time() % 60 > 45:  # the count is per calendar minute: start at the start of one
            await asyncio.sleep(61 - time.time() % 60)
        keyed = {**headers, "Idempotency-Key": "run"}
        first = await one.post(url, json={}, headers=keyed)
        assert first.status_code == 202, first.text
        burst = await asyncio.gather(*(http.post(url, json={}, headers=headers) for http in [one, two] * 3))
        codes = [r.status_code for r in burst]
        assert 1 <= codes.count(202) <= 2, codes
        for r in burst:
            if r.status_code != 202:
                assert _quota_exceeded(r) <= 60 - int(time.time() % 60) + 1
        while codes.count(202) < 2:
            r = await two.post(url, json={}, headers=headers)
            assert r.status_code == 202, r.text
            codes.append(202)
        _quota_exceeded(await two.post(url, json={}, headers=headers))
        # The first trigger retried is the same trigger: not counted again.
        again = await two.post(url, json={}, headers=keyed)
        assert again.status_code == 202 and again.json()["command_id"] == first.json()["command_id"], again.text
