"""What the task processor produces while it applies one message, sent as one batch per partition.

Applying a tick wakes every due task of a partition, and each wake publishes its events to
two or three topics. Sent one by one, every record took a trip through the producer's
per-message machinery (a future, a partitioner call, an accumulator lookup); that was about a
fifth of the worker's time at 1,000 fires a second. Gathered here while the message is applied
and handed over as one record batch per topic partition (aiokafka's ``send_batch``) when it is
done (:meth:`Outbox.flush`), they cost an append each.

Nothing about delivery changes: the batches go through the same producer, whose flush Faust
awaits before it commits the input's offset, so an input is committed only once its output is
on the broker. Records of one topic partition leave in the order they were added (one open
batch per partition; a full one is handed over before the next is started), so a task's events
keep their order. Partitions are chosen as the producer's default partitioner would (murmur2 of
the key), so a record lands where a ``send`` of it would have.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.store import partition_for

log = logging.getLogger(__name__)


@dataclass
class OutboxStats:
    records: int = 0
    batches: int = 0
    failed_batches: int = 0


class Outbox:
    """Collects records per topic partition; :meth:`flush` hands them to the producer."""

    def __init__(self, producer: Callable[[], AIOKafkaProducer]) -> None:
        self._producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._partitions: dict[str, int] = {}
        self.stats = OutboxStats()

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None) -> None:
        """Add a record (value None: a tombstone); ``partition`` None: the key's partition."""
        producer = self._producer()
        if partition is None:
            if key is None:
                # No key to place it by (a dead letter of a keyless message): the producer picks.
                await producer.send(topic, value, key=None)
                return
            count = self._partitions.get(topic)
            if count is None:
                count = self._partitions[topic] = len(await producer.partitions_for(topic))
            partition = partition_for(key, count)
        self.stats.records += 1
        tp = (topic, partition)
        batch = self._open.get(tp)
        if batch is None:
            batch = self._open[tp] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:
            # Full: hand it over, then start the next (the first record of a batch always fits).
            await self._submit(producer, tp, batch)
            batch = self._open[tp] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)

    async def flush(self) -> None:
        """Hand every open batch to the producer (delivery is awaited by the producer's flush)."""
        if not self._open:
            return
        producer = self._producer()
        batches, self._open = self._open, {}
        for tp, batch in batches.items():
            await self._submit(producer, tp, batch)

    def pending(self) -> int:
        """Open batches not yet handed over."""
        return len(self._open)

    async def _submit(self, producer: AIOKafkaProducer, tp: tuple[str, int], batch: Any) -> None:
        self.stats.batches += 1
        delivered = await producer.send_batch(batch, tp[0], partition=tp[1])
        delivered.add_done_callback(self._delivered)

    def _delivered(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        if (error := future.exception()) is not None:
            # As for a single send, the producer has retried for its whole delivery timeout by
            # now; what is lost is sent again after a restart (streams.resend), and this says so.
            self.stats.failed_batches += 1
            log.error("outbox: a record batch was not delivered: %s", error)
