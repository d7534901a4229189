"""The CloudEvents 1.0 envelope around every command and event, and its orjson codec.

Decoding raises :class:`~schemas.errors.DecodeError` (dead-letter it) or, for a command whose
envelope is sound but whose body is invalid, :class:`~schemas.errors.InvalidCommand` (answer it
with a ``CommandRejected`` event).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, cast

import orjson
from pydantic import Field, TypeAdapter, ValidationError

from schemas import SCHEMA_VERSION
from schemas._types import UtcDatetime, WireModel
from schemas.commands import COMMAND_TYPES, Command, CommandBase
from schemas.control import CONTROL_TENANT, CONTROL_TYPE_PREFIX, CONTROL_TYPES, CommandBatch, Control, Tick
from schemas.errors import DecodeError, InvalidCommand
from schemas.events import EVENT_TYPES, Event, EventBase
from schemas.specs import TOLERANT

COMMAND_TYPE_PREFIX = "scheduler.command."
EVENT_TYPE_PREFIX = "scheduler.event."

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
_CONTROL_ADAPTER: TypeAdapter[Tick | CommandBatch] = TypeAdapter(Control)


class Envelope(WireModel):
    """CloudEvents 1.0 (structured mode, JSON) with the scheduler's extension attributes."""

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1)
    """The command id or event id."""
    source: str = Field(min_length=1)
    """URI-reference of the producer, e.g. ``/scheduler/api``."""
    type: str = Field(min_length=1)
    """``scheduler.command.<Type>`` or ``scheduler.event.<Type>``."""
    subject: str = Field(min_length=1)
    """The task id."""
    time: UtcDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    tenant: str = Field(min_length=1)
    actor: str = Field(min_length=1)
    causationid: str | None = None
    """Id of the message that caused this one (for events: the command id)."""
    correlationid: str | None = None
    """Id shared by every message of one logical operation."""
    schemaversion: int = Field(default=SCHEMA_VERSION, ge=1)
    data: dict[str, Any]
    """The command or event itself, as JSON."""


def command_envelope(cmd: CommandBase, source: str, correlation_id: str | None = None) -> Envelope:
    """Wrap a command; the correlation id defaults to the command id."""
    # Built from a validated command: validating the envelope again cost as much as the rest.
    return Envelope.model_construct(
        id=cmd.command_id,
        source=source,
        type=COMMAND_TYPE_PREFIX + _type_of(cmd),
        subject=cmd.task_id,
        time=cmd.at,
        tenant=cmd.tenant,
        actor=cmd.actor,
        causationid=None,
        correlationid=correlation_id or cmd.command_id,
        data=cmd.model_dump(mode="json"),
    )


def event_envelope(
    evt: EventBase, source: str, correlation_id: str | None, data: dict[str, Any] | None = None
) -> Envelope:
    """Wrap an event; its causation id is the causing command's id. ``data``: the event as
    ``evt.model_dump(mode="json")`` gives it, when the caller has it already."""
    # Built from a validated event (see command_envelope).
    return Envelope.model_construct(
        id=evt.event_id,
        source=source,
        type=EVENT_TYPE_PREFIX + _type_of(evt),
        subject=evt.task_id,
        time=evt.at,
        tenant=evt.tenant,
        actor=evt.actor,
        causationid=evt.causation_id,
        correlationid=correlation_id,
        data=evt.model_dump(mode="json") if data is None else data,
    )


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope to JSON bytes.

    ``data`` is JSON already (every envelope's is: built by ``model_dump(mode="json")`` or
    parsed from JSON), so it is not walked again: half the time of a whole dump."""
    doc = envelope.model_dump(mode="json", exclude={"data"})
    doc["data"] = envelope.data
    return orjson.dumps(doc)


def decode_envelope(raw: bytes, *, tolerant: bool = False) -> Envelope:
    """Parse and validate an envelope without interpreting its data.

    ``tolerant``: attributes this version does not know are dropped rather than refused (see
    :func:`decode_event`).

    :raises DecodeError: not JSON, or not a valid envelope.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None
    return _envelope_of(obj, tolerant=tolerant)


def _envelope_of(obj: object, *, tolerant: bool = False) -> Envelope:
    if not isinstance(obj, dict):
        raise DecodeError("envelope must be a JSON object")
    try:
        return Envelope.model_validate(obj)
    except ValidationError as exc:
        known = _without_unknown_fields(exc, obj) if tolerant else None
        if known is not None:
            return _envelope_of(known)
        field, reason = _first_error(exc, obj)
        raise DecodeError(f"invalid envelope: {reason}", field) from None


def decode_command(raw: bytes) -> Command:
    """Decode a command envelope.

    :raises InvalidCommand: the envelope is valid but the command body is not.
    :raises DecodeError: anything else is wrong (not JSON, bad envelope, unknown type).
    """
    return _command_of(decode_envelope(raw))


def decode_command_object(obj: object) -> Command:
    """Decode a command envelope already parsed from JSON (an item of a :class:`CommandBatch`).

    :raises InvalidCommand: the envelope is valid but the command body is not.
    :raises DecodeError: anything else is wrong.
    """
    return _command_of(_envelope_of(obj))


def decode_message(raw: bytes) -> Command | Tick | CommandBatch:
    """Decode anything the task processor reads from ``commands``: a command or a control message.

    :raises InvalidCommand: a command envelope whose body is invalid.
    :raises DecodeError: anything else is wrong, including an invalid control message.
    """
    return decode_message_correlated(raw)[0]


def decode_message_correlated(raw: bytes) -> tuple[Command | Tick | CommandBatch, str | None]:
    """:func:`decode_message`, and the envelope's correlation id (carried on to the events it causes)."""
    env = decode_envelope(raw)
    name = _suffix(env.type, CONTROL_TYPE_PREFIX)
    if name is None:
        return _command_of(env), env.correlationid
    if name not in CONTROL_TYPES:
        raise DecodeError(f"unknown control message type {env.type!r}", "type")
    data = dict(env.data)
    data.setdefault("type", name)
    try:
        return _CONTROL_ADAPTER.validate_python(data), env.correlationid
    except ValidationError as exc:
        field, reason = _first_error(exc, data)
        raise DecodeError(reason, f"data.{field}" if field else "data") from None


def control_envelope(message: Tick | CommandBatch, source: str, actor: str, at: datetime) -> Envelope:
    """Wrap a control message (see :mod:`schemas.control`)."""
    return Envelope.model_construct(
        id=message.tick_id if isinstance(message, Tick) else message.batch_id,
        source=source,
        type=CONTROL_TYPE_PREFIX + message.type,
        subject=f"partition/{message.partition}",
        time=at,
        tenant=CONTROL_TENANT,
        actor=actor,
        causationid=None,
        correlationid=None,
        data=message.model_dump(mode="json"),
    )


def _command_of(env: Envelope) -> Command:
    name = _suffix(env.type, COMMAND_TYPE_PREFIX)
    if name is None or name not in COMMAND_TYPES:
        raise DecodeError(f"unknown command type {env.type!r}", "type")
    data = dict(env.data)
    # The envelope is authoritative for routing and identity: a body that disagrees is invalid.
    data.setdefault("type", name)
    try:
        if data["type"] != name:
            raise _Mismatch("type", f"data.type {data['type']!r} does not match envelope type {name!r}")
        for attr, key in (("subject", "task_id"), ("tenant", "tenant"), ("id", "command_id")):
            if key in data and data[key] != getattr(env, attr):
                raise _Mismatch(key, f"{key} does not match the envelope's {attr}")
        cmd = COMMAND_TYPES[name].model_validate(data)
    except _Mismatch as exc:
        raise _invalid(env, name, exc.reason, exc.field) from None
    except ValidationError as exc:
        field, reason = _first_error(exc, data)
        raise _invalid(env, name, reason, field) from None
    return cast("Command", cmd)


def decode_event(raw: bytes) -> Event:
    """Decode an event envelope, tolerating fields this version does not know.

    Events are read by consumers older than their producer during a rolling upgrade (and by
    every outside consumer): a field added by a newer version, at any depth, is dropped, and
    the event is read with the fields this version knows. Anything else wrong is refused.
    Commands stay strict (:func:`decode_command`): a field the processor does not know is a
    mistake of the sender.

    :raises DecodeError: not JSON, bad envelope, unknown type, or an invalid event body.
    """
    env = decode_envelope(raw, tolerant=True)
    name = _suffix(env.type, EVENT_TYPE_PREFIX)
    if name is None or name not in EVENT_TYPES:
        raise DecodeError(f"unknown event type {env.type!r}", "type")
    data = dict(env.data)
    data.setdefault("type", name)
    if data["type"] != name:
        raise DecodeError(f"data.type {data['type']!r} does not match envelope type {name!r}", "data.type")
    try:
        # An event is a fact: rules added since it was written must not make it unreadable.
        return _EVENT_ADAPTER.validate_python(data, context=TOLERANT)
    except ValidationError as exc:
        known = _without_unknown_fields(exc, data)
        if known is not None:
            with contextlib.suppress(ValidationError):
                return _EVENT_ADAPTER.validate_python(known, context=TOLERANT)
        field, reason = _first_error(exc, data)
        raise DecodeError(reason, f"data.{field}" if field else "data") from None


def _without_unknown_fields(exc: ValidationError, data: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of ``data`` without the fields ``exc`` calls unknown, if that is all it found wrong."""
    errors = exc.errors(include_url=False)
    if not errors or any(err["type"] != "extra_forbidden" for err in errors):
        return None
    known = cast("dict[str, Any]", orjson.loads(orjson.dumps(data)))
    for err in errors:
        parent: Any = known
        *path, last = err["loc"]
        for item in path:
            if isinstance(parent, Mapping) and isinstance(item, str) and item not in parent:
                continue  # a union tag in the location, not a field (see error_field)
            parent = parent[item]
        if isinstance(parent, dict):
            parent.pop(str(last), None)
    return known


def error_field(loc: Sequence[int | str], data: object) -> str | None:
    """Turn a pydantic error location into a dotted field path.

    Discriminated unions put the tag (e.g. ``cron``) into the location; it is dropped so the
    path names fields of the document as the client wrote it (``definition.schedule.expression``).
    """
    parts: list[str] = []
    node: object = data
    for item in loc:
        if isinstance(node, Mapping) and isinstance(item, str) and item not in node:
            if item in (node.get("kind"), node.get("type")):
                continue  # a union tag, not a field
            # A missing field: the path still names it; there is nothing deeper to walk into.
            parts.append(item)
            node = None
            continue
        parts.append(str(item))
        if isinstance(node, Mapping):
            node = node.get(item)
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            node = node[item]
        else:
            node = None
    return ".".join(parts) or None


class _Mismatch(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _invalid(env: Envelope, name: str, reason: str, field: str | None) -> InvalidCommand:
    return InvalidCommand(
        reason,
        field,
        task_id=env.subject,
        tenant=env.tenant,
        actor=env.actor,
        command_id=env.id,
        command_type=name,
        at=env.time,
    )


def _first_error(exc: ValidationError, data: object) -> tuple[str | None, str]:
    err = exc.errors(include_url=False)[0]
    field = error_field(err["loc"], data)
    msg = err["msg"]
    # pydantic prefixes messages raised from validators with "Value error, "; it adds nothing.
    msg = msg.removeprefix("Value error, ")
    return field, msg


def _suffix(value: str, prefix: str) -> str | None:
    return value[len(prefix) :] if value.startswith(prefix) else None


def _type_of(model: CommandBase | EventBase) -> str:
    return str(getattr(model, "type"))  # noqa: B009 - every concrete command and event has one
