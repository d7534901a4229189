"""Throughput: fires per second end to end, against raw aiokafka on the same broker.

    .venv/bin/python -m tests.bench.throughput --tasks 20000

Uses the running local stack (or SCHED_KAFKA_BOOTSTRAP / SCHED_MONGO_URL). Two measurements
in one run:

- ceiling: one aiokafka producer sends ``--messages`` records of a dispatch record's size to
  a fresh topic while one consumer reads them back; records per second from the first send
  to the last record read. Nothing a pipeline on this broker and machine does is faster.
- end to end: a worker (no executor), an executor and the projector, each in its own
  process as deployed. ``--tasks`` one-shot tasks (no-op handler) are all due at the same
  instant; the backlog then drains at the highest rate the pipeline sustains. Reported per
  stage, from the due instant to the last of the N: dispatched (``dispatch.*``), completed
  (``outcomes``) and visible (``executions`` view, status succeeded, in MongoDB).
- with ``--straight``, after the drain and with the processes stopped: the same documents the
  projector wrote for the drain, written straight with pymongo in the same bulks (see
  :mod:`tests.bench.straight`): the view store's own ceiling, next to the visible rate.

Prints the figures and the ratio to the ceiling; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import AsyncMongoClient

from schemas.commands import CreateTask
from schemas.envelope import command_envelope, decode_event, encode
from schemas.events import ExecutionCompleted, ExecutionDispatched
from schemas.specs import HandlerWork, OnceSchedule, TaskDefinition
from tests.bench.common import rss_mb, run_and_print, wait_for_topics
from tests.bench.straight import Straight, straight
from tests.integration.harness import WorkerProc, worker_env


@dataclass
class Ceiling:
    messages: int
    size: int
    per_second: float


@dataclass
class Result:
    tasks: int
    dispatched: int
    completed: int
    visible: int
    dispatch_s: float
    complete_s: float
    visible_s: float
    """Due instant -> the last of the N at that stage."""
    worker_rss_mb: float
    ceiling: Ceiling
    straight: Straight | None = None
    """The drain's documents written straight with pymongo (``--straight``)."""

    def rate(self, seconds: float, n: int) -> float:
        return n / seconds if seconds > 0 else float("nan")

    def table(self) -> str:
        c = self.ceiling
        lines = [f"raw aiokafka produce+consume ({c.messages} x {c.size} B): {c.per_second:.0f} records/s"]
        for stage, n, s in (("dispatched", self.dispatched, self.dispatch_s),
                            ("completed", self.completed, self.complete_s),
                            ("visible", self.visible, self.visible_s)):  # fmt: skip
            r = self.rate(s, n)
            share = r / c.per_second
            lines.append(f"{stage:>10}: {n}/{self.tasks} in {s:.1f}s = {r:.0f} fires/s ({share:.3f} x ceiling)")
        if self.straight is not None:
            lines.append(self.straight.table(self.tasks))
        lines.append(f"worker peak RSS {self.worker_rss_mb:.0f} MB")
        return "\n".join(lines)


async def ceiling(bootstrap: str, messages: int, size: int, partitions: int = 8) -> Ceiling:
    topic = f"ceiling{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    # As the worker's producer: acks from all replicas, batching for 5 ms.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    payload = b"x" * size
    try:
        # Partition leaders of a new topic take a moment: one acknowledged record each first.
        for p in range(partitions):
            await producer.send_and_wait(topic, value=b"warm-up", partition=p)
        seen = 0
        while seen < partitions:
            batch = await consumer.getmany(timeout_ms=1000)
            seen += sum(len(records) for records in batch.values())
        started = time.perf_counter()

        async def produce() -> None:
            for i in range(messages):
                await producer.send(topic, key=f"k{i}".encode(), value=payload)
            await producer.flush()

        sending = asyncio.create_task(produce())
        seen = 0
        while seen < messages:
            batch = await consumer.getmany(timeout_ms=1000)
            seen += sum(len(records) for records in batch.values())
        await sending
        return Ceiling(messages, size, messages / (time.perf_counter() - started))
    finally:
        await consumer.stop()
        await producer.stop()


async def end_to_end(
    bootstrap: str,
    mongo_url: str,
    tasks: int,
    ceil: Ceiling,
    partitions: int = 8,
    straight_batch: int | None = None,
    projector_batch: int | None = None,
) -> Result:
    prefix = f"tput{uuid.uuid4().hex[:8]}"
    print(f"topic prefix {prefix}.", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="throughput-"))
    extra = {"SCHED_PROJECTOR_BATCH_MAX": str(projector_batch)} if projector_batch else {}
    env = worker_env(bootstrap, mongo_url, prefix, tmp / "data", SCHED_PARTITIONS=str(partitions),
                     SCHED_MONGO_DATABASE=prefix, **extra)  # fmt: skip
    procs = [
        WorkerProc(env, tmp / "worker.log", "tput-worker", ("worker", "--no-executor")).start(),
        WorkerProc(env, tmp / "executor.log", "tput-executor", ("executor",)).start(),
        WorkerProc(env, tmp / "projector.log", None, ("projector",)).start(),
    ]
    topics = [f"{prefix}.{name}" for name in ("commands", "outcomes", "dispatch.normal")]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    consumer = AIOKafkaConsumer(*topics[1:], bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url)
    try:
        await wait_for_topics(bootstrap, topics)
        await producer.start()
        await consumer.start()
        due = (datetime.now(UTC) + timedelta(seconds=20 + tasks / 500)).replace(microsecond=0)
        definition = TaskDefinition(name="burst", schedule=OnceSchedule(at=due), work=HandlerWork(name="noop"))
        sends = []
        for i in range(tasks):
            task_id = f"burst-{i:06d}"
            cmd = CreateTask(command_id=str(uuid.uuid4()), task_id=task_id, tenant="bench", actor="bench",
                             at=datetime.now(UTC), definition=definition)  # fmt: skip
            sends.append(await producer.send(topics[0], key=task_id.encode(),
                                             value=encode(command_envelope(cmd, "bench"))))  # fmt: skip
        await asyncio.gather(*sends)
        print(f"{tasks} tasks due at {due:%H:%M:%S} UTC", flush=True)
        executions = mongo[prefix]["executions"]
        dispatched: set[str] = set()
        completed: set[str] = set()
        last = {"dispatch": 0.0, "complete": 0.0, "visible": 0.0}
        visible = 0
        peak = 0.0
        next_count = 0.0
        deadline = due.timestamp() + 900
        while visible < tasks and time.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    event = decode_event(r.value or b"")
                    if isinstance(event, ExecutionDispatched) and event.execution_id not in dispatched:
                        dispatched.add(event.execution_id)
                        last["dispatch"] = r.timestamp / 1000
                    elif isinstance(event, ExecutionCompleted) and event.status == "succeeded":
                        completed.add(event.execution_id)
                        last["complete"] = r.timestamp / 1000
            if procs[0].proc is not None:
                peak = max(peak, rss_mb(procs[0].proc.pid))
            if time.time() >= next_count and len(completed) > visible:
                count = await executions.count_documents({"status": "succeeded"})
                if count > visible:
                    visible, last["visible"] = count, time.time()
                # A count reads the whole collection on FerretDB, competing with the projector:
                # often only near the end, where it sets the figure.
                next_count = time.time() + (0.5 if tasks - visible <= tasks // 10 else 3.0)
        t0 = due.timestamp()
        result = Result(
            tasks, len(dispatched), len(completed), visible, last["dispatch"] - t0, last["complete"] - t0,
            last["visible"] - t0, peak, ceil,
        )  # fmt: skip
        if straight_batch is not None:
            for proc in procs:
                proc.stop()
            print("writing the drain's documents straight", flush=True)
            result.straight = await straight(bootstrap, mongo_url, prefix, prefix, straight_batch)
        return result
    finally:
        await consumer.stop()
        await producer.stop()
        # The processes first: a projector still running writes its status into the database
        # after the drop, and leaves it behind.
        for proc in procs:
            proc.stop()
        await mongo.drop_database(prefix)
        await mongo.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def run(
    bootstrap: str, mongo_url: str, tasks: int, messages: int, straight_batch: int | None, projector_batch: int | None
) -> Result:
    ceil = await ceiling(bootstrap, messages, size=1200)
    print(f"ceiling: {ceil.per_second:.0f} records/s", flush=True)
    return await end_to_end(
        bootstrap, mongo_url, tasks, ceil, straight_batch=straight_batch, projector_batch=projector_batch
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--messages", type=int, default=200_000, help="records of the raw aiokafka ceiling")
    parser.add_argument("--straight", action="store_true", help="also write the drain's documents straight (pymongo)")
    parser.add_argument("--straight-batch", type=int, default=1000, help="events per batch of --straight")
    parser.add_argument("--projector-batch", type=int, help="SCHED_PROJECTOR_BATCH_MAX of the projector")
    args = parser.parse_args(argv)
    batch = args.straight_batch if args.straight else None
    return run_and_print(
        lambda bootstrap, mongo: run(bootstrap, mongo, args.tasks, args.messages, batch, args.projector_batch)
    )


if __name__ == "__main__":
    sys.exit(main())
