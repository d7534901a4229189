"""Given events, when a command, then events: the decider's behaviour as tables."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import scheduler.decider as decider_module
from scheduler import decide, evolve, next_wakeup
from scheduler.retry import backoff
from scheduler.schedule import jitter_offset
from schemas.commands import (
    CancelExecution,
    CreateTask,
    DeleteTask,
    PauseTask,
    ReportExecutionOutcome,
    ReportExecutionStarted,
    ResumeTask,
    TriggerTask,
    UpdateTask,
    Wake,
)
from schemas.events import (
    ExecutionDispatched,
    TaskCreated,
    TaskDeleted,
    TaskPaused,
)
from schemas.ids import event_id, execution_id_for_slot, execution_id_for_trigger
from schemas.specs import TOLERANT, RetryPolicy, TaskDefinition
from tests.unit.unit_support import T0, TASK, TENANT, assert_then, at, cmd, definition, e, fold, when

DEF = definition()
CREATED = e(TaskCreated, definition=TaskDefinition(**DEF), revision=1, next_slot=at(10), next_fire_at=at(10))
SLOT10 = execution_id_for_slot(TASK, at(10))
SLOT20 = execution_id_for_slot(TASK, at(20))


def created(**overrides: Any) -> Any:
    """A CreateTask at T0 with a modified definition (decided as part of the given history)."""
    return cmd(CreateTask, T0, definition=definition(**overrides))


def dispatched_10(**overrides: Any) -> Any:
    """The 00:10 slot dispatched (given as an event)."""
    fields: dict[str, Any] = {
        "execution_id": SLOT10,
        "attempt": 1,
        "reason": "schedule",
        "slot": at(10),
        "priority": "normal",
        "work": DEF["work"],
        "scheduled_for": at(10),
        "deadline": at(70),
    }
    fields.update(overrides)
    return e(ExecutionDispatched, at(10), **fields)


def outcome(execution_id: str, attempt: int, status: str, when_: Any, **kw: Any) -> Any:
    return cmd(
        ReportExecutionOutcome,
        when_,
        execution_id=execution_id,
        attempt=attempt,
        worker="w1",
        status=status,
        started_at=kw.pop("started_at", at(10, seconds=1)),
        finished_at=kw.pop("finished_at", when_),
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# Task lifecycle
# ---------------------------------------------------------------------------------------------

LIFECYCLE = [
    pytest.param(
        [],
        cmd(CreateTask, T0, definition=DEF),
        [("TaskCreated", {"revision": 1, "next_slot": at(10), "next_fire_at": at(10), "sequence": 1})],
        id="create-first-slot-after-at",
    ),
    pytest.param(
        [],
        cmd(CreateTask, T0, definition=definition(start_at=at(hours=2))),
        [("TaskCreated", {"next_slot": at(hours=2)})],
        id="create-start-at-is-inclusive",
    ),
    pytest.param(
        [],
        cmd(CreateTask, T0, definition=definition(schedule={"kind": "interval", "every_seconds": 90})),
        [("TaskCreated", {"next_slot": at(seconds=90)})],
        id="create-interval-anchored-at-creation",
    ),
    pytest.param(
        [],
        cmd(
            CreateTask,
            T0,
            definition=definition(schedule={"kind": "interval", "every_seconds": 90}, start_at=at(hours=1)),
        ),
        [("TaskCreated", {"next_slot": at(hours=1)})],
        id="create-interval-anchored-at-start",
    ),
    pytest.param(
        [],
        cmd(CreateTask, at(hours=1), definition=definition(end_at=at(30))),
        [("TaskCreated", {"next_slot": None}), ("TaskCompleted", {"reason": "end_reached"})],
        id="create-with-end-in-the-past-completes",
    ),
    pytest.param(
        [],
        cmd(
            CreateTask,
            T0,
            definition=definition(schedule={"kind": "once", "at": at(5).isoformat()}, start_at=at(10)),
        ),
        [("CommandRejected", {"field": "definition.schedule.at", "command_type": "CreateTask"})],
        id="create-once-before-start-rejected",
    ),
    pytest.param(
        [CREATED],
        cmd(CreateTask, T0, definition=DEF),
        [("CommandRejected", {"reason": "task already exists", "field": "task_id", "sequence": 2})],
        id="create-conflict",
    ),
    pytest.param(
        [CREATED, e(TaskDeleted)],
        cmd(CreateTask, at(5), definition=DEF),
        [("TaskCreated", {"revision": 2, "next_slot": at(10), "sequence": 3})],
        id="create-after-delete",
    ),
    pytest.param(
        [CREATED],
        cmd(UpdateTask, at(5), definition=definition(schedule={"kind": "cron", "expression": "0 * * * *"})),
        [("TaskUpdated", {"revision": 2, "next_slot": at(60)})],
        id="update-recomputes-from-at",
    ),
    pytest.param(
        [CREATED],
        cmd(UpdateTask, at(5), definition=DEF, expected_revision=7),
        [("CommandRejected", {"field": "expected_revision"})],
        id="update-revision-conflict",
    ),
    pytest.param(
        [CREATED],
        cmd(UpdateTask, at(5), definition=DEF, expected_revision=1),
        [("TaskUpdated", {"revision": 2})],
        id="update-revision-match",
    ),
    pytest.param(
        [CREATED, e(TaskPaused, at(5), revision=2)],
        cmd(UpdateTask, at(45), definition=definition(schedule={"kind": "cron", "expression": "0 * * * *"})),
        [
            (
                "SlotsMissed",
                {"reason": "superseded", "first_slot": at(10), "last_slot": at(40), "count": 4},
            ),
            ("TaskUpdated", {"revision": 3, "next_slot": at(60)}),
        ],
        id="update-while-paused-records-superseded-slots",
    ),
    pytest.param(
        [CREATED],
        cmd(PauseTask, at(5), note="maintenance"),
        [("TaskPaused", {"note": "maintenance", "revision": 2})],
        id="pause",
    ),
    pytest.param([CREATED, e(TaskPaused, revision=2)], cmd(PauseTask, at(5)), [], id="pause-idempotent"),
    pytest.param(
        [CREATED, e(TaskPaused, revision=2)],
        cmd(ResumeTask, at(5)),
        [("TaskResumed", {"revision": 3})],
        id="resume",
    ),
    pytest.param([CREATED], cmd(ResumeTask, at(5)), [], id="resume-idempotent"),
    pytest.param(
        [created(schedule={"kind": "once", "at": at(5).isoformat()}), cmd(Wake, at(5))],
        cmd(PauseTask, at(6)),
        [("CommandRejected", {"reason": "task is completed"})],
        id="pause-completed-rejected",
    ),
    pytest.param([CREATED], cmd(DeleteTask, at(5)), [("TaskDeleted", {})], id="delete"),
    pytest.param(
        [CREATED, dispatched_10()],
        cmd(DeleteTask, at(11)),
        [("ExecutionCompleted", {"status": "cancelled", "execution_id": SLOT10}), ("TaskDeleted", {})],
        id="delete-cancels-in-flight",
    ),
    pytest.param([CREATED, e(TaskDeleted)], cmd(DeleteTask, at(5)), [], id="delete-repeated"),
    pytest.param([], cmd(DeleteTask, at(5)), [("CommandRejected", {"reason": "task not found"})], id="delete-missing"),
]

NOT_FOUND = [("CommandRejected", {"reason": "task not found", "field": "task_id"})]
MISSING = [
    pytest.param([], cmd(PauseTask, at(1)), NOT_FOUND, id="pause-missing"),
    pytest.param([], cmd(UpdateTask, at(1), definition=DEF), NOT_FOUND, id="update-missing"),
    pytest.param([], cmd(TriggerTask, at(1), trigger_id="x"), NOT_FOUND, id="trigger-missing"),
    pytest.param([CREATED, e(TaskDeleted)], cmd(TriggerTask, at(1), trigger_id="x"), NOT_FOUND, id="trigger-deleted"),
    pytest.param([], cmd(CancelExecution, at(1), execution_id="x"), NOT_FOUND, id="cancel-missing"),
    pytest.param([CREATED, e(TaskDeleted)], cmd(ResumeTask, at(1)), NOT_FOUND, id="resume-deleted"),
    pytest.param([], cmd(Wake, at(1)), [], id="wake-missing-is-silent"),
    pytest.param([CREATED, e(TaskDeleted)], cmd(Wake, at(20)), [], id="wake-deleted-is-silent"),
    pytest.param(
        [],
        outcome(SLOT10, 1, "succeeded", at(11)),
        [],
        id="outcome-missing-is-silent",
    ),
]

OTHER_TENANT = [
    pytest.param(cmd(PauseTask, at(1), tenant="evil"), id="pause"),
    pytest.param(cmd(ResumeTask, at(1), tenant="evil"), id="resume"),
    pytest.param(cmd(UpdateTask, at(1), tenant="evil", definition=DEF), id="update"),
    pytest.param(cmd(DeleteTask, at(1), tenant="evil"), id="delete"),
    pytest.param(cmd(TriggerTask, at(1), tenant="evil", trigger_id="t"), id="trigger"),
    pytest.param(cmd(CancelExecution, at(1), tenant="evil", execution_id=SLOT10), id="cancel"),
    pytest.param(cmd(Wake, at(11), tenant="evil"), id="wake"),
]


@pytest.mark.parametrize(("given", "command", "then"), LIFECYCLE + MISSING)
def test_lifecycle(given: list[Any], command: Any, then: list[tuple[str, dict[str, Any]]]) -> None:
    events, _ = when(given, command)
    assert_then(events, then)


@pytest.mark.parametrize("command", OTHER_TENANT)
def test_other_tenant_sees_task_not_found(command: Any) -> None:
    events, state = when([CREATED, dispatched_10()], command)
    assert_then(events, NOT_FOUND)
    assert events[0].tenant == "evil"  # the rejection belongs to the requester, not the task owner
    assert state is not None and state.tenant == TENANT and state.status == "active"


# A task id "<tenant>/<id>" names its tenant: a command naming another tenant is rejected,
# creation included (issue 11: tenant B aimed commands at tenant A's tasks).
OWNED = f"{TENANT}/t1"
MISMATCH = [("CommandRejected", {"reason": decider_module.TENANT_MISMATCH, "field": "tenant", "tenant": "evil"})]
OWNED_CREATED = [cmd(CreateTask, T0, task_id=OWNED, definition=DEF)]
PREFIX_MISMATCH = [
    pytest.param([], cmd(CreateTask, T0, task_id=OWNED, tenant="evil", definition=DEF), id="create-in-other-namespace"),
    pytest.param(
        [*OWNED_CREATED, cmd(DeleteTask, at(1), task_id=OWNED)],
        cmd(CreateTask, at(2), task_id=OWNED, tenant="evil", definition=DEF),
        id="re-create-deleted",
    ),
    pytest.param(OWNED_CREATED, cmd(PauseTask, at(1), task_id=OWNED, tenant="evil", note="B"), id="pause"),
    pytest.param(OWNED_CREATED, cmd(UpdateTask, at(1), task_id=OWNED, tenant="evil", definition=DEF), id="update"),
    pytest.param(OWNED_CREATED, cmd(DeleteTask, at(1), task_id=OWNED, tenant="evil"), id="delete"),
    pytest.param(OWNED_CREATED, cmd(TriggerTask, at(1), task_id=OWNED, tenant="evil", trigger_id="t"), id="trigger"),
    pytest.param(OWNED_CREATED, cmd(Wake, at(11), task_id=OWNED, tenant="evil"), id="wake"),
    pytest.param(
        OWNED_CREATED,
        cmd(
            ReportExecutionOutcome,
            at(11),
            task_id=OWNED,
            tenant="evil",
            execution_id="x",
            attempt=1,
            worker="w",
            status="succeeded",
            started_at=at(10),
            finished_at=at(11),
        ),
        id="report-outcome",
    ),
    pytest.param([], cmd(PauseTask, at(1), task_id=OWNED, tenant="evil"), id="pause-missing"),
]


@pytest.mark.parametrize(("given", "command"), PREFIX_MISMATCH)
def test_command_of_another_tenant_than_the_task_id_names_is_rejected(given: list[Any], command: Any) -> None:
    before, _ = fold(given)
    events, state = when(given, command)
    assert_then(events, MISMATCH)
    # Nothing but the rejection: the owner's task is as it was, still its tenant's.
    if before is not None:
        assert state is not None
        assert (state.tenant, state.status, state.revision) == (before.tenant, before.status, before.revision)


def test_command_of_the_tenant_the_task_id_names_is_applied() -> None:
    events, state = when(OWNED_CREATED, cmd(PauseTask, at(1), task_id=OWNED, note="ok"))
    assert_then(events, [("TaskPaused", {"note": "ok"})])
    assert state is not None and state.tenant == TENANT


def test_ids_without_a_tenant_prefix_keep_the_state_tenant_rule() -> None:
    assert decider_module.tenant_owns("acme", "acme/x") and decider_module.tenant_owns("evil", "no-prefix")
    assert not decider_module.tenant_owns("evil", "acme/x")


def test_repeated_command_id_yields_nothing() -> None:
    pause = cmd(PauseTask, at(1))
    events, _ = when([CREATED, pause, cmd(ResumeTask, at(2))], pause)
    assert events == []


def test_create_is_idempotent_for_the_same_command() -> None:
    create = cmd(CreateTask, T0, definition=DEF)
    events, _ = when([create], create)
    assert events == []


def test_paused_update_stays_paused() -> None:
    _, state = when([CREATED, e(TaskPaused, revision=2)], cmd(UpdateTask, at(1), definition=DEF))
    assert state is not None and state.status == "paused" and state.revision == 3


def test_update_reactivates_a_completed_task() -> None:
    once = {"kind": "once", "at": at(5).isoformat()}
    given = [created(schedule=once), cmd(Wake, at(5))]
    events, state = when(
        given, cmd(UpdateTask, at(6), definition=definition(schedule=once | {"at": at(30).isoformat()}))
    )
    assert_then(events, [("TaskUpdated", {"next_slot": at(30)})])
    assert state is not None and state.status == "active"


# ---------------------------------------------------------------------------------------------
# Firing: on time, grace, catch-up
# ---------------------------------------------------------------------------------------------


def run_slot(minute: int) -> tuple[str, dict[str, Any]]:
    return ("ExecutionDispatched", {"reason": "schedule", "slot": at(minute), "attempt": 1})


FIRING = [
    pytest.param(
        [CREATED],
        cmd(Wake, at(10, seconds=2)),
        [
            (
                "ExecutionDispatched",
                {
                    "execution_id": SLOT10,
                    "reason": "schedule",
                    "slot": at(10),
                    "scheduled_for": at(10),
                    "deadline": at(10, seconds=2) + timedelta(hours=1),
                    "trigger_id": None,
                },
            )
        ],
        id="on-time",
    ),
    pytest.param([CREATED], cmd(Wake, at(9, seconds=59)), [], id="not-yet-due"),
    pytest.param([CREATED, cmd(Wake, at(10))], cmd(Wake, at(10, seconds=1)), [], id="duplicate-wake"),
    pytest.param([CREATED, cmd(Wake, at(10))], cmd(Wake, at(5)), [], id="stale-wake"),
    pytest.param(
        [created(catch_up={"mode": "skip"})],
        cmd(Wake, at(10, seconds=30)),
        [run_slot(10)],
        id="grace-boundary-is-on-time",
    ),
    pytest.param(
        [created(catch_up={"mode": "skip"})],
        cmd(Wake, at(10, seconds=31)),
        [("SlotsMissed", {"reason": "catch_up_skip", "count": 1, "first_slot": at(10)})],
        id="past-grace-skip",
    ),
    pytest.param(
        [created(misfire_grace_seconds=0, catch_up={"mode": "skip"})],
        cmd(Wake, at(10, seconds=1)),
        [("SlotsMissed", {"reason": "catch_up_skip", "count": 1})],
        id="zero-grace",
    ),
    pytest.param(
        [created()],
        cmd(Wake, at(120, seconds=40)),
        [
            (
                "SlotsMissed",
                {"reason": "catch_up_run_once", "first_slot": at(10), "last_slot": at(110), "count": 11},
            ),
            run_slot(120),
        ],
        id="catch-up-run-once",
    ),
    pytest.param(
        [created(overlap="allow_all")],
        cmd(Wake, at(120, seconds=10)),
        [
            ("SlotsMissed", {"reason": "catch_up_run_once", "last_slot": at(100), "count": 10}),
            run_slot(110),
            run_slot(120),
        ],
        id="catch-up-run-once-plus-on-time",
    ),
    pytest.param(
        [created(overlap="allow_all", catch_up={"mode": "run_all"})],
        cmd(Wake, at(120, seconds=40)),
        [
            (
                "SlotsMissed",
                {"reason": "outside_window", "first_slot": at(10), "last_slot": at(60), "count": 6},
            ),
            *(run_slot(m) for m in range(70, 130, 10)),
        ],
        id="catch-up-run-all-window",
    ),
    pytest.param(
        [created(overlap="allow_all", catch_up={"mode": "run_all", "max_runs": 2})],
        cmd(Wake, at(120, seconds=40)),
        [
            ("SlotsMissed", {"reason": "outside_window", "count": 6}),
            (
                "SlotsMissed",
                {"reason": "catch_up_limit", "first_slot": at(70), "last_slot": at(100), "count": 4},
            ),
            run_slot(110),
            run_slot(120),
        ],
        id="catch-up-run-all-capped",
    ),
    pytest.param(
        [created(catch_up={"mode": "skip"})],
        cmd(Wake, at(120, seconds=40)),
        [
            (
                "SlotsMissed",
                {"reason": "catch_up_skip", "first_slot": at(10), "last_slot": at(120), "count": 12},
            )
        ],
        id="catch-up-skip",
    ),
    pytest.param(
        [created(catch_up={"mode": "skip"})],
        cmd(Wake, at(120, seconds=10)),
        [("SlotsMissed", {"reason": "catch_up_skip", "count": 11}), run_slot(120)],
        id="catch-up-skip-still-runs-on-time",
    ),
    pytest.param(
        [CREATED, cmd(PauseTask, at(5))],
        cmd(Wake, at(45)),
        [],
        id="paused-does-not-fire",
    ),
    pytest.param(
        [CREATED, cmd(PauseTask, at(5)), cmd(ResumeTask, at(45))],
        cmd(Wake, at(45)),
        [("SlotsMissed", {"reason": "catch_up_run_once", "count": 3}), run_slot(40)],
        id="resume-catches-up",
    ),
]


@pytest.mark.parametrize(("given", "command", "then"), FIRING)
def test_firing(given: list[Any], command: Any, then: list[tuple[str, dict[str, Any]]]) -> None:
    events, _ = when(given, command)
    assert_then(events, then)


# ---------------------------------------------------------------------------------------------
# Overlap
# ---------------------------------------------------------------------------------------------

OVERLAP = [
    # skip and buffer_one hold the slot for the outcome (tests/unit/test_overlap_hold.py).
    pytest.param("skip", [], id="skip"),
    pytest.param("buffer_one", [], id="buffer_one"),
    pytest.param("allow_all", [run_slot(20)], id="allow_all"),
    pytest.param(
        "cancel_other",
        [("ExecutionCompleted", {"execution_id": SLOT10, "status": "cancelled"}), run_slot(20)],
        id="cancel_other",
    ),
]


@pytest.mark.parametrize(("policy", "then"), OVERLAP)
def test_overlap(policy: str, then: list[tuple[str, dict[str, Any]]]) -> None:
    events, _ = when([created(overlap=policy), cmd(Wake, at(10))], cmd(Wake, at(20)))
    assert_then(events, then)


def test_buffer_one_holds_one_and_runs_it_when_idle() -> None:
    given = [created(overlap="buffer_one"), cmd(Wake, at(10)), cmd(Wake, at(20))]
    # 00:20 held past its bound is buffered; 00:30 is held.
    events, _ = when(given, cmd(Wake, at(30)))
    assert_then(events, [("ExecutionBuffered", {"execution_id": SLOT20, "slot": at(20)})])
    given.append(cmd(Wake, at(30)))
    events, state = when(given, outcome(SLOT10, 1, "succeeded", at(35)))
    assert_then(
        events,
        [
            ("ExecutionCompleted", {"execution_id": SLOT10, "status": "succeeded"}),
            ("SlotsMissed", {"reason": "overlap", "first_slot": at(30), "count": 1}),
            ("ExecutionDispatched", {"execution_id": SLOT20, "reason": "buffered", "slot": at(20)}),
        ],
    )
    assert state is not None and state.buffered is None and list(state.in_flight) == [SLOT20]


def test_cancel_buffered_execution() -> None:
    given = [created(overlap="buffer_one"), cmd(Wake, at(10)), cmd(Wake, at(20)), cmd(Wake, at(22))]
    events, state = when(given, cmd(CancelExecution, at(23), execution_id=SLOT20))
    assert_then(events, [("ExecutionCompleted", {"status": "cancelled", "attempts": 0, "slot": at(20)})])
    assert state is not None and state.buffered is None


def test_manual_trigger_bypasses_overlap_but_counts_as_in_flight() -> None:
    given = [CREATED, cmd(TriggerTask, at(9), trigger_id="tr")]
    events, _ = when(given, cmd(TriggerTask, at(9), trigger_id="tr2"))
    assert_then(events, [("ExecutionDispatched", {"reason": "manual"})])
    events, _ = when(given, cmd(Wake, at(10)))
    assert_then(events, [])  # held for the manual execution's outcome
    events, _ = when(given, cmd(Wake, at(12)))
    assert_then(events, [("SlotsMissed", {"reason": "overlap"})])


# ---------------------------------------------------------------------------------------------
# Executions: reports, retries, timeouts, triggers, cancel
# ---------------------------------------------------------------------------------------------

RETRY3 = {"max_attempts": 3, "initial_backoff_seconds": 10, "multiplier": 2, "jitter": 0}


def test_retry_with_backoff_then_exhausted() -> None:
    history: list[Any] = [created(retry=RETRY3), cmd(Wake, at(10))]
    events, _ = when(history, outcome(SLOT10, 1, "failed", at(11), error="HTTP 500"))
    assert_then(
        events,
        [
            (
                "AttemptFailed",
                {"attempt": 1, "error": "HTTP 500", "timed_out": False, "retry_at": at(11, seconds=10)},
            )
        ],
    )
    history.append(outcome(SLOT10, 1, "failed", at(11), error="HTTP 500"))
    assert next_wakeup(fold(history)[0]) == at(11, seconds=10)

    events, _ = when(history, cmd(Wake, at(11, seconds=10)))
    assert_then(events, [("ExecutionDispatched", {"reason": "retry", "attempt": 2, "slot": at(10)})])
    history.append(cmd(Wake, at(11, seconds=10)))

    events, _ = when(history, outcome(SLOT10, 2, "failed", at(12), error="HTTP 502"))
    assert_then(events, [("AttemptFailed", {"attempt": 2, "retry_at": at(12, seconds=20)})])
    history += [outcome(SLOT10, 2, "failed", at(12)), cmd(Wake, at(12, seconds=20))]

    events, state = when(history, outcome(SLOT10, 3, "failed", at(13), error="HTTP 503"))
    assert_then(
        events,
        [
            ("AttemptFailed", {"attempt": 3, "retry_at": None}),
            ("ExecutionCompleted", {"status": "failed", "attempts": 3, "error": "HTTP 503", "slot": at(10)}),
        ],
    )
    assert state is not None and state.in_flight == {} and state.counters.failed == 1


def test_timeout_then_retry_then_timed_out() -> None:
    definition_ = {"retry": RETRY3 | {"max_attempts": 2}, "timeout_seconds": 60}
    history: list[Any] = [created(**definition_), cmd(Wake, at(10))]
    events, _ = when(history, cmd(Wake, at(11)))
    assert_then(
        events,
        [("AttemptFailed", {"attempt": 1, "timed_out": True, "retry_at": at(11, seconds=10)})],
    )
    history.append(cmd(Wake, at(11)))
    # The late outcome of the timed-out attempt is stale.
    assert when(history, outcome(SLOT10, 1, "succeeded", at(11, seconds=5)))[0] == []
    events, _ = when(history, cmd(Wake, at(11, seconds=10)))
    assert_then(
        events,
        [("ExecutionDispatched", {"reason": "retry", "attempt": 2, "deadline": at(12, seconds=10)})],
    )
    history.append(cmd(Wake, at(11, seconds=10)))
    events, state = when(history, cmd(Wake, at(12, seconds=10)))
    assert_then(
        events,
        [
            ("AttemptFailed", {"attempt": 2, "timed_out": True, "retry_at": None}),
            ("ExecutionCompleted", {"status": "timed_out", "attempts": 2}),
        ],
    )
    assert state is not None and state.counters.timed_out == 1


def test_wake_on_paused_task_still_handles_timeouts_and_retries() -> None:
    history = [
        created(retry=RETRY3, timeout_seconds=60),
        cmd(Wake, at(10)),
        cmd(PauseTask, at(10, seconds=30)),
    ]
    events, _ = when(history, cmd(Wake, at(11)))
    assert_then(events, [("AttemptFailed", {"timed_out": True})])
    history.append(cmd(Wake, at(11)))
    events, _ = when(history, cmd(Wake, at(30)))
    assert_then(events, [("ExecutionDispatched", {"reason": "retry", "attempt": 2})])


def test_success_reports() -> None:
    history: list[Any] = [CREATED, cmd(Wake, at(10))]
    started = cmd(
        ReportExecutionStarted,
        at(10, seconds=1),
        execution_id=SLOT10,
        attempt=1,
        worker="w1",
        started_at=at(10, seconds=1),
    )
    events, _ = when(history, started)
    assert_then(events, [("ExecutionStarted", {"attempt": 1, "worker": "w1", "started_at": at(10, seconds=1)})])
    history.append(started)
    events, state = when(history, outcome(SLOT10, 1, "succeeded", at(10, seconds=3), result={"passed": 12}))
    assert_then(
        events,
        [
            (
                "ExecutionCompleted",
                {
                    "status": "succeeded",
                    "attempts": 1,
                    "result": {"passed": 12},
                    "started_at": at(10, seconds=1),
                    "finished_at": at(10, seconds=3),
                    "duration_ms": 2000,
                    "slot": at(10),
                    "scheduled_for": at(10),
                },
            )
        ],
    )
    assert state is not None and state.counters.succeeded == 1


STALE = [
    pytest.param(outcome("unknown", 1, "succeeded", at(11)), id="outcome-unknown-execution"),
    pytest.param(outcome(SLOT10, 2, "succeeded", at(11)), id="outcome-attempt-mismatch"),
    pytest.param(
        cmd(ReportExecutionStarted, at(11), execution_id=SLOT10, attempt=2, worker="w", started_at=at(11)),
        id="started-attempt-mismatch",
    ),
    pytest.param(
        cmd(ReportExecutionStarted, at(11), execution_id="nope", attempt=1, worker="w", started_at=at(11)),
        id="started-unknown",
    ),
]


@pytest.mark.parametrize("command", STALE)
def test_stale_reports_yield_nothing(command: Any) -> None:
    assert when([CREATED, cmd(Wake, at(10))], command)[0] == []


def test_duplicate_reports_yield_nothing() -> None:
    started = dict(execution_id=SLOT10, attempt=1, worker="w", started_at=at(10, seconds=1))
    history = [CREATED, cmd(Wake, at(10)), cmd(ReportExecutionStarted, at(10, seconds=1), **started)]
    assert when(history, cmd(ReportExecutionStarted, at(10, seconds=2), **started))[0] == []
    history.append(outcome(SLOT10, 1, "succeeded", at(11)))
    assert when(history, outcome(SLOT10, 1, "succeeded", at(11)))[0] == []
    assert when(history, outcome(SLOT10, 1, "failed", at(12)))[0] == []


def test_trigger_dispatches_with_overrides() -> None:
    given = [created(params={"suite": "smoke", "env": "staging"}, timeout_seconds=120)]
    command = cmd(TriggerTask, at(3), trigger_id="deploy-42", params={"env": "prod"}, priority="high")
    events, state = when(given, command)
    assert_then(
        events,
        [
            (
                "ExecutionDispatched",
                {
                    "execution_id": execution_id_for_trigger(TASK, "deploy-42"),
                    "reason": "manual",
                    "slot": None,
                    "trigger_id": "deploy-42",
                    "priority": "high",
                    "params": {"suite": "smoke", "env": "prod"},
                    "scheduled_for": at(3),
                    "deadline": at(5),
                },
            )
        ],
    )
    assert state is not None and state.runs == 1 and state.scheduled_runs == 0
    assert state.definition is not None and state.definition.priority == "normal"  # override is per run


@pytest.mark.parametrize(
    "history",
    [
        pytest.param([CREATED, cmd(TriggerTask, at(1), trigger_id="same")], id="in-flight"),
        pytest.param(
            [
                CREATED,
                cmd(TriggerTask, at(1), trigger_id="same"),
                outcome(execution_id_for_trigger(TASK, "same"), 1, "succeeded", at(2)),
            ],
            id="finished",
        ),
    ],
)
def test_repeated_trigger_id_yields_nothing(history: list[Any]) -> None:
    assert when(history, cmd(TriggerTask, at(3), trigger_id="same"))[0] == []


@pytest.mark.parametrize(
    "given",
    [
        pytest.param([CREATED, e(TaskPaused, revision=2)], id="paused"),
        pytest.param([created(schedule={"kind": "once", "at": at(5).isoformat()}), cmd(Wake, at(5))], id="completed"),
    ],
)
def test_trigger_allowed_on_paused_and_completed(given: list[Any]) -> None:
    events, _ = when(given, cmd(TriggerTask, at(6), trigger_id="t"))
    assert_then(events, [("ExecutionDispatched", {"reason": "manual"})])


def test_cancel() -> None:
    given = [CREATED, cmd(Wake, at(10))]
    events, state = when(given, cmd(CancelExecution, at(11), execution_id=SLOT10, reason="stop"))
    assert_then(events, [("ExecutionCompleted", {"status": "cancelled", "error": "stop", "attempts": 1})])
    assert state is not None and state.in_flight == {}
    events, _ = when(given, cmd(CancelExecution, at(11), execution_id="nope"))
    assert_then(events, [("CommandRejected", {"reason": "execution not found", "field": "execution_id"})])


def test_cancel_while_waiting_for_retry() -> None:
    given = [created(retry=RETRY3), cmd(Wake, at(10)), outcome(SLOT10, 1, "failed", at(11))]
    events, state = when(given, cmd(CancelExecution, at(11, seconds=1), execution_id=SLOT10))
    assert_then(events, [("ExecutionCompleted", {"status": "cancelled"})])
    assert next_wakeup(state) == at(20)


# ---------------------------------------------------------------------------------------------
# Completion: run limit, end bound, one-shot
# ---------------------------------------------------------------------------------------------

COMPLETION = [
    pytest.param(
        [created(max_runs=2, overlap="allow_all"), cmd(Wake, at(10))],
        cmd(Wake, at(20)),
        [run_slot(20), ("TaskCompleted", {"reason": "run_limit"})],
        id="run-limit",
    ),
    pytest.param(
        [created(max_runs=2, overlap="allow_all", catch_up={"mode": "run_all"})],
        cmd(Wake, at(40)),
        [run_slot(10), run_slot(20), ("TaskCompleted", {"reason": "run_limit"})],
        id="run-limit-stops-catch-up",
    ),
    pytest.param(
        [created(end_at=at(25), overlap="allow_all"), cmd(Wake, at(10))],
        cmd(Wake, at(20)),
        [run_slot(20), ("TaskCompleted", {"reason": "end_reached"})],
        id="end-bound",
    ),
    pytest.param(
        [created(schedule={"kind": "once", "at": at(5).isoformat()})],
        cmd(Wake, at(5)),
        [run_slot(5), ("TaskCompleted", {"reason": "one_shot"})],
        id="once",
    ),
    pytest.param(
        [
            cmd(
                CreateTask,
                at(60),
                definition=definition(schedule={"kind": "once", "at": at(5).isoformat()}, catch_up={"mode": "skip"}),
            )
        ],
        cmd(Wake, at(60)),
        [("SlotsMissed", {"reason": "catch_up_skip", "count": 1}), ("TaskCompleted", {"reason": "one_shot"})],
        id="once-created-in-the-past-skip",
    ),
    pytest.param(
        [cmd(CreateTask, at(60), definition=definition(schedule={"kind": "once", "at": at(5).isoformat()}))],
        cmd(Wake, at(60)),
        [run_slot(5), ("TaskCompleted", {"reason": "one_shot"})],
        id="once-created-in-the-past-run-once",
    ),
]


@pytest.mark.parametrize(("given", "command", "then"), COMPLETION)
def test_completion(given: list[Any], command: Any, then: list[tuple[str, dict[str, Any]]]) -> None:
    events, _ = when(given, command)
    assert_then(events, then)


def test_in_flight_execution_completes_after_task_completed() -> None:
    given = [created(schedule={"kind": "once", "at": at(5).isoformat()}), cmd(Wake, at(5))]
    slot5 = execution_id_for_slot(TASK, at(5))
    events, state = when(given, outcome(slot5, 1, "succeeded", at(6)))
    assert_then(events, [("ExecutionCompleted", {"status": "succeeded"})])
    assert state is not None and state.status == "completed"
    assert next_wakeup(state) is None


# ---------------------------------------------------------------------------------------------
# Jitter, bookkeeping, wakeups, batching
# ---------------------------------------------------------------------------------------------


def test_jitter_is_deterministic_and_delays_dispatch_not_identity() -> None:
    events, state = when([], cmd(CreateTask, T0, definition=definition(jitter_seconds=60)))
    offset = jitter_offset(TASK, at(10), 60)
    assert offset == jitter_offset(TASK, at(10), 60)
    assert timedelta(0) <= offset < timedelta(seconds=60)
    assert_then(events, [("TaskCreated", {"next_slot": at(10), "next_fire_at": at(10) + offset})])
    assert next_wakeup(state) == at(10) + offset
    history = [cmd(CreateTask, T0, definition=definition(jitter_seconds=60))]
    if offset > timedelta(0):
        assert when(history, cmd(Wake, at(10)))[0] == []
    events, _ = when(history, cmd(Wake, at(10) + offset))
    assert_then(events, [("ExecutionDispatched", {"slot": at(10), "execution_id": SLOT10})])
    # Different slots get different offsets.
    assert len({jitter_offset(TASK, at(m), 60) for m in range(0, 600, 10)}) > 50


def test_event_bookkeeping() -> None:
    command = cmd(Wake, at(120, seconds=40), command_id="wake-7")
    state, history = fold([created(overlap="allow_all")])
    events = decide(command, state)
    assert len(events) == 2
    for i, event in enumerate(events):
        assert event.sequence == len(history) + i + 1
        assert event.event_id == event_id(TASK, event.sequence)
        assert event.causation_id == "wake-7"
        assert event.at == command.at
        assert event.actor == "system"
        assert event.tenant == TENANT


def test_next_wakeup_is_the_earliest_pending_thing() -> None:
    history: list[Any] = [created(retry=RETRY3, timeout_seconds=300), cmd(Wake, at(10))]
    state, _ = fold(history)
    assert next_wakeup(state) == at(15)  # deadline before the 00:20 slot
    state, _ = fold([*history, cmd(PauseTask, at(11))])
    assert next_wakeup(state) == at(15)
    state, _ = fold([*history, outcome(SLOT10, 1, "succeeded", at(11))])
    assert next_wakeup(state) == at(20)
    state, _ = fold([*history, outcome(SLOT10, 1, "succeeded", at(11)), cmd(PauseTask, at(11))])
    assert next_wakeup(state) is None
    assert next_wakeup(None) is None


def test_long_outage_is_handled_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decider_module, "MAX_SLOTS_PER_DECISION", 5)
    history: list[Any] = [created(catch_up={"mode": "run_once"})]
    wake_at = at(125)  # slots 00:10 .. 02:00 are due: 12 of them, 11 late
    batches: list[list[Any]] = []
    for _ in range(10):
        events, _ = when(history, cmd(Wake, wake_at, command_id=f"w{len(batches)}"))
        if not events:
            break
        batches.append(events)
        history.append(cmd(Wake, wake_at, command_id=f"w{len(batches) - 1}"))
    flat = [ev for batch in batches for ev in batch]
    missed = sum(ev.count for ev in flat if ev.type == "SlotsMissed")
    runs = [ev.slot for ev in flat if ev.type == "ExecutionDispatched"]
    assert missed == 11 and runs == [at(120)]
    assert len(batches) > 1


def test_state_round_trips_through_json() -> None:
    from scheduler import dump_state, load_state

    state, _ = fold([created(overlap="buffer_one", retry=RETRY3), cmd(Wake, at(10)), cmd(Wake, at(20))])
    assert state is not None
    assert load_state(dump_state(state)) == state


def test_backoff_used_for_retry_at_matches_policy() -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff_seconds=5)
    given = [created(retry=policy.model_dump()), cmd(Wake, at(10))]
    events, _ = when(given, outcome(SLOT10, 1, "failed", at(11)))
    assert events[0].retry_at == at(11) + backoff(policy, 1, SLOT10)


def test_evolve_ignores_events_for_unknown_executions() -> None:
    state, history = fold([CREATED])
    stray = history[0].model_copy(update={"sequence": 2})
    assert evolve(state, stray) is not None
    assert evolve(None, history[0].model_copy(update={})) is not None


# ---------------------------------------------------------------------------------------------
# Jitter not below the gap (issue 11, item 9)
# ---------------------------------------------------------------------------------------------


def test_a_jitter_above_the_gap_accepted_before_never_counts_a_slot_late() -> None:
    """Every-minute cron with a 150 s jitter (accepted before jitter was bounded; it still comes
    back from stored state): woken exactly when the state says, as the firing loop does, every
    slot of an hour runs and none is recorded as missed."""
    big = TaskDefinition.model_validate(
        definition(
            schedule={"kind": "cron", "expression": "* * * * *"},
            jitter_seconds=150,
            overlap="allow_all",
            catch_up={"mode": "skip"},
        ),
        context=TOLERANT,
    )
    events, state = when([], cmd(CreateTask, T0, definition=big))
    history = list(events)
    while state is not None and state.next_fire_at is not None and state.next_fire_at <= at(60):
        new = decide(cmd(Wake, state.next_fire_at), state)
        for event in new:
            state = evolve(state, event)
        history.extend(new)
    missed = [ev for ev in history if ev.type == "SlotsMissed"]
    slots = [ev.slot for ev in history if ev.type == "ExecutionDispatched"]
    assert missed == []
    assert slots == sorted(slots) and len(slots) >= 57
    assert slots == [at(m) for m in range(1, len(slots) + 1)]
