"""After recovery, the new owner reads which recent events already reached task-events."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest
from aiokafka import AIOKafkaProducer

from streams.admin import ensure_topics
from streams.resend import published_event_ids
from streams.settings import Settings
from tests.conftest import Infra, Names


async def test_reads_the_ids_written_since_the_cutoff_on_the_given_partitions(infra: Infra, names: Names) -> None:
    settings = Settings(kafka_bootstrap=infra.bootstrap, topic_prefix=f"{names.prefix}.", partitions=4)
    await ensure_topics(settings)
    topic = f"{names.prefix}.task-events"
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap, acks="all")
    await producer.start()
    now_ms = int(time.time() * 1000)
    try:
        await producer.send_and_wait(topic, b'{"id": "too-old"}', partition=1, timestamp_ms=now_ms - 120_000)
        for n in range(50):
            await producer.send_and_wait(topic, b'{"id": "e%d"}' % n, partition=n % 3, timestamp_ms=now_ms)
        await producer.send_and_wait(topic, b"not json", partition=0, timestamp_ms=now_ms)
    finally:
        await producer.stop()
    ids = await published_event_ids(infra.bootstrap, topic, [0, 1], now_ms - 60_000)
    assert ids is not None
    assert {i for i in ids if i} == {f"e{n}" for n in range(50) if n % 3 in (0, 1)}
    assert await published_event_ids(infra.bootstrap, topic, [3], now_ms - 60_000) == set()
    assert await published_event_ids(infra.bootstrap, topic, [], now_ms) == set()


async def test_nothing_to_read_creates_no_consumer(caplog: pytest.LogCaptureFixture) -> None:
    # A worker that owns no recently touched task (every fresh start) asked this and left an
    # unstopped consumer behind, logged as an error by asyncio ("Unclosed AIOKafkaConsumer").
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        assert await published_event_ids("127.0.0.1:1", "t", [], 0) == set()
        gc.collect()
        await asyncio.sleep(0)
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]
