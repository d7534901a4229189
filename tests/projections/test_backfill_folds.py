"""The views of issue 12 as folds: a backfill's progress and executions, the pause reason, and
the statistics' in-flight count, folded from events the decider really emits."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from projections.folds import Doc, TaskFacts, evolve_execution, evolve_facts, evolve_task, stats_delta
from scheduler import decide, evolve
from scheduler.state import TaskState
from schemas.commands import BackfillTask, CancelBackfill, CreateTask, ReportExecutionOutcome, ResumeTask, TriggerTask
from schemas.ids import execution_id_for_backfill, execution_id_for_trigger
from tests.unit.unit_support import T0, TASK, at, cmd, definition

NOW = at(hours=5)


def history(commands: list[Any]) -> list[Any]:
    state: TaskState | None = None
    events: list[Any] = []
    for command in commands:
        for event in decide(command, state):
            state = evolve(state, event)
            events.append(event)
    return events


def outcome(execution_id: str, status: str, when: Any = NOW) -> Any:
    return cmd(
        ReportExecutionOutcome, when, execution_id=execution_id, attempt=1, worker="w", status=status,
        error=None if status == "succeeded" else "HTTP 503", started_at=when - timedelta(seconds=1), finished_at=when,
    )  # fmt: skip


def views(events: list[Any]) -> tuple[Doc | None, dict[str, Doc], dict[str, int]]:
    """The task document, the execution documents and the summed statistics after ``events``."""
    task: Doc | None = None
    executions: dict[str, Doc] = {}
    stats: dict[str, int] = {}
    facts: TaskFacts | None = None
    for event in events:
        task = evolve_task(task, event)
        key = getattr(event, "execution_id", None)
        if key is not None:
            doc = evolve_execution(executions.get(key), event, "http")
            if doc is not None:
                executions[key] = doc
        for name, n in stats_delta(event, facts).items():
            stats[name] = stats.get(name, 0) + n
        facts = evolve_facts(facts, event)
    return task, executions, stats


def test_backfill_progress_and_executions() -> None:
    first = execution_id_for_backfill(TASK, "bf1", T0)
    events = history(
        [
            cmd(CreateTask, T0, definition=definition(overlap="allow_all")),
            cmd(BackfillTask, NOW, backfill_id="bf1", from_=T0, to=at(30), max_concurrency=2),
            outcome(first, "succeeded"),
            cmd(CancelBackfill, NOW, backfill_id="bf1", reason="enough"),
        ]
    )
    task, executions, stats = views(events)
    assert task is not None
    backfill = task["backfill"]
    assert backfill["id"] == "bf1" and backfill["from"] == T0 and backfill["to"] == at(30)
    assert backfill["slots"] == 3 and backfill["status"] == "cancelled" and backfill["reason"] == "enough"
    assert (backfill["dispatched"], backfill["succeeded"], backfill["cancelled"]) == (3, 1, 2)
    assert backfill["ended_at"] == NOW and backfill["started_by"] == "alice"
    assert task["counters"]["runs"] == 3 and task["counters"]["scheduled_runs"] == 0
    assert executions[first]["reason"] == "backfill" and executions[first]["backfill_id"] == "bf1"
    assert executions[first]["status"] == "succeeded"
    # Every backfill execution counted in flight once and out once: nothing stays "in flight".
    assert stats.get("executions.in_flight", 0) == 0
    assert stats.get("executions.dispatched") == 3 and stats.get("executions.cancelled") == 2


def test_pause_reason_is_shown_and_cleared_on_resume() -> None:
    commands: list[Any] = [cmd(CreateTask, T0, definition=definition(pause_after_failures=2))]
    for n in (1, 2):
        commands.append(cmd(TriggerTask, at(n), trigger_id=f"t{n}"))
        commands.append(outcome(execution_id_for_trigger(TASK, f"t{n}"), "failed", at(n, seconds=5)))
    events = history(commands)
    task, _, _ = views(events)
    assert task is not None and task["status"] == "paused"
    assert task["paused_reason"] == "consecutive_failures" and task["paused_failures"] == 2
    assert task["paused_note"] == "paused after 2 consecutive failures; last error: HTTP 503"
    task, _, _ = views(history([*commands, cmd(ResumeTask, at(9))]))
    assert task is not None and task["status"] == "active"
    assert task["paused_reason"] is None and task["paused_failures"] is None and task["paused_note"] is None
