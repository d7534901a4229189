"""Overlap ``skip`` and ``buffer_one`` skip only for executions really running (issue 9).

A slot that comes due while an execution of the schedule's lane is in flight is held: left
undecided (``next_slot`` stays on it) until that execution ends. Its outcome decides the held
slots with the execution's start and ``finished_at``: fired within the run, the slot overlapped
(``skip``: missed ``overlap``; ``buffer_one``: the first is buffered); fired before the run started
or after it finished, the slot came due while nothing ran and is decided as a late slot (catch-up
policy, misfire grace). A held slot waits at most ``max(misfire_grace, HOLD_MIN_SECONDS)``.

The schedule here is an interval of 20 s from T0 (slots at 00:20, 00:40, 01:00 ... seconds), so
several slots fall inside one hold.
"""

from __future__ import annotations

import heapq
import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import decide, decision, evolve, next_wakeup
from scheduler.state import HOLD_MIN_SECONDS, TaskState, dump_state, load_state
from schemas.commands import (
    BackfillTask,
    CancelExecution,
    CreateTask,
    DeleteTask,
    PauseTask,
    ReportExecutionOutcome,
    ResumeTask,
    TriggerTask,
    UpdateTask,
    Wake,
)
from schemas.ids import execution_id_for_slot, execution_id_for_trigger
from tests.unit.test_calendar import cal
from tests.unit.unit_support import T0, TASK, assert_then, at, cmd, definition, fold, when

EVERY_20S = {"kind": "interval", "every_seconds": 20}
HOLD = timedelta(seconds=HOLD_MIN_SECONDS)


def s(seconds: float) -> datetime:
    """An instant (and, at multiples of 20, a slot) ``seconds`` after T0."""
    return at(seconds=seconds)


def xid(seconds: float) -> str:
    """The execution id of the slot ``seconds`` after T0."""
    return execution_id_for_slot(TASK, s(seconds))


def created(**overrides: Any) -> Any:
    return cmd(CreateTask, T0, definition=definition(schedule=EVERY_20S, **overrides))


def running_20(policy: str = "skip", *wakes: float, **overrides: Any) -> list[Any]:
    """The 00:20 slot dispatched, then a Wake at each of ``wakes`` seconds."""
    return [created(overlap=policy, **overrides), cmd(Wake, s(20)), *(cmd(Wake, s(w)) for w in wakes)]


def report(
    execution_id: str,
    status: str,
    *,
    started: float,
    finished: float,
    applied: float | None = None,
    attempt: int = 1,
) -> Any:
    """An outcome report: the attempt ran ``[started, finished]``; its command's ``at`` is
    ``applied`` (the executor sends ``finished_at``; a report read late keeps that ``at``)."""
    return cmd(
        ReportExecutionOutcome,
        s(applied if applied is not None else finished),
        execution_id=execution_id,
        attempt=attempt,
        worker="w1",
        status=status,
        error=None if status == "succeeded" else "HTTP 500",
        started_at=s(started),
        finished_at=s(finished),
    )


def dispatched(seconds: float, reason: str = "schedule") -> tuple[str, dict[str, Any]]:
    return ("ExecutionDispatched", {"execution_id": xid(seconds), "slot": s(seconds), "reason": reason})


def missed(first: float, reason: str, count: int = 1) -> tuple[str, dict[str, Any]]:
    return ("SlotsMissed", {"first_slot": s(first), "count": count, "reason": reason})


def completed(seconds: float, status: str = "succeeded") -> tuple[str, dict[str, Any]]:
    return ("ExecutionCompleted", {"execution_id": xid(seconds), "status": status})


def held_state(given: list[Any]) -> TaskState:
    state, _ = fold(given)
    assert state is not None
    return state


# ---------------------------------------------------------------------------------------------
# A slot due while in flight is held, not decided
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["skip", "buffer_one"])
def test_a_slot_due_while_in_flight_is_held_and_needs_no_wake_until_its_bound(policy: str) -> None:
    given = running_20(policy)
    state = held_state(given)
    events, after = when(given, cmd(Wake, s(40)))
    assert events == []
    assert after == state and state.next_slot == s(40)
    # The firing loop is not asked to wake it at 00:40, which would find nothing to do (and wake
    # it again): the outcome decides it, or the bound, whichever comes first.
    assert next_wakeup(state) == s(40) + HOLD


def test_the_bound_is_the_misfire_grace_when_larger() -> None:
    state = held_state(running_20("skip", misfire_grace_seconds=600))
    assert next_wakeup(state) == s(40) + timedelta(seconds=600)


@pytest.mark.parametrize("policy", ["allow_all", "cancel_other"])
def test_allow_all_and_cancel_other_are_unchanged(policy: str) -> None:
    events, _ = when(running_20(policy), cmd(Wake, s(40)))
    expected = [dispatched(40)] if policy == "allow_all" else [completed(20, "cancelled"), dispatched(40)]
    assert_then(events, expected)


# ---------------------------------------------------------------------------------------------
# The outcome decides the held slots
# ---------------------------------------------------------------------------------------------

OUTCOMES = [
    # Finished before 00:40 came due, the report applied after it (read late): 00:40 is not
    # decided by the report, whose time is before it; it is simply due, and runs at the next Wake.
    pytest.param(
        "skip", report(xid(20), "succeeded", started=21, finished=30), [completed(20)], id="skip-finished-before"
    ),
    pytest.param(
        "buffer_one",
        report(xid(20), "succeeded", started=21, finished=30),
        [completed(20)],
        id="buffer_one-finished-before",
    ),
    # The run started after 00:40 came due (its dispatch reached the executor late): 00:40 did
    # not overlap it and runs now, within the misfire grace (30 s).
    pytest.param(
        "skip",
        report(xid(20), "succeeded", started=45, finished=46),
        [completed(20), dispatched(40)],
        id="skip-started-after",
    ),
    pytest.param(
        "buffer_one",
        report(xid(20), "succeeded", started=45, finished=46),
        [completed(20), dispatched(40)],
        id="buffer_one-started-after",
    ),
    # Running when 00:40 came due: it overlapped, decided as before holding existed.
    pytest.param(
        "skip",
        report(xid(20), "succeeded", started=21, finished=50),
        [completed(20), missed(40, "overlap")],
        id="skip-finished-after",
    ),
    pytest.param(
        "buffer_one",
        report(xid(20), "succeeded", started=21, finished=50),
        [
            completed(20),
            ("ExecutionBuffered", {"execution_id": xid(40), "slot": s(40)}),
            dispatched(40, "buffered"),
        ],
        id="buffer_one-finished-after",
    ),
    # A failure with no retry left ends it the same way.
    pytest.param(
        "skip",
        report(xid(20), "failed", started=21, finished=50),
        [("AttemptFailed", {"retry_at": None}), completed(20, "failed"), missed(40, "overlap")],
        id="skip-failed-after",
    ),
    pytest.param(
        "skip",
        report(xid(20), "failed", started=45, finished=46),
        [("AttemptFailed", {"retry_at": None}), completed(20, "failed"), dispatched(40)],
        id="skip-failed-started-after",
    ),
]


@pytest.mark.parametrize(("policy", "outcome", "then"), OUTCOMES)
def test_the_outcome_decides_the_held_slot(policy: str, outcome: Any, then: list[Any]) -> None:
    given = running_20(policy, 40)
    events, _ = when(given, outcome)
    assert_then(events, then)
    # Decided with the outcome: the reason says it all.
    assert all(e.note is None for e in events if e.type == "SlotsMissed")


def test_a_slot_finished_before_runs_at_the_next_wake_not_missed() -> None:
    given = [*running_20("skip", 40), report(xid(20), "succeeded", started=21, finished=30)]
    state = held_state(given)
    assert next_wakeup(state) == s(40)  # no longer held: due at once
    events, _ = when(given, cmd(Wake, s(41)))
    assert_then(events, [dispatched(40)])


HELD_AFTER = [
    # 00:40, 01:00 and 01:20 held; the run started at 01:25 (dispatch lag), so none overlapped.
    # They cannot run together, nor one after the other without each waiting for the previous
    # outcome: the latest runs, the older ones are missed with the catch-up mode's reason.
    pytest.param({}, [completed(20), missed(40, "catch_up_run_once", 2), dispatched(80)], id="within-grace"),
    pytest.param(
        {"misfire_grace_seconds": 0},
        [completed(20), missed(40, "catch_up_run_once", 2), dispatched(80)],
        id="run_once-runs-the-latest",
    ),
    pytest.param(
        {"misfire_grace_seconds": 0, "catch_up": {"mode": "skip"}},
        [completed(20), missed(40, "catch_up_skip", 3)],
        id="catch-up-skip-runs-none",
    ),
    pytest.param(
        {"misfire_grace_seconds": 0, "catch_up": {"mode": "run_all", "max_runs": 2}},
        [completed(20), missed(40, "catch_up_limit", 2), dispatched(80)],
        id="run_all-runs-the-latest-one-at-a-time",
    ),
]


@pytest.mark.parametrize(("overrides", "then"), HELD_AFTER)
def test_held_slots_after_the_run_are_decided_by_the_catch_up_policy(
    overrides: dict[str, Any], then: list[Any]
) -> None:
    given = running_20("skip", 40, 60, 80, **overrides)
    events, _ = when(given, report(xid(20), "succeeded", started=85, finished=86))
    assert_then(events, then)


@pytest.mark.parametrize(
    ("policy", "then"),
    [
        pytest.param("skip", [missed(20, "catch_up_run_once", 2), dispatched(60)], id="skip"),
        pytest.param("buffer_one", [missed(20, "catch_up_run_once", 2), dispatched(60)], id="buffer_one"),
        pytest.param("allow_all", [dispatched(20), dispatched(40), dispatched(60)], id="allow_all"),
    ],
)
def test_several_slots_due_at_once_run_the_latest_one_at_a_time(policy: str, then: list[Any]) -> None:
    """00:20 (late), 00:40 and 01:00 (within the misfire grace) due at one wake, nothing in flight."""
    events, _ = when([created(overlap=policy)], cmd(Wake, s(65)))
    assert_then(events, then)


def test_overlapped_and_later_held_slots_in_one_outcome() -> None:
    """A report read late (``at`` after ``finished_at``): 00:40 overlapped the run, 01:00 came due
    after it ended and runs now."""
    given = running_20("skip", 40, 60)
    events, _ = when(given, report(xid(20), "succeeded", started=21, finished=45, applied=61))
    assert_then(events, [completed(20), missed(40, "overlap"), dispatched(60)])


def test_buffer_one_runs_the_buffered_slot_first_and_holds_the_later_one() -> None:
    given = running_20("buffer_one", 40, 60)
    events, state = when(given, report(xid(20), "succeeded", started=21, finished=45, applied=61))
    assert_then(
        events,
        [
            completed(20),
            ("ExecutionBuffered", {"execution_id": xid(40), "slot": s(40)}),
            dispatched(40, "buffered"),
        ],
    )
    # 01:00 came due before the buffered run started: held behind it, not missed.
    assert state is not None and state.next_slot == s(60) and list(state.in_flight) == [xid(40)]
    given.append(report(xid(20), "succeeded", started=21, finished=45, applied=61))
    events, _ = when(given, report(xid(40), "succeeded", started=62, finished=63))
    assert_then(events, [completed(40, "succeeded"), dispatched(60)])


@pytest.mark.parametrize(
    ("finished", "then"),
    [
        pytest.param(
            50, [completed(20), missed(40, "overlap"), ("TaskCompleted", {"reason": "end_reached"})], id="overlapped"
        ),
        pytest.param(21, [completed(20)], id="not-overlapped"),  # 00:40 is then due: the next Wake runs it
    ],
)
def test_the_last_slot_held_completes_the_task_once_decided(finished: float, then: list[Any]) -> None:
    given = running_20("skip", 40, end_at=s(40).isoformat())
    events, _ = when(given, report(xid(20), "succeeded", started=21, finished=finished))
    assert_then(events, then)


# ---------------------------------------------------------------------------------------------
# Retries, timeouts, manual runs, calendars
# ---------------------------------------------------------------------------------------------

RETRY = {"max_attempts": 2, "initial_backoff_seconds": 10, "jitter": 0}


def test_a_retry_keeps_the_slot_held_until_the_last_attempt_ends() -> None:
    given = running_20("skip", 40, retry=RETRY)
    events, state = when(given, report(xid(20), "failed", started=21, finished=42))
    assert_then(events, [("AttemptFailed", {"retry_at": s(52)})])
    assert state is not None and state.next_slot == s(40)
    assert next_wakeup(state) == s(52)  # the retry; the held slot needs no wake of its own
    given += [report(xid(20), "failed", started=21, finished=42), cmd(Wake, s(52))]
    # Between the attempts it was still running (waiting for its retry): 00:40 and 01:00 overlapped.
    events, _ = when(given, report(xid(20), "succeeded", started=53, finished=61, attempt=2))
    assert_then(events, [completed(20), missed(40, "overlap", 2)])


def test_a_timeout_decides_the_held_slots_as_overlapping() -> None:
    """No start was reported: the run counts from its scheduled time, and ends at the timeout."""
    given = running_20("skip", 40, timeout_seconds=30)
    events, _ = when(given, cmd(Wake, s(50)))  # deadline 00:50
    assert_then(events, [("AttemptFailed", {"timed_out": True}), completed(20, "timed_out"), missed(40, "overlap")])


def test_a_manual_run_holds_slots_and_its_outcome_decides_them() -> None:
    manual = execution_id_for_trigger(TASK, "t1")
    given = [created(overlap="skip"), cmd(TriggerTask, s(10), trigger_id="t1"), cmd(Wake, s(20))]
    assert held_state(given).next_slot == s(20)
    outcome = cmd(
        ReportExecutionOutcome,
        s(30),
        execution_id=manual,
        attempt=1,
        worker="w1",
        status="succeeded",
        started_at=s(11),
        finished_at=s(30),
    )
    events, _ = when(given, outcome)
    assert_then(events, [("ExecutionCompleted", {"execution_id": manual}), missed(20, "overlap")])


def test_backfill_executions_hold_no_slot() -> None:
    """A backfill runs in a lane of its own: its executions in flight neither hold a slot nor are
    what a slot's overlap is judged by."""
    backfill = cmd(BackfillTask, s(10), backfill_id="bf", from_=T0 - timedelta(hours=1), to=T0, max_concurrency=1)
    given = [created(overlap="skip"), backfill]
    state = held_state(given)
    assert state.backfill_in_flight and next_wakeup(state) == s(20)
    events, _ = when(given, cmd(Wake, s(20)))
    assert_then(events, [dispatched(20)])


def test_a_slot_a_calendar_excludes_is_not_held() -> None:
    calendar = cal("maint", ranges=[{"start": "2026-01-01T00:00:30", "end": "2026-01-01T00:00:50"}])
    state = held_state(running_20("skip", calendars=["maint"]))
    events = decision(cmd(Wake, s(40)), state, {"maint": calendar}).events
    assert_then(events, [("SlotsMissed", {"reason": "calendar", "calendar": "maint", "first_slot": s(40)})])


# ---------------------------------------------------------------------------------------------
# The bound
# ---------------------------------------------------------------------------------------------


def test_a_slot_held_past_the_bound_is_missed_for_overlap() -> None:
    bound = 40 + HOLD_MIN_SECONDS
    given = running_20("skip", 40, 60)
    events, _ = when(given, cmd(Wake, s(bound - 1)))
    assert events == []
    events, state = when(given, cmd(Wake, s(bound)))
    assert_then(events, [missed(40, "overlap")])
    assert events[0].note == f"held 120 s for the end of the execution in flight ({xid(20)}) and decided without it"
    assert state is not None and state.next_slot == s(60) and next_wakeup(state) == s(60) + HOLD
    # Waking exactly when next_wakeup says decides the next one, and so on: no spin, no loss.
    state = held_state(given)
    history: list[Any] = []
    for _ in range(3):
        wake_at = next_wakeup(state)
        assert wake_at is not None
        new = decide(cmd(Wake, wake_at), state)
        for event in new:
            state = evolve(state, event)  # type: ignore[assignment]
        history += new
    assert [(e.type, e.first_slot, e.reason) for e in history] == [
        ("SlotsMissed", s(40), "overlap"),
        ("SlotsMissed", s(60), "overlap"),
        ("SlotsMissed", s(80), "overlap"),
    ]


def test_buffer_one_buffers_the_first_slot_held_past_the_bound() -> None:
    bound = 60 + HOLD_MIN_SECONDS
    events, _ = when(running_20("buffer_one", 40, 60), cmd(Wake, s(bound)))
    assert_then(events, [("ExecutionBuffered", {"execution_id": xid(40)}), missed(60, "overlap")])


# ---------------------------------------------------------------------------------------------
# Pause, update, delete, cancel
# ---------------------------------------------------------------------------------------------


def test_a_paused_task_keeps_held_slots_for_the_catch_up_on_resume() -> None:
    given = [*running_20("skip", 40), cmd(PauseTask, s(41))]
    events, _ = when(given, report(xid(20), "succeeded", started=21, finished=50))
    assert_then(events, [completed(20)])  # a paused task decides no slot
    given += [report(xid(20), "succeeded", started=21, finished=50), cmd(ResumeTask, s(55))]
    events, _ = when(given, cmd(Wake, s(55)))
    assert_then(events, [dispatched(40)])  # within the misfire grace on resume


def test_resumed_while_still_running_the_slots_are_held_again() -> None:
    given = [*running_20("skip", 40), cmd(PauseTask, s(41)), cmd(ResumeTask, s(55)), cmd(Wake, s(55))]
    state = held_state(given)
    assert state.next_slot == s(40) and state.status == "active"
    events, _ = when(given, report(xid(20), "succeeded", started=21, finished=58))
    assert_then(events, [completed(20), missed(40, "overlap")])


def test_an_update_supersedes_held_slots() -> None:
    given = running_20("skip", 40)
    events, _ = when(given, cmd(UpdateTask, s(45), definition=definition(schedule=EVERY_20S)))
    assert_then(events, [missed(40, "superseded"), ("TaskUpdated", {"next_slot": s(60)})])


def test_a_delete_drops_held_slots_and_cancels_the_run() -> None:
    events, state = when(running_20("skip", 40), cmd(DeleteTask, s(45)))
    assert_then(events, [completed(20, "cancelled"), ("TaskDeleted", {})])
    assert state is not None and next_wakeup(state) is None


@pytest.mark.parametrize(
    ("policy", "then"),
    [
        pytest.param("skip", [completed(20, "cancelled"), missed(40, "overlap")], id="skip"),
        pytest.param(
            "buffer_one",
            [
                completed(20, "cancelled"),
                ("ExecutionBuffered", {"execution_id": xid(40)}),
                dispatched(40, "buffered"),
            ],
            id="buffer_one",
        ),
    ],
)
def test_cancelling_the_run_decides_held_slots_as_overlapping(policy: str, then: list[Any]) -> None:
    events, _ = when(running_20(policy, 40), cmd(CancelExecution, s(45), execution_id=xid(20)))
    assert_then(events, then)


# ---------------------------------------------------------------------------------------------
# Stored state
# ---------------------------------------------------------------------------------------------


def test_a_held_state_needs_no_new_field_and_round_trips() -> None:
    """A held slot is ``next_slot`` left where it is: states stored before holding existed load
    as they are, and a held state stores nothing they lack."""
    state = held_state(running_20("skip", 40))
    raw = dump_state(state)
    assert load_state(raw) == state
    assert set(TaskState.model_fields) >= set(__import__("json").loads(raw))


# ---------------------------------------------------------------------------------------------
# A simulated worker and executor with lag: overlap means "really running"
# ---------------------------------------------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from(["skip", "buffer_one"]),
    st.sampled_from([0, 30]),
    st.lists(st.tuples(st.floats(0, 15), st.floats(0.05, 45), st.floats(0, 15)), min_size=1, max_size=30),
)
def test_with_lagging_dispatch_and_reports_overlap_means_really_running(
    policy: str, grace: int, runs: list[tuple[float, float, float]]
) -> None:
    """A worker ticking every second and an executor whose dispatches arrive ``dispatch lag`` late,
    run ``duration`` and report ``report lag`` late (commands applied in the order they are
    produced). Then: executions never run at the same time; a slot missed ``overlap`` without a
    note fired while an execution was really running; a slot missed with a note was held for the
    whole bound; every slot is handled once, in order."""
    create = cmd(CreateTask, T0, definition=definition(schedule=EVERY_20S, overlap=policy, misfire_grace_seconds=grace))
    horizon = 400.0
    queue: list[tuple[float, int, Any]] = [(0.0, 0, create)]
    queue += [(float(t), t, cmd(Wake, s(t))) for t in range(1, int(horizon) + 1)]
    heapq.heapify(queue)
    order = itertools.count(10**6)
    state: TaskState | None = None
    history: list[Any] = []
    ran: dict[str, tuple[datetime, datetime]] = {}
    lags = iter(runs * 50)
    while queue:
        produced, _, command = heapq.heappop(queue)
        events = decide(command, state)
        for event in events:
            state = evolve(state, event)
        history += events
        for event in events:
            # Executions dispatched after the horizon stay in flight: the simulation stops.
            if event.type == "ExecutionDispatched" and event.attempt == 1 and produced <= horizon:
                dispatch_lag, duration, report_lag = next(lags)
                start = produced + dispatch_lag
                finish = start + duration
                ran[event.execution_id] = (s(start), s(finish))
                outcome = cmd(
                    ReportExecutionOutcome, s(finish), execution_id=event.execution_id, attempt=1, worker="w",
                    status="succeeded", started_at=s(start), finished_at=s(finish),
                )  # fmt: skip
                heapq.heappush(queue, (finish + report_lag, next(order), outcome))
    assert state is not None

    # Never two at once: the point of skip and buffer_one.
    intervals = sorted(ran.values())
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(intervals)), intervals

    # Every slot up to where the schedule stands was handled exactly once.
    handled: list[datetime] = []
    for event in history:
        if event.type == "SlotsMissed":
            slots = [event.first_slot + timedelta(seconds=20 * k) for k in range(event.count)]
            assert slots[-1] == event.last_slot
            handled += slots
            for slot in slots:
                if event.reason != "overlap":
                    continue
                if event.note is None:  # decided with an outcome: the slot fired during a run
                    assert any(start <= slot <= finish for start, finish in intervals), (slot, intervals)
                else:  # decided at the bound
                    assert slot + HOLD <= event.at
        elif event.type in ("ExecutionBuffered",) or (
            event.type == "ExecutionDispatched" and event.reason == "schedule"
        ):
            handled.append(event.slot)
    assert handled == sorted(handled) and len(handled) == len(set(handled))
    assert state.next_slot is not None and handled == [s(20 * k) for k in range(1, len(handled) + 1)]
    assert state.next_slot == s(20 * (len(handled) + 1))
