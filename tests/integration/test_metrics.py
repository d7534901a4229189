"""A worker process's ``/metrics``: fire lateness, outcomes, in flight, consumer lag, readiness."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.commands import CreateTask, DeleteTask
from schemas.specs import HandlerWork, HttpWork, IntervalSchedule, TaskDefinition
from tests.conftest import Infra
from tests.integration.harness import Bus, HttpTarget, WorkerProc, free_port, new_id, now, worker_env

pytestmark = pytest.mark.slow


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(name, sorted labels) -> value`` of every sample of an exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _create(task_id: str, definition: TaskDefinition) -> CreateTask:
    return CreateTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="a", at=now(), definition=definition)


async def test_worker_exports_lateness_outcomes_and_lag(infra: Infra, tmp_path: Path) -> None:
    prefix = f"met{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = worker_env(
        infra.bootstrap, infra.mongo_url, prefix, tmp_path / "data",
        SCHED_METRICS_PORT=str(port), SCHED_METRICS_HOST="127.0.0.1", SCHED_LAG_INTERVAL_SECONDS="0.5",
    )  # fmt: skip
    worker = WorkerProc(env, tmp_path / "worker.log", "m1").start()
    bus = await Bus(infra.bootstrap, prefix).start()
    target = await HttpTarget().start()
    try:
        probe = f"probe-{new_id()}"
        definition = TaskDefinition(name="probe", schedule=None, work=HandlerWork(name="noop"))
        await bus.send(_create(probe, definition))
        await bus.wait_for(lambda: bool(bus.events(probe, "TaskCreated")), 90, "the worker to start")

        task_id = f"every-second-{new_id()}"
        definition = TaskDefinition(
            name="every second",
            schedule=IntervalSchedule(every_seconds=1.0),
            work=HttpWork(method="POST", url=target.url),
        )
        await bus.send(_create(task_id, definition))
        await bus.wait_for(lambda: len(bus.events(task_id, "ExecutionCompleted")) >= 3, 60, "3 completed runs")
        await bus.send(DeleteTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="a", at=now()))
        await bus.wait_for(lambda: bool(bus.events(task_id, "TaskDeleted")), 30, "TaskDeleted")
        await asyncio.sleep(1.5)  # a lag round after the last commands

        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        got = samples(response.text)
        completed = len(bus.events(task_id, "ExecutionCompleted"))

        assert got[("scheduler_fire_dispatch_lateness_seconds_count", ())] >= completed
        assert got[("scheduler_fire_start_lateness_seconds_count", ())] >= completed
        # On time: every slot left within a second (the bucket at 1 s holds them all).
        assert (
            got[("scheduler_fire_dispatch_lateness_seconds_bucket", (("le", "1.0"),))]
            == got[("scheduler_fire_dispatch_lateness_seconds_count", ())]
        )
        assert got[("scheduler_execution_outcomes_total", (("status", "succeeded"),))] >= completed
        assert got[("scheduler_executions_in_flight", ())] == 0
        assert got[("scheduler_worker_ready", ())] == 1
        assert got[("scheduler_worker_events_total", ())] >= 3 * completed
        # Consumer lag, labelled by topic and group only, for the processor and the executors.
        lag = {
            dict(labels)["group"]: value
            for (name, labels), value in got.items()
            if name == "scheduler_consumer_lag_messages"
        }
        assert f"{prefix}.scheduler" in lag and f"{prefix}.executors" in lag, lag
        assert all(v >= 0 for v in lag.values())
        # Bounded labels: no task, tenant or execution id anywhere.
        assert task_id not in response.text and "acme" not in response.text
    finally:
        await target.stop()
        await bus.stop()
        worker.stop()
        print(worker.tail())
