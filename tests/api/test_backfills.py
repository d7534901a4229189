"""Issue 12 through the API, against the session's real worker and projector: backfills (ask,
follow, cancel, bad input) and the pause after N consecutive failures as the views show it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.api.conftest import Keys, Running, Stack, _running, auth, new_tenant, settings_for
from tests.integration.harness import until

EVERY_MINUTE: dict[str, Any] = {
    "name": "minutely",
    "schedule": {"kind": "interval", "every_seconds": 60, "anchor": "2026-01-01T00:00:00Z"},
    "work": {"kind": "handler", "name": "noop"},
    "overlap": "allow_all",
}
"""Slots on whole minutes; a noop handler as work."""


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def minute_ago(minutes: int) -> datetime:
    """A whole minute ``minutes`` before now (the start of a range with whole-minute slots)."""
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes)


async def _create(api: Running, tenant: str, body: dict[str, Any]) -> str:
    r = await api.http.post("/v1/tasks?wait=20", json=body, headers=auth(tenant, ["admin"]))
    assert r.status_code == 200, r.text
    return str(r.json()["task_id"])


async def test_backfill_runs_each_slot_once_and_shows_progress(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    task_id = await _create(api, tenant, EVERY_MINUTE)
    operator = auth(tenant, ["operator"])
    start = minute_ago(30)
    body = {"from": iso(start), "to": iso(start + timedelta(minutes=5)), "max_concurrency": 2}
    r = await http.post(f"/v1/tasks/{task_id}/backfills?wait=20", json=body, headers=operator)
    assert r.status_code == 200, r.text
    result = r.json()
    backfill_id = result["backfill_id"]
    assert result["events"][:3] == ["BackfillStarted", "ExecutionDispatched", "ExecutionDispatched"], result

    async def done() -> Any:
        got = await http.get(f"/v1/tasks/{task_id}/backfills/{backfill_id}", headers=auth(tenant, ["viewer"]))
        view = got.json()
        return view if got.status_code == 200 and view["status"] == "completed" and view["succeeded"] == 5 else None

    view = await until(done, 30, "the backfill to complete")
    assert view["slots"] == 5 and view["dispatched"] == 5 and view["from"] == iso(start), view
    r = await http.get(f"/v1/tasks/{task_id}/executions?limit=50", headers=auth(tenant, ["viewer"]))
    backfilled = [e for e in r.json()["items"] if e["reason"] == "backfill"]
    assert sorted(e["slot"] for e in backfilled) == [iso(start + timedelta(minutes=m)) for m in range(5)]
    assert {e["backfill_id"] for e in backfilled} == {backfill_id}
    assert all(e["status"] == "succeeded" for e in backfilled)
    task = (await http.get(f"/v1/tasks/{task_id}", headers=auth(tenant, ["viewer"]))).json()
    assert task["backfill"]["id"] == backfill_id and task["backfill"]["status"] == "completed"
    # The same Idempotency-Key twice is one backfill; the same range again without it a new one.
    again = {**operator, "Idempotency-Key": "bf-day"}
    first = await http.post(f"/v1/tasks/{task_id}/backfills", json=body, headers=again)
    second = await http.post(f"/v1/tasks/{task_id}/backfills", json=body, headers=again)
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert first.json()["backfill_id"] == second.json()["backfill_id"] != backfill_id


async def test_cancel_a_running_backfill(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    slow = {**EVERY_MINUTE, "work": {"kind": "handler", "name": "sleep"}, "params": {"seconds": 30}}
    task_id = await _create(api, tenant, slow)
    operator = auth(tenant, ["operator"])
    start = minute_ago(60)
    body = {"from": iso(start), "to": iso(start + timedelta(minutes=20)), "max_concurrency": 3}
    r = await http.post(f"/v1/tasks/{task_id}/backfills?wait=20", json=body, headers=operator)
    assert r.status_code == 200, r.text
    backfill_id = r.json()["backfill_id"]
    # A second backfill while this one runs: a conflict.
    r = await http.post(f"/v1/tasks/{task_id}/backfills?wait=20", json=body, headers=operator)
    assert r.status_code == 409 and "still running" in r.json()["detail"], r.text
    # A viewer may not cancel; another tenant does not see the task.
    r = await http.delete(f"/v1/tasks/{task_id}/backfills/{backfill_id}", headers=auth(tenant, ["viewer"]))
    assert r.status_code == 403, r.text
    r = await http.delete(f"/v1/tasks/{task_id}/backfills/{backfill_id}", headers=auth(new_tenant(), ["operator"]))
    assert r.status_code == 404, r.text
    r = await http.delete(f"/v1/tasks/{task_id}/backfills/{backfill_id}?wait=20", headers=operator)
    assert r.status_code == 200, r.text
    assert r.json()["events"] == ["BackfillEnded", "ExecutionCompleted", "ExecutionCompleted", "ExecutionCompleted"]

    async def cancelled() -> Any:
        got = await http.get(f"/v1/tasks/{task_id}/backfills/{backfill_id}", headers=operator)
        view = got.json()
        return view if view.get("status") == "cancelled" and view.get("cancelled") == 3 else None

    view = await until(cancelled, 20, "the backfill view to show the cancel")
    assert view["dispatched"] == 3 and view["reason"] == "cancelled by alice", view
    # Cancelling again: it already ended (409); an unknown backfill: 404.
    r = await http.delete(f"/v1/tasks/{task_id}/backfills/{backfill_id}?wait=20", headers=operator)
    assert r.status_code == 409, r.text
    r = await http.delete(f"/v1/tasks/{task_id}/backfills/nope?wait=20", headers=operator)
    assert r.status_code == 404 and "backfill not found" in r.json()["detail"], r.text


async def test_bad_backfills_are_422s_naming_the_field_and_change_nothing(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    task_id = await _create(api, tenant, EVERY_MINUTE)
    operator = auth(tenant, ["operator"])
    url = f"/v1/tasks/{task_id}/backfills"
    past = minute_ago(60)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"from": iso(past), "to": iso(datetime.now(UTC) + timedelta(hours=1))}, "to", "future"),
        ({"from": iso(past - timedelta(days=8)), "to": iso(past)}, "to", "more than 10000 slots"),
        ({"from": iso(past), "to": iso(past)}, "to", "after from"),
        ({"from": iso(past + timedelta(seconds=1)), "to": iso(past + timedelta(seconds=59))}, "from", "no slot"),
        ({"to": iso(past)}, "from", ""),
        ({"from": "2026-01-01T00:00:00", "to": iso(past)}, "from", "from must be timezone-aware"),
        ({"from": iso(past - timedelta(hours=1)), "to": iso(past), "max_concurrency": 0}, "max_concurrency", ""),
        ({"from": iso(past - timedelta(hours=1)), "to": iso(past), "max_concurrency": 101}, "max_concurrency", ""),
        ({"from": iso(past - timedelta(hours=1)), "to": iso(past), "colour": "red"}, "colour", ""),
    ]
    for body, field, words in cases:
        r = await http.post(url, json=body, headers=operator)
        assert r.status_code == 422, (body, r.status_code, r.text)
        problem = r.json()
        assert [e["field"] for e in problem["errors"]] == [field], (body, problem)
        assert words in problem["detail"], (body, problem)
    task = (await http.get(f"/v1/tasks/{task_id}", headers=operator)).json()
    assert task["backfill"] is None and task["counters"]["rejected"] == 0, task
    # Roles and tenants, as every other write.
    good = {"from": iso(past - timedelta(minutes=5)), "to": iso(past)}
    assert (await http.post(url, json=good, headers=auth(tenant, ["viewer"]))).status_code == 403
    assert (await http.post(url, json=good, headers=auth(new_tenant(), ["operator"]))).status_code == 404
    # A task without a schedule has nothing to backfill: a conflict.
    manual = await _create(api, tenant, {"name": "manual", "work": {"kind": "handler", "name": "noop"}})
    r = await http.post(f"/v1/tasks/{manual}/backfills", json=good, headers=operator)
    assert r.status_code == 409 and "no schedule" in r.json()["detail"], r.text


async def test_pause_after_consecutive_failures_shows_the_reason(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    body = {
        "name": "flaky",
        "work": {"kind": "handler", "name": "fail"},
        "params": {"message": "engine down"},
        "pause_after_failures": 2,
    }
    task_id = await _create(api, tenant, body)
    operator = auth(tenant, ["operator"])
    for n in range(2):
        r = await http.post(f"/v1/tasks/{task_id}/trigger", json={"trigger_id": f"t{n}"}, headers=operator)
        assert r.status_code == 202, r.text

    async def paused() -> Any:
        task = (await http.get(f"/v1/tasks/{task_id}", headers=operator)).json()
        return task if task["status"] == "paused" else None

    task = await until(paused, 30, "the task to pause")
    assert task["paused_reason"] == "consecutive_failures" and task["paused_failures"] == 2, task
    assert task["paused_note"].startswith("paused after 2 consecutive failures; last error: ")
    assert "engine down" in task["paused_note"], task
    assert task["definition"]["pause_after_failures"] == 2
    r = await http.post(f"/v1/tasks/{task_id}/resume?wait=20", headers=operator)
    assert r.status_code == 200, r.text
    task = r.json()["task"]
    assert task["status"] == "active" and task["paused_reason"] is None and task["paused_failures"] is None
    # A bound out of range is a 422 naming the field.
    r = await http.post("/v1/tasks", json={**body, "pause_after_failures": 0}, headers=auth(tenant, ["admin"]))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "definition.pause_after_failures", r.text


async def test_the_configured_bound_is_a_422_naming_to(warm: Stack, keys: Keys) -> None:
    """``SCHED_BACKFILL_MAX_SLOTS`` lowers the bound for requests through the API."""
    async for api in _running(settings_for(warm, keys, backfill_max_slots=3)):
        tenant = new_tenant()
        task_id = await _create(api, tenant, EVERY_MINUTE)
        start = minute_ago(30)
        url = f"/v1/tasks/{task_id}/backfills"
        body = {"from": iso(start), "to": iso(start + timedelta(minutes=4))}
        r = await api.http.post(url, json=body, headers=auth(tenant, ["operator"]))
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "to" and "more than 3 slots" in r.json()["detail"], r.text
        body["to"] = iso(start + timedelta(minutes=3))
        r = await api.http.post(url, json=body, headers=auth(tenant, ["operator"]))
        assert r.status_code == 202, r.text
