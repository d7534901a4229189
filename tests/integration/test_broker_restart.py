"""Restart the Kafka broker mid-run: once it is back, nothing is lost and nothing doubled."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from deploy import stack
from schemas.commands import DeleteTask
from tests.integration.harness import (
    Bus,
    HttpTarget,
    WorkerProc,
    assert_every_slot_once,
    create_every_second_tasks,
    free_port,
    new_id,
    now,
    worker_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.failure, pytest.mark.stack]

TASKS = 8


async def test_broker_restart_loses_and_doubles_nothing(tmp_path: Path) -> None:
    # A private stack: restarting the shared broker would disturb every other test.
    shared = stack.StackConfig.from_env()
    cfg = stack.StackConfig(tmp_path / "stack", shared.cache, free_port(), free_port(), free_port())
    await asyncio.to_thread(stack.up, cfg)
    prefix = f"br{uuid.uuid4().hex[:8]}"
    target = await HttpTarget().start()
    bus = await Bus(cfg.bootstrap, prefix).start()
    worker = WorkerProc(
        worker_env(cfg.bootstrap, cfg.mongo_url, prefix, tmp_path / "worker"), tmp_path / "worker.log", "wr"
    ).start()
    try:
        anchor = now().replace(microsecond=0) + timedelta(seconds=3)
        ids = await create_every_second_tasks(bus, "br", TASKS, target.url, anchor)
        await bus.wait_for(lambda: len(bus.events(type_="ExecutionCompleted")) >= 3 * TASKS, 90, "firing")

        await asyncio.to_thread(stack.down, cfg, 30.0, "kafka")
        down_at = now()
        await asyncio.sleep(8)
        await asyncio.to_thread(stack.up, cfg)
        back_at = now()

        def caught_up() -> bool:
            latest = max((e.at for e in bus.events(type_="ExecutionCompleted")), default=down_at)
            return latest > back_at + timedelta(seconds=5)

        await bus.wait_for(caught_up, 120, "firing again after the restart")
        assert worker.alive(), worker.tail()
        stop_at = now()
        for task_id in ids:
            await bus.send(DeleteTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="t", at=now()))
        await bus.wait_for(lambda: len(bus.events(type_="TaskDeleted")) >= TASKS, 60, "deletes")
        await asyncio.sleep(2)
        # Slots due while the broker was down ran late (catch-up), once each.
        executions = assert_every_slot_once(bus, ids, anchor, stop_at - timedelta(seconds=3))
        print(f"executions {executions}; broker down {(back_at - down_at).total_seconds():.0f}s")
    finally:
        worker.stop()
        await bus.stop()
        await target.stop()
        await asyncio.to_thread(stack.down, cfg)
        print(worker.tail(20))
