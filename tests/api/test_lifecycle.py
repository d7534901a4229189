"""The whole life of a task through the API, against a real worker and projector."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.conftest import Running, auth, new_tenant
from tests.integration.harness import until

CRON_TASK: dict[str, Any] = {
    "name": "nightly",
    "schedule": {"kind": "cron", "expression": "0 3 * * *", "timezone": "Europe/London"},
    "work": {"kind": "handler", "name": "noop"},
    "tags": ["reports", "nightly"],
}


async def test_task_lifecycle(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    admin = auth(tenant, ["admin"], sub="alice")

    # Create and wait: 200 with the task as the views show it.
    r = await http.post("/v1/tasks?wait=20", json=CRON_TASK, headers=admin)
    assert r.status_code == 200, r.text
    created = r.json()
    task_id = created["task_id"]
    assert created["status"] == "applied" and created["events"] == ["TaskCreated"]
    task = created["task"]
    assert task["id"] == task_id and "/" not in task_id and tenant not in str(task)
    assert task["status"] == "active" and task["revision"] == 1 and task["created_by"] == "alice"
    assert task["next_run"] is not None and task["type"] == "handler"

    # Get: the ETag is the revision.
    r = await http.get(f"/v1/tasks/{task_id}", headers=auth(tenant, ["viewer"]))
    assert r.status_code == 200 and r.headers["ETag"] == '"1"'
    assert r.json()["definition"]["schedule"]["expression"] == "0 3 * * *"

    # Next fire times: daily at 03:00 London time.
    r = await http.get(f"/v1/tasks/{task_id}/next-fire-times?n=5", headers=auth(tenant, ["viewer"]))
    assert r.status_code == 200, r.text
    times = r.json()["fire_times"]
    assert len(times) == 5
    assert all(t["slot"].endswith(("03:00:00Z", "02:00:00Z")) for t in times), times

    # Update with If-Match: applied, revision 2.
    changed = {**CRON_TASK, "schedule": {"kind": "interval", "every_seconds": 3600}, "tags": ["hourly"]}
    r = await http.put(f"/v1/tasks/{task_id}?wait=20", json=changed, headers={**admin, "If-Match": '"1"'})
    assert r.status_code == 200, r.text
    assert r.json()["task"]["revision"] == 2 and r.json()["task"]["tags"] == ["hourly"]

    # A stale If-Match: 409 at once (the views already show revision 2) ...
    r = await http.put(f"/v1/tasks/{task_id}?wait=20", json=changed, headers={**admin, "If-Match": '"1"'})
    assert r.status_code == 409, r.text
    assert r.headers["content-type"] == "application/problem+json"
    # ... and a revision the views cannot refute is refused by the task processor: 409 too.
    r = await http.put(f"/v1/tasks/{task_id}?wait=20", json=changed, headers={**admin, "If-Match": '"7"'})
    assert r.status_code == 409, r.text
    assert "expected revision 7" in r.json()["detail"]

    # Pause and resume (operator).
    operator = auth(tenant, ["operator"], sub="olga")
    r = await http.post(f"/v1/tasks/{task_id}/pause?wait=20", json={"note": "maintenance"}, headers=operator)
    assert r.status_code == 200, r.text
    assert r.json()["task"]["status"] == "paused" and r.json()["task"]["paused_note"] == "maintenance"
    r = await http.post(f"/v1/tasks/{task_id}/resume?wait=20", headers=operator)
    assert r.status_code == 200, r.text
    assert r.json()["task"]["status"] == "active" and r.json()["task"]["revision"] == 4

    # Trigger: the execution runs (the noop handler) and shows in the task's executions.
    r = await http.post(
        f"/v1/tasks/{task_id}/trigger?wait=20", json={"params": {"x": 1}, "priority": "high"}, headers=operator
    )
    assert r.status_code == 200, r.text
    execution_id = r.json()["execution_id"]
    assert execution_id and r.json()["events"] == ["ExecutionDispatched"]

    async def finished() -> dict[str, Any] | None:
        r = await http.get(f"/v1/tasks/{task_id}/executions", headers=auth(tenant, ["viewer"]))
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        return items[0] if items and items[0]["status"] == "succeeded" else None

    execution = await until(finished, 30, "the triggered execution to succeed")
    assert execution["id"] == execution_id and execution["task_id"] == task_id
    assert execution["reason"] == "manual" and execution["priority"] == "high" and execution["params"] == {"x": 1}
    assert [e["status"] for e in execution["timeline"]][-1] == "succeeded"
    r = await http.get(f"/v1/executions/{execution_id}", headers=auth(tenant, ["viewer"]))
    assert r.status_code == 200 and r.json()["status"] == "succeeded"

    # Cancelling a finished execution: the task processor says it is not found.
    r = await http.post(f"/v1/executions/{execution_id}/cancel?wait=20", json={"reason": "late"}, headers=operator)
    assert r.status_code == 404, r.text

    # Statistics count the run.
    async def counted() -> dict[str, Any] | None:
        stats = (await http.get("/v1/stats", headers=auth(tenant, ["viewer"]))).json()
        return stats if stats["executions"].get("succeeded") == 1 else None

    stats = await until(counted, 20, "statistics")
    assert stats["tasks"].get("active") == 1

    # Delete: gone from reads and lists, commands are 404, the history stays readable.
    r = await http.delete(f"/v1/tasks/{task_id}?wait=20", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["task"]["status"] == "deleted"
    assert (await http.get(f"/v1/tasks/{task_id}", headers=admin)).status_code == 404
    r = await http.get(f"/v1/tasks/{task_id}?include_deleted=true", headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "deleted"
    assert (await http.post(f"/v1/tasks/{task_id}/trigger", headers=admin)).status_code == 404
    assert (await http.get("/v1/tasks", headers=admin)).json()["items"] == []
    r = await http.get(f"/v1/tasks/{task_id}/executions", headers=admin)
    assert [e["id"] for e in r.json()["items"]] == [execution_id]


async def test_without_wait_answers_202_then_the_view_catches_up(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    r = await http.post("/v1/tasks", json=CRON_TASK, headers=auth(tenant))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "accepted" and body["task"] is None and body["command_id"]

    async def visible() -> httpx.Response | None:
        r = await http.get(f"/v1/tasks/{body['task_id']}", headers=auth(tenant, ["viewer"]))
        return r if r.status_code == 200 else None

    await until(visible, 20, "the task to show")


async def test_idempotency_key_gives_the_same_ids_and_one_task(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    headers = {**auth(tenant), "Idempotency-Key": "create-nightly-1"}
    first = await http.post("/v1/tasks?wait=20", json=CRON_TASK, headers=headers)
    again = await http.post("/v1/tasks?wait=20", json=CRON_TASK, headers=headers)
    assert first.status_code == 200 and again.status_code == 200, (first.text, again.text)
    ids = ("task_id", "command_id")
    assert [first.json()[k] for k in ids] == [again.json()[k] for k in ids]
    assert again.json()["task"]["revision"] == 1
    listed = (await http.get("/v1/tasks", headers=auth(tenant, ["viewer"]))).json()["items"]
    assert [t["id"] for t in listed] == [first.json()["task_id"]]

    # The same key in another tenant is another task.
    other = new_tenant()
    r = await http.post("/v1/tasks", json=CRON_TASK, headers={**auth(other), "Idempotency-Key": "create-nightly-1"})
    assert r.status_code == 202 and r.json()["task_id"] != first.json()["task_id"]


async def test_list_filters_sorts_and_pages(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    admin = auth(tenant)
    ids = []
    shapes = [("handler", "a"), ("http", "b"), ("handler", "b"), ("handler", "a"), ("http", "a")]
    for i, (kind, tag) in enumerate(shapes):
        work: dict[str, Any] = (
            {"kind": "handler", "name": "noop"}
            if kind == "handler"
            else {"kind": "http", "url": "http://127.0.0.1:9/x"}
        )
        body = {"name": f"task-{4 - i}", "work": work, "tags": [tag]}
        if i % 2 == 0:
            body["schedule"] = {"kind": "interval", "every_seconds": 3600 * (i + 1)}
        r = await http.post("/v1/tasks?wait=20", json=body, headers=admin)
        assert r.status_code == 200, r.text
        ids.append(r.json()["task_id"])

    async def page_all(query: str) -> list[str]:
        out: list[str] = []
        cursor = None
        while True:
            url = f"/v1/tasks?limit=2&{query}" + (f"&cursor={cursor}" if cursor else "")
            r = await http.get(url, headers=auth(tenant, ["viewer"]))
            assert r.status_code == 200, r.text
            out += [t["id"] for t in r.json()["items"]]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                return out

    assert await page_all("") == ids[::-1]  # newest first
    by_name = await page_all("sort=name")
    assert by_name == ids[::-1]  # names count down
    by_next_run = await page_all("sort=next_run")
    assert by_next_run[:3] == [ids[0], ids[2], ids[4]] and set(by_next_run[3:]) == {ids[1], ids[3]}
    assert set(await page_all("type=http")) == {ids[1], ids[4]}
    assert set(await page_all("tag=b")) == {ids[1], ids[2]}
    assert set(await page_all("tag=a&type=handler")) == {ids[0], ids[3]}
    assert await page_all("status=paused") == []
    # A cursor of one sort is refused by another, naming the field.
    r = await http.get("/v1/tasks?limit=2", headers=auth(tenant, ["viewer"]))
    r = await http.get(f"/v1/tasks?sort=name&cursor={r.json()['next_cursor']}", headers=auth(tenant, ["viewer"]))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "cursor"
