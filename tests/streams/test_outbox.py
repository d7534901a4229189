"""The outbox sends what one applied message produced as record batches, against the real broker:
each record lands on the partition a plain ``send`` of it would have, in the order it was added."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.outbox import Outbox
from tests.conftest import Infra, Names


async def _read_all(bootstrap: str, topic: str, partitions: int, expected: int) -> dict[int, list[tuple[bytes, bytes]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        found: dict[int, list[tuple[bytes, bytes]]] = {}
        seen = 0
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=5_000)
            assert batches, f"only {seen} of {expected} records arrived"
            for tp, records in batches.items():
                for r in records:
                    assert r.key is not None and r.value is not None
                    found.setdefault(tp.partition, []).append((r.key, r.value))
                    seen += 1
        return found
    finally:
        await consumer.stop()


async def test_records_land_where_send_puts_them_in_order_across_full_batches(infra: Infra, names: Names) -> None:
    topic4 = f"{names.prefix}.outbox"
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic4, num_partitions=4, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap, acks="all", max_batch_size=4096)
    await producer.start()
    try:
        outbox = Outbox(lambda: producer)
        keys = [f"acme/task-{n % 7}".encode() for n in range(300)]
        for n, key in enumerate(keys):
            # 1 KB values: the 4 KB batches fill after a few records, so each partition's
            # records span many batches that must still arrive in the order added.
            await outbox.send(topic4, key, b"%05d" % n + b"x" * 1000, None)
        assert 1 <= outbox.pending() <= 4  # one open batch per partition, none handed over yet
        await outbox.flush()
        assert outbox.pending() == 0
        await producer.flush()
        assert outbox.stats.records == 300
        assert outbox.stats.batches > 4, "the records should have needed more than one batch per partition"
        # Where plain sends of the same keys go (the producer's default partitioner).
        expected_partition = {}
        for key in set(keys):
            meta = await (await producer.send(topic4, b"probe", key=key))
            expected_partition[key] = meta.partition
    finally:
        await producer.stop()
    found = await _read_all(infra.bootstrap, topic4, 4, 300 + len(set(keys)))
    for partition, records in found.items():
        ours = [(k, v) for k, v in records if v != b"probe"]
        for key, _ in records:
            assert expected_partition[key] == partition, f"{key!r} landed on {partition}"
        numbers = [int(v[:5]) for _, v in ours]
        assert numbers == sorted(numbers), f"partition {partition} out of order"
    assert sum(len([1 for _, v in r if v != b"probe"]) for r in found.values()) == 300


async def test_a_flush_with_nothing_open_sends_nothing() -> None:
    def no_producer() -> AIOKafkaProducer:
        raise AssertionError("an empty flush must not reach the producer")

    await Outbox(no_producer).flush()
