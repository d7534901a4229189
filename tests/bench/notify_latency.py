"""Notification latency: from an outcome on the ``outcomes`` topic to its webhook received.

    .venv/bin/python -m tests.bench.notify_latency --tasks 10 --seconds 20

Uses the running local stack (or SCHED_KAFKA_BOOTSTRAP and SCHED_MONGO_URL). Starts a worker
and a notifier process, creates ``--tasks`` tasks failing every second, each with a webhook
rule on ``failed`` pointing at a local receiver, and for each execution measures the time from
the Kafka timestamp of its ``ExecutionCompleted`` on ``outcomes`` to the arrival of the signed
webhook. Prints p50/p99/max; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from schemas.commands import CreateTask
from schemas.secrets import Keyring, new_key, parse_keys, seal_definition
from schemas.specs import HandlerWork, IntervalSchedule, TaskDefinition
from tests.bench.common import pct
from tests.integration.harness import Bus, HttpTarget, WorkerProc, new_id, ready_bus, worker_env


async def run(bootstrap: str, mongo_url: str, tasks: int, seconds: float) -> dict[str, float]:
    """Measure; the figures in milliseconds (and the count)."""
    prefix = f"nlat{uuid.uuid4().hex[:8]}"
    keys = {"bench": new_key()}
    ring = Keyring(parse_keys(keys))
    tmp = Path(tempfile.mkdtemp(prefix="notify-bench-"))
    env = worker_env(bootstrap, mongo_url, prefix, tmp / "data", SCHED_MONGO_DATABASE=prefix,
                     SCHED_SECRET_KEYS=json.dumps(keys))  # fmt: skip
    target = await HttpTarget().start()
    worker = WorkerProc(env, tmp / "worker.log", "bench-w1").start()
    notifier = WorkerProc(env, tmp / "notifier.log", None, ("notifier",)).start()
    bus: Bus | None = None
    try:
        bus = await ready_bus(bootstrap, prefix)
        start = datetime.now(UTC) + timedelta(seconds=2)
        for i in range(tasks):
            task_id = f"acme/bench-{i}-{new_id()[:8]}"
            definition = TaskDefinition.model_validate({
                "name": f"bench {i}",
                "schedule": IntervalSchedule(every_seconds=1, anchor=start).model_dump(),
                "work": HandlerWork(name="fail").model_dump(),
                "notifications": [{"on": ["failed"], "channel": {"kind": "webhook", "url": target.url,
                                                                 "secret": "bench-secret-0123456789"}}],
            })  # fmt: skip
            sealed = seal_definition(definition, keyring=ring, tenant="acme", task_id=task_id)
            await bus.send(CreateTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="bench",
                                      at=datetime.now(UTC), definition=sealed))  # fmt: skip
        await asyncio.sleep(seconds)
        await asyncio.sleep(3)  # the last notifications on their way
        outcome_ms = {
            str(e.execution_id): r.timestamp
            for e, r in zip(bus.seen["outcomes"], bus.raw["outcomes"], strict=True)
            if e.type == "ExecutionCompleted" and e.status == "failed"
        }
        latencies = []
        for request in target.requests:
            body = orjson.loads(request["body"])
            sent = outcome_ms.get(body["execution_id"])
            if sent is not None:
                latencies.append(request["at"].timestamp() * 1000 - sent)
        return {"outcomes": len(outcome_ms), "webhooks": len(latencies), "p50_ms": pct(latencies, 50),
                "p99_ms": pct(latencies, 99), "max_ms": max(latencies, default=float("nan"))}  # fmt: skip
    finally:
        if bus is not None:
            await bus.stop()
        notifier.stop()
        worker.stop()
        await target.stop()


def main() -> None:
    """Command line: ``--tasks``, ``--seconds``, ``--bootstrap``, ``--mongo-url``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--mongo-url", default="mongodb://127.0.0.1:27017/")
    args = parser.parse_args()
    result = asyncio.run(run(args.bootstrap, args.mongo_url, args.tasks, args.seconds))
    print(
        f"{args.tasks} tasks failing every second for {args.seconds:g} s: {result['outcomes']:.0f} failed outcomes, "
        f"{result['webhooks']:.0f} webhooks; outcome -> webhook received p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
