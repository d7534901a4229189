"""Issue 13, event triggers, end to end against the real broker: a worker process and a trigger
router process (``scheduler triggers``); CloudEvents produced to ``triggers`` run the tasks whose
rules match, once per (source, id), only within their own tenant; invalid events land in
``dead-letter`` with the reason."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from schemas.commands import CreateTask
from schemas.events import ExecutionDispatched
from schemas.specs import HandlerWork, TaskDefinition
from schemas.triggers import TriggerRule
from tests.integration.harness import Bus, WorkerProc, new_id, now, running_router

# The bus (conftest.py) waits for the worker only: every test here needs the router too.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("router")]

QUIET = 3.0
"""Seconds a test waits to be sure something did not happen (a trigger routes in milliseconds)."""


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"trig{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def router(worker: WorkerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    """The trigger router next to the module's worker, with the same settings."""
    with running_router(worker.env, tmp_path_factory.mktemp("router")) as proc:
        yield proc


@pytest.fixture
def bus_follows() -> tuple[str, ...]:
    return ("task-events", "outcomes", "dead-letter", "trigger-rules")


async def create_triggered(bus: Bus, tenant: str, rule: dict[str, Any]) -> str:
    """Create a task of ``tenant`` run only by ``rule``; returns once the router can know it."""
    task_id = f"{tenant}/{new_id()}"
    definition = TaskDefinition(
        name="triggered", work=HandlerWork(name="noop"), triggers=[TriggerRule.model_validate(rule)]
    )
    await bus.send(
        CreateTask(command_id=new_id(), task_id=task_id, tenant=tenant, actor="t", at=now(), definition=definition)
    )
    await bus.wait_for(lambda: any(r.key == task_id.encode() for r in bus.raw["trigger-rules"]), 60, "the task's rules")
    await asyncio.sleep(0.5)  # the router tails trigger-rules: a fetch away
    return task_id


def cloudevent(tenant: str, **attributes: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": new_id(),
        "source": "/ci/builds",
        "type": "com.acme.build.finished",
        "tenant": tenant,
        "data": {"status": "passed", "branch": "main"},
        **attributes,
    }


def dispatched(bus: Bus, task_id: str) -> list[ExecutionDispatched]:
    unique = {e.event_id: e for e in bus.events(task_id, "ExecutionDispatched")}
    return list(unique.values())


RULE = {
    "type": "com.acme.build.finished",
    "source": {"prefix": "/ci/"},
    "conditions": [{"pointer": "/status", "eq": "passed"}],
}


async def test_an_event_delivered_twice_runs_the_matching_task_once(bus: Bus) -> None:
    task_id = await create_triggered(bus, "acme", RULE)
    other = await create_triggered(bus, "acme", {**RULE, "conditions": [{"pointer": "/status", "eq": "failed"}]})
    event = cloudevent("acme", subject="build-42")
    value = orjson.dumps(event)
    await bus.send_raw("triggers", b"acme", value)
    await bus.send_raw("triggers", b"acme", value)  # the same source and id, delivered again

    await bus.wait_for(lambda: bool(dispatched(bus, task_id)), 30, "the triggered run")
    await asyncio.sleep(QUIET)
    runs = dispatched(bus, task_id)
    assert len(runs) == 1, runs
    assert runs[0].reason == "manual" and runs[0].trigger_id is not None
    assert runs[0].params["event"]["id"] == event["id"]
    assert runs[0].params["event"]["data"] == {"status": "passed", "branch": "main"}
    assert runs[0].params["event"]["subject"] == "build-42"
    assert dispatched(bus, other) == []  # its condition does not hold


async def test_an_event_of_another_tenant_does_not_run_the_task(bus: Bus) -> None:
    acme = await create_triggered(bus, "acme", RULE)
    globex = await create_triggered(bus, "globex", RULE)

    await bus.send_raw("triggers", b"globex", orjson.dumps(cloudevent("globex")))

    await bus.wait_for(lambda: bool(dispatched(bus, globex)), 30, "globex's run")
    await asyncio.sleep(QUIET)
    assert dispatched(bus, acme) == []
    # Not even sent for acme's task (the task processor would refuse it, as a second line).
    assert bus.events(acme, "CommandRejected") == []
    assert len(dispatched(bus, globex)) == 1


async def test_binary_mode_runs_the_task(bus: Bus) -> None:
    task_id = await create_triggered(bus, "acme", RULE)
    event_id = new_id()
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_source", b"/ci/builds"),
        ("ce_type", b"com.acme.build.finished"),
        ("ce_tenant", b"acme"),
        ("content-type", b"application/json"),
    ]
    assert bus.producer is not None
    await bus.producer.send_and_wait(
        bus.topic("triggers"), key=b"acme", value=orjson.dumps({"status": "passed"}), headers=headers
    )

    await bus.wait_for(lambda: bool(dispatched(bus, task_id)), 30, "the triggered run")
    (run,) = dispatched(bus, task_id)
    assert run.params["event"]["id"] == event_id
    assert run.params["event"]["data"] == {"status": "passed"}


async def test_invalid_events_land_in_dead_letter_with_the_reason(bus: Bus) -> None:
    task_id = await create_triggered(bus, "acme", RULE)
    no_source = cloudevent("acme")
    del no_source["source"]
    await bus.send_raw("triggers", b"acme", orjson.dumps(no_source))
    await bus.send_raw("triggers", b"acme", b"not json at all")

    def letters() -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in bus.raw["dead-letter"]]

    await bus.wait_for(lambda: len(letters()) >= 2, 30, "two dead letters")
    first, second = letters()[:2]
    assert first["field"] == "source" and "missing" in first["reason"]
    assert first["source_topic"] == bus.topic("triggers")
    assert "not valid JSON" in second["reason"]
    assert second["payload"] == "not json at all"
    # The router goes on: a valid event after them still runs.
    await bus.send_raw("triggers", b"acme", orjson.dumps(cloudevent("acme")))
    await bus.wait_for(lambda: bool(dispatched(bus, task_id)), 30, "the run after the dead letters")


async def test_debounce_batches_the_window_into_one_run(bus: Bus) -> None:
    task_id = await create_triggered(bus, "acme", {**RULE, "debounce_seconds": 2, "params_key": "builds"})
    ids = [new_id() for _ in range(3)]
    for event_id in ids:
        await bus.send_raw("triggers", b"acme", orjson.dumps(cloudevent("acme", id=event_id)))

    await bus.wait_for(lambda: bool(dispatched(bus, task_id)), 30, "the debounced run")
    await asyncio.sleep(QUIET)
    (run,) = dispatched(bus, task_id)
    assert [e["id"] for e in run.params["builds"]] == ids
    assert run.params["builds_count"] == 3


async def test_an_event_delivered_again_after_a_router_restart_runs_nothing(bus: Bus, router: WorkerProc) -> None:
    """The restarted router recalls the events routed before its partitions' committed offsets:
    without that, only the task processor's memory of a task's last 64 trigger ids would stand,
    and 64 newer runs push an event's out of it."""
    task_id = await create_triggered(bus, "acme", RULE)
    probe = await create_triggered(bus, "acme", {"type": "com.acme.probe"})
    first = orjson.dumps(cloudevent("acme"))
    await bus.send_raw("triggers", b"acme", first)
    for _ in range(64):
        await bus.send_raw("triggers", b"acme", orjson.dumps(cloudevent("acme")))
    await bus.wait_for(lambda: len(dispatched(bus, task_id)) == 65, 60, "65 runs")

    router.stop()
    router.start()
    await bus.send_raw("triggers", b"acme", orjson.dumps(cloudevent("acme", type="com.acme.probe")))
    await bus.wait_for(lambda: bool(dispatched(bus, probe)), 60, "the restarted router to route")
    await bus.send_raw("triggers", b"acme", first)  # delivered again, long after

    await asyncio.sleep(QUIET)
    assert len(dispatched(bus, task_id)) == 65
