"""Overlap ``skip`` through the worker's apply path (issue 9): a slot due while an execution is in
flight waits for its outcome, the firing loop is not asked to wake it meanwhile, and an outcome
showing the execution was not running when the slot came due lets the slot run."""

from __future__ import annotations

from scheduler.state import HOLD_MIN_SECONDS
from schemas.commands import ReportExecutionOutcome
from schemas.control import CommandBatch
from schemas.envelope import command_envelope, control_envelope, encode
from schemas.events import ExecutionDispatched
from streams.app import _Source
from tests.streams.test_processor_parts import _create, _events, _processor, _tick, at, task_in


def _outcome_batch(task_id: str, execution_id: str, started: float, finished: float, partition: int) -> bytes:
    outcome = ReportExecutionOutcome(
        command_id=f"o-{execution_id}", task_id=task_id, tenant="acme", actor="executor:x", at=at(finished),
        execution_id=execution_id, attempt=1, worker="x", status="succeeded",
        started_at=at(started), finished_at=at(finished),
    )  # fmt: skip
    batch = CommandBatch(
        batch_id=f"b-{execution_id}", partition=partition,
        commands=[command_envelope(outcome, source="executor/x").model_dump(mode="json")],
    )  # fmt: skip
    return encode(control_envelope(batch, "test", "system", at(finished)))


async def test_a_slot_due_while_in_flight_waits_for_the_outcome_and_runs_when_it_did_not_overlap() -> None:
    processor, producer = _processor()
    task_id = task_in(2, 0)  # every 10 s from 10 s, overlap skip (the default)
    await processor.apply(task_id.encode(), _create(task_id), _Source("commands", 2, 0))
    await processor.apply(b"tick", _tick(2, at(10)), _Source("commands", 2, 1))
    [first] = [e for e in _events(producer) if isinstance(e, ExecutionDispatched)]
    # In flight: the 20 s slot needs no wake at 20 s (it would find nothing to do), only when its
    # hold ends, so the firing loop does not tick for it meanwhile.
    assert processor.firing.get(task_id) == at(20 + HOLD_MIN_SECONDS)
    assert processor.firing.to_tick(at(25), clock=0) == []
    producer.sent.clear()

    # The dispatch reached the executor late: it started at 26 s, after the 20 s slot came due, so
    # the slot did not overlap it and runs as soon as the outcome is applied.
    await processor.apply(
        b"batch", _outcome_batch(task_id, first.execution_id, 26, 26.05, 2), _Source("commands", 2, 2)
    )
    events = _events(producer)
    assert [(e.type, getattr(e, "slot", None)) for e in events] == [
        ("ExecutionCompleted", at(10)),
        ("ExecutionDispatched", at(20)),
    ]
    second = events[1]
    assert isinstance(second, ExecutionDispatched) and second.reason == "schedule"
    assert processor.firing.get(task_id) == at(30 + HOLD_MIN_SECONDS)  # 30 s is held behind it
    producer.sent.clear()

    # Finished at 29 s, before the 30 s slot, but applied after it: the report's time is before
    # the slot, so it only ends the execution; the slot is due at once and the next tick runs it.
    await processor.apply(b"batch", _outcome_batch(task_id, second.execution_id, 27, 29, 2), _Source("commands", 2, 3))
    assert [e.type for e in _events(producer)] == ["ExecutionCompleted"]
    assert processor.firing.get(task_id) == at(30)
    producer.sent.clear()
    await processor.apply(b"tick", _tick(2, at(31), "tick-2"), _Source("commands", 2, 4))
    assert [(e.type, getattr(e, "slot", None)) for e in _events(producer)] == [("ExecutionDispatched", at(30))]
