"""The report computation (:mod:`api.reports`) as tables of values: percentiles, rows, CSV."""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.reports import (
    CSV_COLUMNS,
    ReportBuilder,
    ReportGroup,
    TaskLabel,
    percentile,
    prefers_csv,
    report_csv,
    safe_cell,
)

T = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.5, None),
        ([7], 0.5, 7),
        ([7], 0.95, 7),
        ([1, 2, 3, 4], 0.5, 2),
        ([1, 2, 3, 4, 5], 0.5, 3),
        ([1, 2, 3, 4, 5], 0.95, 5),
        (list(range(1, 101)), 0.5, 50),
        (list(range(1, 101)), 0.95, 95),
        (list(range(1, 101)), 1.0, 100),
        (list(range(1, 21)), 0.95, 19),
    ],
)
def test_percentiles_are_by_nearest_rank(values: list[int], q: float, expected: int | None) -> None:
    assert percentile(values, q) == expected


@given(st.lists(st.integers(-(10**9), 10**9), min_size=1), st.sampled_from([0.5, 0.95, 1.0]))
def test_a_percentile_is_an_observed_value_with_at_least_that_share_at_or_below_it(values: list[int], q: float) -> None:
    ordered = sorted(values)
    p = percentile(ordered, q)
    assert p in ordered
    assert sum(v <= p for v in ordered) >= math.ceil(q * len(ordered))
    assert sum(v < p for v in ordered) < math.ceil(q * len(ordered))


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("nightly", "nightly"),
        ("a=1", "a=1"),
        (-5, -5),
        (0.5, 0.5),
    ],
)
def test_text_a_spreadsheet_would_run_as_a_formula_is_prefixed(cell: Any, expected: Any) -> None:
    assert safe_cell(cell) == expected


def test_csv_quotes_as_rfc_4180_and_reads_back_cell_for_cell() -> None:
    group = ReportGroup(key="t-1", name='say "hi",\nthen -go', runs=2, succeeded=1, failed=1, success_rate=0.5)
    text = report_csv([group])
    assert text.startswith(",".join(CSV_COLUMNS) + "\r\n")
    assert '"say ""hi"",\nthen -go"' in text
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[1][:4] == ["t-1", 'say "hi",\nthen -go', "2", "1"]
    assert rows[1][9] == "0.5" and rows[1][10:] == [""] * 6  # nothing observed: empty cells


def _doc(**fields: Any) -> dict[str, Any]:
    base = {"task_id": "acme/a", "tenant": "acme", "status": "succeeded", "scheduled_for": T}
    return base | fields


def test_the_builder_counts_only_its_tenant_and_rows_it_can_place() -> None:
    labels = {"acme/a": TaskLabel("a", "A", ("x",))}
    b = ReportBuilder("acme", "task", ZoneInfo("UTC"), labels)
    b.add(_doc(started_at=T + timedelta(seconds=2), duration_ms=30))
    b.add(_doc(tenant="evil", duration_ms=99))  # another tenant's: never counted
    b.add(_doc(scheduled_for=None))  # cannot be placed in time
    b.add(_doc(status="skipped", missed_count=None))  # a missed range without a count: one slot
    b.add(_doc(status="skipped", missed_count=0))  # nor a run, whatever its count says
    b.add(_doc(status="running", started_at=(T + timedelta(seconds=1)).replace(tzinfo=None)))  # naive is UTC
    b.add(_doc(status="cancelled", duration_ms=None))
    assert b.read == 7
    totals = b.totals()
    assert (totals.runs, totals.succeeded, totals.pending, totals.cancelled, totals.missed) == (3, 1, 1, 1, 2)
    assert totals.success_rate == 1.0
    assert (totals.duration_ms.max, totals.duration_ms.count) == (30, 1)
    assert (totals.lateness_ms.p50, totals.lateness_ms.max, totals.lateness_ms.count) == (1000, 2000, 2)
    [group] = b.groups()
    assert (group.key, group.name, group.runs) == ("a", "A", 3)


def test_the_builder_files_a_task_it_has_no_label_for_under_its_public_id() -> None:
    b = ReportBuilder("acme", "task", ZoneInfo("UTC"), {})
    b.add(_doc(task_id="acme/gone"))
    assert [(g.key, g.name) for g in b.groups()] == [("gone", None)]
    by_tag = ReportBuilder("acme", "tag", ZoneInfo("UTC"), {})
    by_tag.add(_doc(task_id="acme/gone"))
    assert [g.key for g in by_tag.groups()] == [None]


def test_days_follow_the_zone_across_a_dst_change() -> None:
    # Europe/London moves to summer time on 2026-03-29 at 01:00 UTC.
    b = ReportBuilder("acme", "day", ZoneInfo("Europe/London"), {})
    for hour in (23, 24, 47):  # 23:00 and 00:00 GMT on the 28th/29th, 00:00 BST on the 30th
        b.add(_doc(scheduled_for=datetime(2026, 3, 28, tzinfo=UTC) + timedelta(hours=hour)))
    assert [(g.key, g.runs) for g in b.groups()] == [("2026-03-28", 1), ("2026-03-29", 1), ("2026-03-30", 1)]


@pytest.mark.parametrize(
    ("accept", "csv_wanted"),
    [
        (None, False),
        ("", False),
        ("text/csv", True),
        ("TEXT/CSV; charset=utf-8", True),
        ("text/*", True),
        ("application/json", False),
        ("*/*", False),  # a tie goes to JSON
        ("text/csv, application/json", False),
        ("application/json;q=0.5, text/csv", True),
        ("text/csv;q=0.1, */*", False),
        ("text/csv;q=0", False),
        ("text/csv;q=nope", False),
        (",,;;q=", False),
    ],
)
def test_the_accept_header_picks_csv_only_when_it_ranks_it_above_json(accept: str | None, csv_wanted: bool) -> None:
    assert prefers_csv(accept) is csv_wanted
