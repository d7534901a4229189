"""Tenants never see or touch each other's tasks and executions: everything is 404, never 403."""

from __future__ import annotations

import asyncio
import time

from tests.api.conftest import Running, auth, new_tenant

TASK = {"name": "private", "work": {"kind": "handler", "name": "noop"}, "tags": ["secret"]}


async def test_cross_tenant_reads_and_writes_are_not_found(api: Running) -> None:
    http, owner, intruder = api.http, new_tenant(), new_tenant()
    r = await http.post("/v1/tasks?wait=20", json=TASK, headers=auth(owner))
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    r = await http.post(f"/v1/tasks/{task_id}/trigger?wait=20", headers=auth(owner))
    assert r.status_code == 200, r.text
    execution_id = r.json()["execution_id"]

    # Wait until the execution shows for the owner, so a 404 below is isolation, not lag.
    deadline = time.monotonic() + 20
    while (await http.get(f"/v1/executions/{execution_id}", headers=auth(owner))).status_code != 200:
        assert time.monotonic() < deadline, "execution never showed"
        await asyncio.sleep(0.1)

    other = auth(intruder, ["admin"])
    reads = [
        f"/v1/tasks/{task_id}",
        f"/v1/tasks/{task_id}?include_deleted=true",
        f"/v1/tasks/{task_id}/executions",
        f"/v1/tasks/{task_id}/next-fire-times",
        f"/v1/executions/{execution_id}",
        # Guessing the internal id (tenant prefix) does not help either.
        f"/v1/tasks/{owner}%2F{task_id}",
    ]
    for url in reads:
        r = await http.get(url, headers=other)
        assert r.status_code == 404, (url, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    writes = [
        ("PUT", f"/v1/tasks/{task_id}", TASK),
        ("DELETE", f"/v1/tasks/{task_id}", None),
        ("POST", f"/v1/tasks/{task_id}/pause", {"note": "mine now"}),
        ("POST", f"/v1/tasks/{task_id}/resume", None),
        ("POST", f"/v1/tasks/{task_id}/trigger", {}),
        ("POST", f"/v1/executions/{execution_id}/cancel", {"reason": "x"}),
    ]
    for method, url, body in writes:
        r = await http.request(method, url, json=body, headers=other)
        assert r.status_code == 404, (method, url, r.status_code, r.text)
    listed = (await http.get("/v1/tasks?tag=secret", headers=other)).json()
    assert listed["items"] == []
    stats = (await http.get("/v1/stats", headers=other)).json()
    assert stats["tasks"] == {} and stats["executions"] == {}

    # The owner's task is untouched.
    r = await http.get(f"/v1/tasks/{task_id}", headers=auth(owner))
    assert r.status_code == 200 and r.json()["status"] == "active" and r.json()["revision"] == 1
