"""Events that move the schedule say where it stands, so views need no decider."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scheduler import decide, evolve
from schemas.commands import CreateTask, Wake
from schemas.events import ExecutionDispatched
from schemas.specs import HandlerWork, IntervalSchedule, TaskDefinition

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_a_dispatch_carries_the_next_slot_of_the_state_after_it() -> None:
    definition = TaskDefinition(
        name="t", schedule=IntervalSchedule(every_seconds=60, anchor=T0), work=HandlerWork(name="noop")
    )
    state = None
    for e in decide(
        CreateTask(command_id="c", task_id="t", tenant="a", actor="u", at=T0, definition=definition), state
    ):
        state = evolve(state, e)
    events = decide(Wake(command_id="w", task_id="t", tenant="a", actor="system", at=T0 + timedelta(seconds=60)), state)
    (dispatched,) = [e for e in events if isinstance(e, ExecutionDispatched)]
    for e in events:
        state = evolve(state, e)
    assert state is not None
    assert dispatched.slot == T0 + timedelta(seconds=60)
    assert dispatched.next_slot == state.next_slot == T0 + timedelta(seconds=120)
    assert dispatched.next_fire_at == state.next_fire_at
