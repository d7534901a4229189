"""``POST /v1/events``: a CloudEvent from a producer without Kafka, put on the ``triggers`` topic.

(``api/routes/events.py`` is the other direction: the live stream of the scheduler's own events.)
The trigger router (``streams/triggers.py``) routes it like any event produced to ``triggers``.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.deps import Operator, State
from api.errors import ERROR_RESPONSES, FieldError, Forbidden, PayloadTooLarge, Unprocessable, problem_responses
from schemas.errors import DecodeError
from schemas.triggers import CloudEvent, binary_cloudevent, cloudevent_of

router = APIRouter(prefix="/v1/events", tags=["events"], responses=ERROR_RESPONSES)

_HEADER_PREFIX = "ce-"


class EventAccepted(BaseModel):
    """A CloudEvent on its way to the trigger router."""

    id: str = Field(examples=["build-42-finished"])
    """The event's id."""
    source: str = Field(examples=["/ci/builds"])
    """The event's source: with the id, what makes a delivery the same event."""
    status: Literal["accepted"] = "accepted"


@router.post(
    "",
    status_code=202,
    summary="Send a CloudEvent that may trigger tasks",
    responses=problem_responses(403, 413, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/cloudevents+json": {"schema": {"type": "object"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def post_event(request: Request, state: State, principal: Operator) -> EventAccepted:
    """Accept a CloudEvents 1.0 event for the caller's tenant; answered `202` once Kafka has it.

    Structured mode: the body is the event as JSON (`specversion`, `id`, `source`, `type` required;
    `subject`, `time`, `data` and extension attributes optional). Binary mode: the attributes in
    `ce-` headers (`ce-specversion: 1.0`, `ce-id`, ...) and the body is the JSON data. The tenant
    is the token's: an event naming another `tenant` is refused (`403`), never delivered. Tasks
    of the tenant whose trigger rules match run once per (`source`, `id`).
    """
    body = await request.body()
    limit = state.settings.trigger_max_event_bytes
    if len(body) > limit:
        raise PayloadTooLarge(f"a CloudEvent may be at most {limit} bytes")
    tenant = principal.tenant
    try:
        if _HEADER_PREFIX + "specversion" in request.headers:
            event = binary_cloudevent(
                _own_tenant(_attributes(request), tenant), request.headers.get("content-type"), body
            )
        else:
            event = cloudevent_of(_own_tenant(_structured(body), tenant))
    except DecodeError as exc:
        state.metrics.command("CloudEvent", "rejected")
        raise _unprocessable(exc) from None
    await state.bus.publish(
        state.settings.topics.triggers, _key(event), event.to_json(), what=f"event {event.source} {event.id}"
    )
    state.metrics.command("CloudEvent", "accepted")
    return EventAccepted(id=event.id, source=event.source)


def _structured(body: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"request body is not valid JSON: {exc}", field="body") from None
    if not isinstance(obj, dict):
        raise DecodeError("a CloudEvent must be a JSON object", field="body")
    return obj


def _attributes(request: Request) -> dict[str, Any]:
    return {
        name.removeprefix(_HEADER_PREFIX): value
        for name, value in request.headers.items()
        if name.startswith(_HEADER_PREFIX)
    }


def _own_tenant(attributes: dict[str, Any], tenant: str) -> dict[str, Any]:
    """The attributes with the caller's tenant: an event naming another one is refused."""
    claimed = attributes.get("tenant")
    if claimed is not None and claimed != tenant:
        raise Forbidden(
            "tenant: an event may only be sent for the caller's own tenant",
            errors=[FieldError(field="tenant", message="not the caller's tenant", pointer="#/tenant")],
        )
    return {**attributes, "tenant": tenant}


def _key(event: CloudEvent) -> bytes:
    # Every delivery of one event lands on one partition, so one router sees them all.
    return f"{event.tenant}\x1f{event.source}\x1f{event.id}".encode()


def _unprocessable(exc: DecodeError) -> Unprocessable:
    path = exc.field or "body"  # "data/build/branch" for a field inside the data
    pointer = "#" if path == "body" else "#/" + path
    field = path.replace("/", ".")
    error = FieldError(field=field, message=exc.reason, pointer=pointer)
    return Unprocessable(f"{field}: {exc.reason}", errors=[error])
