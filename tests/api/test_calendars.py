"""Calendars through the API, against the session's real worker, projector, Kafka and FerretDB:
create, update, list, delete; tenant isolation; every rejection (and that it changes nothing);
and, end to end, a calendar that excludes a day of a task's slots."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from schemas.commands import CreateTask
from schemas.specs import TaskDefinition
from tests.api.conftest import Keys, Running, Stack, _running, auth, new_tenant, settings_for

HOLIDAY = {"timezone": "Europe/Paris", "description": "public holidays", "dates": ["2026-12-25", "2027-01-01"]}
TASK: dict[str, Any] = {
    "name": "calendar user",
    "schedule": {"kind": "cron", "expression": "0 9 * * *", "timezone": "Europe/Paris"},
    "work": {"kind": "handler", "name": "noop"},
}


async def put(api: Running, tenant: str, name: str, body: dict[str, Any], **headers: str) -> Any:
    return await api.http.put(f"/v1/calendars/{name}?wait=20", json=body, headers={**auth(tenant), **headers})


async def test_calendar_lifecycle(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    r = await put(api, tenant, "holidays", HOLIDAY)
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == 1 and r.json()["dates"] == ["2026-12-25", "2027-01-01"]

    r = await http.get("/v1/calendars/holidays", headers=auth(tenant, ["viewer"]))
    assert r.status_code == 200 and r.headers["etag"] == '"1"'
    assert r.json()["timezone"] == "Europe/Paris" and r.json()["description"] == "public holidays"

    changed = {**HOLIDAY, "ranges": [{"start": "2026-08-01", "end": "2026-08-15"}]}
    r = await put(api, tenant, "holidays", changed, **{"If-Match": '"1"'})
    assert r.status_code == 200 and r.json()["revision"] == 2, r.text
    assert r.json()["ranges"] == [{"start": "2026-08-01T00:00:00", "end": "2026-08-15T00:00:00"}]
    r = await put(api, tenant, "holidays", HOLIDAY, **{"If-Match": '"1"'})
    assert r.status_code == 409, r.text
    assert (await http.get("/v1/calendars/holidays", headers=auth(tenant))).json()["revision"] == 2

    r = await put(api, tenant, "maintenance", {"rules": [{"cron": "0 2 * * sun", "duration_seconds": 7200}]})
    assert r.status_code == 200, r.text
    listed = (await http.get("/v1/calendars", headers=auth(tenant, ["viewer"]))).json()
    assert [c["name"] for c in listed["items"]] == ["holidays", "maintenance"]
    page = (await http.get("/v1/calendars?limit=1", headers=auth(tenant))).json()
    assert [c["name"] for c in page["items"]] == ["holidays"] and page["next_after"] == "holidays"

    # Viewers and operators cannot change calendars.
    for role in ("viewer", "operator"):
        r = await http.put("/v1/calendars/holidays", json=HOLIDAY, headers=auth(tenant, [role]))
        assert r.status_code == 403, r.text
        r = await http.delete("/v1/calendars/holidays", headers=auth(tenant, [role]))
        assert r.status_code == 403, r.text

    r = await http.delete("/v1/calendars/maintenance?wait=20", headers=auth(tenant))
    assert r.status_code == 200 and r.json() == {"name": "maintenance", "revision": 2, "deleted": True}, r.text
    assert (await http.get("/v1/calendars/maintenance", headers=auth(tenant))).status_code == 404
    assert (await http.delete("/v1/calendars/maintenance", headers=auth(tenant))).status_code == 404
    # Created again, the name continues its revisions.
    r = await put(api, tenant, "maintenance", HOLIDAY)
    assert r.status_code == 200 and r.json()["revision"] == 3, r.text


async def test_tenants_never_see_each_others_calendars(api: Running) -> None:
    http, owner, other = api.http, new_tenant(), new_tenant()
    assert (await put(api, owner, "holidays", HOLIDAY)).status_code == 200
    assert (await http.get("/v1/calendars/holidays", headers=auth(other))).status_code == 404
    assert (await http.get("/v1/calendars", headers=auth(other))).json()["items"] == []
    assert (await http.delete("/v1/calendars/holidays", headers=auth(other))).status_code == 404
    # The other tenant's task cannot name the owner's calendar ...
    r = await http.post("/v1/tasks", json={**TASK, "calendars": ["holidays"]}, headers=auth(other))
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "definition.calendars.0"
    # ... and its own calendar of the same name is its own, from revision 1.
    r = await put(api, other, "holidays", {"dates": ["2026-07-14"]})
    assert r.status_code == 200 and r.json()["revision"] == 1 and r.json()["timezone"] == "UTC", r.text
    owned = (await http.get("/v1/calendars/holidays", headers=auth(owner))).json()
    assert owned["dates"] == HOLIDAY["dates"] and owned["revision"] == 1


async def test_calendars_beyond_the_quota_are_429(warm: Stack, keys: Keys) -> None:
    tenant = new_tenant()
    async with asynccontextmanager(_running)(settings_for(warm, keys, quota_max_calendars=2)) as api:
        for name in ("one", "two"):
            assert (await put(api, tenant, name, HOLIDAY)).status_code == 200
        r = await put(api, tenant, "three", HOLIDAY)
        assert r.status_code == 429 and "Retry-After" in r.headers, r.text
        assert (await put(api, tenant, "two", {"dates": ["2026-05-01"]})).status_code == 200  # replacing is fine
        assert (await api.http.delete("/v1/calendars/two?wait=20", headers=auth(tenant))).status_code == 200
        assert (await put(api, tenant, "three", HOLIDAY)).status_code == 200


async def test_bad_calendars_are_422_naming_the_field(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    cases = [
        ("holidays", {"timezone": "Mars/Olympus"}, "timezone"),
        ("holidays", {"dates": ["2026-02-30"]}, "dates.0"),
        ("holidays", {"ranges": [{"start": "2026-08-15", "end": "2026-08-01"}]}, "ranges.0"),
        ("holidays", {"rules": [{"cron": "0 25 * * *"}]}, "rules.0.cron"),
        ("holidays", {"rules": [{"cron": "0 2 * * sun", "duration_seconds": 40 * 86400}]}, "rules.0.duration_seconds"),
        ("holidays", {"rules": [{"cron": "0 0 * * 1-5"}, {"cron": "0 0 * * sat,sun"}]}, "body"),
        ("Bad Name", HOLIDAY, "name"),
        ("x" * 64, HOLIDAY, "name"),
    ]
    for name, body, field in cases:
        r = await http.put(f"/v1/calendars/{name}", json=body, headers=auth(tenant))
        assert r.status_code == 422, (name, body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["errors"][0]["field"] == field, (body, r.json())
    assert (await http.get("/v1/calendars", headers=auth(tenant))).json()["items"] == []


async def test_calendar_dates_beyond_the_wire_years_are_422_not_500(api: Running) -> None:
    # A range ending in 9999 on a wall clock behind UTC overflowed `datetime`: the API's check
    # answered 500, and one starting later reached the worker, whose decider crashed on it.
    http, tenant = api.http, new_tenant()
    cases = [
        ({"timezone": "Etc/GMT+12", "ranges": [{"start": "2020-01-01", "end": "9999-12-31T23:00:00"}]}, "ranges.0.end"),
        ({"timezone": "Etc/GMT+12", "ranges": [{"start": "2998-01-01", "end": "9999-12-31T23:00:00"}]}, "ranges.0.end"),
        ({"dates": ["9999-12-31"]}, "dates"),
    ]
    for body, field in cases:
        r = await http.put("/v1/calendars/far", json=body, headers=auth(tenant))
        assert r.status_code == 422, (body, r.text)
        assert r.json()["errors"][0]["field"] == field, (body, r.json())
    assert (await http.get("/v1/calendars", headers=auth(tenant))).json()["items"] == []


async def test_task_naming_an_unknown_calendar_is_422_and_nothing_is_created(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    assert (await put(api, tenant, "holidays", HOLIDAY)).status_code == 200
    r = await http.post("/v1/tasks", json={**TASK, "calendars": ["holidays", "nope"]}, headers=auth(tenant))
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["definition.calendars.1"]
    assert (await http.get("/v1/tasks", headers=auth(tenant))).json()["items"] == []
    r = await http.post("/v1/tasks?wait=20", json={**TASK, "calendars": ["holidays"]}, headers=auth(tenant))
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    r = await http.put(f"/v1/tasks/{task_id}", json={**TASK, "calendars": ["nope"]}, headers=auth(tenant))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "definition.calendars.0", r.text
    task = (await http.get(f"/v1/tasks/{task_id}", headers=auth(tenant))).json()
    assert task["revision"] == 1 and task["definition"]["calendars"] == ["holidays"]


async def test_calendars_excluding_every_slot_are_refused(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    assert (await put(api, tenant, "weekends", {"rules": [{"cron": "0 0 * * sat,sun"}]})).status_code == 200
    saturdays = {**TASK, "schedule": {"kind": "cron", "expression": "0 9 * * sat"}, "calendars": ["weekends"]}
    r = await http.post("/v1/tasks", json=saturdays, headers=auth(tenant))
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "definition.calendars"
    assert (await http.get("/v1/tasks", headers=auth(tenant))).json()["items"] == []
    # A one-shot on an excluded day is a bounded schedule whose every slot is excluded.
    once = {**TASK, "schedule": {"kind": "once", "at": _next_weekday(5).isoformat()}, "calendars": ["weekends"]}
    r = await http.post("/v1/tasks", json=once, headers=auth(tenant))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "definition.calendars", r.text


async def test_calendar_changes_that_would_stop_a_task_are_refused(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    assert (await put(api, tenant, "closures", {"dates": ["2030-01-01"]})).status_code == 200
    saturdays = {**TASK, "schedule": {"kind": "cron", "expression": "0 9 * * sat"}, "calendars": ["closures"]}
    r = await http.post("/v1/tasks?wait=20", json=saturdays, headers=auth(tenant))
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]

    r = await put(api, tenant, "closures", {"rules": [{"cron": "0 0 * * sat"}]})
    assert r.status_code == 422, r.text
    assert task_id in r.json()["detail"]
    kept = (await http.get("/v1/calendars/closures", headers=auth(tenant))).json()
    assert kept["revision"] == 1 and kept["dates"] == ["2030-01-01"] and kept["rules"] == []
    # Excluding Sundays leaves the Saturdays: accepted.
    r = await put(api, tenant, "closures", {"rules": [{"cron": "0 0 * * sun"}]})
    assert r.status_code == 200 and r.json()["revision"] == 2, r.text

    r = await http.delete("/v1/calendars/closures", headers=auth(tenant))
    assert r.status_code == 409 and task_id in r.json()["detail"], r.text
    assert (await http.get("/v1/calendars/closures", headers=auth(tenant))).status_code == 200
    assert (await http.delete(f"/v1/tasks/{task_id}?wait=20", headers=auth(tenant))).status_code == 200
    r = await http.delete("/v1/calendars/closures?wait=20", headers=auth(tenant))
    assert r.status_code == 200, r.text


async def test_a_tasks_calendars_may_hold_at_most_a_hundred_rules_together(api: Running) -> None:
    # Each rule is evaluated for every slot, by the worker and by the previews: 20 calendars of
    # 50 every-other-second windows made one slot cost 15 ms and a preview of 100 block the
    # API's event loop for 1.5 s.
    http, tenant = api.http, new_tenant()
    fifty = {"rules": [{"cron": f"{i} 2 * * sun", "duration_seconds": 1} for i in range(50)]}
    for name in ("a", "b", "c"):
        assert (await put(api, tenant, name, fifty)).status_code == 200
    assert (await put(api, tenant, "days", {"dates": ["2030-01-01"]})).status_code == 200
    r = await http.post("/v1/tasks", json={**TASK, "calendars": ["a", "b", "c"]}, headers=auth(tenant))
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["definition.calendars"] and "at most 100" in r.text
    r = await http.post("/v1/tasks?wait=20", json={**TASK, "calendars": ["a", "b", "days"]}, headers=auth(tenant))
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    # Nor may a calendar grow a task's past it.
    r = await put(api, tenant, "days", {"dates": ["2030-01-01"], "rules": [{"cron": "0 3 * * sun"}]})
    assert r.status_code == 422 and task_id in r.json()["detail"], r.text
    assert [e["field"] for e in r.json()["errors"]] == ["rules"]
    assert (await http.get("/v1/calendars/days", headers=auth(tenant))).json()["revision"] == 1
    r = await http.put(f"/v1/tasks/{task_id}", json={**TASK, "calendars": ["a", "b", "c"]}, headers=auth(tenant))
    assert r.status_code == 422, r.text


def _midday_zone() -> tuple[str, datetime]:
    """A fixed-offset zone where it is about noon now, and the local time there: a test of a
    whole excluded day then never straddles a local midnight."""
    utc_now = datetime.now(UTC)
    offset = 12 - utc_now.hour  # -11 .. +12, all of them Etc/GMT zones
    zone = "UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"
    return zone, (utc_now + timedelta(hours=offset)).replace(tzinfo=None)


def _every_two_seconds(calendars: list[str]) -> dict[str, Any]:
    return {
        "name": "two-secondly",
        "schedule": {"kind": "interval", "every_seconds": 2},
        "work": {"kind": "handler", "name": "noop"},
        "overlap": "allow_all",
        "calendars": calendars,
    }


async def _executions(api: Running, tenant: str, task_id: str) -> list[dict[str, Any]]:
    r = await api.http.get(f"/v1/tasks/{task_id}/executions?limit=200", headers=auth(tenant))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_a_calendar_excludes_a_day_end_to_end(api: Running) -> None:
    """A calendar excluding today (in its zone): every slot of the task that lists it is recorded
    missed with reason ``calendar``; another tenant's calendar of the same name, which does not
    exclude today, lets its task run."""
    http, tenant, other = api.http, new_tenant(), new_tenant()
    zone, local_now = _midday_zone()
    today = local_now.date()
    r = await put(api, tenant, "closed", {"timezone": zone, "dates": [today.isoformat()]})
    assert r.status_code == 200, r.text
    r = await put(api, other, "closed", {"timezone": zone, "dates": [(today + timedelta(days=3)).isoformat()]})
    assert r.status_code == 200, r.text

    r = await http.post("/v1/tasks?wait=20", json=_every_two_seconds(["closed"]), headers=auth(tenant))
    assert r.status_code == 200, r.text
    excluded_task = r.json()["task_id"]
    r = await http.post("/v1/tasks?wait=20", json=_every_two_seconds(["closed"]), headers=auth(other))
    assert r.status_code == 200, r.text
    open_task = r.json()["task_id"]
    try:
        deadline = time.monotonic() + 40
        while True:
            excluded = await _executions(api, tenant, excluded_task)
            opened = await _executions(api, other, open_task)
            missed = sum(i["missed_count"] for i in excluded if i["status"] == "skipped")
            if missed >= 3 and sum(i["status"] == "succeeded" for i in opened) >= 3:
                break
            assert time.monotonic() < deadline, (excluded, opened)
            await asyncio.sleep(0.3)
        assert excluded and all(
            i["status"] == "skipped" and i["reason"] == "calendar" and i["calendar"] == "closed" for i in excluded
        ), excluded
        assert all(i["reason"] == "schedule" for i in opened if i["status"] != "skipped"), opened
        # The preview names the calendar excluding each slot.
        r = await http.get(f"/v1/tasks/{excluded_task}/next-fire-times?n=3", headers=auth(tenant))
        assert [t["excluded_by"] for t in r.json()["fire_times"]] == ["closed"] * 3, r.text
        r = await http.get(f"/v1/tasks/{open_task}/next-fire-times?n=3", headers=auth(other))
        assert [t["excluded_by"] for t in r.json()["fire_times"]] == [None] * 3, r.text
        # A manual run ignores calendars.
        r = await http.post(f"/v1/tasks/{excluded_task}/trigger?wait=20", headers=auth(tenant, ["operator"]))
        assert r.status_code == 200, r.text
    finally:
        await http.delete(f"/v1/tasks/{excluded_task}", headers=auth(tenant))
        await http.delete(f"/v1/tasks/{open_task}", headers=auth(other))


async def test_a_day_of_caught_up_slots_is_excluded(api: Running) -> None:
    """Two days of 6-hourly slots handled at once: the task is created by a command dated two
    days ago (as another service producing to ``commands`` may send it), so its first wake
    catches up every slot since (``run_all``). The slots of the excluded day are recorded as one
    ``calendar`` miss; the others run."""
    http, tenant = api.http, new_tenant()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if datetime.now(UTC) - today < timedelta(minutes=1):
        await asyncio.sleep(60)  # not across midnight
    start, excluded = today - timedelta(days=2), today - timedelta(days=1)
    r = await put(api, tenant, "closed", {"dates": [excluded.date().isoformat()]})
    assert r.status_code == 200, r.text
    public_id = f"caught-up-{uuid.uuid4().hex[:8]}"
    definition = TaskDefinition.model_validate(
        {
            "name": "six-hourly",
            "schedule": {"kind": "interval", "every_seconds": 6 * 3600},
            "start_at": start.isoformat(),
            "work": {"kind": "handler", "name": "noop"},
            "overlap": "allow_all",
            "catch_up": {"mode": "run_all", "window_seconds": 3 * 86400, "max_runs": 20},
            "calendars": ["closed"],
        }
    )
    create = CreateTask(
        command_id=str(uuid.uuid4()), task_id=f"{tenant}/{public_id}", tenant=tenant, actor="other-service",
        at=start - timedelta(seconds=1), definition=definition,
    )  # fmt: skip
    await api.app.state.api.bus.send(create)
    ran_slots = [start + timedelta(hours=h) for h in (0, 6, 12, 18)]
    ran_slots += [today + timedelta(hours=h) for h in (0, 6, 12, 18) if today + timedelta(hours=h) <= datetime.now(UTC)]
    try:
        deadline = time.monotonic() + 40
        while True:
            items = await _executions(api, tenant, public_id) if await _shown(api, tenant, public_id) else []
            skipped = [i for i in items if i["status"] == "skipped"]
            runs = [i for i in items if i["status"] != "skipped"]
            if skipped and len(runs) >= len(ran_slots):
                break
            assert time.monotonic() < deadline, items
            await asyncio.sleep(0.3)
        [missed] = skipped
        assert missed["reason"] == "calendar" and missed["calendar"] == "closed" and missed["missed_count"] == 4
        assert _at(missed["slot"]) == excluded and _at(missed["last_slot"]) == excluded + timedelta(hours=18)
        assert sorted(_at(i["slot"]) for i in runs) == ran_slots
        assert all(i["reason"] == "schedule" for i in runs)
    finally:
        await http.delete(f"/v1/tasks/{public_id}", headers=auth(tenant))


async def _shown(api: Running, tenant: str, public_id: str) -> bool:
    return (await api.http.get(f"/v1/tasks/{public_id}", headers=auth(tenant))).status_code == 200


async def test_slots_in_an_excluded_range_are_missed_and_the_schedule_moves_on(api: Running) -> None:
    """A range a few seconds long: slots before it run, slots in it are missed (``calendar``),
    slots after it run again."""
    http, tenant = api.http, new_tenant()
    zone, local_now = _midday_zone()
    start, end = local_now + timedelta(seconds=8), local_now + timedelta(seconds=16)
    window = {"start": start.isoformat(timespec="seconds"), "end": end.isoformat(timespec="seconds")}
    assert (await put(api, tenant, "window", {"timezone": zone, "ranges": [window]})).status_code == 200
    r = await http.post("/v1/tasks?wait=20", json=_every_two_seconds(["window"]), headers=auth(tenant))
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    range_start, range_end = (datetime.fromisoformat(window[k]).replace(tzinfo=ZoneInfo(zone)) for k in window)
    try:
        deadline = time.monotonic() + 60
        while True:
            items = await _executions(api, tenant, task_id)
            ran = [_at(i["slot"]) for i in items if i["status"] == "succeeded"]
            if any(slot >= range_end for slot in ran):
                break
            assert time.monotonic() < deadline, items
            await asyncio.sleep(0.3)
        skipped = [i for i in items if i["status"] == "skipped"]
        assert skipped and all(i["reason"] == "calendar" and i["calendar"] == "window" for i in skipped), skipped
        missed_slots = {_at(i["slot"]) for i in skipped} | {_at(i["last_slot"]) for i in skipped}
        assert all(range_start <= slot < range_end for slot in missed_slots), (skipped, range_start, range_end)
        assert sum(i["missed_count"] for i in skipped) == 4  # 8 seconds of 2-second slots
        assert any(slot < range_start for slot in ran) and not any(range_start <= s < range_end for s in ran)
    finally:
        await http.delete(f"/v1/tasks/{task_id}", headers=auth(tenant))


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _next_weekday(weekday: int) -> datetime:
    """09:00 UTC on the next given weekday (Monday is 0) at least two days ahead."""
    day = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) + timedelta(days=2)
    while day.weekday() != weekday:
        day += timedelta(days=1)
    return day
