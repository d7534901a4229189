"""The peer a Python user would pick instead: APScheduler 3.x (AsyncIOScheduler, in-process).

Same workload as ``tests.bench.lateness``: N interval jobs every P seconds with no-op work,
measured over a window after a warm-up:

- slot -> dispatch: when APScheduler submitted the run to its executor, minus the slot;
- slot -> start: when the job function began, minus the slot;
- slots missed (never submitted in the window) and doubled.

Job stores: ``memory`` (fast, not durable) and ``sqlite`` (SQLAlchemyJobStore on a SQLite
file, durable). Runs in this process; no broker involved.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_SUBMITTED, JobEvent
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from tests.bench.common import pct, rss_mb
from tests.bench.lateness import Result


async def _noop() -> float:
    return time.time()


async def run(store: str, tasks: int, period: float, seconds: float, warmup: float, spread: bool) -> Result:
    """Run the workload on APScheduler with the given job store; figures as for our scheduler."""
    if store == "memory":
        jobstore: Any = MemoryJobStore()
    else:
        path = Path(tempfile.mkdtemp(prefix="aps-")) / "jobs.sqlite"
        jobstore = SQLAlchemyJobStore(url=f"sqlite:///{path}")
    scheduler = AsyncIOScheduler(
        jobstores={"default": jobstore},
        job_defaults={"coalesce": False, "max_instances": 1, "misfire_grace_time": None},
        timezone=UTC,
    )
    now = datetime.now(UTC)
    anchor = now.replace(microsecond=0) + timedelta(seconds=2)
    window_start = anchor + timedelta(seconds=warmup)
    window_end = window_start + timedelta(seconds=seconds)
    dispatch: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    start_ms: list[float] = []

    def listener(event: JobEvent) -> None:
        slots = getattr(event, "scheduled_run_times", None) or [event.scheduled_run_time]
        for slot in slots:
            if not (window_start <= slot < window_end):
                continue
            if event.code == EVENT_JOB_SUBMITTED:
                dispatch[event.job_id].append((slot, (time.time() - slot.timestamp()) * 1000))
            elif event.code == EVENT_JOB_EXECUTED:
                start_ms.append((event.retval - slot.timestamp()) * 1000)  # type: ignore[attr-defined]

    scheduler.add_listener(listener, EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED)
    scheduler.start()
    for i in range(tasks):
        offset = timedelta(seconds=period * i / tasks if spread else 0)
        scheduler.add_job(
            _noop, IntervalTrigger(seconds=period, start_date=anchor + offset, timezone=UTC), id=f"job-{i:06d}"
        )
    rss_peak = 0.0
    while datetime.now(UTC) < window_end + timedelta(seconds=3):
        await asyncio.sleep(0.5)
        rss_peak = max(rss_peak, rss_mb(os.getpid()))
    scheduler.shutdown(wait=False)
    dispatch_ms = [ms for entries in dispatch.values() for _, ms in entries]
    per_task = int(seconds / period)
    expected = per_task * tasks
    distinct = sum(len({s for s, _ in entries}) for entries in dispatch.values())
    doubled = sum(n - 1 for entries in dispatch.values() for n in Counter(s for s, _ in entries).values() if n > 1)
    return Result(
        tasks, period, seconds, len(dispatch_ms), expected, max(expected - distinct, 0), doubled,
        (pct(dispatch_ms, 50), pct(dispatch_ms, 99), max(dispatch_ms, default=float("nan"))),
        (pct(start_ms, 50), pct(start_ms, 99), max(start_ms, default=float("nan"))),
        rss_peak, rss_mb(os.getpid()),
    )  # fmt: skip
