"""Creating the topics a deployment needs (idempotent)."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams import topics
from streams.settings import Settings, topic_name

FOREVER = {"retention.ms": "-1"}


def topic_specs(settings: Settings) -> list[NewTopic]:
    """Every topic of the deployment with its partitions and configuration."""
    n = settings.partitions
    specs = [
        # Co-partitioned with the state table: the same count, keyed by task id.
        NewTopic(topic_name(settings, topics.COMMANDS), n, 1),
        # The source of truth and the audit trail: kept forever, never rewritten.
        NewTopic(topic_name(settings, topics.TASK_EVENTS), n, 1, topic_configs=FOREVER),
        NewTopic(topic_name(settings, topics.OUTCOMES), n, 1, topic_configs=FOREVER),
        NewTopic(topic_name(settings, topics.TRIGGERS), n, 1),
        NewTopic(topic_name(settings, topics.DEAD_LETTER), 1, 1, topic_configs=FOREVER),
    ]
    specs += [NewTopic(topic_name(settings, topics.dispatch(p)), n, 1) for p in topics.PRIORITIES]
    return specs


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the deployment's topics that do not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
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
