"""Concurrency: N HTTP executions in flight at once against a slow local endpoint.

    .venv/bin/python -m tests.bench.inflight --executions 1000 --delay 10

Uses the running local stack (or SCHED_KAFKA_BOOTSTRAP). Starts a worker (no executor) and
one executor process allowed ``--executions`` attempts at once, creates N one-shot tasks
due at the same instant that POST to an endpoint of this process answering after
``--delay`` seconds, and reads:

- the most requests the endpoint held open at once, and when the last one arrived;
- when the last ``ExecutionCompleted`` reached ``outcomes``, and how many succeeded;
- requests repeated at the endpoint (same ``Idempotency-Key``), which must be none;
- the resident memory of the executor and of the worker (peak).

Prints the figures; asserts nothing about time (the CI smoke checks the counts).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.commands import CreateTask
from schemas.envelope import command_envelope, decode_event, encode
from schemas.events import ExecutionCompleted
from schemas.specs import HttpWork, OnceSchedule, TaskDefinition
from tests.bench.common import rss_mb, run_and_print, wait_for_topics
from tests.integration.harness import WorkerProc, worker_env


@dataclass
class SlowEndpoint:
    """Answers every request after ``delay`` seconds; counts what it holds open."""

    delay: float
    open_now: int = 0
    open_max: int = 0
    keys: Counter[str] = field(default_factory=Counter)
    last_arrival: float = 0.0
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.keys[request.headers.get("Idempotency-Key", "")] += 1
        self.last_arrival = time.time()
        self.open_now += 1
        self.open_max = max(self.open_max, self.open_now)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.open_now -= 1
        return web.json_response({"ok": True})

    async def start(self) -> SlowEndpoint:
        app = web.Application()
        app.router.add_post("/slow", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=8192)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/slow"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Result:
    executions: int
    delay: float
    open_max: int
    all_dispatched_s: float
    """Due instant -> the last dispatch record was written."""
    all_arrived_s: float
    """Due instant -> the last request reached the endpoint."""
    all_completed_s: float
    """Due instant -> the last outcome was on the ``outcomes`` topic."""
    succeeded: int
    failed: int
    repeated: int
    executor_rss_mb: float
    worker_rss_mb: float

    def table(self) -> str:
        return "\n".join(
            [
                f"executions={self.executions} endpoint delay={self.delay:g}s",
                f"most in flight at once={self.open_max}; after the due time: last dispatched "
                f"{self.all_dispatched_s:.1f}s, last request arrived {self.all_arrived_s:.1f}s, "
                f"last outcome {self.all_completed_s:.1f}s",
                f"succeeded={self.succeeded} failed={self.failed} repeated requests={self.repeated}",
                f"peak RSS: executor {self.executor_rss_mb:.0f} MB, worker {self.worker_rss_mb:.0f} MB",
            ]
        )


async def run(bootstrap: str, mongo_url: str, executions: int, delay: float, partitions: int = 8) -> Result:
    prefix = f"inflight{uuid.uuid4().hex[:8]}"
    print(f"topic prefix {prefix}.", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="inflight-"))
    env = worker_env(bootstrap, mongo_url, prefix, tmp / "data", SCHED_PARTITIONS=str(partitions),
                     SCHED_EXECUTOR_CONCURRENCY=str(executions))  # fmt: skip
    worker = WorkerProc(env, tmp / "worker.log", "inflight-worker", ("worker", "--no-executor")).start()
    executor = WorkerProc(env, tmp / "executor.log", "inflight-executor", ("executor",)).start()
    endpoint = await SlowEndpoint(delay).start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    outcomes = f"{prefix}.outcomes"
    dispatch = f"{prefix}.dispatch.normal"
    consumer = AIOKafkaConsumer(
        outcomes, dispatch, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    try:
        await wait_for_topics(bootstrap, [f"{prefix}.commands", outcomes, dispatch])
        await producer.start()
        await consumer.start()
        # Creating runs through the same processor: leave it time to apply every create first.
        due = (datetime.now(UTC) + timedelta(seconds=20 + executions / 300)).replace(microsecond=0)
        definition = TaskDefinition(
            name="slow", schedule=OnceSchedule(at=due), timeout_seconds=delay * 10 + 60,
            work=HttpWork(method="POST", url=endpoint.url, timeout_seconds=delay * 10 + 30),
        )  # fmt: skip
        sends = []
        for i in range(executions):
            task_id = f"slow-{i:05d}"
            cmd = CreateTask(command_id=str(uuid.uuid4()), task_id=task_id, tenant="bench", actor="bench",
                             at=datetime.now(UTC), definition=definition)  # fmt: skip
            sends.append(await producer.send(f"{prefix}.commands", key=task_id.encode(),
                                             value=encode(command_envelope(cmd, "bench"))))  # fmt: skip
        await asyncio.gather(*sends)
        print(f"{executions} tasks due at {due:%H:%M:%S} UTC", flush=True)
        finished: dict[str, str] = {}
        last_outcome = last_dispatch = 0.0
        peaks = [0.0, 0.0]
        deadline = due.timestamp() + delay * 10 + 300
        while len(finished) < executions and time.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    event = decode_event(r.value or b"")
                    if r.topic == dispatch:
                        last_dispatch = max(last_dispatch, r.timestamp / 1000)
                    elif isinstance(event, ExecutionCompleted):
                        finished[event.execution_id] = str(event.status)
                        last_outcome = r.timestamp / 1000
            for i, proc in enumerate((executor, worker)):
                if proc.proc is not None:
                    peaks[i] = max(peaks[i], rss_mb(proc.proc.pid))
        if len(finished) < executions:
            print(f"only {len(finished)} of {executions} finished; executor log:\n{executor.tail()}", flush=True)
        statuses = Counter(finished.values())
        t0 = due.timestamp()
        return Result(
            executions, delay, endpoint.open_max, last_dispatch - t0, endpoint.last_arrival - t0, last_outcome - t0,
            statuses["succeeded"], sum(statuses.values()) - statuses["succeeded"],
            sum(n - 1 for n in endpoint.keys.values()), peaks[0], peaks[1],
        )  # fmt: skip
    finally:
        await consumer.stop()
        await producer.stop()
        await endpoint.stop()
        executor.stop()
        worker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executions", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=10.0, help="seconds the endpoint takes to answer")
    args = parser.parse_args(argv)
    return run_and_print(lambda bootstrap, mongo: run(bootstrap, mongo, args.executions, args.delay))


if __name__ == "__main__":
    sys.exit(main())
