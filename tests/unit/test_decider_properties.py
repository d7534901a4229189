"""Properties of decide/evolve over random command sequences."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import decide, decision, evolve, next_wakeup
from scheduler.state import TaskState
from schemas.commands import (
    BackfillTask,
    CancelBackfill,
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
from schemas.ids import event_id
from tests.unit.unit_support import T0, TASK, cmd, definition

SCHEDULES = [
    {"kind": "cron", "expression": "*/10 * * * *"},
    {"kind": "cron", "expression": "30 2 * * *", "timezone": "America/New_York"},
    {"kind": "cron", "expression": "0 */5 * * * *"},
    {"kind": "interval", "every_seconds": 420},
    {"kind": "once", "at": (T0 + timedelta(minutes=25)).isoformat()},
    None,
]

definitions = st.builds(
    lambda schedule, overlap, mode, attempts, timeout, max_runs, jitter, grace, end: definition(
        schedule=schedule,
        overlap=overlap,
        catch_up={"mode": mode, "max_runs": 3, "window_seconds": 1800},
        retry={"max_attempts": attempts, "initial_backoff_seconds": 30, "jitter": 0.5},
        timeout_seconds=timeout,
        max_runs=max_runs,
        jitter_seconds=jitter,
        misfire_grace_seconds=grace,
        end_at=end,
    ),
    st.sampled_from(SCHEDULES),
    st.sampled_from(["skip", "buffer_one", "allow_all", "cancel_other"]),
    st.sampled_from(["run_once", "run_all", "skip"]),
    st.integers(1, 3),
    st.sampled_from([60, 600, 3600]),
    st.sampled_from([None, 1, 3]),
    st.sampled_from([0, 45]),
    st.sampled_from([0, 30]),
    st.sampled_from([None, (T0 + timedelta(hours=3)).isoformat()]),
)

KINDS = [
    "create",
    "update",
    "pause",
    "resume",
    "delete",
    "trigger",
    "cancel",
    "wake",
    "wake",
    "wake",
    "wake",
    "started",
    "outcome",
    "outcome",
    "repeat",
    "backfill",
    "cancel_backfill",
]


def draw_command(data: Any, state: TaskState | None, now: Any, issued: list[Any]) -> Any:
    kind = data.draw(st.sampled_from(KINDS))
    in_flight = sorted(state.in_flight) if state is not None else []
    tenant = data.draw(st.sampled_from(["acme"] * 9 + ["other"]))
    match kind:
        case "create":
            return cmd(CreateTask, now, definition=data.draw(definitions), tenant=tenant)
        case "update":
            revision = data.draw(st.sampled_from([None, 1, 2, 3]))
            return cmd(UpdateTask, now, definition=data.draw(definitions), expected_revision=revision, tenant=tenant)
        case "pause":
            return cmd(PauseTask, now, tenant=tenant)
        case "resume":
            return cmd(ResumeTask, now, tenant=tenant)
        case "delete":
            return cmd(DeleteTask, now, tenant=tenant)
        case "trigger":
            return cmd(TriggerTask, now, trigger_id=data.draw(st.sampled_from(["a", "b", "c"])), tenant=tenant)
        case "cancel":
            target = data.draw(st.sampled_from([*in_flight, "unknown"]))
            return cmd(CancelExecution, now, execution_id=target, tenant=tenant)
        case "wake":
            # The firing loop wakes a task with the task's own tenant.
            return cmd(Wake, now, tenant=state.tenant if state is not None else "acme")
        case "started" | "outcome" if in_flight:
            target = data.draw(st.sampled_from(in_flight))
            assert state is not None
            attempt = state.in_flight[target].attempt + data.draw(st.sampled_from([0, 0, 0, -1, 1]))
            attempt = max(attempt, 1)
            if kind == "started":
                return cmd(
                    ReportExecutionStarted,
                    now,
                    execution_id=target,
                    attempt=attempt,
                    worker="w",
                    started_at=now,
                )
            return cmd(
                ReportExecutionOutcome,
                now,
                execution_id=target,
                attempt=attempt,
                worker="w",
                status=data.draw(st.sampled_from(["succeeded", "failed"])),
                started_at=now - timedelta(seconds=5),
                finished_at=now,
            )
        case "backfill":
            hours = data.draw(st.sampled_from([1, 6, 48]))
            return cmd(
                BackfillTask,
                now,
                backfill_id=data.draw(st.sampled_from(["b1", "b2"])),
                from_=now - timedelta(hours=hours),
                to=now - timedelta(minutes=data.draw(st.sampled_from([0, 30]))),
                max_concurrency=data.draw(st.integers(1, 4)),
                tenant=tenant,
            )
        case "cancel_backfill":
            return cmd(CancelBackfill, now, backfill_id=data.draw(st.sampled_from(["b1", "b2"])), tenant=tenant)
        case "repeat" if issued:
            return data.draw(st.sampled_from(issued))
        case _:
            return cmd(Wake, now)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_command_sequences(data: Any) -> None:
    state: TaskState | None = None
    history: list[Any] = []
    issued: list[Any] = []
    states: list[TaskState | None] = [None]
    now = T0
    for _ in range(data.draw(st.integers(5, 40))):
        now += timedelta(seconds=data.draw(st.sampled_from([0, 1, 30, 300, 600, 3600, 6 * 3600])))
        command = draw_command(data, state, now, issued)
        repeated = command in issued
        issued.append(command)
        decided = decision(command, state)
        events = decided.events
        assert events == decide(command, state)
        for event in events:
            state = evolve(state, event)
            states.append(state)
        # The state the decider returns is the fold of its events: a shell stores it as is.
        assert decided.state == state
        # A backfill dispatches a new slot only below its limit (one at a time unless allow_all).
        if any(e.type == "ExecutionDispatched" and e.reason == "backfill" for e in events):
            assert state is not None and state.backfill is not None and state.definition is not None
            cap = state.backfill.max_concurrency if state.definition.overlap == "allow_all" else 1
            assert len(state.backfill_in_flight) <= cap
        history.extend(events)
        if events:
            assert decide(command, state) == [], "a repeated command must yield nothing"
        if command.type == "Wake" and not repeated and state is not None and command.tenant == state.tenant:
            wakeup = next_wakeup(state)
            assert wakeup is None or wakeup > command.at, "a Wake leaves nothing due"

    # Sequence numbers are contiguous from 1 and ids are derived from them.
    assert [e.sequence for e in history] == list(range(1, len(history) + 1))
    assert all(e.event_id == event_id(TASK, e.sequence) for e in history)
    assert state is None or state.version == len(history)

    # Replaying the log from scratch reproduces the state.
    replayed: TaskState | None = None
    for event in history:
        replayed = evolve(replayed, event)
    assert replayed == state

    # Every execution ends at most once, and only after it was created.
    created: set[str] = set()
    ended: set[str] = set()
    for event in history:
        if event.type in ("ExecutionDispatched", "ExecutionBuffered"):
            created.add(event.execution_id)
        if event.type == "ExecutionCompleted":
            assert event.execution_id in created and event.execution_id not in ended
            ended.add(event.execution_id)

    # evolve is total even for events applied to states they do not belong to.
    for event in data.draw(st.lists(st.sampled_from(history), max_size=10)) if history else []:
        evolve(data.draw(st.sampled_from(states)), event)


@settings(max_examples=60, deadline=None)
@given(definitions, st.integers(0, 48 * 60))
def test_wake_after_downtime_accounts_for_every_slot(raw_definition: dict[str, Any], minutes: int) -> None:
    """Every due slot is either run, buffered or recorded missed: none vanish silently."""
    create = cmd(CreateTask, T0, definition=raw_definition)
    state = None
    for event in decide(create, state):
        state = evolve(state, event)
    assert state is not None
    first = state.next_slot
    wake = cmd(Wake, T0 + timedelta(minutes=minutes))
    events = decide(wake, state)
    handled = sum(e.count for e in events if e.type == "SlotsMissed")
    handled += sum(1 for e in events if e.type == "ExecutionBuffered")
    handled += sum(1 for e in events if e.type == "ExecutionDispatched" and e.reason == "schedule")
    for event in events:
        state = evolve(state, event)
    assert state is not None
    if first is None or handled == 0:
        return
    # Count the slots between the first and the last handled by walking the schedule.
    from scheduler.schedule import anchor_for, next_slot

    assert state.definition is not None and state.last_slot is not None
    expected, slot = 1, first
    while slot < state.last_slot:
        nxt = next_slot(state.definition, slot, anchor=anchor_for(state.definition, T0))
        assert nxt is not None
        slot, expected = nxt, expected + 1
    assert handled == expected
