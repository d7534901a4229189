"""The views as pure folds, tested as tables of values: (document, event) -> document."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from projections.folds import (
    Doc,
    TaskFacts,
    ViewDocs,
    evolve_execution,
    evolve_stats,
    evolve_task,
    fold,
    stats_delta,
    stats_id,
    touched,
)
from schemas.events import Event
from tests.projections.history import T0, TaskHistory

SLOT = T0 + timedelta(minutes=1)


def story() -> tuple[TaskHistory, str]:
    """created(1), dispatched(2), started(3), completed(4), paused(5), manual dispatch(6), rejected(7)."""
    h = TaskHistory("t1")
    h.created()
    ex_id, _ = h.dispatched(SLOT, next_slot=SLOT + timedelta(minutes=1))
    h.started(ex_id)
    h.finished(ex_id)
    h.paused()
    h.dispatched(None, reason="manual", trigger="m1")
    h.rejected()
    return h, ex_id


def task_after(events: list[Event]) -> Doc | None:
    doc: Doc | None = None
    for event in events:
        doc = evolve_task(doc, event)
    return doc


H, EX = story()
E = H.events


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (0, None),
        (1, {"status": "active", "version": 1, "counters.runs": 0, "counters.scheduled_runs": 0, "last_slot": None}),
        (2, {"version": 2, "counters.runs": 1, "counters.scheduled_runs": 1, "last_slot": SLOT,
             "next_run": SLOT + timedelta(minutes=1)}),
        (4, {"version": 4, "last_status": "succeeded", "counters.succeeded": 1, "duration.count": 1,
             "duration.max_ms": 40}),
        (5, {"status": "paused", "version": 5, "paused_note": "maintenance"}),
        (6, {"status": "paused", "counters.runs": 2, "counters.scheduled_runs": 1, "last_run.reason": "manual"}),
        (7, {"version": 7, "counters.rejected": 1, "last_rejection.command_type": "PauseTask"}),
    ],
)  # fmt: skip
def test_the_task_fold(prefix: int, expected: dict[str, Any] | None) -> None:
    doc = task_after(E[:prefix])
    if expected is None:
        assert doc is None
        return
    assert doc is not None
    for path, value in expected.items():
        node: Any = doc
        for part in path.split("."):
            node = node[part]
        assert node == value, path


@pytest.mark.parametrize("index", range(len(E)))
def test_an_event_already_folded_in_leaves_the_task_as_it_is(index: int) -> None:
    doc = task_after(E)
    assert evolve_task(doc, E[index]) is doc


def test_events_of_a_task_never_created_make_no_task() -> None:
    assert evolve_task(None, E[6]) is None  # the rejection
    assert evolve_task(None, E[1]) is None  # a dispatch


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], None),
        ([2], None),  # started without a dispatch: nothing
        ([1], {"status": "scheduled", "version": 2, "started_at": None, "timeline": ["scheduled"]}),
        ([1, 2], {"status": "running", "version": 3, "started_at": E[2].at, "timeline": ["scheduled", "running"]}),
        ([1, 2, 3], {"status": "succeeded", "version": 4, "timeline": ["scheduled", "running", "succeeded"]}),
        ([1, 2, 3, 2, 1], {"status": "succeeded", "version": 4, "timeline": ["scheduled", "running", "succeeded"]}),
    ],
)
def test_the_execution_fold(events: list[int], expected: dict[str, Any] | None) -> None:
    doc: Doc | None = None
    for i in events:
        doc = evolve_execution(doc, E[i], "http")
    if expected is None:
        assert doc is None
        return
    assert doc is not None and doc["_id"] == EX
    for key, value in expected.items():
        got = [t["status"] for t in doc["timeline"]] if key == "timeline" else doc[key]
        assert got == value, key


ACTIVE = TaskFacts("acme", "active", "http", 1)


@pytest.mark.parametrize(
    ("index", "prior", "delta"),
    [
        (0, None, {"tasks.active": 1, "tasks_by_type.http": 1}),
        (1, ACTIVE, {"executions.dispatched": 1, "by_type.http.executions.dispatched": 1,
                     "executions.in_flight": 1, "by_type.http.executions.in_flight": 1}),
        (2, ACTIVE, {}),
        (3, ACTIVE, {"executions.succeeded": 1, "by_type.http.executions.succeeded": 1,
                     "executions.in_flight": -1, "by_type.http.executions.in_flight": -1,
                     "by_type.http.duration.buckets.le_50": 1, "by_type.http.duration.sum_ms": 40,
                     "by_type.http.duration.count": 1}),
        (4, ACTIVE, {"tasks.active": -1, "tasks.paused": 1}),
        (6, ACTIVE, {}),
    ],
)  # fmt: skip
def test_the_stats_delta(index: int, prior: TaskFacts | None, delta: dict[str, int]) -> None:
    assert stats_delta(E[index], prior) == delta


def test_stats_skip_an_offset_already_counted() -> None:
    doc = evolve_stats(None, E[0], 0, 10, None)
    assert doc is not None and doc["offset"] == 10 and doc["tasks"] == {"active": 1}
    assert evolve_stats(doc, E[1], 0, 10, ACTIVE) is doc
    later = evolve_stats(doc, E[1], 0, 11, ACTIVE)
    assert later is not None and later["offset"] == 11 and later["executions"]["dispatched"] == 1


def test_a_batch_folds_into_each_document_once_and_counts_copies_never() -> None:
    items = [(e, 0, i) for i, e in enumerate(E[:4])]
    keys = touched(items)
    assert keys.tasks == {"t1"} and keys.executions == {EX} and keys.stats == {stats_id("acme", 0)}
    out = fold(ViewDocs(), items)
    assert (len(out.tasks), len(out.executions), len(out.stats), len(out.audit)) == (1, 1, 1, 4)
    assert out.executions[EX]["status"] == "succeeded" and out.tasks["t1"]["version"] == 4
    counted = out.stats[stats_id("acme", 0)]
    assert counted["executions"]["succeeded"] == 1 and counted["executions"]["in_flight"] == 0
    # A new owner re-sends the last events at later offsets: nothing changes but the audit (same ids).
    state = ViewDocs(tasks=dict(out.tasks), executions=dict(out.executions), stats=dict(out.stats))
    copies = fold(state, [(e, 0, 100 + i) for i, e in enumerate(E[1:4])])
    assert (copies.tasks, copies.executions, copies.stats) == ({}, {}, {})
    assert [a["_id"] for a in copies.audit] == [e.event_id for e in E[1:4]]
