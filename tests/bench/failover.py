"""Failover under load: two workers, one SIGKILLed mid-run; every slot counted by execution id.

    .venv/bin/python -m tests.bench.failover --tasks 5000 --period 5 --kill-after 20 --seconds 90 --projector

Uses the running local stack. Starts two workers (each with its executor, each its own state
directory) and, with ``--projector``, the projector next to them; creates ``--tasks`` interval
tasks spread over ``--period`` (so ``tasks / period`` fires a second) whose work is an HTTP
POST to a local target answering after ``--delay`` seconds; SIGKILLs the first worker
``--kill-after`` seconds after the first slot (or once both fire, if later) and stops
``--seconds`` after it. Then, from the records on the topics (read raw, without the event
models, to keep up):

- lost: slots in the counted range (first slot to a few seconds before the end) with no
  ``ExecutionDispatched``; doubled: slots with two execution ids, attempts dispatched under two
  event ids, or executions with two outcomes (distinct event ids);
- repeated requests: Idempotency-Keys the target saw more than once, and how many of those
  were first seen well before the kill (work that finished yet ran again);
- slots recorded missed (``SlotsMissed``) by reason, before and after the kill: each run takes
  ``--delay``, far under the period, so an overlap skip before the kill means an execution was
  counted running after it had finished (after it, catch-up of the failover window under the
  ``skip`` overlap policy runs the first missed slot and records the others);
- lateness (Kafka timestamp of the dispatch record minus the slot), before the kill and after
  the takeover has caught up; failover: from the kill to the first dispatch of a task the killed
  worker fired, and to the first time such a task is dispatched within 100 ms of its slot again.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.commands import CreateTask
from schemas.envelope import command_envelope, encode
from schemas.specs import (
    CatchUpMode,
    CatchUpPolicy,
    HttpWork,
    IntervalSchedule,
    OverlapPolicy,
    TaskDefinition,
)
from tests.bench.common import pct, run_and_print, wait_for_topics, wait_worker_ready
from tests.integration.harness import HttpTarget, WorkerProc, worker_env

COUNT_MARGIN = 5.0
"""Seconds before the end whose slots are not counted (still on their way)."""
ON_TIME_MS = 100.0


@dataclass
class Result:
    tasks: int
    period: float
    expected: int
    lost: int
    doubled_slots: int
    doubled_attempts: int
    doubled_outcomes: int
    repeated_requests: int
    repeated_long_before_kill: int
    missed: Counter[tuple[str, str]]
    late_before: tuple[float, float]
    late_after: tuple[float, float]
    takeover_s: float
    caught_up_s: float

    def table(self) -> str:
        rate = self.tasks / self.period
        skips = ", ".join(f"{r} {w}: {n}" for (r, w), n in sorted(self.missed.items())) or "none"
        return "\n".join(
            [
                f"tasks={self.tasks} period={self.period}s ({rate:.0f} fires/s), two workers, one SIGKILLed",
                f"slots counted={self.expected} lost (neither run nor recorded missed)={self.lost}",
                f"doubled: slots={self.doubled_slots} "
                f"attempts={self.doubled_attempts} outcomes={self.doubled_outcomes}",
                f"requests repeated at the target={self.repeated_requests} "
                f"(first seen more than 2 s before the kill: {self.repeated_long_before_kill})",
                f"slots recorded missed (SlotsMissed), by reason: {skips}",
                f"slot->dispatch before the kill ms: p50={self.late_before[0]:.1f} p99={self.late_before[1]:.1f}",
                f"slot->dispatch after catching up ms: p50={self.late_after[0]:.1f} p99={self.late_after[1]:.1f}",
                f"failover: first dispatch of the killed worker's tasks {self.takeover_s:.1f} s after the kill, "
                f"on time again (<{ON_TIME_MS:.0f} ms) after {self.caught_up_s:.1f} s",
            ]
        )


async def run(
    bootstrap: str,
    mongo_url: str,
    tasks: int,
    period: float,
    kill_after: float,
    seconds: float,
    delay: float,
    projector: bool,
    grace: float = 15.0,
) -> Result:
    prefix = f"fover{uuid.uuid4().hex[:8]}"
    print(f"topic prefix {prefix}.", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="failover-"))
    env = worker_env(bootstrap, mongo_url, prefix, tmp / "data", SCHED_PARTITIONS="8")
    target = await HttpTarget(delay=delay).start()
    workers = [
        WorkerProc({**env, "SCHED_DATA_DIR": str(tmp / f"data-{n}")}, tmp / f"worker-{n}.log", f"fo-worker-{n}")
        for n in range(2)
    ]
    for w in workers:
        w.start()
    extra = []
    if projector:
        extra.append(WorkerProc(env, tmp / "projector.log", None, ("projector",)).start())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    topics = [f"{prefix}.{t}" for t in ("dispatch.normal", "task-events", "outcomes")]
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await wait_for_topics(bootstrap, topics)
    await consumer.start()
    await wait_worker_ready(producer, consumer, prefix)

    ids = [f"fo-{i:06d}" for i in range(tasks)]
    created = datetime.now(UTC)
    anchor = created.replace(microsecond=0) + timedelta(seconds=3)
    anchors = {}
    for i, task_id in enumerate(ids):
        anchors[task_id] = anchor + timedelta(seconds=period * i / tasks)
        definition = TaskDefinition(
            name=task_id,
            schedule=IntervalSchedule(every_seconds=period, anchor=anchors[task_id]),
            work=HttpWork(method="POST", url=target.url),
            # Skip on overlap: a slot must find the previous run finished (each takes `delay`).
            overlap=OverlapPolicy.SKIP,
            catch_up=CatchUpPolicy(mode=CatchUpMode.RUN_ALL, window_seconds=600),
            misfire_grace_seconds=600,
        )
        cmd = CreateTask(
            command_id=str(uuid.uuid4()), task_id=task_id, tenant="bench", actor="bench", at=created,
            definition=definition,
        )  # fmt: skip
        await producer.send(f"{prefix}.commands", key=task_id.encode(), value=encode(command_envelope(cmd, "bench")))
    await producer.flush()

    # Raw records: (task, slot) -> execution ids; attempt -> event ids; outcomes; lateness.
    slot_executions: dict[tuple[str, float], set[str]] = defaultdict(set)
    attempt_events: dict[tuple[str, int], set[str]] = defaultdict(set)
    outcome_events: dict[str, set[str]] = defaultdict(set)
    dispatches: list[tuple[float, float, str, str]] = []  # (record time, slot, task, source)
    missed_ranges: dict[str, list[tuple[float, float, str]]] = defaultdict(list)

    def take(batch: dict[Any, list[Any]]) -> None:
        for tp, records in batch.items():
            topic = tp.topic.removeprefix(f"{prefix}.")
            for r in records:
                env_ = orjson.loads(r.value or b"{}")
                kind = env_.get("type", "").rsplit(".", 1)[-1]
                data = env_.get("data") or {}
                if topic == "dispatch.normal" and kind == "ExecutionDispatched":
                    if data.get("slot") is not None:
                        slot = datetime.fromisoformat(data["slot"]).timestamp()
                        dispatches.append((r.timestamp / 1000, slot, data["task_id"], env_.get("source", "")))
                elif topic == "task-events" and kind == "ExecutionDispatched":
                    attempt_events[(data["execution_id"], data["attempt"])].add(env_["id"])
                    if data.get("slot") is not None:
                        slot = datetime.fromisoformat(data["slot"]).timestamp()
                        slot_executions[(data["task_id"], round(slot, 3))].add(data["execution_id"])
                elif topic == "task-events" and kind == "SlotsMissed":
                    first = datetime.fromisoformat(data["first_slot"]).timestamp()
                    last = datetime.fromisoformat(data["last_slot"]).timestamp()
                    missed_ranges[data["task_id"]].append((first, last, str(data["reason"])))
                elif topic == "outcomes":
                    outcome_events[data["execution_id"]].add(env_["id"])

    first_slot = anchor.timestamp()
    kill_at = first_slot + kill_after
    end_at = first_slot + seconds
    killed_wall: float | None = None
    while True:
        wall = datetime.now(UTC).timestamp()
        # Kill once both workers fire (a cold second worker may join late), not before --kill-after.
        if killed_wall is None and wall >= kill_at and len({d[3] for d in dispatches[-2000:]}) >= 2:
            workers[0].kill()
            killed_wall = datetime.now(UTC).timestamp()
            print(f"killed {workers[0].worker_id} at +{killed_wall - first_slot:.1f}s", flush=True)
        if wall >= end_at + grace:
            break
        take(await consumer.getmany(timeout_ms=200))
        await asyncio.sleep(0)
    # Read what was produced until now to its end: a consumer that fell behind on some
    # partitions would count their slots lost.
    ends = await consumer.end_offsets(list(consumer.assignment()))
    for tp, end in ends.items():
        while await consumer.position(tp) < end:
            take(await consumer.getmany(timeout_ms=500))
    await consumer.stop()
    await producer.stop()
    for w in [*workers, *extra]:
        w.stop()
    await target.stop()
    assert killed_wall is not None

    counted_until = end_at - COUNT_MARGIN
    expected = lost = doubled_slots = 0
    lost_at: Counter[int] = Counter()
    missed: Counter[tuple[str, str]] = Counter()
    missed_before_at: Counter[int] = Counter()
    for task_id in ids:
        n = 0
        while (slot := anchors[task_id].timestamp() + n * period) <= counted_until:
            n += 1
            expected += 1
            found = slot_executions.get((task_id, round(slot, 3)))
            if not found:
                why = next((r for a, b, r in missed_ranges[task_id] if a - 0.001 <= slot <= b + 0.001), None)
                if why is None:
                    lost += 1
                    lost_at[round(slot - first_slot)] += 1
                else:
                    missed[(why, "before the kill" if slot < killed_wall else "after the kill")] += 1
                    if slot < killed_wall:
                        missed_before_at[round(slot - first_slot)] += 1
            elif len(found) > 1:
                doubled_slots += 1
    doubled_attempts = sum(1 for ev in attempt_events.values() if len(ev) > 1)
    doubled_outcomes = sum(1 for ev in outcome_events.values() if len(ev) > 1)
    keys = Counter(r["key"] for r in target.requests)
    first_seen: dict[str, datetime] = {}
    for r in target.requests:
        first_seen.setdefault(r["key"], r["at"])
    repeated = [k for k, n in keys.items() if n > 1]
    if lost_at:
        print("lost slots by second after the first slot:", dict(sorted(lost_at.items())))
    if missed_before_at:
        print(
            "slots recorded missed before the kill, by second after the first slot:",
            dict(sorted(missed_before_at.items())),
        )
    long_before = sum(1 for k in repeated if first_seen[k].timestamp() + delay + 2 < killed_wall)

    victim = f"scheduler/worker/{workers[0].worker_id}"
    # The killed worker's tasks: those it dispatched last before the kill (partitions move
    # between the two at start-up, so an earlier dispatch says little).
    last_before: dict[str, tuple[float, str]] = {}
    for t, _, task, source in dispatches:
        if t < killed_wall and t >= last_before.get(task, (0.0, ""))[0]:
            last_before[task] = (t, source)
    victim_tasks = {task for task, (_, source) in last_before.items() if source == victim}
    before = [(t - s) * 1000 for t, s, _, _ in dispatches if first_slot + 10 <= s < killed_wall]
    taken = sorted(
        t for t, s, task, source in dispatches if task in victim_tasks and source != victim and t > killed_wall
    )
    takeover = (taken[0] - killed_wall) if taken else float("nan")
    on_time = sorted(
        t
        for t, s, task, source in dispatches
        if task in victim_tasks
        and source != victim
        and t > killed_wall
        and s > killed_wall
        and (t - s) * 1000 < ON_TIME_MS
    )
    caught_up = (on_time[0] - killed_wall) if on_time else float("nan")
    after_from = killed_wall + (caught_up if on_time else seconds) + 5
    after = [(t - s) * 1000 for t, s, _, _ in dispatches if after_from <= s <= counted_until]
    return Result(
        tasks, period, expected, lost, doubled_slots, doubled_attempts, doubled_outcomes, len(repeated), long_before,
        missed, (pct(before, 50), pct(before, 99)), (pct(after, 50), pct(after, 99)), takeover, caught_up,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--period", type=float, default=5.0)
    parser.add_argument("--kill-after", type=float, default=20.0, help="seconds after the first slot")
    parser.add_argument("--seconds", type=float, default=90.0, help="seconds after the first slot to stop")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds the HTTP target takes to answer")
    parser.add_argument("--projector", action="store_true", help="run the projector next to the workers")
    parser.add_argument("--grace", type=float, default=15.0, help="seconds read after --seconds (late slots)")
    a = parser.parse_args(argv)
    return run_and_print(
        lambda bootstrap, mongo: run(bootstrap, mongo, a.tasks, a.period, a.kill_after, a.seconds, a.delay, a.projector)
    )


if __name__ == "__main__":
    raise SystemExit(main())
