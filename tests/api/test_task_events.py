"""``GET /v1/tasks/{id}/events``: a task's history from the audit view, as the dashboard shows it."""

from __future__ import annotations

from tests.api.conftest import Running, auth, new_tenant

TASK = {
    "name": "audited",
    "work": {"kind": "handler", "name": "echo", "params": {"api_token": "s3cr3t-value"}},
    "sensitive_params": ["/api_token"],
}


async def test_task_events_newest_first_paged_masked_and_tenant_scoped(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    admin = auth(tenant, ["admin"], sub="alice")
    r = await http.post("/v1/tasks?wait=20", json=TASK, headers=admin)
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    r = await http.post(f"/v1/tasks/{task_id}/pause?wait=20", json={"note": "window"}, headers=admin)
    assert r.status_code == 200, r.text

    viewer = auth(tenant, ["viewer"])
    r = await http.get(f"/v1/tasks/{task_id}/events", headers=viewer)
    assert r.status_code == 200, r.text
    page = r.json()
    assert [(e["type"], e["sequence"]) for e in page["items"]] == [("TaskPaused", 2), ("TaskCreated", 1)]
    assert page["next_before"] is None
    paused, created = page["items"]
    assert paused["actor"] == "alice" and paused["data"]["note"] == "window"
    for event in page["items"]:
        assert event["data"]["task_id"] == task_id and "tenant" not in event["data"]
        assert event["id"] == event["data"]["event_id"]
    # The secret is neither in clear nor as its encrypted token.
    assert created["data"]["definition"]["work"]["params"]["api_token"] == "***"
    assert "s3cr3t" not in r.text and "enc:v1:" not in r.text

    # Older pages with `before`.
    r = await http.get(f"/v1/tasks/{task_id}/events?limit=1", headers=viewer)
    assert [e["type"] for e in r.json()["items"]] == ["TaskPaused"] and r.json()["next_before"] == 2
    r = await http.get(f"/v1/tasks/{task_id}/events?limit=1&before=2", headers=viewer)
    assert [e["type"] for e in r.json()["items"]] == ["TaskCreated"] and r.json()["next_before"] is None

    # Another tenant's task is not found; a bad `before` is a 422 naming it.
    r = await http.get(f"/v1/tasks/{task_id}/events", headers=auth(new_tenant(), ["admin"]))
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    r = await http.get(f"/v1/tasks/{task_id}/events?before=0", headers=viewer)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "before", r.text
    assert (await http.get(f"/v1/tasks/{task_id}/events")).status_code == 401
