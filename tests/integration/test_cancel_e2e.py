"""Issue 13, cancellation reaches the work, end to end against the real broker: a worker
process runs HTTP work, an external test-execution engine (served here) and a Python handler;
``CancelExecution`` (what ``POST /v1/executions/{id}/cancel`` sends) stops each of them, and
each execution ends ``cancelled`` exactly once on ``outcomes``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from schemas.commands import CancelExecution, CreateTask, DeleteTask, TriggerTask
from schemas.ids import execution_id_for_trigger
from schemas.specs import (
    HandlerWork,
    HttpPoll,
    HttpRequestSpec,
    HttpWork,
    IntervalSchedule,
    OverlapPolicy,
    TaskDefinition,
)
from tests.conftest import Infra
from tests.integration.harness import Bus, HttpTarget, new_id, now, serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"cancel{uuid.uuid4().hex[:8]}"


class Engine:
    """A small test-execution engine: ``POST /runs`` starts a run, ``GET /runs/{id}`` tells its
    status (``running`` until ``finish_after`` polls, then ``passed``), ``POST
    /runs/{id}/cancel`` cancels it."""

    def __init__(self, finish_after: int | None = None) -> None:
        self.finish_after = finish_after
        self.polls: dict[str, int] = {}
        self.cancelled: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _start(self, request: web.Request) -> web.Response:
        run_id = f"run-{len(self.polls) + 1}"
        self.polls[run_id] = 0
        return web.json_response({"run": {"id": run_id}, "report": f"{self.url}/reports/{run_id}"}, status=201)

    async def _status(self, request: web.Request) -> web.Response:
        run_id = request.match_info["id"]
        self.polls[run_id] += 1
        if run_id in self.cancelled:
            return web.json_response({"state": "cancelled"})
        done = self.finish_after is not None and self.polls[run_id] >= self.finish_after
        return web.json_response({"state": "passed" if done else "running"})

    async def _cancel(self, request: web.Request) -> web.Response:
        self.cancelled.append(request.match_info["id"])
        return web.json_response({"ok": True})

    async def start(self) -> Engine:
        app = web.Application()
        app.router.add_post("/runs", self._start)
        app.router.add_get("/runs/{id}", self._status)
        app.router.add_post("/runs/{id}/cancel", self._cancel)
        self._runner, port = await serve(app)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def work(self) -> HttpWork:
        return HttpWork(
            method="POST",
            url=f"{self.url}/runs",
            body={"suite": "nightly"},
            poll=HttpPoll(
                status_url=f"{self.url}/runs/{{job_id}}",
                job_id_pointer="/run/id",
                status_pointer="/state",
                success_values=["passed"],
                failure_values=["failed"],
                interval_seconds=0.2,
                report_url_pointer="/report",
            ),
            cancel=HttpRequestSpec(method="POST", url=f"{self.url}/runs/{{job_id}}/cancel"),
        )


def _create(task_id: str, definition: TaskDefinition) -> CreateTask:
    return CreateTask(
        command_id=new_id(), task_id=task_id, tenant="acme", actor="tests", at=now(), definition=definition
    )


async def _start_then_cancel(bus: Bus, definition: TaskDefinition, running: Callable[[str], bool]) -> tuple[str, str]:
    """Create a task, trigger it, wait until ``running(task_id)`` says the work runs, cancel the execution."""
    task_id = f"acme/{new_id()}"
    await bus.send(_create(task_id, definition))
    trigger = new_id()
    await bus.send(
        TriggerTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now(), trigger_id=trigger)
    )
    await bus.wait_for(lambda: running(task_id), 30, "the work to run")
    execution_id = execution_id_for_trigger(task_id, trigger)
    await bus.send(
        CancelExecution(
            command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now(), execution_id=execution_id
        )
    )
    return task_id, execution_id


async def _outcomes(bus: Bus, execution_id: str, settle: float) -> list[Any]:
    await bus.wait_for(
        lambda: any(e.execution_id == execution_id for e in bus.events(topic="outcomes")), 30, "the outcome"
    )
    await asyncio.sleep(settle)  # a second outcome, if any, would come now
    return [e for e in bus.events(topic="outcomes") if e.execution_id == execution_id]


async def test_a_long_http_request_is_stopped_and_the_cancel_request_sent(bus: Bus) -> None:
    target = await HttpTarget(slow_paths={"/work": 6}).start()
    try:
        definition = TaskDefinition(
            name="long", work=HttpWork(method="POST", url=target.url, cancel=HttpRequestSpec(url=f"{target.url}/stop"))
        )
        _, execution_id = await _start_then_cancel(
            bus, definition, lambda _: any(r["path"] == "/work" for r in target.requests)
        )
        cancelled_at = now()
        await bus.wait_for(lambda: any(r["path"] == "/work/stop" for r in target.requests), 30, "the cancel request")
        stop = next(r for r in target.requests if r["path"] == "/work/stop")
        print(
            f"CancelExecution sent -> cancel request at the target: {(stop['at'] - cancelled_at).total_seconds():.3f}s"
        )
        assert stop["key"] == execution_id  # the same Idempotency-Key as the work it cancels
        outcomes = await _outcomes(bus, execution_id, 2.0)
        assert [e.status for e in outcomes] == ["cancelled"]
    finally:
        await target.stop()


async def test_an_engine_run_is_started_polled_and_cancelled_with_its_job_id(bus: Bus) -> None:
    engine = await Engine().start()
    try:
        definition = TaskDefinition(name="engine", work=engine.work())
        _, execution_id = await _start_then_cancel(bus, definition, lambda _: engine.polls.get("run-1", 0) >= 2)
        await bus.wait_for(lambda: engine.cancelled == ["run-1"], 30, "the engine to get the cancel")
        polls = engine.polls["run-1"]
        outcomes = await _outcomes(bus, execution_id, 2.0)
        assert [e.status for e in outcomes] == ["cancelled"]
        assert engine.polls["run-1"] <= polls + 1, "polling went on after the cancellation"
    finally:
        await engine.stop()


async def test_an_engine_run_that_passes_keeps_its_run_id_and_report_url(bus: Bus) -> None:
    engine = await Engine(finish_after=2).start()
    try:
        task_id = f"acme/{new_id()}"
        await bus.send(_create(task_id, TaskDefinition(name="engine", work=engine.work())))
        trigger = new_id()
        await bus.send(
            TriggerTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now(), trigger_id=trigger)
        )
        outcomes = await _outcomes(bus, execution_id_for_trigger(task_id, trigger), 0.0)
        assert [e.status for e in outcomes] == ["succeeded"]
        result = outcomes[0].result
        assert (result["job_id"], result["report_url"], result["state"]) == (
            "run-1",
            f"{engine.url}/reports/run-1",
            "passed",
        )
        assert engine.cancelled == []
    finally:
        await engine.stop()


@pytest.fixture
async def reports(infra: Infra, prefix: str) -> AsyncIterator[list[bytes]]:
    """The executors' outcome reports on ``commands``, raw (a stale one never reaches ``outcomes``)."""
    commands = AIOKafkaConsumer(
        f"{prefix}.commands", bootstrap_servers=infra.bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await commands.start()
    seen: list[bytes] = []

    async def follow() -> None:
        async for record in commands:
            if b"ReportExecutionOutcome" in (record.value or b""):
                seen.append(record.value or b"")

    follower = asyncio.create_task(follow())
    try:
        yield seen
    finally:
        follower.cancel()
        await commands.stop()


async def test_a_handler_is_cancelled_and_reports_nothing(bus: Bus, reports: list[bytes]) -> None:
    definition = TaskDefinition(name="slow", work=HandlerWork(name="sleep", params={"seconds": 4}))
    _, execution_id = await _start_then_cancel(bus, definition, lambda t: bool(bus.events(t, "ExecutionStarted")))
    outcomes = await _outcomes(bus, execution_id, 5.0)  # past the handler's 4 seconds
    assert [e.status for e in outcomes] == ["cancelled"]
    # Without the cancellation the handler would have finished and reported "succeeded".
    assert not [r for r in reports if execution_id.encode() in r]


async def test_the_overlap_policy_cancel_other_stops_the_running_slot(bus: Bus, reports: list[bytes]) -> None:
    # A slot every 3 s of work taking 5 s: each new slot cancels the running one.
    task_id = f"acme/{new_id()}"
    definition = TaskDefinition(
        name="overlapping",
        schedule=IntervalSchedule(every_seconds=3, anchor=now() + timedelta(seconds=1)),
        work=HandlerWork(name="sleep", params={"seconds": 5}),
        overlap=OverlapPolicy.CANCEL_OTHER,
    )
    await bus.send(_create(task_id, definition))
    await bus.wait_for(lambda: bool(bus.events(task_id, "ExecutionCompleted", "outcomes")), 30, "a slot cancelled")
    first = bus.events(task_id, "ExecutionCompleted", "outcomes")[0]
    assert first.status == "cancelled" and "overlap policy" in (first.error or "")
    await bus.send(DeleteTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now()))
    await asyncio.sleep(6.0)  # past the first slot's 5 s of work
    assert [e.status for e in bus.events(task_id, topic="outcomes") if e.execution_id == first.execution_id] == [
        "cancelled"
    ]
    # Without the cancellation reaching the executor, the handler would have reported "succeeded".
    assert not [r for r in reports if first.execution_id.encode() in r]
