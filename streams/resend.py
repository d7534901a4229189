"""After recovery: which of the tasks' last events never reached ``task-events``.

The one gap at-least-once leaves the task processor: a task's new state reached the
changelog while the events of that decision did not (a crash between the two). The new
owner closes it by sending those events, which it keeps with each stored state. Sending
every recently touched task's last events on every rebalance, as the first version did,
put thousands of duplicates on ``task-events`` and ``dispatch.*`` each time, and a dispatch
sent twice can reach two executors. So the new owner first reads what ``task-events``
already holds for its partitions since the cutoff, and sends only what is missing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)


async def published_event_ids(
    bootstrap: str,
    topic: str,
    partitions: Iterable[int],
    since_ms: int,
    *,
    timeout_s: float = 30.0,
    options: dict[str, Any] | None = None,
) -> set[str] | None:
    """Ids of the events on ``topic``'s ``partitions`` written at or after ``since_ms``.

    None when they could not be read in time: the caller then sends everything (duplicates
    are harmless to every consumer; a lost event is not).
    """
    tps = [TopicPartition(topic, p) for p in sorted(set(partitions))]
    if not tps:
        # Before the consumer exists: one created and never stopped logs "Unclosed AIOKafkaConsumer".
        return set()
    # ``options``: the deployment's connection options (streams.connections.kafka_options).
    consumer = AIOKafkaConsumer(
        **{"bootstrap_servers": bootstrap, **(options or {})}, group_id=None, enable_auto_commit=False
    )
    try:
        await consumer.start()
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        pending = {}
        for tp in tps:
            found = starts.get(tp)
            start = found.offset if found is not None else ends[tp]
            if start < ends[tp]:
                consumer.seek(tp, start)
                pending[tp] = ends[tp]
        ids: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while pending:
            if loop.time() > deadline:
                log.warning("resend: could not read %s in %.0fs; sending every recent event", topic, timeout_s)
                return None
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < pending.get(tp, -1):
                        ids.add(_event_id(record.value))
                if records and records[-1].offset + 1 >= pending.get(tp, 0):
                    pending.pop(tp, None)
        return ids
    except Exception as exc:  # a broker hiccup: sending everything is the safe side
        log.warning("resend: reading %s failed (%s); sending every recent event", topic, exc)
        return None
    finally:
        await consumer.stop()


def _event_id(value: bytes | None) -> str:
    try:
        doc = orjson.loads(value or b"{}")
    except orjson.JSONDecodeError:
        return ""
    return str(doc.get("id", "")) if isinstance(doc, dict) else ""
