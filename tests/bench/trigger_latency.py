"""Added latency of an event trigger: a CloudEvent produced to ``triggers`` -> its execution dispatched.

    .venv/bin/python -m tests.bench.trigger_latency --events 200 --tasks 10 --rate 20

Uses the running local stack (or SCHED_KAFKA_BOOTSTRAP). Starts a worker (with its executor)
and a trigger router (``scheduler triggers``) under a fresh topic prefix, creates ``--tasks``
tasks (noop handler) each triggered by its own event type, then produces ``--events`` CloudEvents
at ``--rate`` a second, round robin over the tasks, and reads ``task-events``:

- produced -> dispatched: the Kafka timestamp of each ``ExecutionDispatched`` (set by the
  worker's producer) minus the time the event's produce was started (same host, same clock);
- runs: dispatches per event (1 each, or the count is wrong).

Prints a table and returns it; asserts nothing about time (the smoke test checks counts).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson

from schemas.commands import CreateTask
from schemas.envelope import decode_event
from schemas.events import ExecutionDispatched
from schemas.specs import HandlerWork, TaskDefinition
from schemas.triggers import TriggerRule
from tests.bench.common import pct, run_and_print
from tests.integration.harness import STARTUP, WorkerProc, now, ready_bus, worker_env


@dataclass
class Result:
    events: int
    tasks: int
    rate: float
    runs: int
    doubled: int
    latency_ms: tuple[float, float, float]

    def table(self) -> str:
        p50, p99, worst = self.latency_ms
        return "\n".join(
            [
                f"events={self.events} tasks={self.tasks} rate={self.rate:g}/s",
                f"runs={self.runs} (one per event expected) doubled={self.doubled}",
                f"event produced -> execution dispatched: p50={p50:.1f} ms p99={p99:.1f} ms max={worst:.1f} ms",
            ]
        )


async def run(bootstrap: str, mongo: str, events: int = 200, tasks: int = 10, rate: float = 20.0) -> Result:
    prefix = f"trigbench{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="trigger-latency-"))
    env = worker_env(bootstrap, mongo, prefix, tmp / "data")
    worker = WorkerProc(env, tmp / "worker.log", "bench-w1").start()
    router = WorkerProc(env, tmp / "triggers.log", None, ("triggers",)).start()
    bus = None
    try:
        bus = await ready_bus(bootstrap, prefix)
        await bus.follow(("trigger-rules",))
        task_ids = [f"acme/bench-{i:03d}" for i in range(tasks)]
        for i, task_id in enumerate(task_ids):
            rule = TriggerRule.model_validate({"type": f"bench.{i}"})
            definition = TaskDefinition(name=f"bench {i}", work=HandlerWork(name="noop"), triggers=[rule])
            await bus.send(
                CreateTask(command_id=str(uuid.uuid4()), task_id=task_id, tenant="acme", actor="bench", at=now(),
                           definition=definition)
            )  # fmt: skip
        await bus.wait_for(lambda: len(bus.raw["trigger-rules"]) >= tasks, STARTUP, "the tasks' rules")
        await asyncio.sleep(1.0)  # the router tails trigger-rules

        async def produce(i: int, event_id: str) -> float:
            body = {"specversion": "1.0", "id": event_id, "source": "/bench", "type": f"bench.{i % tasks}",
                    "tenant": "acme", "data": {"n": i}}  # fmt: skip
            started = time.time()
            await bus.send_raw("triggers", b"acme", orjson.dumps(body))
            return started

        # Warm-up: the first events pay for connections and caches.
        warm = [f"warm-{i}" for i in range(min(tasks, 5))]
        for i, event_id in enumerate(warm):
            await produce(i, event_id)
        sent: dict[str, float] = {}
        period = 1.0 / rate
        for i in range(events):
            event_id = f"e-{i}"
            sent[event_id] = await produce(i, event_id)
            await asyncio.sleep(max(period - (time.time() - sent[event_id]), 0))

        def dispatches() -> list[tuple[str, float]]:
            out = []
            for record in bus.raw["task-events"]:
                event = decode_event(record.value or b"")
                if isinstance(event, ExecutionDispatched) and "event" in event.params:
                    out.append((str(event.params["event"]["id"]), record.timestamp / 1000))
            return out

        await bus.wait_for(lambda: {e for e, _ in dispatches()} >= set(sent), 60, "every event's run")
        await asyncio.sleep(2.0)  # a doubled run would show by now
        seen = dispatches()
        per_event = Counter(e for e, _ in seen if e in sent)
        first: dict[str, float] = {}
        for event_id, at in seen:
            first.setdefault(event_id, at)
        latencies = [(first[e] - sent[e]) * 1000 for e in sent]
        return Result(
            events=events,
            tasks=tasks,
            rate=rate,
            runs=sum(per_event.values()),
            doubled=sum(1 for n in per_event.values() if n > 1),
            latency_ms=(pct(latencies, 50), pct(latencies, 99), max(latencies)),
        )
    finally:
        if bus is not None:
            await bus.stop()
        router.stop()
        worker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="events a second")
    args = parser.parse_args()
    return run_and_print(lambda bootstrap, mongo: run(bootstrap, mongo, args.events, args.tasks, args.rate))


if __name__ == "__main__":
    sys.exit(main())
