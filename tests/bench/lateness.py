"""Fire lateness: N tasks firing every P seconds on one or more workers; slot -> dispatch, slot -> start.

    .venv/bin/python -m tests.bench.lateness --tasks 1000 --period 1 --seconds 60

Uses the running local stack (or SCHED_KAFKA_BOOTSTRAP). Starts ``--workers`` worker processes
(one by default), each with an executor unless ``--separate-executor``, creates the tasks (noop
handler), lets them fire for ``--seconds`` and reads:

- slot -> dispatch: the Kafka timestamp of each ``dispatch.*`` record minus its slot;
- slot -> start: ``ExecutionCompleted.started_at`` minus the slot;
- slots missed / doubled: per task, dispatched slots vs the slots in the measured window;
- the largest worker's resident memory (peak and at the end).

Prints a table and returns it; asserts nothing about time (the CI smoke checks counts).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.commands import CreateTask
from schemas.envelope import command_envelope, decode_event, encode
from schemas.events import ExecutionCompleted, ExecutionDispatched
from schemas.specs import HandlerWork, IntervalSchedule, TaskDefinition
from tests.bench.common import cpu_seconds, pct, rss_mb, run_and_print, wait_for_topics, wait_worker_ready
from tests.integration.harness import WorkerProc, worker_env


@dataclass
class Result:
    tasks: int
    period: float
    seconds: float
    dispatched: int
    expected: int
    missed: int
    doubled: int
    dispatch_ms: tuple[float, float, float]
    start_ms: tuple[float, float, float]
    rss_peak_mb: float
    rss_end_mb: float
    cpu_ms_per_fire: float = float("nan")
    """CPU time of the worker processes (and the executor apart) over the window, per fire."""

    def table(self) -> str:
        d, s = self.dispatch_ms, self.start_ms
        return "\n".join(
            [
                f"tasks={self.tasks} period={self.period}s window={self.seconds:.0f}s "
                f"({self.tasks / self.period:.0f} fires/s)",
                f"dispatched={self.dispatched} expected={self.expected} missed={self.missed} doubled={self.doubled}",
                f"slot->dispatch ms: p50={d[0]:.1f} p99={d[1]:.1f} max={d[2]:.1f}",
                f"slot->start    ms: p50={s[0]:.1f} p99={s[1]:.1f} max={s[2]:.1f}",
                f"worker RSS (largest worker): peak={self.rss_peak_mb:.0f} MB end={self.rss_end_mb:.0f} MB",
                f"CPU of the workers (and executor) over the window: {self.cpu_ms_per_fire:.3f} ms per fire",
            ]
        )


async def run(
    bootstrap: str,
    mongo_url: str,
    tasks: int,
    period: float,
    seconds: float,
    warmup: float,
    separate_executor: bool,
    spread: bool,
    workers: int = 1,
    timeline: bool = False,
) -> Result:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    print(f"topic prefix {prefix}.", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="lateness-"))
    env = worker_env(bootstrap, mongo_url, prefix, tmp / "data", SCHED_PARTITIONS="8")
    # With --separate-executor, the deployment that scales: the task processor's event loop
    # does nothing else. Several workers share the partitions (and so the tasks).
    command = ("worker", "--no-executor") if separate_executor else ("worker",)
    # Each worker its own state directory, as on separate machines: workers sharing one waited
    # on each other's RocksDB locks whenever a partition moved (the multi-second stalls seen
    # with two workers).
    group = [
        WorkerProc(
            {**env, "SCHED_DATA_DIR": str(tmp / f"data-{n}")}, tmp / f"worker-{n}.log", f"bench-worker-{n}", command
        ).start()
        for n in range(workers)
    ]
    executor = None
    if separate_executor:
        executor = WorkerProc(env, tmp / "executor.log", "bench-executor", ("executor",)).start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    topics = [f"{prefix}.dispatch.{p}" for p in ("high", "normal", "low")] + [f"{prefix}.task-events"]
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await wait_for_topics(bootstrap, topics)
    await consumer.start()
    await wait_worker_ready(producer, consumer, prefix)
    ids = [f"bench-{i:06d}" for i in range(tasks)]
    now = datetime.now(UTC)
    anchor = now.replace(microsecond=0) + timedelta(seconds=1)
    for i, task_id in enumerate(ids):
        cmd = CreateTask(
            command_id=str(uuid.uuid4()), task_id=task_id, tenant="bench", actor="bench", at=now,
            definition=TaskDefinition(
                name=task_id,
                schedule=IntervalSchedule(
                    every_seconds=period, anchor=anchor + timedelta(seconds=period * i / tasks if spread else 0)
                ),
                work=HandlerWork(name="noop"),
            ),
        )  # fmt: skip
        await producer.send(f"{prefix}.commands", key=task_id.encode(), value=encode(command_envelope(cmd, "bench")))
    await producer.flush()

    dispatch_at: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    started: dict[str, float] = {}
    rss_peak = 0.0
    loop = asyncio.get_running_loop()
    window_start = anchor + timedelta(seconds=warmup)
    window_end = window_start + timedelta(seconds=seconds)
    stop_at = loop.time() + (window_end - datetime.now(UTC)).total_seconds() + 5
    processes = [w for w in [*group, executor] if w is not None and w.proc is not None]
    cpu_marks: list[float] = []  # at the window's start and end
    while loop.time() < stop_at:
        clock = datetime.now(UTC)
        if (len(cpu_marks) == 0 and clock >= window_start) or (len(cpu_marks) == 1 and clock >= window_end):
            cpu_marks.append(sum(cpu_seconds(w.proc.pid) for w in processes if w.proc is not None))
        batch = await consumer.getmany(timeout_ms=200)
        for records in batch.values():
            for r in records:
                event: Any = decode_event(r.value or b"")
                if isinstance(event, ExecutionDispatched) and r.topic != f"{prefix}.task-events":
                    if event.slot is not None and window_start <= event.slot < window_end:
                        ms = r.timestamp - event.slot.timestamp() * 1000
                        dispatch_at[event.task_id].append((event.slot, ms))
                elif isinstance(event, ExecutionCompleted) and event.started_at is not None:
                    started[event.execution_id] = event.started_at.timestamp()
        rss_peak = max([rss_peak] + [rss_mb(w.proc.pid) for w in group if w.proc is not None])
    rss_end = max(rss_mb(w.proc.pid) for w in group if w.proc is not None)
    await consumer.stop()
    await producer.stop()
    for worker in group:
        worker.stop()
    if executor is not None:
        executor.stop()

    # Slot -> start needs the slot of each execution: re-derive from dispatch records.
    from schemas.ids import execution_id_for_slot

    start_ms = [
        (started[eid] - slot.timestamp()) * 1000
        for task_id, entries in dispatch_at.items()
        for slot, _ in entries
        if (eid := execution_id_for_slot(task_id, slot)) in started
    ]
    dispatch_ms = [ms for entries in dispatch_at.values() for _, ms in entries]
    if timeline:
        # Lateness by the second its slots fell in: a tail from periodic stalls shows as spikes,
        # one from a worker that cannot keep up as a climb.
        by_second: dict[int, list[float]] = defaultdict(list)
        for entries in dispatch_at.values():
            for slot, ms in entries:
                by_second[int((slot - window_start).total_seconds())].append(ms)
        for second in sorted(by_second):
            values = by_second[second]
            p50, p99, top = pct(values, 50), pct(values, 99), max(values)
            print(f"  +{second:3d}s n={len(values):5d} p50={p50:8.1f} p99={p99:8.1f} max={top:8.1f}")
    per_slot = int(seconds / period)
    expected = per_slot * tasks
    doubled = sum(n - 1 for entries in dispatch_at.values() for n in Counter(s for s, _ in entries).values() if n > 1)
    distinct = sum(len({s for s, _ in entries}) for entries in dispatch_at.values())
    cpu_per_fire = (cpu_marks[1] - cpu_marks[0]) * 1000 / expected if len(cpu_marks) == 2 and expected else float("nan")
    return Result(
        tasks, period, seconds, len(dispatch_ms), expected, max(expected - distinct, 0), doubled,
        (pct(dispatch_ms, 50), pct(dispatch_ms, 99), max(dispatch_ms, default=float("nan"))),
        (pct(start_ms, 50), pct(start_ms, 99), max(start_ms, default=float("nan"))),
        rss_peak, rss_end, cpu_per_fire,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--spread", action="store_true", help="spread the tasks' slots over the period (default: all aligned)"
    )
    parser.add_argument("--separate-executor", action="store_true", help="run the executor in its own process")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the tasks")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after the first slot not measured")
    parser.add_argument("--timeline", action="store_true", help="print lateness by the second of the slots")
    args = parser.parse_args(argv)
    workload = (
        args.tasks, args.period, args.seconds, args.warmup, args.separate_executor, args.spread, args.workers,
        args.timeline,
    )  # fmt: skip
    return run_and_print(lambda bootstrap, mongo: run(bootstrap, mongo, *workload))


if __name__ == "__main__":
    sys.exit(main())
