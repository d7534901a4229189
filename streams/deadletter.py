"""Dead-letter records: a message that could not be decoded or applied, with the reason."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from schemas.errors import DecodeError


def dead_letter_value(
    *, topic: str, partition: int, offset: int, payload: bytes | None, error: DecodeError | Exception
) -> bytes:
    """The JSON body of a dead-letter message: where it came from, why, and the raw payload."""
    body: dict[str, Any] = {
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "reason": str(error),
        "field": getattr(error, "field", None),
        "error_type": type(error).__name__,
    }
    raw = payload or b""
    try:
        body["payload"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        body["payload_base64"] = base64.b64encode(raw).decode()
    return orjson.dumps(body)


def dead_letter_record(record: ConsumerRecord[bytes, bytes], error: DecodeError | Exception) -> dict[str, Any]:
    """Keyword arguments for ``producer.send(dead_letter_topic, **...)``."""
    return {
        "key": record.key,
        "value": dead_letter_value(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            payload=record.value,
            error=error,
        ),
    }
