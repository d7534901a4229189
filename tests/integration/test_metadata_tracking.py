"""A long-lived Kafka client refreshes the metadata of its own topics, not of every topic on the
broker (streams/connections.py ``track_topics``), and never creates a topic by asking for it."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.connections import kafka_client, track_topics
from tests.conftest import Infra


async def test_clients_track_only_the_existing_topics_they_are_given(infra: Infra) -> None:
    prefix = f"md{uuid.uuid4().hex[:8]}"
    mine, missing = f"{prefix}.commands", f"{prefix}.never-created"
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=infra.bootstrap, group_id=None)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(mine, num_partitions=2, replication_factor=1)])
        await producer.start()
        await consumer.start()
        others = [t for t in await admin.list_topics() if t not in (mine, missing)]
        clients = [kafka_client(c) for c in (producer, consumer, admin)]
        for kafka in clients:
            # As aiokafka leaves them: no topic tracked, so each refresh asks for all of them.
            assert not kafka._topics
            for _ in range(50):  # the new topic reaches the client's view of the cluster
                if mine in kafka.cluster.topics():
                    break
                await kafka.force_metadata_update()
                await asyncio.sleep(0.1)
            assert len(kafka.cluster.topics()) > 1 or not others
        await track_topics([mine, missing], producer, consumer, admin)  # one question for all three
        for kafka in clients:
            assert kafka._topics == {mine}
            await kafka.force_metadata_update()
            assert mine in kafka.cluster.topics()
            assert len(kafka.cluster.topics()) == 1  # the refresh asked for this one only
        await producer.send_and_wait(mine, b"v", partition=1)
        assert missing not in await admin.list_topics()
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.delete_topics([mine])
        await admin.close()
