"""``GET /v1/reports`` and the window of ``GET /v1/stats`` over a known history.

The history is folded into a fresh FerretDB database by the projector's own store
(:func:`projections.store.apply_events`, the code the live projector and the replay run), and
the API reads it through its real MongoDB client: every figure below was worked out by hand
from the history (percentiles by nearest rank).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from api.settings import ApiSettings
from projections.projector import ensure_indexes
from projections.read import CollectionNames
from projections.store import apply_events
from schemas.specs import HttpWork, IntervalSchedule, TaskDefinition
from tests.api.conftest import AUDIENCE, ISSUER, SECRET, Running, _running, auth, free_port, new_tenant
from tests.conftest import Infra, Names
from tests.projections.history import TaskHistory, positioned

Db = AsyncDatabase[dict[str, Any]]
TENANT = "acme-reports"
OTHER = "other-reports"
DAY1 = datetime(2026, 3, 1, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
RANGE = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-03T00:00:00Z"}
RECENT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
"""The one execution the default (last 24 hours) window of ``/v1/stats`` holds."""


def _definition(name: str, tags: list[str]) -> TaskDefinition:
    return TaskDefinition(
        name=name,
        schedule=IntervalSchedule(every_seconds=3600, anchor=DAY1),
        work=HttpWork(url="https://example.test/run"),
        tags=tags,
    )


def _run(h: TaskHistory, slot: datetime, status: str | None, *, late_ms: int, duration_ms: int | None = None) -> None:
    """An execution of ``slot`` starting ``late_ms`` late and ending ``status`` (None: still running)."""
    ex, _ = h.dispatched(slot)
    started = slot + timedelta(milliseconds=late_ms)
    h.now = started - timedelta(seconds=1)  # the history's clock steps a second per event
    h.started(ex)
    if status is not None:
        h.finished(ex, status, duration_ms, slot=slot, started_at=started)


def _cancelled_before_start(h: TaskHistory, slot: datetime) -> None:
    ex, _ = h.dispatched(slot)
    h.finished(ex, "cancelled", None, slot=slot)


def history() -> list[TaskHistory]:
    """Three tasks of ``TENANT`` (and one of ``OTHER``) over two days, plus runs outside the range."""
    a = TaskHistory(f"{TENANT}/a", TENANT, definition=_definition("=SUM(A1)", ["etl", "nightly"]))
    a.created()
    _run(a, DAY1 - timedelta(seconds=1), "failed", late_ms=9, duration_ms=99_999)  # before the range
    _run(a, DAY1 + timedelta(hours=1), "succeeded", late_ms=1000, duration_ms=100)
    _run(a, DAY1 + timedelta(hours=2), "succeeded", late_ms=2000, duration_ms=200)
    _run(a, DAY1 + timedelta(hours=3), "failed", late_ms=3000, duration_ms=300)
    _run(a, DAY1 + timedelta(hours=4), "timed_out", late_ms=500, duration_ms=5000)
    _run(a, DAY2 + timedelta(hours=1), "succeeded", late_ms=0, duration_ms=400)
    a.missed(DAY2 + timedelta(hours=5), count=3)
    _run(a, DAY2 + timedelta(days=1), "failed", late_ms=9, duration_ms=99_999)  # the end is excluded

    b = TaskHistory(f"{TENANT}/b", TENANT, definition=_definition('loader, "fast"', ["etl"]))
    b.created()
    _run(b, DAY1 + timedelta(hours=10), "succeeded", late_ms=250, duration_ms=50)
    _cancelled_before_start(b, DAY1 + timedelta(hours=11))
    _run(b, DAY2 + timedelta(hours=23, minutes=30), None, late_ms=700)  # still running

    c = TaskHistory(f"{TENANT}/c", TENANT, definition=_definition("plain", []))
    c.created()
    _run(c, DAY1 + timedelta(hours=12), "succeeded", late_ms=10, duration_ms=10)
    c.missed(DAY1 + timedelta(hours=13), count=1)
    _run(c, RECENT, "succeeded", late_ms=30, duration_ms=20)

    # Another tenant: the same public id and tag, and figures that would show if they leaked.
    o = TaskHistory(f"{OTHER}/a", OTHER, definition=_definition("theirs", ["etl"]))
    o.created()
    _run(o, DAY1 + timedelta(hours=6), "failed", late_ms=77_777, duration_ms=77_777)
    o.missed(DAY1 + timedelta(hours=7), count=50)
    return [a, b, c, o]


async def _write_history(db: Db) -> None:
    names = CollectionNames()
    await ensure_indexes(db, names)
    for partition, h in enumerate(history()):
        await apply_events(db, names, positioned(h.events, partition=partition))


def _settings(infra: Infra, names: Names, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap": infra.bootstrap,
        "mongo_url": infra.mongo_url,
        "mongo_database": names.database,
        "topic_prefix": f"{names.prefix}.",
        "partitions": 4,
        "jwt_hs256_secret": SECRET,
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
        "kafka_connect_timeout_seconds": 3.0,
    }
    return ApiSettings(**(values | overrides))


@pytest.fixture
async def reports(infra: Infra, names: Names, mongo_db: Db) -> AsyncIterator[httpx.AsyncClient]:
    """The API over a database holding :func:`history` (no worker needed: it only reads)."""
    await _write_history(mongo_db)
    running: Running
    async for running in _running(_settings(infra, names)):
        yield running.http


async def _report(http: httpx.AsyncClient, tenant: str = TENANT, **params: str) -> dict[str, Any]:
    """The JSON report of ``tenant`` over ``RANGE`` (unless ``params`` say another)."""
    r = await http.get("/v1/reports", params={**RANGE, **params}, headers=auth(tenant, ["viewer"]))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _figures(
    runs: int,
    succeeded: int = 0,
    failed: int = 0,
    timed_out: int = 0,
    cancelled: int = 0,
    pending: int = 0,
    missed: int = 0,
    rate: float | None = None,
    duration: tuple[int, int, int, int] | None = None,
    lateness: tuple[int, int, int, int] | None = None,
) -> dict[str, Any]:
    """The figures of a group: ``duration`` and ``lateness`` are ``(p50, p95, max, count)``."""

    def pct(p: tuple[int, int, int, int] | None) -> dict[str, Any]:
        if p is None:
            return {"p50": None, "p95": None, "max": None, "count": 0}
        return {"p50": p[0], "p95": p[1], "max": p[2], "count": p[3]}

    return {
        "runs": runs,
        "succeeded": succeeded,
        "failed": failed,
        "timed_out": timed_out,
        "cancelled": cancelled,
        "pending": pending,
        "missed": missed,
        "success_rate": rate,
        "duration_ms": pct(duration),
        "lateness_ms": pct(lateness),
    }


# Worked out by hand from ``history`` (nearest rank: p-th value = sorted[ceil(p * n) - 1]).
TASK_A = _figures(
    5, 3, 1, 1, missed=3, rate=0.6, duration=(300, 5000, 5000, 5), lateness=(1000, 3000, 3000, 5)
)  # durations 100 200 300 400 5000; lateness 0 500 1000 2000 3000
TASK_B = _figures(3, 1, cancelled=1, pending=1, rate=1.0, duration=(50, 50, 50, 1), lateness=(250, 700, 700, 2))
TASK_C = _figures(1, 1, missed=1, rate=1.0, duration=(10, 10, 10, 1), lateness=(10, 10, 10, 1))
TOTALS = _figures(
    9, 5, 1, 1, 1, 1, 4, rate=5 / 7, duration=(200, 5000, 5000, 7), lateness=(500, 3000, 3000, 8)
)  # durations 10 50 100 200 300 400 5000; lateness 0 10 250 500 700 1000 2000 3000
TAG_ETL = _figures(
    8, 4, 1, 1, 1, 1, 3, rate=4 / 6, duration=(200, 5000, 5000, 6), lateness=(700, 3000, 3000, 7)
)  # a and b: durations 50 100 200 300 400 5000; lateness 0 250 500 700 1000 2000 3000
UTC_DAY1 = _figures(
    7, 4, 1, 1, 1, missed=1, rate=4 / 6, duration=(100, 5000, 5000, 6), lateness=(500, 3000, 3000, 6)
)  # durations 10 50 100 200 300 5000; lateness 10 250 500 1000 2000 3000
UTC_DAY2 = _figures(2, 1, pending=1, missed=3, rate=1.0, duration=(400, 400, 400, 1), lateness=(0, 700, 700, 2))


def _group(body: dict[str, Any], key: str | None) -> dict[str, Any]:
    groups = {g["key"]: g for g in body["groups"]}
    group = dict(groups[key])
    group.pop("key"), group.pop("name")
    return group


def _approx(figures: dict[str, Any]) -> dict[str, Any]:
    rate = figures["success_rate"]
    return {**figures, "success_rate": None if rate is None else pytest.approx(rate)}


async def test_a_report_by_task_gives_each_figure_of_the_known_history(reports: httpx.AsyncClient) -> None:
    body = await _report(reports, group_by="task")
    assert [(g["key"], g["name"]) for g in body["groups"]] == [
        ("a", "=SUM(A1)"),
        ("b", 'loader, "fast"'),
        ("c", "plain"),
    ]
    assert _group(body, "a") == _approx(TASK_A)
    assert _group(body, "b") == _approx(TASK_B)
    assert _group(body, "c") == _approx(TASK_C)
    assert body["totals"] == _approx(TOTALS)
    assert body["from"] == "2026-03-01T00:00:00Z" and body["to"] == "2026-03-03T00:00:00Z"
    assert body["group_by"] == "task" and body["timezone"] == "UTC"
    # 10 executions and 2 missed ranges in the range, the other tenant's 2 never read.
    assert body["executions_read"] == 11

    one = await _report(reports, group_by="task", task_id="b")
    assert [g["key"] for g in one["groups"]] == ["b"] and one["totals"] == _approx(TASK_B)
    assert one["executions_read"] == 3


async def test_a_report_by_tag_counts_a_run_under_each_tag_of_its_task(reports: httpx.AsyncClient) -> None:
    body = await _report(reports, group_by="tag")
    assert [g["key"] for g in body["groups"]] == ["etl", "nightly", None]
    assert _group(body, "etl") == _approx(TAG_ETL)
    assert _group(body, "nightly") == _approx(TASK_A)
    assert _group(body, None) == _approx(TASK_C)  # the untagged task
    assert body["totals"] == _approx(TOTALS)

    tagged = await _report(reports, group_by="task", tag="nightly")
    assert [g["key"] for g in tagged["groups"]] == ["a"] and tagged["totals"] == _approx(TASK_A)
    none = await _report(reports, group_by="task", tag="no-such-tag")
    assert none["groups"] == [] and none["totals"] == _approx(_figures(0))


async def test_a_report_by_day_counts_days_in_the_time_zone_asked_for(reports: httpx.AsyncClient) -> None:
    body = await _report(reports, group_by="day")
    assert [g["key"] for g in body["groups"]] == ["2026-03-01", "2026-03-02"]
    assert _group(body, "2026-03-01") == _approx(UTC_DAY1)
    assert _group(body, "2026-03-02") == _approx(UTC_DAY2)

    # In Tokyo (UTC+9) the run of 2026-03-02 23:30 UTC falls on the 3rd.
    tokyo = await _report(reports, group_by="day", timezone="Asia/Tokyo")
    assert [g["key"] for g in tokyo["groups"]] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert _group(tokyo, "2026-03-01") == _approx(UTC_DAY1)
    assert _group(tokyo, "2026-03-02") == _approx(
        _figures(1, 1, missed=3, rate=1.0, duration=(400, 400, 400, 1), lateness=(0, 0, 0, 1))
    )
    assert _group(tokyo, "2026-03-03") == _approx(_figures(1, pending=1, lateness=(700, 700, 700, 1)))
    assert tokyo["totals"] == _approx(TOTALS)


async def test_a_csv_report_has_a_header_one_row_per_group_and_no_formulas(reports: httpx.AsyncClient) -> None:
    r = await reports.get("/v1/reports", params={**RANGE, "format": "csv"}, headers=auth(TENANT, ["viewer"]))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.endswith("\r\n")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == [
        "key", "name", "runs", "succeeded", "failed", "timed_out", "cancelled", "pending", "missed",
        "success_rate", "duration_p50_ms", "duration_p95_ms", "duration_max_ms",
        "lateness_p50_ms", "lateness_p95_ms", "lateness_max_ms",
    ]  # fmt: skip
    assert rows[1:] == [
        ["a", "'=SUM(A1)", "5", "3", "1", "1", "0", "0", "3", "0.6", "300", "5000", "5000", "1000", "3000", "3000"],
        ["b", 'loader, "fast"', "3", "1", "0", "0", "1", "1", "0", "1.0", "50", "50", "50", "250", "700", "700"],
        ["c", "plain", "1", "1", "0", "0", "0", "0", "1", "1.0", "10", "10", "10", "10", "10", "10"],
    ]
    # The name with a comma and quotes is quoted as RFC 4180 says.
    assert '"loader, ""fast"""' in r.text

    by_accept = await reports.get(
        "/v1/reports", params={**RANGE, "group_by": "tag"}, headers={**auth(TENANT, ["viewer"]), "Accept": "text/csv"}
    )
    assert by_accept.headers["content-type"].startswith("text/csv")
    tags = list(csv.reader(io.StringIO(by_accept.text)))
    assert [row[0] for row in tags[1:]] == ["etl", "nightly", ""]
    assert tags[1][2:10] == ["8", "4", "1", "1", "1", "1", "3", "0.666667"]


async def test_a_report_shows_only_the_callers_tenant(reports: httpx.AsyncClient) -> None:
    theirs = await _report(reports, OTHER, group_by="tag")
    assert [g["key"] for g in theirs["groups"]] == ["etl"]
    assert theirs["totals"] == _approx(
        _figures(1, failed=1, missed=50, rate=0.0, duration=(77_777,) * 3 + (1,), lateness=(77_777,) * 3 + (1,))  # type: ignore[arg-type]
    )
    assert theirs["executions_read"] == 2
    # The other tenant's task "c" does not exist for it; a tenant with nothing sees nothing.
    r = await reports.get("/v1/reports", params={**RANGE, "task_id": "c"}, headers=auth(OTHER, ["viewer"]))
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    empty = await _report(reports, "nobody-reports", group_by="day")
    assert empty["groups"] == [] and empty["totals"] == _approx(_figures(0)) and empty["executions_read"] == 0


async def test_stats_carry_the_report_figures_of_a_range_and_of_the_last_day(reports: httpx.AsyncClient) -> None:
    r = await reports.get("/v1/stats", params=RANGE, headers=auth(TENANT, ["viewer"]))
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["window"]["from"] == RANGE["from"] and stats["window"]["to"] == RANGE["to"]
    assert stats["window"]["figures"] == _approx(TOTALS)
    # The counters since the start are still there: every completion of the history, in range or not.
    done = stats["executions"]
    assert (done["succeeded"], done["failed"], done["timed_out"], done["cancelled"]) == (6, 3, 1, 1)

    recent = (await reports.get("/v1/stats", headers=auth(TENANT, ["viewer"]))).json()["window"]
    to = datetime.fromisoformat(recent["to"])
    assert to - datetime.fromisoformat(recent["from"]) == timedelta(hours=24)
    assert abs(datetime.now(UTC) - to) < timedelta(minutes=1)
    assert recent["figures"] == _approx(_figures(1, 1, rate=1.0, duration=(20, 20, 20, 1), lateness=(30, 30, 30, 1)))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"to": RANGE["to"]}, "from"),
        ({"from": RANGE["from"]}, "to"),
        ({**RANGE, "from": "2026-03-01T00:00:00"}, "from"),  # no offset: which zone?
        ({**RANGE, "from": "yesterday"}, "from"),
        ({"from": RANGE["to"], "to": RANGE["from"]}, "to"),
        ({"from": RANGE["from"], "to": RANGE["from"]}, "to"),
        ({"from": "2025-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "to"),  # 424 days
        ({"from": "0001-01-01T00:00:00+01:00", "to": "0001-01-02T00:00:00Z"}, "from"),  # before year 1 in UTC
        ({"from": "9999-12-31T00:00:00Z", "to": "9999-12-31T23:59:59-01:00"}, "to"),  # after year 9999 in UTC
        ({**RANGE, "group_by": "week"}, "group_by"),
        ({**RANGE, "timezone": "Mars/Olympus"}, "timezone"),
        ({**RANGE, "timezone": "Europe"}, "timezone"),  # a directory of the zone database
        ({**RANGE, "timezone": "../../etc/passwd"}, "timezone"),
        ({**RANGE, "format": "xml"}, "format"),
        ({**RANGE, "tag": "x" * 201}, "tag"),
    ],
)
async def test_bad_report_parameters_are_422s_naming_the_parameter(
    reports: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    r = await reports.get("/v1/reports", params=params, headers=auth(TENANT, ["viewer"]))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]]


@pytest.mark.parametrize(
    "params",
    [
        {"from": RANGE["to"], "to": RANGE["from"]},
        {"to": "0001-01-01T01:00:00Z"},  # 24 hours before it is no date
        {"to": "9999-12-31T23:59:59-01:00"},
    ],
)
async def test_stats_refuse_a_bad_window(reports: httpx.AsyncClient, params: dict[str, str]) -> None:
    r = await reports.get("/v1/stats", params=params, headers=auth(TENANT))
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["to"]


@pytest.mark.parametrize(
    "params",
    [
        {"from": "0001-01-01T00:00:00Z", "to": "0001-01-02T00:00:00+23:59"},
        {"from": "9999-12-30T00:00:00+02:00", "to": "9999-12-31T23:59:59.999999Z"},
    ],
)
async def test_the_first_and_last_days_there_are_make_empty_reports(
    reports: httpx.AsyncClient, params: dict[str, str]
) -> None:
    r = await reports.get("/v1/reports", params={**params, "group_by": "day"}, headers=auth(TENANT, ["viewer"]))
    assert r.status_code == 200, r.text
    assert r.json()["groups"] == [] and r.json()["totals"]["runs"] == 0


async def test_an_unknown_task_is_404_and_a_report_needs_a_token(reports: httpx.AsyncClient) -> None:
    r = await reports.get("/v1/reports", params={**RANGE, "task_id": "nope"}, headers=auth(TENANT, ["viewer"]))
    assert r.status_code == 404
    r = await reports.get("/v1/reports", params={**RANGE, "task_id": "bad id\n"}, headers=auth(TENANT, ["viewer"]))
    assert r.status_code == 404
    assert (await reports.get("/v1/reports", params=RANGE)).status_code == 401


async def test_a_range_holding_too_many_executions_is_refused(infra: Infra, names: Names, mongo_db: Db) -> None:
    await _write_history(mongo_db)
    async for running in _running(_settings(infra, names, report_max_executions=10)):
        r = await running.http.get("/v1/reports", params=RANGE, headers=auth(TENANT, ["viewer"]))
        assert r.status_code == 422, r.text
        assert {e["field"] for e in r.json()["errors"]} == {"from", "to"}
        # A narrower range (the first day: 7 executions and 1 missed range) is answered.
        narrow = {"from": RANGE["from"], "to": "2026-03-02T00:00:00Z"}
        r = await running.http.get("/v1/reports", params=narrow, headers=auth(TENANT, ["viewer"]))
        assert r.status_code == 200 and r.json()["totals"]["runs"] == 7


async def test_the_report_is_documented_in_openapi(reports: httpx.AsyncClient) -> None:
    spec = (await reports.get("/openapi.json")).json()
    get = spec["paths"]["/v1/reports"]["get"]
    params = {p["name"]: p for p in get["parameters"]}
    assert {"from", "to", "group_by", "timezone", "task_id", "tag", "format"} <= set(params)
    assert params["from"]["required"] and params["to"]["required"]
    assert all(params[name].get("description") for name in ("from", "to", "group_by", "timezone"))
    content = get["responses"]["200"]["content"]
    assert content["application/json"]["schema"]["$ref"].endswith("/ReportPublic")
    assert "text/csv" in content
    schemas = spec["components"]["schemas"]
    assert "window" in schemas["StatsWithWindow"]["properties"]
    # Every figure is described where a client reads the schema.
    for model in ("ReportPublic", "ReportFigures", "Percentiles"):
        fields = schemas[model]["properties"]
        undescribed = [f for f, s in fields.items() if not s.get("description")]
        assert undescribed == [], (model, undescribed)


async def test_a_report_of_runs_made_by_the_worker_and_folded_by_the_live_projector(api: Running) -> None:
    """The whole path: the API triggers runs, the session's worker runs them, its projector folds
    the events, and the report shows them (with durations and lateness the worker measured)."""
    http, tenant = api.http, new_tenant()
    admin = auth(tenant)
    began = datetime.now(UTC) - timedelta(seconds=5)
    ids: dict[str, str] = {}
    for name, work in (("ok", {"name": "sleep", "params": {"seconds": 0.2}}), ("bad", {"name": "fail"})):
        body = {"name": name, "work": {"kind": "handler", **work}, "tags": ["e2e"]}
        r = await http.post("/v1/tasks?wait=20", json=body, headers={**admin, "Idempotency-Key": name})
        assert r.status_code == 200, r.text
        ids[name] = r.json()["task_id"]
        r = await http.post(f"/v1/tasks/{ids[name]}/trigger?wait=20", headers=admin)
        assert r.status_code == 200, r.text
    params = {"from": began.isoformat(), "to": (datetime.now(UTC) + timedelta(minutes=1)).isoformat()}

    async def both_finished() -> dict[str, Any] | None:
        r = await http.get("/v1/reports", params={**params, "group_by": "task"}, headers=auth(tenant, ["viewer"]))
        assert r.status_code == 200, r.text
        totals = r.json()["totals"]
        return r.json() if totals["succeeded"] + totals["failed"] == 2 else None

    deadline = asyncio.get_running_loop().time() + 30
    report = await both_finished()
    while report is None:
        assert asyncio.get_running_loop().time() < deadline, "the two runs did not finish in 30 s"
        await asyncio.sleep(0.2)
        report = await both_finished()
    groups = {g["key"]: g for g in report["groups"]}
    ok, bad = groups[ids["ok"]], groups[ids["bad"]]
    assert (ok["name"], ok["runs"], ok["succeeded"], ok["success_rate"]) == ("ok", 1, 1, 1.0)
    assert ok["duration_ms"]["count"] == 1 and ok["duration_ms"]["p50"] >= 200
    assert (bad["runs"], bad["failed"], bad["success_rate"], bad["missed"]) == (1, 1, 0.0, 0)
    for group in (ok, bad):
        # Lateness: from the trigger (its scheduled time) to the worker's start.
        assert group["lateness_ms"]["count"] == 1 and 0 <= group["lateness_ms"]["p50"] < 30_000
    by_tag = await _report(http, tenant, **params, group_by="tag")
    [e2e] = by_tag["groups"]
    assert (e2e["key"], e2e["runs"], e2e["success_rate"]) == ("e2e", 2, 0.5)


async def test_reports_and_stats_are_503_while_the_views_are_unreachable(infra: Infra, names: Names) -> None:
    url = f"mongodb://127.0.0.1:{free_port()}/"
    async for running in _running(_settings(infra, names, mongo_url=url, mongo_timeout_ms=300)):
        for path in ("/v1/reports", "/v1/stats"):
            r = await running.http.get(path, params=RANGE, headers=auth(TENANT, ["viewer"]))
            assert r.status_code == 503, (path, r.text)
            assert r.headers["content-type"] == "application/problem+json" and int(r.headers["Retry-After"]) > 0
