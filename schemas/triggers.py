"""Event triggers: CloudEvents 1.0 from other services, and the rules that turn them into runs.

A task's ``triggers`` (:class:`TriggerRule`) match CloudEvents of the task's own tenant on
``type``, ``source`` and ``subject`` (exact or prefix) and on simple conditions on ``data``
fields. The trigger router (``streams/triggers.py``) turns each match into a ``TriggerTask``
command whose params carry the event (:func:`trigger_params`), with a deterministic trigger id
(:func:`trigger_id`), so a redelivered event runs the task once.

Everything here is pure: decoding (:func:`decode_cloudevent`, structured or binary mode) raises
:class:`~schemas.errors.DecodeError` naming the field at fault, and matching is a function of
the rule and the event.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Self

import orjson
from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from schemas._types import UtcDatetime, WireModel
from schemas.errors import DecodeError

TRIGGER_NAMESPACE = uuid.UUID("a4f3c2e1-7b5d-5c8e-9f01-2d3e4b5a6c7d")
"""Namespace of the trigger ids derived from (task, event source, event id)."""

MAX_CONDITIONS = 10
"""Most conditions of one rule (all must hold)."""
MAX_IN_VALUES = 100
"""Most values of one ``in`` condition."""
MAX_RULES = 20
"""Most trigger rules of one task."""
MAX_DEBOUNCE_SECONDS = 3600.0
"""Longest debounce window."""
MAX_DATA_DEPTH = 32
"""Deepest nesting of an event's data (it ends up in views, as BSON)."""

_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
"""CloudEvents 1.0: attribute names are lower-case letters and digits, at most 20 of them."""
_PARAMS_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")
_INT64 = range(-(2**63), 2**63)


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------


class TextMatch(WireModel):
    """Match an attribute exactly or by prefix; exactly one of the two is given.

    A plain string in a rule (``"type": "com.acme.build.done"``) means ``{"exact": ...}``.
    """

    exact: str | None = Field(default=None, min_length=1, max_length=1000)
    """The attribute equals this."""
    prefix: str | None = Field(default=None, min_length=1, max_length=1000)
    """The attribute starts with this."""

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.exact is None) == (self.prefix is None):
            raise ValueError("give exactly one of 'exact' and 'prefix'")
        return self

    def matches(self, value: str | None) -> bool:
        """Whether ``value`` (None: the event lacks the attribute) matches."""
        if value is None:
            return False
        if self.exact is not None:
            return value == self.exact
        assert self.prefix is not None  # nosec B101  # one of the two, by the validator
        return value.startswith(self.prefix)


def _text_match(value: object) -> object:
    return {"exact": value} if isinstance(value, str) else value


class Condition(WireModel):
    """A condition on the event's ``data``: the value at ``pointer`` equals ``eq``, is one of
    ``in``, or exists (``exists: true``) or not (``exists: false``). Exactly one operator.

    Equality is JSON equality: ``1`` equals ``1.0``, but ``true`` is not ``1``.
    """

    pointer: str = Field(max_length=1000)
    """JSON pointer (RFC 6901) into ``data``, e.g. ``/status`` or ``/build/branch``."""
    eq: Any = None
    """The value must equal this (any JSON value, ``null`` included)."""
    in_: list[Any] | None = Field(default=None, alias="in", min_length=1, max_length=MAX_IN_VALUES)
    """The value must equal one of these."""
    exists: bool | None = None
    """``true``: the pointer must lead to a value (``null`` counts); ``false``: it must not."""

    model_config = WireModel.model_config | {"populate_by_name": True, "serialize_by_alias": True}

    @field_validator("pointer")
    @classmethod
    def _pointer(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("must be a JSON pointer (RFC 6901): empty (the whole data) or starting with '/'")
        return value

    @model_serializer(mode="wrap")
    def _only_the_operator(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Only the operator given: an unset ``eq`` dumped as null would read back as ``eq: null``.
        dumped: dict[str, Any] = handler(self)
        for name, key in (("eq", "eq"), ("in_", "in"), ("exists", "exists")):
            if name not in self.model_fields_set:
                dumped.pop(key, None)
                dumped.pop(name, None)
        return dumped

    @model_validator(mode="after")
    def _one_operator(self) -> Self:
        given = {"eq", "in_", "exists"} & self.model_fields_set
        if len(given) != 1:
            raise ValueError("give exactly one of 'eq', 'in' and 'exists'")
        return self

    def holds(self, data: Any) -> bool:
        """Whether the condition holds on ``data``."""
        found, value = json_pointer(data, self.pointer)
        if "exists" in self.model_fields_set:
            return found == self.exists
        if not found:
            return False
        if "eq" in self.model_fields_set:
            return json_equal(value, self.eq)
        return any(json_equal(value, v) for v in self.in_ or ())


class TriggerRule(WireModel):
    """Run the task when a CloudEvent of the task's tenant matches.

    ``type`` is required; ``source`` and ``subject``, when given, must match too, and so must
    every condition on the event's ``data``. The run's params are the task's params with the
    event under ``params_key``: ``{"id", "source", "type", "subject", "time", "data"}``, or, with
    ``debounce_seconds``, a list of such events (the first ``debounce_max_events``) and their
    count under ``<params_key>_count``.
    """

    type: TextMatch
    """The event's ``type``: a string (exact) or ``{"exact": ...}`` / ``{"prefix": ...}``."""
    source: TextMatch | None = None
    """The event's ``source``; None: any."""
    subject: TextMatch | None = None
    """The event's ``subject``; None: any (an event without a subject matches only None)."""
    conditions: list[Condition] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    """Conditions on the event's ``data``; all must hold."""
    debounce_seconds: float | None = Field(default=None, gt=0, le=MAX_DEBOUNCE_SECONDS)
    """One run per window: the first matching event opens a window of this length, and the
    run starts when it closes, with every event matched in it batched into its params. None:
    one run per event."""
    debounce_max_events: int = Field(default=100, ge=1, le=1000)
    """Most events a debounced run's params carry (all are counted)."""
    params_key: str = "event"
    """The param the event (or, debounced, the list of events) is put under."""

    @field_validator("type", "source", "subject", mode="before")
    @classmethod
    def _string_is_exact(cls, value: object) -> object:
        return _text_match(value)

    @field_validator("params_key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not _PARAMS_KEY.fullmatch(value):
            raise ValueError("params_key must be 1-100 letters, digits, '_' or '-', starting with a letter or '_'")
        return value

    def matches(self, event: CloudEvent) -> bool:
        """Whether ``event`` matches the rule (its tenant is checked by the caller)."""
        return (
            self.type.matches(event.type)
            and (self.source is None or self.source.matches(event.source))
            and (self.subject is None or self.subject.matches(event.subject))
            and all(c.holds(event.data) for c in self.conditions)
        )


def json_pointer(doc: Any, pointer: str) -> tuple[bool, Any]:
    """``(found, value)`` at an RFC 6901 pointer (``""`` is the whole document)."""
    cur = doc
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and part.isascii() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return False, None
    return True, cur


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value, but a boolean is never a number (``True == 1`` in Python)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


# ---------------------------------------------------------------------------------------------
# CloudEvents
# ---------------------------------------------------------------------------------------------

_REQUIRED = ("specversion", "id", "source", "type")


class CloudEvent(WireModel):
    """A CloudEvents 1.0 event with JSON data, and the scheduler's ``tenant`` extension.

    Other extension attributes (lower-case letters and digits, at most 20) are kept with
    string, number or boolean values. ``data_base64`` (binary data) is not supported: rules
    look into JSON data.
    """

    model_config = WireModel.model_config | {"extra": "allow"}

    specversion: Literal["1.0"]
    """CloudEvents version; only ``1.0``."""
    id: str = Field(min_length=1, max_length=200)
    """Unique per ``source``: the same (source, id) is the same event, delivered again."""
    source: str = Field(min_length=1, max_length=1000)
    """URI-reference of the producer, e.g. ``/ci/builds``."""
    type: str = Field(min_length=1, max_length=200)
    """What happened, e.g. ``com.acme.build.finished``."""
    tenant: str = Field(min_length=1, max_length=64)
    """The tenant whose tasks the event may trigger (extension attribute; ``ce_tenant`` in binary mode)."""
    subject: str | None = Field(default=None, min_length=1, max_length=1000)
    """What the event is about, within the source."""
    time: UtcDatetime | None = None
    """When it happened (RFC 3339)."""
    datacontenttype: str | None = Field(default=None, max_length=200)
    """Media type of ``data``; JSON (``application/json`` or ``+json``) when given."""
    dataschema: str | None = Field(default=None, max_length=1000)
    data: Any = None
    """The event's JSON data."""

    @field_validator("datacontenttype")
    @classmethod
    def _json(cls, value: str | None) -> str | None:
        if value is not None and not _is_json(value):
            raise ValueError("only JSON data is supported (application/json or a +json type)")
        return value

    @field_validator("data")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        problem = _unstorable(value, ())
        if problem is not None:
            path, reason = problem
            raise ValueError(f"{'/'.join(('data', *path))}: {reason}")
        return value

    @model_validator(mode="after")
    def _extensions(self) -> Self:
        for name, value in (self.model_extra or {}).items():
            if name == "data_base64":
                raise ValueError("data_base64: binary data is not supported; send JSON data")
            if not _EXTENSION_NAME.fullmatch(name):
                raise ValueError(f"{name}: not a CloudEvents attribute (lower-case letters and digits, at most 20)")
            if not isinstance(value, str | int | float | bool) or (isinstance(value, int) and value not in _INT64):
                raise ValueError(f"{name}: an extension attribute must be a string, number or boolean")
        return self

    def summary(self) -> dict[str, Any]:
        """What a run's params carry of the event."""
        return {
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": None if self.time is None else self.time.isoformat(),
            "data": self.data,
        }

    def to_json(self) -> bytes:
        """The event in structured mode (``application/cloudevents+json``)."""
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))


def _is_json(media_type: str) -> bool:
    base = media_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json") or base == "text/json"


def _unstorable(value: Any, path: tuple[str, ...]) -> tuple[tuple[str, ...], str] | None:
    """Where and why ``value`` cannot reach the views (BSON on MongoDB or FerretDB), or None."""
    if len(path) > MAX_DATA_DEPTH:
        return path, f"nested more than {MAX_DATA_DEPTH} levels deep"
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if value in _INT64 else (path, "integer out of range (must fit in 64 bits)")
    if isinstance(value, float):
        return None if value - value == 0 else (path, "not a finite number")  # NaN and infinities give NaN
    if isinstance(value, str):
        return None if _utf8(value) else (path, "not valid Unicode text (a lone surrogate)")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not _utf8(key):
                return path, "a key is not valid Unicode text"
            if key.startswith("$") or "." in key or "\x00" in key:
                return path, f"key {key!r} cannot be stored: keys must not start with '$' or hold '.' or NUL"
            if (found := _unstorable(item, (*path, key))) is not None:
                return found
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, list):
                return (*path, str(index)), "an array cannot be stored directly inside an array"
            if (found := _unstorable(item, (*path, str(index)))) is not None:
                return found
        return None
    return path, f"not a JSON value ({type(value).__name__})"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def cloudevent_of(obj: object) -> CloudEvent:
    """Validate a structured-mode CloudEvent given as a JSON object.

    :raises DecodeError: not a JSON object, or not a valid CloudEvent; ``field`` names the
        attribute at fault (``data/...`` for data that cannot be stored).
    """
    if not isinstance(obj, dict):
        raise DecodeError("a CloudEvent must be a JSON object")
    for name in _REQUIRED:
        if name not in obj:
            raise DecodeError(f"required CloudEvents attribute {name!r} is missing", field=name)
    try:
        return CloudEvent.model_validate(obj)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(p) for p in error.get("loc", ())]
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        field = loc[0] if loc else None
        if field is None and ": " in message:
            # A model-level check names its attribute first ("data_base64: ...").
            field, message = message.split(": ", 1)
        elif field == "data" and ": " in message:
            field, message = message.split(": ", 1)
        raise DecodeError(message, field=field) from None


def decode_cloudevent(value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()) -> CloudEvent:
    """Decode a CloudEvent from a Kafka message: binary mode when a ``ce_specversion`` header is
    present (attributes in ``ce_*`` headers, ``content-type`` header, value = the data), else
    structured mode (the value is the event as JSON).

    :raises DecodeError: naming the attribute at fault.
    """
    attributes: dict[str, Any] = {}
    content_type: str | None = None
    for name, raw in headers:
        lower = name.lower()
        if lower.startswith("ce_"):
            attributes[lower[3:]] = _header_text(name, raw)
        elif lower in ("content-type", "content_type"):
            content_type = _header_text(name, raw)
    if "specversion" not in attributes:
        try:
            obj = orjson.loads(value or b"")
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"not a CloudEvent: the value is not valid JSON ({exc})") from None
        return cloudevent_of(obj)
    return binary_cloudevent(attributes, content_type, value)


def binary_cloudevent(attributes: Mapping[str, str], content_type: str | None, body: bytes | None) -> CloudEvent:
    """A CloudEvent in binary mode: ``attributes`` from ``ce_`` headers (Kafka) or ``ce-``
    headers (HTTP), names without the prefix; ``body`` is the JSON data (empty: none).

    :raises DecodeError: naming the attribute at fault.
    """
    obj: dict[str, Any] = dict(attributes)
    if content_type is not None:
        obj["datacontenttype"] = content_type
        if not _is_json(content_type):
            raise DecodeError("only JSON data is supported (application/json or a +json type)", "datacontenttype")
    if body:
        try:
            obj["data"] = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"the data is not valid JSON ({exc})", field="data") from None
    return cloudevent_of(obj)


def _header_text(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("header is not UTF-8 text", field=name) from None


# ---------------------------------------------------------------------------------------------
# From a match to a run
# ---------------------------------------------------------------------------------------------


def dedup_key(event: CloudEvent) -> str:
    """What makes two deliveries the same event: tenant, source and id."""
    return f"{event.tenant}\x1f{event.source}\x1f{event.id}"


def trigger_id(task_id: str, event: CloudEvent, *, window: bool = False) -> str:
    """The ``TriggerTask.trigger_id`` of the run ``event`` starts for ``task_id``: the same
    event delivered again gives the same id, so the task processor runs it once. ``window``:
    the run of a debounce window the event opened."""
    kind = "debounce" if window else "event"
    return str(uuid.uuid5(TRIGGER_NAMESPACE, f"{kind}\x1f{task_id}\x1f{event.source}\x1f{event.id}"))


BATCH_MAX_BYTES = 512 * 1024
"""Most bytes of event data one debounced run's params carry: a command must fit in a Kafka
message (1 MB by default)."""


def trigger_params(
    rule: TriggerRule,
    events: Sequence[CloudEvent],
    *,
    debounced: bool,
    max_bytes: int = BATCH_MAX_BYTES,
    count: int | None = None,
) -> dict[str, Any]:
    """The params of a triggered run: the event under ``params_key``, or, debounced, the list
    of the window's first events (at most ``debounce_max_events``, and ``max_bytes`` of them)
    and the count of all of them under ``<params_key>_count`` (``count``, when ``events`` holds
    only the first of them)."""
    if not debounced:
        return {rule.params_key: events[0].summary()}
    kept: list[dict[str, Any]] = []
    size = 0
    for event in events[: rule.debounce_max_events]:
        summary = event.summary()
        size += len(orjson.dumps(summary))
        if kept and size > max_bytes:
            break
        kept.append(summary)
    return {rule.params_key: kept, f"{rule.params_key}_count": len(events) if count is None else count}


def first_match(rules: Iterable[TriggerRule], event: CloudEvent) -> TriggerRule | None:
    """The first of a task's rules ``event`` matches: a task runs once per event, however many
    of its rules match."""
    return next((r for r in rules if r.matches(event)), None)


# ---------------------------------------------------------------------------------------------
# The rules index on Kafka
# ---------------------------------------------------------------------------------------------


class TaskRules(WireModel):
    """One task's trigger rules as published on ``trigger-rules`` (keyed by task id; a task
    without rules, or deleted, is a tombstone), by the task processor as it applies the task's
    ``TaskCreated``/``TaskUpdated``/``TaskDeleted`` event."""

    task_id: str
    tenant: str
    sequence: int = Field(ge=1)
    """The task's version the rules are of."""
    rules: list[TriggerRule]
