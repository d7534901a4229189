"""Creating the topics a deployment needs (idempotent)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas.topics import PRIORITIES
from streams.connections import kafka_options
from streams.settings import Settings

FOREVER = {"retention.ms": "-1"}
COMPACTED = {"cleanup.policy": "compact"}


def topic_specs(settings: Settings) -> list[NewTopic]:
    """Every topic of the deployment with its partitions and configuration."""
    n = settings.partitions
    names = settings.topics
    specs = [
        # Co-partitioned with the state table: the same count, keyed by task id.
        NewTopic(names.commands, n, 1),
        # The source of truth and the audit trail: kept forever, never rewritten.
        NewTopic(names.task_events, n, 1, topic_configs=FOREVER),
        NewTopic(names.outcomes, n, 1, topic_configs=FOREVER),
        NewTopic(names.triggers, n, 1),
        # The latest rules of each task (compaction keeps one record a task; tombstones go).
        NewTopic(names.trigger_rules, n, 1, topic_configs={"cleanup.policy": "compact"}),
        NewTopic(names.dead_letter, 1, 1, topic_configs=FOREVER),
        # Small, read whole by every worker: one partition keeps every change in one order.
        NewTopic(names.calendars, 1, 1, topic_configs=COMPACTED),
    ]
    specs += [NewTopic(names.dispatch(p), n, 1) for p in PRIORITIES]
    # The newest rules of each tenant are what counts: compacted, read whole by every notifier.
    specs.append(NewTopic(names.notification_rules, 1, 1, topic_configs={"cleanup.policy": "compact"}))
    return specs


async def ensure_topics(settings: Settings, *, ready_within: float = 60.0) -> list[str]:
    """Create the deployment's topics that do not exist yet and wait until the broker serves
    every partition of each (a leader elected); returns the names created.

    Waiting matters: a consumer group formed while a topic still had no leader is assigned
    none of its partitions until the group's next metadata refresh."""
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        specs = topic_specs(settings)
        existing = set(await admin.list_topics())
        missing = [t for t in specs if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                await admin.create_topics(missing)
        await _wait_until_served(admin, specs, ready_within)
        return [t.name for t in missing]
    finally:
        await admin.close()


async def _wait_until_served(admin: AIOKafkaAdminClient, specs: list[NewTopic], within: float) -> None:
    expected = {t.name: t.num_partitions for t in specs}
    deadline = time.monotonic() + within
    while True:
        described = await admin.describe_topics(list(expected))
        short = too_few_partitions(described, expected)
        if short:
            # The processor writes each task's events to its own partition number: a topic
            # with fewer partitions than SCHED_PARTITIONS cannot take them.
            raise RuntimeError(f"topics with fewer partitions than the deployment's {short}")
        pending = unserved(described, expected)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics without a leader for every partition after {within:.0f} s: {sorted(pending)}")
        await asyncio.sleep(0.2)


def _led(described: dict[str, Any]) -> bool:
    """The topic (one entry of ``describe_topics``) exists, and each of its partitions has a leader."""
    return described.get("error_code") == 0 and all(
        p.get("error_code") == 0 and p.get("leader", -1) >= 0 for p in described.get("partitions", ())
    )


def too_few_partitions(described: list[dict[str, Any]], expected: dict[str, int]) -> dict[str, str]:
    """The topics of ``expected`` that exist, served, with fewer partitions than expected."""
    return {
        d["topic"]: f"{len(d['partitions'])} partitions, expected {expected[d['topic']]}"
        for d in described
        if d["topic"] in expected and 0 < len(d.get("partitions", ())) < expected[d["topic"]] and _led(d)
    }


def unserved(described: list[dict[str, Any]], expected: dict[str, int]) -> set[str]:
    """The topics of ``expected`` (name: partition count) that ``describe_topics`` does not show
    served: unknown, in error, with fewer partitions, or a partition without a leader."""
    served = {d["topic"] for d in described if len(d.get("partitions", ())) >= expected.get(d["topic"], 0) and _led(d)}
    return set(expected) - served
