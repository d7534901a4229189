"""Prometheus metrics of the worker and executor processes (one registry per process).

Every label comes from a small fixed set (a status, a topic, a consumer group): never a task,
tenant or execution id, which would make a series per task. Observing a histogram costs about
a microsecond, so the hot path measures every fire.

``SCHED_METRICS_PORT`` turns on the ``/metrics`` endpoint (:func:`serve`); the API serves its
own metrics (``api/metrics.py``) and the projector adds ``projections/metrics.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streams.connections import kafka_options, track_topics
from streams.settings import Settings

log = logging.getLogger(__name__)

LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds late: from a few milliseconds (on time) to minutes (a backlog or a failover)."""

STATUSES = frozenset({"succeeded", "failed", "timed_out", "cancelled"})
"""Outcome label values; anything else is counted as ``other``."""

DISPATCH_LATENESS = Histogram(
    "scheduler_fire_dispatch_lateness_seconds",
    "From a scheduled slot to the dispatch of its first attempt (measured by the worker).",
    buckets=LATENESS_BUCKETS,
)
START_LATENESS = Histogram(
    "scheduler_fire_start_lateness_seconds",
    "From a scheduled slot to the start of its first attempt (measured by the executor).",
    buckets=LATENESS_BUCKETS,
)
IN_FLIGHT = Gauge("scheduler_executions_in_flight", "Attempts running in this executor process now.")
OUTCOMES = Counter("scheduler_execution_outcomes", "Attempts finished by this executor, by status.", ["status"])
CONSUMER_LAG = Gauge(
    "scheduler_consumer_lag_messages",
    "Messages on a topic not yet committed by a consumer group (end offsets minus committed offsets).",
    ["topic", "group"],
)
WORKER_READY = Gauge("scheduler_worker_ready", "1 while the worker's partitions are recovered and it fires, else 0.")
TASKS_OWNED = Gauge("scheduler_worker_tasks_indexed", "Tasks in the due-index of the partitions this worker owns.")
EVENTS = Counter("scheduler_worker_events", "Events published by the task processor.")
COMMANDS_SKIPPED = Counter(
    "scheduler_commands_skipped",
    "Offsets of commands never handed to the task processor (a jump within a partition it kept "
    "owning: faust skipped them at a rebalance; their commands were not applied). Alert on any.",
)
CONSUMER_SEEKS_BACK = Counter(
    "scheduler_consumer_seeks_back",
    "Times the task processor's consumer found records missing before the one fetched (dropped "
    "by faust on the way, usually at a rebalance) and read the partition again from the owed offset.",
)


def lateness(slot: datetime | None, at: datetime) -> float | None:
    """Seconds from ``slot`` to ``at`` (0 when early), or None for a manual run (no slot)."""
    if slot is None:
        return None
    return max((at - slot).total_seconds(), 0.0)


def outcome(status: str) -> None:
    """Count one finished attempt."""
    OUTCOMES.labels(status=status if status in STATUSES else "other").inc()


def serve(settings: Settings, registry: CollectorRegistry = REGISTRY) -> bool:
    """Start the ``/metrics`` endpoint on ``SCHED_METRICS_PORT`` (a thread); False when unset."""
    if settings.metrics_port is None:
        return False
    start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    return True


async def measure_lag(settings: Settings, groups: dict[str, list[str]], *, interval: float | None = None) -> None:
    """Every ``SCHED_LAG_INTERVAL_SECONDS``, set :data:`CONSUMER_LAG` of each group (name ->
    its topics), summed over each topic's partitions. Runs until cancelled; a failed round is
    logged and retried (the gauges then keep their last values)."""
    every = settings.lag_interval_seconds if interval is None else interval
    options = kafka_options(settings)
    admin = AIOKafkaAdminClient(**options)
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    try:
        await admin.start()
        await consumer.start()
        await track_topics([t for topics in groups.values() for t in topics], admin, consumer)
        while True:
            try:
                await _measure_once(admin, consumer, groups)
            except Exception as exc:  # the broker may be away for a while; next round
                log.warning("consumer lag not measured: %r", exc)
            await asyncio.sleep(every)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        with contextlib.suppress(Exception):
            await admin.close()


async def _measure_once(admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, groups: dict[str, list[str]]) -> None:
    described = await admin.describe_topics(sorted({t for topics in groups.values() for t in topics}))
    partitions = {d["topic"]: [p["partition"] for p in d["partitions"]] for d in described if not d["error_code"]}
    for group, topics in groups.items():
        tps = [TopicPartition(t, p) for t in topics for p in sorted(partitions.get(t, ()))]
        if not tps:
            continue
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        ends = await consumer.end_offsets(tps)
        lag: dict[str, int] = dict.fromkeys(topics, 0)
        for tp in tps:
            done = committed.get(tp)
            position = done.offset if done is not None and done.offset >= 0 else 0
            lag[tp.topic] += max(ends.get(tp, 0) - position, 0)
        for topic, value in lag.items():
            CONSUMER_LAG.labels(topic=topic, group=group).set(value)
