"""Creating the topics a deployment needs (idempotent)."""

from __future__ import annotations

import contextlib

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


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the deployment's topics that do not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topic_specs(settings) if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                await admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        await admin.close()
