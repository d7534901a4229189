"""End to end against the real broker: a worker process fires, dispatches, executes, reports."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter

import orjson
import pytest

from schemas.commands import CreateTask, DeleteTask, PauseTask, ResumeTask, TriggerTask
from schemas.envelope import command_envelope, encode
from schemas.specs import (
    CatchUpMode,
    CatchUpPolicy,
    HandlerWork,
    HttpWork,
    IntervalSchedule,
    OverlapPolicy,
    RetryPolicy,
    TaskDefinition,
)
from tests.conftest import Infra
from tests.integration.harness import STARTUP, Bus, HttpTarget, WorkerProc, new_id, now

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"e2e{uuid.uuid4().hex[:8]}"


def _create(task_id: str, definition: TaskDefinition) -> CreateTask:
    return CreateTask(
        command_id=new_id(), task_id=task_id, tenant="acme", actor="alice", at=now(), definition=definition
    )


async def test_fires_every_second_once_per_slot(bus: Bus, target: HttpTarget, worker: WorkerProc) -> None:
    task_id = f"every-second-{new_id()}"
    definition = TaskDefinition(
        name="every second",
        schedule=IntervalSchedule(every_seconds=1.0),
        work=HttpWork(method="POST", url=target.url, body={"hello": "world"}),
        overlap=OverlapPolicy.ALLOW_ALL,  # every slot runs, even if the previous one is slow
    )
    await bus.send(_create(task_id, definition))
    await bus.wait_for(lambda: len(bus.events(task_id, "ExecutionCompleted")) >= 5, STARTUP, "5 completed runs")
    await bus.send(DeleteTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="alice", at=now()))
    await bus.wait_for(lambda: bool(bus.events(task_id, "TaskDeleted")), 30, "TaskDeleted")

    dispatched = [e for e in bus.events(task_id, "ExecutionDispatched") if e.attempt == 1]
    slots = [e.slot for e in dispatched]
    assert len(slots) == len(set(slots)), f"a slot was dispatched twice: {Counter(slots).most_common(3)}"
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(slots)}
    assert gaps == {1.0}, f"slots are not consecutive seconds: {sorted(gaps)}"
    completed = {e.execution_id: e for e in bus.events(task_id, "ExecutionCompleted")}
    for e in dispatched[:5]:
        assert completed[e.execution_id].status == "succeeded"
    # Each execution reached the target once, carrying its id as the idempotency key.
    keys = Counter(r["key"] for r in target.requests)
    assert {e.execution_id for e in dispatched[:5]} <= set(keys)
    assert max(keys.values()) == 1
    # On time: dispatched within a second of its slot (the figures are in the benchmark).
    late = [(e.at - e.slot).total_seconds() for e in dispatched]
    assert max(late) < 1.0, late
    # Outcomes reach the public topic too.
    await bus.wait_for(lambda: len(bus.events(task_id, topic="outcomes")) >= 5, 10, "outcomes")


async def test_failing_target_is_retried_with_backoff_then_failed(bus: Bus, target: HttpTarget) -> None:
    target.fail_first = 1000
    task_id = f"retry-{new_id()}"
    definition = TaskDefinition(
        name="always fails",
        schedule=None,
        work=HttpWork(method="POST", url=target.url),
        retry=RetryPolicy(max_attempts=3, initial_backoff_seconds=0.5, multiplier=2, jitter=0),
    )
    await bus.send(_create(task_id, definition))
    trigger = TriggerTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="alice", at=now(), trigger_id="t1")
    await bus.send(trigger)
    await bus.wait_for(lambda: bool(bus.events(task_id, "ExecutionCompleted")), STARTUP, "final outcome")

    (done,) = bus.events(task_id, "ExecutionCompleted")
    assert done.status == "failed" and done.attempts == 3
    assert "503" in (done.error or "")
    failures = bus.events(task_id, "AttemptFailed")
    assert [f.attempt for f in failures] == [1, 2, 3]
    assert failures[-1].retry_at is None
    # Backoff doubles: the second retry waits about twice as long as the first.
    r1 = (failures[0].retry_at - failures[0].at).total_seconds()
    r2 = (failures[1].retry_at - failures[1].at).total_seconds()
    assert (r1, r2) == (0.5, 1.0)
    assert [r["attempt"] for r in target.requests] == ["1", "2", "3"]
    assert len({r["key"] for r in target.requests}) == 1


async def test_pause_stops_firing_and_resume_catches_up(bus: Bus) -> None:
    task_id = f"pause-{new_id()}"
    definition = TaskDefinition(
        name="pausable",
        schedule=IntervalSchedule(every_seconds=1.0),
        work=HandlerWork(name="noop"),
        catch_up=CatchUpPolicy(mode=CatchUpMode.RUN_ONCE),
        misfire_grace_seconds=0.5,
    )
    await bus.send(_create(task_id, definition))
    await bus.wait_for(lambda: len(bus.events(task_id, "ExecutionCompleted")) >= 2, STARTUP, "2 runs")
    meta = {"tenant": "acme", "actor": "alice"}
    await bus.send(PauseTask(command_id=new_id(), task_id=task_id, at=now(), note="maintenance", **meta))
    await bus.wait_for(lambda: bool(bus.events(task_id, "TaskPaused")), 30, "TaskPaused")
    paused_at = bus.events(task_id, "TaskPaused")[0].at
    await asyncio.sleep(3.5)
    fired_while_paused = [e for e in bus.events(task_id, "ExecutionDispatched") if e.at > paused_at]
    assert fired_while_paused == []

    await bus.send(ResumeTask(command_id=new_id(), task_id=task_id, at=now(), **meta))
    await bus.wait_for(lambda: bool(bus.events(task_id, "SlotsMissed")), 30, "missed slots recorded")
    await bus.wait_for(
        lambda: any(e.at > paused_at for e in bus.events(task_id, "ExecutionDispatched")), 30, "firing again"
    )
    missed = bus.events(task_id, "SlotsMissed")[0]
    assert missed.count >= 2  # run_once: all but the latest missed slot are recorded, not run
    after = [e for e in bus.events(task_id, "ExecutionDispatched") if e.at > paused_at]
    assert after[0].slot > missed.last_slot
    await bus.send(DeleteTask(command_id=new_id(), task_id=task_id, at=now(), **meta))


async def test_delete_stops_firing(bus: Bus) -> None:
    task_id = f"delete-{new_id()}"
    definition = TaskDefinition(
        name="deleted soon", schedule=IntervalSchedule(every_seconds=1.0), work=HandlerWork(name="noop")
    )
    await bus.send(_create(task_id, definition))
    await bus.wait_for(lambda: len(bus.events(task_id, "ExecutionDispatched")) >= 1, STARTUP, "first run")
    await bus.send(DeleteTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="alice", at=now()))
    await bus.wait_for(lambda: bool(bus.events(task_id, "TaskDeleted")), 30, "TaskDeleted")
    deleted_seq = bus.events(task_id, "TaskDeleted")[0].sequence
    await asyncio.sleep(2.5)
    assert [e for e in bus.events(task_id, "ExecutionDispatched") if e.sequence > deleted_seq] == []


async def test_manual_trigger_runs_once(bus: Bus) -> None:
    task_id = f"manual-{new_id()}"
    definition = TaskDefinition(name="on demand", schedule=None, work=HandlerWork(name="echo", params={"a": 1}))
    await bus.send(_create(task_id, definition))
    for _ in range(3):  # the same trigger id three times: one execution
        await bus.send(
            TriggerTask(
                command_id=new_id(), task_id=task_id, tenant="acme", actor="bob", at=now(), trigger_id="deploy-42",
                params={"b": 2},
            )
        )  # fmt: skip
    await bus.wait_for(lambda: bool(bus.events(task_id, "ExecutionCompleted")), STARTUP, "the run")
    await asyncio.sleep(1.0)
    (dispatched,) = bus.events(task_id, "ExecutionDispatched")
    assert dispatched.reason == "manual" and dispatched.trigger_id == "deploy-42"
    (done,) = bus.events(task_id, "ExecutionCompleted")
    assert done.status == "succeeded"
    assert done.result["params"] == {"a": 1, "b": 2}


async def test_bad_input_is_rejected_or_dead_lettered_and_processing_continues(bus: Bus, infra: Infra) -> None:
    dead = await Bus(infra.bootstrap, bus.prefix).start(follow=("dead-letter",))
    await bus.send_raw("commands", b"garbage", b"\xff\xfe not json")
    await dead.wait_for(lambda: any(r.key == b"garbage" for r in dead.raw["dead-letter"]), STARTUP, "dead letter")
    letter = orjson.loads(next(r.value for r in dead.raw["dead-letter"] if r.key == b"garbage"))
    assert letter["source_topic"] == bus.topic("commands") and letter["reason"]
    assert letter["payload_base64"]  # not UTF-8: kept byte for byte
    # A well-formed envelope whose definition has a bad cron expression: a rejection naming the field.
    task_id = f"badcron-{new_id()}"
    good = _create(task_id, TaskDefinition(name="x", schedule=None, work=HandlerWork(name="noop")))
    raw = encode(command_envelope(good, source="tests")).replace(
        b'"schedule":null', b'"schedule":{"kind":"cron","expression":"61 * * * *","timezone":"UTC"}'
    )
    assert raw != encode(command_envelope(good, source="tests"))
    await bus.send_raw("commands", task_id.encode(), raw)
    await bus.wait_for(lambda: bool(bus.events(task_id, "CommandRejected")), STARTUP, "rejection")
    (rejected,) = bus.events(task_id, "CommandRejected")
    assert rejected.field == "definition.schedule.expression"
    # ...and the processor kept going.
    ok_id = f"after-garbage-{new_id()}"
    await bus.send(_create(ok_id, TaskDefinition(name="fine", schedule=None, work=HandlerWork(name="noop"))))
    await bus.wait_for(lambda: bool(bus.events(ok_id, "TaskCreated")), 30, "next command applied")
    await dead.stop()


async def test_long_work_is_reported_running_before_it_ends(bus: Bus) -> None:
    task_id = f"slow-{new_id()}"
    definition = TaskDefinition(name="slow", schedule=None, work=HandlerWork(name="sleep", params={"seconds": 2}))
    await bus.send(_create(task_id, definition))
    await bus.send(
        TriggerTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="bob", at=now(), trigger_id="slow-1")
    )
    await bus.wait_for(lambda: bool(bus.events(task_id, "ExecutionStarted")), STARTUP, "running status")
    assert not bus.events(task_id, "ExecutionCompleted")  # still running when reported
    await bus.wait_for(lambda: bool(bus.events(task_id, "ExecutionCompleted")), 30, "completion")
    (started,) = bus.events(task_id, "ExecutionStarted")
    (done,) = bus.events(task_id, "ExecutionCompleted")
    assert done.status == "succeeded" and done.started_at == started.started_at


async def test_poison_on_a_dispatch_topic_is_dead_lettered_and_executors_continue(bus: Bus, infra: Infra) -> None:
    dead = await Bus(infra.bootstrap, bus.prefix).start(follow=("dead-letter",))
    try:
        await bus.send_raw("dispatch.normal", b"poison-dispatch", b"{not an envelope")
        await dead.wait_for(
            lambda: any(r.key == b"poison-dispatch" for r in dead.raw["dead-letter"]), STARTUP, "dead letter"
        )
        letter = orjson.loads(next(r.value for r in dead.raw["dead-letter"] if r.key == b"poison-dispatch"))
        assert letter["source_topic"] == bus.topic("dispatch.normal")
        assert letter["payload"] == "{not an envelope"
        # The executors keep running work.
        task_id = f"after-poison-{new_id()}"
        await bus.send(_create(task_id, TaskDefinition(name="fine", schedule=None, work=HandlerWork(name="noop"))))
        await bus.send(
            TriggerTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="bob", at=now(), trigger_id="p1")
        )
        await bus.wait_for(lambda: bool(bus.events(task_id, "ExecutionCompleted")), 30, "a run after the poison")
    finally:
        await dead.stop()
