"""``GET /v1/tasks/{id}/occurrences`` against the real worker, projector, Kafka and FerretDB:
every slot once with its fate, pages that add up to the whole, tenants kept apart, and bad
input answered 422 naming the parameter."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from api.queries import encode_cursor
from tests.api.conftest import Running, auth, new_tenant


async def _log(http: Any, task_id: str, headers: dict[str, str], limit: int, **params: str) -> list[dict[str, Any]]:
    """Every occurrence, following ``next_cursor`` ``limit`` at a time."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        r = await http.get(f"/v1/tasks/{task_id}/occurrences", params=query, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_every_slot_once_with_its_fate_paged_and_only_for_its_tenant(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    admin = auth(tenant, ["admin"])
    body = {
        # Anchored at the creation instant, to the microsecond: slots match their facts exactly.
        "name": "every-second",
        "schedule": {"kind": "interval", "every_seconds": 1},
        "work": {"kind": "handler", "name": "noop"},
    }
    r = await http.post("/v1/tasks?wait=20", json=body, headers=admin)
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]

    async def fired() -> int:
        r = await http.get(f"/v1/tasks/{task_id}/occurrences", headers=admin)
        assert r.status_code == 200, r.text
        return sum(1 for o in r.json()["items"] if o["fate"] == "fired" and o["outcome"] == "succeeded")

    deadline = time.monotonic() + 30
    while await fired() < 4:
        assert time.monotonic() < deadline, "the task did not fire 4 times within 30 s"
        await asyncio.sleep(0.5)
    r = await http.post(f"/v1/tasks/{task_id}/pause?wait=20", json={}, headers=admin)
    assert r.status_code == 200, r.text
    await asyncio.sleep(2.5)  # slots fall due while paused

    end = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    whole = await _log(http, task_id, admin, 1000, to=end)
    fates = [o["fate"] for o in whole]
    assert "unaccounted" not in fates, whole
    slots = [datetime.fromisoformat(o["slot"]) for o in whole]
    assert all(b - a == timedelta(seconds=1) for a, b in pairwise(slots)), slots
    # Fired, then (maybe a slot running or missed around the pause) pending while paused, then ahead.
    assert fates[0] == "fired" and fates[-1] == "not_yet_due" and "pending" in fates, fates
    assert {o["reason"] for o in whole if o["fate"] == "pending"} == {"paused"}
    assert fates.index("pending") > max(i for i, f in enumerate(fates) if f == "fired")

    # The fired slots are the task's executions, same ids.
    r = await http.get(f"/v1/tasks/{task_id}/executions", params={"limit": 200}, headers=admin)
    executions = {e["id"]: e for e in r.json()["items"]}
    for o in whole:
        if o["fate"] == "fired":
            execution = executions[o["execution_id"]]
            # The executions view keeps BSON milliseconds; the log has the slot to the microsecond.
            exact = datetime.fromisoformat(o["slot"])
            assert datetime.fromisoformat(execution["slot"]) == exact.replace(
                microsecond=exact.microsecond // 1000 * 1000
            )
            assert o["attempts"] == 1 and o["outcome"] == execution["status"]

    # Pages of 2 add up to the whole (fates of the paused task no longer change, bar time).
    paged = await _log(http, task_id, admin, 2, to=end)
    assert [o["slot"] for o in paged] == [o["slot"] for o in whole]
    # A window in the middle starts at its first slot.
    middle = await _log(http, task_id, admin, 1000, **{"from": whole[1]["slot"], "to": whole[3]["slot"]})
    assert [o["slot"] for o in middle] == [whole[1]["slot"], whole[2]["slot"]]

    # Another tenant: not found, exactly like the task itself.
    stranger = auth(new_tenant(), ["admin"])
    theirs = await http.get(f"/v1/tasks/{task_id}/occurrences", headers=stranger)
    task_404 = await http.get(f"/v1/tasks/{task_id}", headers=stranger)
    assert theirs.status_code == task_404.status_code == 404
    assert theirs.json()["detail"] == task_404.json()["detail"]


async def test_bad_input_is_a_422_naming_the_parameter(api: Running) -> None:
    http, tenant = api.http, new_tenant()
    admin = auth(tenant, ["admin"])
    body = {
        "name": "minutely",
        "schedule": {"kind": "interval", "every_seconds": 60},
        "work": {"kind": "handler", "name": "noop"},
    }
    ids = []
    for _ in range(2):
        r = await http.post("/v1/tasks?wait=20", json=body, headers=admin)
        assert r.status_code == 200, r.text
        ids.append(r.json()["task_id"])
    task_id, other = ids
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    page = await http.get(f"/v1/tasks/{other}/occurrences", params={"to": future, "limit": 1}, headers=admin)
    assert page.status_code == 200 and page.json()["next_cursor"], page.text
    others_cursor = page.json()["next_cursor"]
    cases: list[tuple[dict[str, str], str]] = [
        ({"from": future, "to": future}, "from"),
        ({"from": "2026-01-02T00:00:00", "to": future}, "from"),  # naive
        ({"to": "yesterday"}, "to"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"cursor": "bm90IGEgY3Vyc29y"}, "cursor"),
        ({"cursor": others_cursor, "to": future}, "cursor"),  # another task's cursor
        # This task's kind of cursor, spoiled: a naive instant, a count that is not one.
        ({"cursor": encode_cursor(f"occurrences:{task_id}", 0, datetime(2026, 1, 1), "1")}, "cursor"),
        ({"cursor": encode_cursor(f"occurrences:{task_id}", 0, datetime.now(UTC), "x")}, "cursor"),
        ({"cursor": encode_cursor(f"occurrences:{task_id}", 1, datetime.now(UTC), "1")}, "cursor"),
    ]
    for params, field in cases:
        r = await http.get(f"/v1/tasks/{task_id}/occurrences", params=params, headers=admin)
        assert r.status_code == 422, (params, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in r.json()["errors"]] == [field], (params, r.text)


async def test_a_one_shot_for_a_time_already_past_is_in_the_default_range(api: Running) -> None:
    """A one-shot keeps its time even if it is before the creation (it is due at once): the log's
    default range starts there, not at the creation."""
    http, tenant = api.http, new_tenant()
    admin = auth(tenant, ["admin"])
    at = (datetime.now(UTC) - timedelta(minutes=10)).replace(microsecond=0)
    body = {
        "name": "late",
        "schedule": {"kind": "once", "at": at.isoformat()},
        "work": {"kind": "handler", "name": "noop"},
    }
    r = await http.post("/v1/tasks?wait=20", json=body, headers=admin)
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    deadline = time.monotonic() + 30
    while True:
        items = await _log(http, task_id, admin, 10)
        if items and items[0]["fate"] in ("fired", "missed"):
            break
        assert time.monotonic() < deadline, items
        await asyncio.sleep(0.5)
    assert [datetime.fromisoformat(o["slot"]) for o in items] == [at]
