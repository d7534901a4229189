"""Issue 13, shell work end to end against the real broker: a worker process whose operator
allows a few programs runs shell tasks; a task over its memory limit fails with a clear error,
cancelling a long shell execution stops its processes (and the outcome is ``cancelled``, once),
and a run's exit code, output and params come back on ``outcomes``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from schemas.commands import CancelExecution, CreateTask, TriggerTask
from schemas.ids import execution_id_for_trigger
from schemas.specs import ShellLimits, ShellWork, TaskDefinition
from tests.integration.harness import Bus, new_id, now

pytestmark = pytest.mark.slow

PYTHON = os.path.realpath(sys.executable)


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"shell{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def worker_settings() -> dict[str, str]:
    return {
        "SCHED_SHELL_COMMANDS": json.dumps([PYTHON, "/bin/sh"]),
        "SCHED_SHELL_ENV": '["REPORT_*"]',
        "SCHED_SHELL_KILL_GRACE_SECONDS": "2",
    }


async def _trigger(bus: Bus, work: ShellWork, params: dict[str, Any] | None = None) -> tuple[str, str]:
    """Create a task doing ``work`` and run it now: ``(task id, execution id)``."""
    task_id = f"acme/{new_id()}"
    definition = TaskDefinition(name="shell", work=work, timeout_seconds=600)
    await bus.send(
        CreateTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now(), definition=definition)
    )
    trigger = new_id()
    await bus.send(
        TriggerTask(
            command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now(), trigger_id=trigger,
            params=params or {},
        )
    )  # fmt: skip
    return task_id, execution_id_for_trigger(task_id, trigger)


async def _outcomes(bus: Bus, execution_id: str, settle: float = 0.0) -> list[Any]:
    await bus.wait_for(
        lambda: any(e.execution_id == execution_id for e in bus.events(topic="outcomes")), 60, "the outcome"
    )
    await asyncio.sleep(settle)  # a second outcome, if any, would come now
    return [e for e in bus.events(topic="outcomes") if e.execution_id == execution_id]


async def test_a_shell_task_over_its_memory_limit_fails_with_a_clear_error(bus: Bus) -> None:
    work = ShellWork(argv=[PYTHON, "-c", "x = bytearray(400 * 1024 * 1024)"], limits=ShellLimits(memory_mb=64))
    _, execution_id = await _trigger(bus, work)
    [outcome] = await _outcomes(bus, execution_id)
    assert outcome.status == "failed"
    assert outcome.error == "memory limit of 64 MB exceeded (exit code 1): MemoryError"
    assert outcome.result["exit_code"] == 1 and "MemoryError" in outcome.result["stderr"]


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_cancelling_a_long_shell_execution_stops_it(bus: Bus, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    work = ShellWork(argv=["/bin/sh", "-c", f"cut -d' ' -f5 /proc/$$/stat > {pidfile}; sleep 300 & sleep 300; wait"])
    task_id, execution_id = await _trigger(bus, work)
    await bus.wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "", 60, "the process to start")
    pid = int(pidfile.read_text())  # the process group the executor stops
    assert not _group_gone(pid)
    cancelled_at = time.monotonic()
    await bus.send(
        CancelExecution(
            command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now(), execution_id=execution_id
        )
    )
    await bus.wait_for(lambda: _group_gone(pid), 30, "the process group to be gone")
    print(f"CancelExecution sent -> process group gone: {time.monotonic() - cancelled_at:.3f}s")
    outcomes = await _outcomes(bus, execution_id, settle=3.0)
    assert [e.status for e in outcomes] == ["cancelled"]


async def test_a_shell_run_reports_its_exit_code_output_and_params(bus: Bus) -> None:
    script = 'echo "day=$REPORT_DAY params=$SCHED_PARAMS"; echo warning >&2; exit 0'
    work = ShellWork(argv=["/bin/sh", "-c", script], env={"REPORT_DAY": "mon"})
    _, execution_id = await _trigger(bus, work, {"region": "eu"})
    [outcome] = await _outcomes(bus, execution_id)
    assert outcome.status == "succeeded", outcome
    assert outcome.result == {"exit_code": 0, "stdout": 'day=mon params={"region":"eu"}\n', "stderr": "warning\n"}


async def test_a_program_the_executor_does_not_allow_fails_saying_why(bus: Bus) -> None:
    # Sent straight to Kafka, past the API: the executor's own check is the one that holds.
    _, execution_id = await _trigger(bus, ShellWork(argv=["/usr/bin/env"]))
    [outcome] = await _outcomes(bus, execution_id)
    assert outcome.status == "failed" and outcome.result is None
    assert outcome.error.startswith("shell work refused: argv[0]: program '/usr/bin/env' is not allowed"), outcome
