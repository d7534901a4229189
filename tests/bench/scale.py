"""Scale: one worker's memory and due-index rebuild time with N active tasks.

    .venv/bin/python -m tests.bench.scale --tasks 100000

Uses the running local stack (or SCHED_KAFKA_BOOTSTRAP). Starts one worker (no executor),
creates N tasks through the commands topic (a yearly cron in Europe/Berlin, so none fires
during the run), waits until every ``TaskCreated`` is on ``task-events`` and reads:

- ingest: commands applied per second while creating;
- memory: the worker's resident memory with N tasks owned;
- warm restart: SIGKILL the worker and start it again on the same disk; time from process
  start until its due-index is rebuilt (the worker's own log line gives the rebuild part);
- cold restart: a new worker on an empty disk (a replaced machine) restores the state table
  from its changelog topic, then rebuilds the due-index.

Prints the figures; asserts nothing about time (the CI smoke checks the counts).

    .venv/bin/python -m tests.bench.scale --micro --tasks 1000000

needs no stack: what the worker's in-memory structures hold per task (tracemalloc), built as
the worker's rebuild builds them from stored records (due-index and tenant map, with every
task at one wakeup and each at its own; ids with and without their tenant), what a cached
decoded state holds, and the CPU time of ``next_fire`` per call.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import shutil
import sys
import tempfile
import time
import timeit
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from scheduler import decision
from scheduler.schedule import next_fire
from schemas.commands import CreateTask
from schemas.envelope import command_envelope, decode_command, encode
from schemas.specs import CronSchedule, HandlerWork, IntervalSchedule, Schedule, TaskDefinition
from streams.app import RESEND_WINDOW
from streams.firing import Firing
from streams.store import IndexEntry, StateStore, Stored
from tests.bench.common import rss_mb, run_and_print, wait_for_topics
from tests.integration.harness import WorkerProc, worker_env

REBUILT = re.compile(r"due-index rebuilt: (\d+) tasks in ([0-9.]+)s")
QUIET = RESEND_WINDOW + 5
"""Seconds to wait after the last create, so a restart resends nothing (as for a worker that
has not been flooded with creates in the last minute)."""


@dataclass
class Restart:
    """One start of a worker over existing state."""

    ready_seconds: float
    """Process start until the due-index was rebuilt over every task."""
    rebuild_seconds: float
    """The rebuild itself (reading the table, indexing), from the worker's log."""
    rss_mb: float


@dataclass
class Result:
    tasks: int
    ingest_per_second: float
    rss_mb: float
    warm: Restart
    cold: Restart

    def table(self) -> str:
        return "\n".join(
            [
                f"tasks={self.tasks} ingest={self.ingest_per_second:.0f} commands/s worker RSS={self.rss_mb:.0f} MB",
                f"warm restart (same disk): ready in {self.warm.ready_seconds:.1f}s "
                f"(due-index rebuild {self.warm.rebuild_seconds:.1f}s), RSS {self.warm.rss_mb:.0f} MB",
                f"cold restart (empty disk): ready in {self.cold.ready_seconds:.1f}s "
                f"(due-index rebuild {self.cold.rebuild_seconds:.1f}s), RSS {self.cold.rss_mb:.0f} MB",
            ]
        )


def _create(task_id: str, at: datetime) -> bytes:
    definition = TaskDefinition(
        name=task_id,
        schedule=CronSchedule(expression="0 3 1 1 *", timezone="Europe/Berlin"),
        work=HandlerWork(name="noop"),
    )
    cmd = CreateTask(command_id=str(uuid.uuid4()), task_id=task_id, tenant="scale", actor="bench", at=at,
                     definition=definition)  # fmt: skip
    return encode(command_envelope(cmd, "bench"))


def _rss(worker: WorkerProc) -> float:
    return rss_mb(worker.proc.pid) if worker.proc is not None else 0.0


async def _events_written(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> int:
    ends = await consumer.end_offsets(partitions)
    return sum(ends.values())


async def _wait_ready(worker: WorkerProc, tasks: int, started: float, within: float) -> Restart:
    """Wait for the worker's rebuild log lines to cover ``tasks``; RSS once they do."""
    deadline = started + within
    while time.monotonic() < deadline:
        text = worker.log.read_text(errors="replace") if worker.log.exists() else ""
        found = [(int(n), float(s)) for n, s in REBUILT.findall(text)]
        if found and found[-1][0] >= tasks:
            ready = time.monotonic() - started
            await asyncio.sleep(2)  # let allocation settle after the rebuild
            return Restart(ready, found[-1][1], _rss(worker))
        if not worker.alive():
            raise RuntimeError(f"the worker exited:\n{worker.tail()}")
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the worker did not rebuild its due-index within {within:.0f}s:\n{worker.tail()}")


async def run(bootstrap: str, mongo_url: str, tasks: int, partitions: int = 8, quiet: float = QUIET) -> Result:
    prefix = f"scale{uuid.uuid4().hex[:8]}"
    print(f"topic prefix {prefix}.", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="scale-"))
    # INFO: the worker logs each due-index rebuild, which this runner reads.
    env = worker_env(bootstrap, mongo_url, prefix, tmp / "data", SCHED_PARTITIONS=str(partitions),
                     SCHED_LOG_LEVEL="info")  # fmt: skip
    command = ("worker", "--no-executor")
    worker = WorkerProc(env, tmp / "worker-1.log", "scale-worker", command).start()
    events_topic = f"{prefix}.task-events"
    await wait_for_topics(bootstrap, [f"{prefix}.commands", events_topic])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await producer.start()
    await consumer.start()
    try:
        await _wait_ready(worker, 0, time.monotonic(), 180)
        parts = [TopicPartition(events_topic, p) for p in range(partitions)]
        started = time.monotonic()
        at = datetime.now(UTC)
        pending = []
        for i in range(tasks):
            task_id = f"scale/{i:07d}"  # <tenant>/<id>, as the API names every task
            pending.append(await producer.send(f"{prefix}.commands", key=task_id.encode(), value=_create(task_id, at)))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        print(f"{tasks} commands produced in {time.monotonic() - started:.1f}s", flush=True)
        last_report = 0.0
        while (written := await _events_written(consumer, parts)) < tasks:
            if not worker.alive():
                raise RuntimeError(f"the worker exited:\n{worker.tail()}")
            if time.monotonic() - last_report > 30:
                print(f"  {written} of {tasks} applied, worker RSS {_rss(worker):.0f} MB", flush=True)
                last_report = time.monotonic()
            await asyncio.sleep(1)
        ingest = tasks / (time.monotonic() - started)
        await asyncio.sleep(5)
        steady = _rss(worker)
        print(f"applied at {ingest:.0f}/s; worker RSS {steady:.0f} MB; waiting {quiet:.0f}s", flush=True)
        await asyncio.sleep(quiet)

        worker.kill()
        worker = WorkerProc(env, tmp / "worker-2.log", "scale-worker", command)
        began = time.monotonic()
        worker.start()
        warm = await _wait_ready(worker, tasks, began, 1800)
        print(f"warm: {warm}", flush=True)
        worker.kill()

        cold_env = {**env, "SCHED_DATA_DIR": str(tmp / "data-cold")}
        worker = WorkerProc(cold_env, tmp / "worker-3.log", "scale-worker-cold", command)
        began = time.monotonic()
        worker.start()
        cold = await _wait_ready(worker, tasks, began, 3600)
        print(f"cold: {cold}", flush=True)
        return Result(tasks, ingest, steady, warm, cold)
    finally:
        worker.kill()
        await consumer.stop()
        await producer.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _traced(build: Callable[[], object]) -> int:
    """Bytes still allocated once ``build`` returned (what its result holds), by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        used: int = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del kept
    return used


def index_bytes_per_task(tasks: int, *, spread: bool, tenant_in_id: bool, partitions: int = 8) -> float:
    """Bytes per task of one worker's due-indexes and tenant map (task ids included), built from
    stored records as the worker's rebuild does (a record decoded, its entry read, restored)."""
    base = datetime(2027, 1, 1, 2, tzinfo=UTC)
    records = [
        orjson.dumps(
            {"v": 2, "applied_at": 1.0,
             "index": [f"scale/{i:07d}" if tenant_in_id else f"scale-{i:07d}", "scale",
                       (base + timedelta(seconds=i if spread else 0)).isoformat(), i % partitions]}
        )
        for i in range(tasks)
    ]  # fmt: skip

    def build() -> Firing:
        firing = Firing(resend_seconds=5)
        for record in records:
            entry = IndexEntry.read(orjson.loads(record))
            firing.restore(entry.task_id, entry.tenant, entry.partition or 0, entry.wakeup)
        return firing

    return _traced(build) / tasks


def cached_state_bytes(states: int = 2000) -> float:
    """Bytes per decoded state in the worker's state cache (a new task's state)."""
    table = {}
    for i in range(states):
        task_id = f"scale/{i:07d}"
        state = decision(decode_command(_create(task_id, datetime.now(UTC))), None).state
        assert state is not None
        table[task_id.encode()] = Stored(state, [], 1.0, 0).dump()
    store = StateStore(table, partitions=8, cache_size=states)

    def build() -> StateStore:
        for key in table:
            store.load(key)
        return store

    return _traced(build) / states


def next_fire_micros() -> dict[str, float]:
    """CPU microseconds per ``next_fire`` call (best of 7 runs)."""
    after = datetime(2026, 11, 29, 15, 0, 7, tzinfo=UTC)
    cases: dict[str, Schedule] = {
        "'* * * * *' UTC": CronSchedule(expression="* * * * *", timezone="UTC"),
        "'* * * * *' Europe/Berlin": CronSchedule(expression="* * * * *", timezone="Europe/Berlin"),
        "'0 2 * * *' Europe/Berlin": CronSchedule(expression="0 2 * * *", timezone="Europe/Berlin"),
        "interval 60 s": IntervalSchedule(every_seconds=60),
    }
    figures = {}
    for name, schedule in cases.items():
        timer = timeit.Timer(lambda s=schedule: next_fire(s, after, anchor=after), timer=time.process_time)
        figures[name] = min(timer.repeat(number=2000, repeat=7)) / 2000 * 1e6
    return figures


def micro(tasks: int) -> int:
    """Print the in-process figures (no stack needed)."""
    for spread in (False, True):
        for tenant_in_id in (True, False):
            per_task = index_bytes_per_task(tasks, spread=spread, tenant_in_id=tenant_in_id)
            wakeups = "each its own wakeup" if spread else "one wakeup"
            ids = "<tenant>/<id>" if tenant_in_id else "without tenant"
            print(f"due-index + tenant map, {tasks} tasks, {wakeups}, ids {ids}: {per_task:.0f} bytes a task")
    print(f"state cache: {cached_state_bytes():.0f} bytes a cached state (a new task's)")
    for name, micros in next_fire_micros().items():
        print(f"next_fire {name}: {micros:.1f} us a call (CPU)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--micro", action="store_true", help="in-process figures only (no stack)")
    args = parser.parse_args(argv)
    if args.micro:
        return micro(args.tasks)
    return run_and_print(lambda bootstrap, mongo: run(bootstrap, mongo, args.tasks))


if __name__ == "__main__":
    sys.exit(main())
