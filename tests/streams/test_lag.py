"""Consumer lag as the metrics report it: end offsets minus the group's committed offsets."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from streams import metrics
from tests.conftest import Infra


async def test_lag_is_end_minus_committed_per_topic_and_group(infra: Infra) -> None:
    topic, group = f"lag{uuid.uuid4().hex[:8]}", f"lag-group-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap, acks="all")
    member = AIOKafkaConsumer(bootstrap_servers=infra.bootstrap, group_id=group, enable_auto_commit=False)
    reader = AIOKafkaConsumer(bootstrap_servers=infra.bootstrap, group_id=None, enable_auto_commit=False)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
        await producer.start()
        for partition, count in ((0, 5), (1, 3)):
            for i in range(count):
                await producer.send_and_wait(topic, b"x%d" % i, partition=partition)
        await member.start()
        member.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        # The group has read two messages of partition 0 and none of partition 1.
        await member.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "")})
        await reader.start()
        await metrics._measure_once(admin, reader, {group: [topic]})
        assert metrics.CONSUMER_LAG.labels(topic=topic, group=group)._value.get() == (5 - 2) + 3
        await member.commit(
            {TopicPartition(topic, 0): OffsetAndMetadata(5, ""), TopicPartition(topic, 1): OffsetAndMetadata(3, "")}
        )
        await metrics._measure_once(admin, reader, {group: [topic]})
        assert metrics.CONSUMER_LAG.labels(topic=topic, group=group)._value.get() == 0
    finally:
        await reader.stop()
        await member.stop()
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()
