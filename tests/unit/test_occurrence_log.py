"""The occurrence log (scheduler/occurrence_log.py, read from projections/occurrences.py): tables
of values for the fates and pages, and a property over random histories from the real decider:
every slot in the range exactly once, none unaccounted, and the log equals what was dispatched
and what was recorded missed."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.folds import ViewDocs, fold
from projections.occurrences import FACT_KINDS, SCHEDULE_KINDS, incarnation_seq, missed_fact, run_facts, segments
from scheduler import decision
from scheduler.occurrence_log import (
    Facts,
    MissedFact,
    Occurrence,
    Position,
    RunFact,
    ScheduledSlot,
    Segment,
    build,
    schedule_slots,
    window,
)
from scheduler.schedule import fire_at
from scheduler.state import TaskState
from schemas.commands import CreateTask, DeleteTask, Wake
from schemas.events import Event
from schemas.specs import HandlerWork, IntervalSchedule, OverlapPolicy, TaskDefinition
from tests.unit.test_decider_properties import definitions, draw_command
from tests.unit.unit_support import T0, cmd

MIN = timedelta(minutes=1)


def every(minutes: int, jitter: float = 0.0) -> TaskDefinition:
    return TaskDefinition(
        name="t",
        schedule=IntervalSchedule(every_seconds=minutes * 60, anchor=T0),
        work=HandlerWork(name="noop"),
        jitter_seconds=jitter,
    )


def segment(
    first: datetime | None = T0,
    handled: datetime | None = None,
    until: datetime | None = None,
    unhandled: str = "due",
    definition: TaskDefinition | None = None,
    seq: int = 1,
) -> Segment:
    return Segment(seq, "task-1", definition or every(1), T0, first, handled, until, unhandled)


def run(slot: datetime, reason: str = "schedule", status: str | None = "succeeded", ran: bool = True) -> RunFact:
    return RunFact(slot, f"ex-{slot:%H%M}-{reason}", reason, 1 if ran else 0, status, slot if ran else None)


def log(seg: Segment, facts: Facts, now: datetime, start: datetime = T0, end: datetime | None = None) -> list[Any]:
    page = window([seg], start, end or T0 + 10 * MIN, limit=1000)
    return [(o.slot, o.fate, o.reason, o.outcome) for o in build(page.slots, facts, now)]


# ---------------------------------------------------------------------------------------------
# Fates, as tables
# ---------------------------------------------------------------------------------------------

FATE_TABLE: list[tuple[str, Facts, Segment, datetime, tuple[Any, ...]]] = [
    ("ran and succeeded", Facts.of([run(T0)], []), segment(handled=T0), T0, ("fired", "schedule", "succeeded")),
    ("still running", Facts.of([run(T0, status=None)], []), segment(handled=T0), T0, ("fired", "schedule", "running")),
    (
        "buffered, waiting",
        Facts.of([run(T0, "buffered", None, ran=False)], []),
        segment(handled=T0),
        T0,
        ("buffered", "buffered", "waiting"),
    ),
    (
        "buffered, cancelled before it ran",
        Facts.of([run(T0, "buffered", "cancelled", ran=False)], []),
        segment(handled=T0),
        T0,
        ("buffered", "buffered", "cancelled"),
    ),
    (
        "missed, an open reason string",
        Facts.of([], [MissedFact(T0, T0, 1, "calendar", calendar="holidays")]),
        segment(handled=T0),
        T0,
        ("missed", "calendar", None),
    ),
    ("handled but nothing says how", Facts(), segment(handled=T0), T0, ("unaccounted", None, None)),
    ("due while paused", Facts(), segment(unhandled="paused"), T0, ("pending", "paused", None)),
    ("due, the worker has not got to it", Facts(), segment(), T0 + MIN, ("pending", "due", None)),
    ("ahead", Facts(), segment(), T0 - MIN, ("not_yet_due", None, None)),
    (
        "the task was deleted first",
        Facts(),
        segment(until=T0, unhandled="task_deleted"),
        T0,
        ("not_run", "task_deleted", None),
    ),
    (
        "a run for a new reason alone still explains the slot",
        Facts.of([run(T0, "replayed")], []),
        segment(handled=T0),
        T0,
        ("fired", "replayed", "succeeded"),
    ),
    (
        "a backfill never is the fate: a paused task's slot backfilled is still pending",
        Facts.of([run(T0, "backfill")], []),
        segment(unhandled="paused"),
        T0 + MIN,
        ("pending", "paused", None),
    ),
]


@pytest.mark.parametrize(
    ("facts", "seg", "now", "expected"), [r[1:] for r in FATE_TABLE], ids=[r[0] for r in FATE_TABLE]
)
def test_the_fate_of_a_slot(facts: Facts, seg: Segment, now: datetime, expected: tuple[Any, ...]) -> None:
    (first, *_) = log(seg, facts, now, end=T0 + timedelta(seconds=1))
    assert first == (T0, *expected)


def test_a_missed_slot_rerun_by_a_backfill_keeps_its_fate_and_lists_the_rerun() -> None:
    facts = Facts.of([run(T0, "backfill")], [MissedFact(T0, T0 + MIN, 2, "catch_up_skip")])
    (occurrence,) = build(window([segment(handled=T0 + MIN)], T0, T0 + MIN, limit=5).slots, facts, T0)
    assert (occurrence.fate, occurrence.reason) == ("missed", "catch_up_skip")
    assert [(r.reason, r.outcome) for r in occurrence.reruns] == [("backfill", "succeeded")]


def test_jitter_shows_when_the_slot_was_due_to_fire() -> None:
    jittered = segment(handled=T0, definition=every(1, jitter=30))
    (occurrence,) = build(window([jittered], T0, T0 + MIN, limit=5).slots, Facts.of([run(T0)], []), T0)
    assert occurrence.fire_at == fire_at("task-1", every(1, jitter=30), T0) and occurrence.fire_at != T0
    (plain,) = build(window([segment(handled=T0)], T0, T0 + MIN, limit=5).slots, Facts.of([run(T0)], []), T0)
    assert plain.fire_at is None


def test_a_dst_skipped_wall_time_from_the_slot_source_is_listed_once() -> None:
    """The log takes its slots from a source: one that knows DST notes plugs in."""

    def source(seg: Segment, start: datetime, end: datetime) -> Iterable[ScheduledSlot]:
        yield ScheduledSlot(T0, T0)
        yield ScheduledSlot(None, T0 + MIN, wall=datetime(2026, 3, 8, 2, 30), dst="skipped")
        yield ScheduledSlot(T0 + MIN, T0 + MIN, dst="shifted")

    page = window([segment(handled=T0 + MIN)], T0, T0 + 5 * MIN, limit=10, source=source)
    got = [(o.slot, o.fate, o.dst) for o in build(page.slots, Facts.of([run(T0), run(T0 + MIN)], []), T0)]
    assert got == [(T0, "fired", None), (None, "skipped_dst", "skipped"), (T0 + MIN, "fired", "shifted")]
    # Paged one at a time across the tie at T0 + 1 min, each occurrence still comes once.
    seen: list[tuple[datetime | None, str | None]] = []
    after: Position | None = None
    while True:
        page = window([segment(handled=T0 + MIN)], T0, T0 + 5 * MIN, limit=1, after=after, source=source)
        seen += [(o.slot, o.dst) for _, o in page.slots]
        if page.next is None:
            break
        after = page.next
    assert seen == [(T0, None), (None, "skipped"), (T0 + MIN, "shifted")]


def _cron_day(expression: str, day: datetime, **policy: str) -> tuple[Segment, datetime, datetime]:
    """A segment of a New York cron task over the local day ``day`` (its UTC bounds)."""
    from zoneinfo import ZoneInfo

    from schemas.specs import CronSchedule

    zone = ZoneInfo("America/New_York")
    start = day.replace(tzinfo=zone).astimezone(UTC)
    end = (day + timedelta(days=1)).replace(tzinfo=zone).astimezone(UTC)
    schedule = CronSchedule(expression=expression, timezone="America/New_York", **policy)  # type: ignore[arg-type]
    definition = TaskDefinition(name="t", schedule=schedule, work=HandlerWork(name="noop"))
    first = schedule_slots(Segment(1, "task-1", definition, start, start, None, None, "due"), start, end)
    return Segment(1, "task-1", definition, start, next(iter(first)).at, None, None, "due"), start, end


@pytest.mark.parametrize(
    ("expression", "day", "policy", "expected"),
    [
        # Spring forward: 02:30 does not exist. Shifted, it fires at 03:30 EDT; skipped, it is
        # listed as skipped_dst where it would have fired, and nothing fires.
        ("30 2 * * *", datetime(2026, 3, 8), {}, [("2026-03-08 02:30", "shifted", True)]),
        ("30 2 * * *", datetime(2026, 3, 8), {"dst_gap": "skip"}, [("2026-03-08 02:30", "skipped", False)]),
        # Fall back: 01:30 happens twice; "both" fires each, "second" lists the first unfired.
        (
            "30 1 * * *",
            datetime(2026, 11, 1),
            {"dst_repeat": "both"},
            [("2026-11-01 01:30", "first", True), ("2026-11-01 01:30", "second", True)],
        ),
        (
            "30 1 * * *",
            datetime(2026, 11, 1),
            {"dst_repeat": "second"},
            [("2026-11-01 01:30", "first", False), ("2026-11-01 01:30", "second", True)],
        ),
    ],
)
def test_the_default_source_lists_what_the_dst_policy_did(
    expression: str, day: datetime, policy: dict[str, str], expected: list[tuple[str, str, bool]]
) -> None:
    """With no source given, the log lists a cron task's wall times with their DST notes: a
    skipped or unfired wall time once, as ``skipped_dst`` with no slot, and each fired one as
    a slot of its own (never a fate invented for a time that had none)."""
    seg, start, end = _cron_day(expression, day, **policy)
    page = window([seg], start, end, limit=100)
    got = [
        (f"{o.wall:%Y-%m-%d %H:%M}", o.dst, o.slot is not None)
        for o in build(page.slots, Facts.of([], []), end)
        if o.dst is not None
    ]
    assert got == expected
    skipped = [o for o in build(page.slots, Facts.of([], []), end) if o.slot is None]
    assert all(o.fate == "skipped_dst" for o in skipped)


# ---------------------------------------------------------------------------------------------
# Segments and pages
# ---------------------------------------------------------------------------------------------


def test_segments_split_the_slots_where_an_update_took_over() -> None:
    old = segment(first=T0, handled=T0 + 2 * MIN, until=T0 + 2 * MIN)
    new = segment(first=T0 + 5 * MIN, handled=None, definition=every(5), seq=9)
    page = window([old, new], T0, T0 + 16 * MIN, limit=100)
    assert [(s.seq, o.slot) for s, o in page.slots] == [
        (1, T0),
        (1, T0 + MIN),
        (1, T0 + 2 * MIN),
        (9, T0 + 5 * MIN),
        (9, T0 + 10 * MIN),
        (9, T0 + 15 * MIN),
    ]


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 1000])
def test_pages_of_any_size_list_each_slot_once(limit: int) -> None:
    segs = [segment(first=T0, until=T0 + 9 * MIN), segment(first=T0 + 20 * MIN, definition=every(2), seq=5)]
    start, end = T0 + 3 * MIN, T0 + 31 * MIN
    whole = [o.slot for _, o in window(segs, start, end, limit=1000).slots]
    paged: list[datetime | None] = []
    after: Position | None = None
    pages = 0
    while True:
        page = window(segs, start, end, limit=limit, after=after)
        paged += [o.slot for _, o in page.slots]
        pages += 1
        if page.next is None:
            break
        after = page.next
    assert paged == whole and len(whole) == 7 + 6
    assert pages == -(-len(whole) // limit) or (len(whole) % limit == 0 and pages == len(whole) // limit + 1)


def test_a_page_draws_a_bounded_number_of_slots_from_a_huge_range() -> None:
    drawn = 0

    def counting(seg: Segment, start: datetime, end: datetime) -> Iterable[ScheduledSlot]:
        nonlocal drawn
        for occurrence in schedule_slots(seg, start, end):
            drawn += 1
            yield occurrence

    page = window([segment()], T0, datetime(2999, 1, 1, tzinfo=UTC), limit=50, source=counting)
    assert len(page.slots) == 50 and page.next is not None and drawn == 51


# ---------------------------------------------------------------------------------------------
# The property: random histories from the real decider, folded into the view, read back
# ---------------------------------------------------------------------------------------------


def fold_in_memory(events: list[Event]) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The task document and the occurrence documents (schedule, facts) the projector would
    write for ``events``, each batch of one event, documents held in memory."""
    task: dict[str, Any] | None = None
    docs: dict[str, dict[str, Any]] = {}
    for offset, event in enumerate(events):
        folded = fold(ViewDocs(tasks={event.task_id: task}), [(event, 0, offset)])
        task = folded.tasks.get(event.task_id, task)
        for doc in folded.occurrences.inserts:
            assert doc["_id"] not in docs, "an event new to its task makes new documents"
            docs[doc["_id"]] = doc
    assert task is not None
    schedule = [d for d in docs.values() if d["kind"] in SCHEDULE_KINDS]
    facts = [d for d in docs.values() if d["kind"] in FACT_KINDS]
    return task, schedule, facts


def read_log(events: list[Event], now: datetime, limit: int) -> list[Occurrence]:
    """The whole log of the task, paged ``limit`` at a time, as the API reads it."""
    task, schedule, fact_docs = fold_in_memory(events)
    since = incarnation_seq(schedule)
    mine = [d for d in fact_docs if d["seq"] >= since]
    facts = Facts.of(
        run_facts(d for d in mine if d["kind"] == "run"), (missed_fact(d) for d in mine if d["kind"] == "missed")
    )
    segs = segments(schedule, task)
    start, end = datetime(2020, 1, 1, tzinfo=UTC), now + timedelta(hours=6)
    out: list[Occurrence] = []
    after: Position | None = None
    while True:
        page = window(segs, start, end, limit=limit, after=after)
        out += build(page.slots, facts, now)
        if page.next is None:
            return out
        after = page.next


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_slot_once_and_the_log_equals_what_was_dispatched_and_missed(data: Any) -> None:
    state: TaskState | None = None
    history: list[Event] = []
    issued: list[Any] = [cmd(CreateTask, T0, definition=data.draw(definitions))]
    now = T0
    for i in range(data.draw(st.integers(3, 40))):
        due = state.next_fire_at if state is not None else None
        if i > 0 and due is not None and due > now and data.draw(st.booleans()):
            # The firing loop, on time: most slots of a healthy task run.
            now = due
            command = cmd(Wake, now, tenant=state.tenant if state is not None else "acme")
        else:
            now += timedelta(seconds=data.draw(st.sampled_from([0, 1, 30, 60, 300, 600, 3600, 6 * 3600])))
            command = issued[0] if i == 0 else draw_command(data, state, now, issued)
        issued.append(command)
        decided = decision(command, state)
        history += decided.events
        state = decided.state
    if not any(e.type == "TaskCreated" for e in history):
        return
    created = max(e.sequence for e in history if e.type == "TaskCreated")
    current = [e for e in history if e.sequence >= created]
    entries = read_log(history, now, limit=data.draw(st.sampled_from([1, 7, 1000])))

    # Every slot once, in order; nothing unaccounted.
    positions = [o.at for o in entries]
    assert positions == sorted(set(positions)), "a slot is listed twice or out of order"
    assert not [o for o in entries if o.fate == "unaccounted"], [o for o in entries if o.fate == "unaccounted"]

    # The runs in the log are exactly the slots dispatched or buffered, with their execution ids.
    runs = {
        e.slot: e.execution_id
        for e in current
        if (e.type == "ExecutionDispatched" and e.reason in ("schedule", "buffered")) or e.type == "ExecutionBuffered"
    }
    dispatched = {e.slot for e in current if e.type == "ExecutionDispatched" and e.reason in ("schedule", "buffered")}
    assert {o.slot: o.execution_id for o in entries if o.fate in ("fired", "buffered")} == runs
    assert {o.slot for o in entries if o.fate == "fired"} == dispatched

    # The missed slots in the log are exactly the recorded ranges, each with its count and reason.
    missed = [e for e in current if e.type == "SlotsMissed"]
    in_log = [o for o in entries if o.fate == "missed"]
    for event in missed:
        inside = [o for o in in_log if event.first_slot <= o.slot <= event.last_slot]  # type: ignore[operator]
        assert len(inside) == event.count and {o.reason for o in inside} == {event.reason}
    assert len(in_log) == sum(e.count for e in missed)

    # What is left was not handled: after the last handled slot, due or not.
    handled = {o.slot for o in entries if o.fate in ("fired", "buffered", "missed")}
    last = max(handled, default=None)
    for o in entries:
        if o.fate in ("pending", "not_yet_due", "not_run"):
            assert last is None or o.at > last, f"{o} is before the last handled slot {last}"


def test_a_delete_stamped_before_slots_the_worker_handled_keeps_them() -> None:
    """The API stamps a delete with its clock, the worker its ticks with another: a slot handled
    at a tick "later" than the delete still belongs to the log (found by the property below)."""
    state: TaskState | None = None
    history: list[Event] = []
    for command in (
        cmd(CreateTask, T0, definition={"name": "t", "schedule": {"kind": "cron", "expression": "*/10 * * * *"},
                                         "work": {"kind": "handler", "name": "noop"}}),
        cmd(Wake, T0 + 10 * MIN),
        cmd(DeleteTask, T0 + 5 * MIN),  # a clock five minutes behind the worker's
    ):  # fmt: skip
        decided = decision(command, state)
        history += decided.events
        state = decided.state
    entries = read_log(history, T0 + 10 * MIN, limit=10)
    assert [(o.slot, o.fate, o.outcome) for o in entries] == [(T0 + 10 * MIN, "fired", "cancelled")]


def test_a_recreated_task_shows_its_own_runs_not_those_of_the_task_deleted_before() -> None:
    """A one-shot at the same time, run, deleted and created again: the slot is the same, the
    executions are not (ids carry the incarnation), and the log shows the new one's."""
    once = {
        "name": "t",
        "schedule": {"kind": "once", "at": (T0 + MIN).isoformat()},
        "work": {"kind": "handler", "name": "noop"},
    }
    state: TaskState | None = None
    history: list[Event] = []
    for command in (
        cmd(CreateTask, T0, definition=once),
        cmd(Wake, T0 + MIN),
        cmd(DeleteTask, T0 + 2 * MIN),
        cmd(CreateTask, T0 + 3 * MIN, definition=once),
        cmd(Wake, T0 + 3 * MIN),
    ):
        decided = decision(command, state)
        history += decided.events
        state = decided.state
    dispatches = [e for e in history if e.type == "ExecutionDispatched"]
    assert len(dispatches) == 2 and dispatches[0].execution_id != dispatches[1].execution_id
    entries = read_log(history, T0 + 3 * MIN, limit=10)
    assert [(o.slot, o.fate, o.execution_id) for o in entries] == [(T0 + MIN, "fired", dispatches[1].execution_id)]


@pytest.mark.parametrize(
    ("overlap", "pending"),
    [(OverlapPolicy.SKIP, "held"), (OverlapPolicy.BUFFER_ONE, "held"), (OverlapPolicy.ALLOW_ALL, "due")],
)
def test_slots_due_while_an_execution_runs_are_held_under_skip_and_buffer_one(
    overlap: OverlapPolicy, pending: str
) -> None:
    definition = every(1).model_copy(update={"overlap": overlap})
    seg = segment(handled=T0, definition=definition)
    now = T0 + 2 * MIN + timedelta(seconds=1)
    assert log(seg, Facts.of([run(T0, status=None)], []), now, end=T0 + 4 * MIN) == [
        (T0, "fired", "schedule", "running"),
        (T0 + MIN, "pending", pending, None),
        (T0 + 2 * MIN, "pending", pending, None),
        (T0 + 3 * MIN, "not_yet_due", None, None),
    ]
    # Once the execution has ended, a slot not handled yet is only due (the worker is on it).
    assert log(seg, Facts.of([run(T0)], []), now, end=T0 + 2 * MIN)[1] == (T0 + MIN, "pending", "due", None)
