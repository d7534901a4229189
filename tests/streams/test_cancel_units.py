"""Issue 13, cancellation reaching the work, part by part: the HTTP runner's cleanup against a
real local HTTP server (cancel request on cancellation and on timeout, never on shutdown), the
executor's handling of a cancellation (fake runners and reports), and the publisher's routing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiokafka import ConsumerRecord
from pydantic import ValidationError

from schemas.envelope import encode, event_envelope
from schemas.events import Event, ExecutionCompleted, ExecutionDispatched
from schemas.specs import HandlerWork, HttpPoll, HttpRequestSpec, HttpWork, Priority
from streams.executor import Executor
from streams.fence import TopicFence, fenced_http_client
from streams.publisher import Publisher
from streams.runners import Attempt, Runners, RunResult
from streams.settings import Settings
from tests.integration.harness import serving

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Engine:
    """An engine on 127.0.0.1: ``/start`` names job-7 (after ``start_delay``), its status stays
    ``running``, every request is recorded as (method, path, body)."""

    port: int = 0
    start_delay: float = 0.0
    requests: list[tuple[str, str, str]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, await request.text()))
        if request.path == "/start":
            await asyncio.sleep(self.start_delay)
            return web.json_response({"id": "job-7"})
        return web.json_response({"status": "running"})

    def cancels(self) -> list[tuple[str, str, str]]:
        return [r for r in self.requests if "cancel" in r[1]]


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", engine.handle)
    async with serving(app) as engine.port:
        yield engine


def _engine_work(engine: Engine) -> HttpWork:
    return HttpWork(
        url=engine.url("/start"),
        poll=HttpPoll(status_url=engine.url("/jobs/{job_id}"), interval_seconds=0.02),
        cancel=HttpRequestSpec(url=engine.url("/jobs/{job_id}/cancel"), body={"job": "{job_id}", "why": "x"}),
    )


async def _run_then_cancel(engine: Engine, work: HttpWork, *, requested: bool, after: float = 0.2) -> Attempt:
    """Run ``work`` in a task, cancel that task after ``after`` seconds, as the scheduler
    (``requested``) or as a shutdown does; the task must end with CancelledError."""
    at = Attempt("acme/t1", "acme", "exec-1", 1, {})
    settings = Settings(http_allow_networks=["127.0.0.0/8"])  # type: ignore[arg-type]
    async with fenced_http_client(settings, 10) as http:
        runners = Runners(http, None, None, TopicFence.from_settings(settings))
        task = asyncio.create_task(runners.run(work, at, budget=30))
        await asyncio.sleep(after)
        at.cancellation.requested = requested
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return at


async def test_a_cancelled_engine_run_gets_the_cancel_request_with_its_job_id(engine: Engine) -> None:
    await _run_then_cancel(engine, _engine_work(engine), requested=True)
    assert engine.cancels() == [("POST", "/jobs/job-7/cancel", '{"job":"job-7","why":"x"}')]
    assert any(path == "/jobs/job-7" for _, path, _ in engine.requests)  # it was polled


async def test_a_shutdown_leaves_the_engine_run_alone(engine: Engine) -> None:
    # The partition's next owner runs the attempt again (same Idempotency-Key) and resumes it.
    await _run_then_cancel(engine, _engine_work(engine), requested=False)
    assert engine.cancels() == []


async def test_a_cancel_naming_the_job_is_not_sent_before_the_job_id_is_known(engine: Engine) -> None:
    engine.start_delay = 1.5
    await _run_then_cancel(engine, _engine_work(engine), requested=True)
    assert engine.cancels() == []


async def test_a_plain_request_cancelled_in_flight_sends_its_cancel_request(engine: Engine) -> None:
    engine.start_delay = 1.5
    work = HttpWork(url=engine.url("/start"), cancel=HttpRequestSpec(method="DELETE", url=engine.url("/cancel")))
    await _run_then_cancel(engine, work, requested=True)
    assert engine.cancels() == [("DELETE", "/cancel", "")]


async def test_a_timed_out_engine_run_is_cancelled_and_fails(engine: Engine) -> None:
    settings = Settings(http_allow_networks=["127.0.0.0/8"])  # type: ignore[arg-type]
    async with fenced_http_client(settings, 10) as http:
        runners = Runners(http, None, None, TopicFence.from_settings(settings))
        result = await runners.run(_engine_work(engine), Attempt("acme/t1", "acme", "exec-1", 1, {}), budget=0.3)
    assert result.status == "failed" and result.error.startswith("timed out")
    assert [path for _, path, _ in engine.cancels()] == ["/jobs/job-7/cancel"]


# --- the executor ------------------------------------------------------------------------------


class _BlockingRunners:
    """Fake runners: every attempt waits until cancelled (recorded) or released."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self.stopped: list[str] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def run(self, work: Any, attempt: Attempt, budget: float) -> RunResult:
        self.attempts.append(attempt)
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.stopped.append(attempt.execution_id)
            raise
        return RunResult("succeeded")


class _Reports:
    """Fake of the report batcher: keeps the commands."""

    def __init__(self) -> None:
        self.commands: list[Any] = []

    async def add(self, command: Any, correlation_id: str | None = None) -> asyncio.Future[None]:
        self.commands.append(command)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def outcomes(self) -> list[Any]:
        return [c for c in self.commands if c.type == "ReportExecutionOutcome"]


def _record(event: Event, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    value = encode(event_envelope(event, source="tests", correlation_id=None))
    return ConsumerRecord("dispatch.normal", 0, offset, 0, 0, b"acme/t1", value, None, 7, len(value), [])


def _dispatch(execution_id: str, attempt: int = 1) -> ExecutionDispatched:
    return ExecutionDispatched(
        event_id=f"d-{execution_id}", task_id="acme/t1", tenant="acme", sequence=2, at=T0, causation_id="c",
        actor="a", execution_id=execution_id, attempt=attempt, reason="manual", priority=Priority.NORMAL,
        work=HandlerWork(name="sleep"), params={}, scheduled_for=T0, deadline=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip


def _cancelled(execution_id: str, attempts: int = 1) -> ExecutionCompleted:
    return ExecutionCompleted(
        event_id=f"c-{execution_id}", task_id="acme/t1", tenant="acme", sequence=3, at=T0, causation_id="c",
        actor="a", execution_id=execution_id, status="cancelled", attempts=attempts, finished_at=T0,
    )  # fmt: skip


def _executor() -> tuple[Executor, _Reports]:
    executor = Executor(Settings(executor_started_report_after_seconds=0))
    reports = _Reports()
    executor._batcher = reports  # type: ignore[assignment]
    return executor, reports


async def test_a_running_attempt_is_cancelled_once_and_reports_no_outcome() -> None:
    executor, reports = _executor()
    runners = _BlockingRunners()
    job = asyncio.create_task(executor._execute_record(_record(_dispatch("x1")), None, runners))  # type: ignore[arg-type]
    await asyncio.wait_for(runners.started.wait(), 5)
    assert executor._is_cancellation(_record(_cancelled("x1"), 1))
    assert executor._is_cancellation(_record(_cancelled("x1"), 2))  # delivered twice: harmless
    await asyncio.wait_for(job, 5)  # ends normally: the offset is finished, not run again
    assert runners.stopped == ["x1"] and runners.attempts[0].cancellation.requested
    assert reports.outcomes() == [] and executor.stats.cancelled == 1
    assert executor._running == {}


async def test_a_dispatch_cancelled_before_it_starts_is_dropped() -> None:
    # Queued behind other work, or (another priority's topic) read after its cancellation.
    executor, reports = _executor()
    runners = _BlockingRunners()
    assert executor._is_cancellation(_record(_cancelled("x2")))
    await asyncio.wait_for(executor._execute_record(_record(_dispatch("x2")), None, runners), 5)  # type: ignore[arg-type]
    assert runners.attempts == [] and reports.commands == [] and executor.stats.cancelled == 1


async def test_a_cancellation_after_the_outcome_changes_nothing() -> None:
    executor, reports = _executor()
    runners = _BlockingRunners()
    runners.release.set()
    await executor._execute_record(_record(_dispatch("x3")), None, runners)  # type: ignore[arg-type]
    assert executor._is_cancellation(_record(_cancelled("x3")))
    assert [c.status for c in reports.outcomes()] == ["succeeded"] and executor.stats.cancelled == 0


async def test_a_shutdown_is_not_taken_for_a_cancellation() -> None:
    executor, reports = _executor()
    runners = _BlockingRunners()
    job = asyncio.create_task(executor._execute_record(_record(_dispatch("x4")), None, runners))  # type: ignore[arg-type]
    await asyncio.wait_for(runners.started.wait(), 5)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):  # unfinished: its offset is not committed past
        await job
    assert not runners.attempts[0].cancellation.requested and executor.stats.cancelled == 0
    assert reports.outcomes() == []


class _PerAttemptRunners(_BlockingRunners):
    """Fake runners: each attempt number waits for its own release."""

    def __init__(self) -> None:
        super().__init__()
        self.releases: dict[int, asyncio.Event] = {}

    async def run(self, work: Any, attempt: Attempt, budget: float) -> RunResult:
        self.attempts.append(attempt)
        try:
            await self.releases.setdefault(attempt.attempt, asyncio.Event()).wait()
        except asyncio.CancelledError:
            self.stopped.append(f"{attempt.execution_id}#{attempt.attempt}")
            raise
        return RunResult("failed", error="boom")


async def test_the_retry_of_a_stale_attempt_is_the_one_cancelled() -> None:
    # The owner timed attempt 1 out and dispatched attempt 2 while attempt 1 still ran here.
    executor, _ = _executor()
    runners = _PerAttemptRunners()
    first = asyncio.create_task(executor._execute_record(_record(_dispatch("x7", 1)), None, runners))  # type: ignore[arg-type]
    second = asyncio.create_task(executor._execute_record(_record(_dispatch("x7", 2)), None, runners))  # type: ignore[arg-type]
    while len(runners.attempts) < 2:  # noqa: ASYNC110 (two starts to wait for)
        await asyncio.sleep(0.01)
    runners.releases[1].set()
    await asyncio.wait_for(first, 5)
    executor.cancel("x7")
    await asyncio.wait_for(second, 5)
    assert runners.stopped == ["x7#2"] and executor.stats.cancelled == 1


async def test_a_shutdown_during_a_cancellation_still_stops_the_executor() -> None:
    executor, _ = _executor()
    runners = _BlockingRunners()
    job = asyncio.create_task(executor._execute_record(_record(_dispatch("x6")), None, runners))  # type: ignore[arg-type]
    await asyncio.wait_for(runners.started.wait(), 5)
    executor.cancel("x6")
    job.cancel()  # the process stops at the same moment: that cancellation must not be swallowed
    with pytest.raises(asyncio.CancelledError):
        await job


def test_a_dispatch_is_not_a_cancellation_even_when_its_params_say_so() -> None:
    executor, _ = _executor()
    event = _dispatch("x5").model_copy(update={"params": {"note": "ExecutionCompleted"}})
    assert not executor._is_cancellation(_record(event))
    assert not executor._is_cancellation(_record(_cancelled("x5").model_copy(update={"status": "succeeded"})))
    assert "x5" not in executor._cancelled


# --- the publisher -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "to_dispatch"),
    [
        (_cancelled("p1"), True),
        (_cancelled("p2", attempts=0), False),  # a buffered execution: never reached an executor
        (_cancelled("p3").model_copy(update={"status": "succeeded"}), False),
    ],
)
async def test_a_cancelled_dispatched_execution_goes_to_every_dispatch_topic(event: Event, to_dispatch: bool) -> None:
    sent: list[tuple[str, bytes | None]] = []

    async def send(topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        sent.append((topic, key))

    await Publisher(Settings(topic_prefix="p."), send, "tests").events(b"acme/t1", [event])
    expected = {"p.task-events", "p.outcomes"}
    if to_dispatch:
        expected |= {"p.dispatch.high", "p.dispatch.normal", "p.dispatch.low"}
    assert {topic for topic, _ in sent} == expected and len(sent) == len(expected)
    assert {key for _, key in sent} == {b"acme/t1"}  # same key: the dispatch's partition


def test_the_report_url_pointer_must_be_a_json_pointer() -> None:
    with pytest.raises(ValidationError) as caught:
        HttpPoll(status_url="https://engine.example/runs/{job_id}", report_url_pointer="links/report")
    assert caught.value.errors()[0]["loc"] == ("report_url_pointer",)
