"""Overlap ``skip`` against the real broker (issue 9): a slot that comes due while an execution is
in flight is not missed when that execution's outcome, applied after the slot, shows it had
finished before. The worker runs without an executor: the test reports the outcome itself, late,
as a lagging executor or processor would have it applied."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from schemas.commands import CreateTask, DeleteTask, ReportExecutionOutcome
from schemas.specs import HandlerWork, IntervalSchedule, OverlapPolicy, TaskDefinition
from tests.integration.harness import Bus, new_id, now

pytestmark = pytest.mark.slow

EVERY = 3.0


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"ovl{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def worker_settings() -> dict[str, str]:
    return {"SCHED_EXECUTOR_ENABLED": "false"}


async def test_a_slot_due_while_in_flight_runs_when_the_execution_had_finished_before_it(bus: Bus) -> None:
    task_id = f"acme/overlap-{new_id()[:8]}"
    definition = TaskDefinition(
        name="overlap",
        schedule=IntervalSchedule(every_seconds=EVERY),
        work=HandlerWork(name="noop"),
        overlap=OverlapPolicy.SKIP,
    )
    await bus.send(CreateTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now(),
                              definition=definition))  # fmt: skip
    try:
        await bus.wait_for(lambda: bool(bus.events(task_id, "ExecutionDispatched")), 30, "the first dispatch")
        [first] = bus.events(task_id, "ExecutionDispatched")
        second_slot = first.slot + timedelta(seconds=EVERY)
        # Let the next slot come due (and a second more) while the first execution is in flight.
        await asyncio.sleep(max(0.0, (second_slot - now()).total_seconds()) + 1.0)
        assert bus.events(task_id, "SlotsMissed") == []  # held, not missed

        # The execution ran 50 ms right after its slot, before the next one (times relative to the
        # slot, so that a worker slow to dispatch does not change the case); its outcome is
        # applied only now, after that slot came due.
        started = first.slot + timedelta(milliseconds=10)
        finished = started + timedelta(milliseconds=50)
        await bus.send(
            ReportExecutionOutcome(
                command_id=new_id(), task_id=task_id, tenant="acme", actor="executor:test", at=finished,
                execution_id=first.execution_id, attempt=1, worker="test", status="succeeded",
                started_at=started, finished_at=finished,
            )
        )  # fmt: skip
        await bus.wait_for(
            lambda: any(e.slot == second_slot for e in bus.events(task_id, "ExecutionDispatched")),
            30,
            "the held slot's dispatch",
        )
        [second] = [e for e in bus.events(task_id, "ExecutionDispatched") if e.slot == second_slot]
        assert second.reason == "schedule" and second.attempt == 1
        assert [e.execution_id for e in bus.events(task_id, "ExecutionCompleted")] == [first.execution_id]
        assert bus.events(task_id, "SlotsMissed") == []
    finally:
        await bus.send(DeleteTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now()))
