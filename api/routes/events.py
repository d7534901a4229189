"""``/v1/events/stream``: live task and execution events of the caller's tenant, as server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.deps import ApiState, State, Viewer
from api.errors import ERROR_RESPONSES, ServiceUnavailable
from api.queries import public_task_id
from schemas.envelope import decode_envelope
from schemas.errors import DecodeError
from schemas.secrets import mask_clear, redact
from streams.connections import kafka_options

router = APIRouter(prefix="/v1/events", tags=["events"], responses=ERROR_RESPONSES)

_POLL_MS = 500


@router.get(
    "/stream",
    summary="Live events (server-sent events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An endless `text/event-stream`."}},
)
async def stream_events(state: State, principal: Viewer) -> StreamingResponse:
    """Task and execution events of the caller's tenant from now on, as `text/event-stream`.

    Each event has `id` (the event id), `event` (its type, e.g. `TaskPaused`) and `data` (the
    event as JSON, `task_id` as the client knows it). Comment lines keep an idle stream open.
    The stream starts with a `: connected` comment once it is positioned at the end of the log.
    """
    settings = state.settings
    if state.open_streams >= settings.sse_max_streams:
        raise ServiceUnavailable("too many open event streams", retry_after=settings.retry_after_seconds)
    consumer = await _start_consumer(state)
    return StreamingResponse(
        _events(state, consumer, principal.tenant),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _start_consumer(state: ApiState) -> AIOKafkaConsumer:
    settings = state.settings
    consumer = AIOKafkaConsumer(
        settings.events_topic,
        **kafka_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        isolation_level="read_committed",
    )
    try:
        async with asyncio.timeout(settings.kafka_connect_timeout_seconds):
            await consumer.start()
            # Resolve "latest" now, so that everything after the `connected` comment is delivered.
            partitions = consumer.assignment()
            await consumer.seek_to_end(*partitions)
            for tp in partitions:
                await consumer.position(tp)
    except (KafkaError, OSError, TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise ServiceUnavailable(
            f"Kafka is unreachable ({type(exc).__name__})", retry_after=settings.retry_after_seconds
        ) from None
    return consumer


def public_event(data: dict[str, Any], tenant: str) -> dict[str, Any]:
    """An event as a client of ``tenant`` sees it: its own task ids, no tenant field, no secrets."""
    out = {k: redact(v) for k, v in data.items() if k != "tenant"}
    # Clear values at sensitive places too (a producer that did not encrypt).
    if isinstance(out.get("definition"), dict):
        mask_clear(out["definition"])
    if isinstance(out.get("work"), dict):
        mask_clear(out)
    if isinstance(out.get("task_id"), str):
        out["task_id"] = public_task_id(tenant, out["task_id"])
    return out


async def _events(state: ApiState, consumer: AIOKafkaConsumer, tenant: str) -> AsyncIterator[bytes]:
    settings = state.settings
    state.open_streams += 1
    try:
        yield b"retry: 3000\n: connected\n\n"
        started = last_sent = time.monotonic()
        while not state.closing.is_set() and time.monotonic() - started < settings.sse_max_seconds:
            batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=500)
            for records in batch.values():
                for record in records:
                    try:
                        envelope = decode_envelope(record.value or b"")
                    except DecodeError:
                        continue  # the projector dead-letters it; a live view just skips it
                    if envelope.tenant != tenant:
                        continue
                    name = envelope.type.rsplit(".", 1)[-1]
                    data = orjson.dumps(public_event(envelope.data, tenant))
                    yield f"id: {envelope.id}\nevent: {name}\n".encode() + b"data: " + data + b"\n\n"
                    last_sent = time.monotonic()
            if time.monotonic() - last_sent >= settings.sse_heartbeat_seconds:
                yield b": keepalive\n\n"
                last_sent = time.monotonic()
    finally:
        state.open_streams -= 1
        # The client may have gone: the response's task group is being cancelled. Shield the
        # cleanup so the consumer always leaves.
        with anyio.CancelScope(shield=True):
            await consumer.stop()
