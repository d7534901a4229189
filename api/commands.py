"""Turning an HTTP command into a Kafka command and, with ``?wait``, into its outcome.

The shell every command route goes through: ids (random, or derived from ``Idempotency-Key``),
send to Kafka (never answering 202 for a command Kafka did not acknowledge), then optionally
wait for the projection to show what the command caused.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import Response
from pydantic import BaseModel
from pymongo.errors import ConnectionFailure, ExecutionTimeout

from api.auth import Principal, utf8_encodable
from api.deps import ApiState
from api.errors import FieldError, ServiceUnavailable, Unprocessable, rejection_error
from api.models import CommandResult, ExecutionPublic, TaskPublic
from api.queries import Doc, public_task_id
from api.quotas import Refund
from schemas.commands import CommandBase
from schemas.secrets import SecretError, mask_clear, redact
from schemas.specs import TOLERANT

log = logging.getLogger(__name__)

API_NAMESPACE = uuid.UUID("0b7e4a8c-2f61-5d3e-8c49-6a1f0e2d7b35")
"""Namespace of the ids derived from ``Idempotency-Key`` headers."""

_KEY = re.compile(r"[\x21-\x7e]{1,200}")
"""Matched in full (``$`` would also match before a trailing newline)."""
_REVISION = re.compile(r"[0-9]{1,16}")
_INT64 = range(-(2**63), 2**63)
_MAX_DEPTH = 64
"""Deepest nesting of a command: well within what BSON (100 levels), pydantic and orjson (255) carry."""


def now() -> datetime:
    """The command time: the API's clock is the one place "now" is read for user commands."""
    return datetime.now(UTC)


def check_idempotency_key(key: str | None) -> str | None:
    """The key if well formed (1-200 visible ASCII characters); 422 naming the header otherwise."""
    if key is not None and not _KEY.fullmatch(key):
        raise Unprocessable(
            "Idempotency-Key: must be 1-200 visible ASCII characters",
            errors=[FieldError(field="Idempotency-Key", message="must be 1-200 visible ASCII characters")],
        )
    return key


def derived_id(*parts: str) -> str:
    """A uuid5 over ``parts``: the same request retried gets the same id."""
    return str(uuid.uuid5(API_NAMESPACE, "\x1f".join(parts)))


def new_task_ids(tenant: str, key: str | None) -> tuple[str, str]:
    """``(public task id, command id)`` of a create: random, or derived from (tenant, key)."""
    if key is None:
        return str(uuid.uuid4()), str(uuid.uuid4())
    return derived_id("task", tenant, key), derived_id("create", tenant, key)


def command_id_for(tenant: str, action: str, target: str, key: str | None) -> str:
    """The id of a command on ``target``: random, or derived from (tenant, action, target, key)."""
    return str(uuid.uuid4()) if key is None else derived_id(action, tenant, target, key)


def parse_if_match(value: str | None) -> int | None:
    """The revision in ``If-Match: "<revision>"`` (weak tags and ``*`` accepted); 422 otherwise."""
    if value is None or value.strip() == "*":
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    # ASCII digits only, and few of them: str.isdigit() also takes "²" (which int() refuses) and
    # int() refuses more than 4300 digits; either answered 500.
    if not _REVISION.fullmatch(tag) or not 0 < int(tag) < 2**53:
        raise Unprocessable(
            'If-Match: expected a task revision as an entity tag, e.g. "3"',
            errors=[FieldError(field="If-Match", message='expected a task revision as an entity tag, e.g. "3"')],
        )
    return int(tag)


def _unstorable(value: Any, path: tuple[str, ...] = ()) -> tuple[tuple[str, ...], str] | None:
    """Where and why ``value`` (a command) cannot reach the views, or None if it can.

    The views are BSON documents embedding the command's JSON (definitions, params): integers must
    fit in a signed 64 bits (orjson, on the commands topic, is bound likewise); strings and keys
    must be encodable as UTF-8 (Python's JSON reader accepts a lone surrogate escape such as
    ``"\\ud800"``, which neither orjson nor BSON can write); numbers must be finite; and as FerretDB
    refuses the write, keys must not start with ``$`` or hold ``.`` or NUL, and an array must not
    hold an array directly. Nesting is bounded too; so the command is walked as it is, not dumped
    first (dumping one nested too deep fails).
    """
    if len(path) > _MAX_DEPTH:
        return path[:_MAX_DEPTH], f"nested more than {_MAX_DEPTH} levels deep"
    if isinstance(value, int) and not isinstance(value, bool):
        return None if value in _INT64 else (path, "integer out of range (must fit in 64 bits)")
    if isinstance(value, float):
        # Python's JSON reader takes NaN and Infinity; orjson would write them as null.
        return None if math.isfinite(value) else (path, "not a finite number (NaN and Infinity are not JSON)")
    if isinstance(value, str):
        return None if utf8_encodable(value) else (path, _NOT_UNICODE)
    if isinstance(value, BaseModel):
        items: Iterable[tuple[Any, Any]] = iter(value)
    elif isinstance(value, Mapping):
        for key in value:
            if not utf8_encodable(key):
                return path, f"a key is {_NOT_UNICODE}"
            if key.startswith("$") or "." in key or "\x00" in key:
                return path, f"key {key!r} cannot be stored: keys must not start with '$' or hold '.' or NUL"
        items = value.items()
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, list):
                return (*path, str(index)), "an array cannot be stored directly inside an array"
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _unstorable(item, (*path, str(key)))
        if found is not None:
            return found
    return None


_NOT_UNICODE = "not valid Unicode text (it holds a lone surrogate such as \\ud800), so it cannot be encoded as UTF-8"


def check_storable(value: Any, *prefix: str) -> None:
    """Refuse what the views cannot store or no encoder accepts (see :func:`_unstorable`).

    Called on a request's own input before anything encodes it (sealing secrets does), so the
    client gets a 422 naming the field, never a 500.

    :raises ApiError: 422 naming the field at fault.
    """
    unstorable = _unstorable(value, prefix)
    if unstorable is not None:
        path, reason = unstorable
        raise rejection_error(reason, ".".join(path))


def task_public(doc: Doc, tenant: str) -> TaskPublic:
    """The public form of a task document; secrets show as ``***``, even ones held in clear."""
    public = redact({**doc, "id": public_task_id(tenant, doc["_id"])})
    if isinstance(public.get("definition"), dict):
        mask_clear(public["definition"])  # projected before secrets were encrypted
    # TOLERANT: a stored definition accepted under older rules must still be shown.
    return TaskPublic.model_validate(public, context=TOLERANT)


def execution_public(doc: Doc, tenant: str) -> ExecutionPublic:
    """The public form of an execution document; secrets (in params) show as ``***``."""
    return ExecutionPublic.model_validate(
        redact({**doc, "id": doc["_id"], "task_id": public_task_id(tenant, str(doc.get("task_id", "")))})
    )


def secret_error(exc: SecretError, prefix: str | None) -> Unprocessable:
    """The 422 of a sensitive value that cannot be stored, naming its field.

    ``exc.pointer`` points into the request body; ``prefix`` (``definition``) names the body.
    """
    parts = [p.replace("~1", "/").replace("~0", "~") for p in exc.pointer.split("/")[1:]]
    field = ".".join(p for p in (prefix, *parts) if p)
    return Unprocessable(
        f"{field}: {exc.message}",
        errors=[FieldError(field=field, message=exc.message, pointer="#/" + "/".join(parts))],
    )


async def _limits(state: ApiState, command: CommandBase, kind: str, idempotency_key: str | None) -> Refund:
    """Check the ``Idempotency-Key`` binding and take the tenant's quotas; the quotas' refund.

    A create needs nothing else of MongoDB, and commands are accepted while the views are down
    (they catch up from the log): so unless ``limits_fail_open`` is off, a MongoDB outage lets
    the command through unchecked (counted in ``scheduler_api_limits_unchecked``) rather than
    refusing it.
    """
    try:
        if idempotency_key is not None:
            await state.idempotency.remember(command)
        return await state.quotas.admit(command)
    except (ConnectionFailure, ExecutionTimeout) as exc:
        if not state.settings.limits_fail_open:
            raise
        log.warning("%s accepted without the quota and Idempotency-Key checks: %r", kind, exc)
        state.metrics.limits_unchecked.labels(command=kind).inc()
        return _unchecked


async def _unchecked() -> None:
    return None


async def submit(
    state: ApiState,
    principal: Principal,
    command: CommandBase,
    response: Response,
    *,
    wait: float | None,
    execution_id: str | None = None,
    idempotency_key: str | None = None,
) -> CommandResult:
    """Send ``command``; answer 202 at once, or 200 with the outcome when ``wait`` seconds suffice.

    With ``idempotency_key`` (from which the command's ids derive), the key must not have been
    used for a different request; the command then takes its share of the tenant's quotas.

    :raises Unprocessable: the command holds JSON the views cannot store (in ``params``, say),
        or the ``Idempotency-Key`` was used for another request.
    :raises TooManyRequests: the tenant is at a quota.
    :raises ServiceUnavailable: Kafka did not acknowledge the command (nothing was accepted).
    :raises ApiError: while waiting, the task processor rejected the command (404/409/422).
    """
    kind = str(getattr(command, "type", type(command).__name__))
    check_storable(command)
    refund = await _limits(state, command, kind, idempotency_key)
    try:
        await state.bus.send(command)
    except ServiceUnavailable:
        state.metrics.command(kind, "unavailable")
        await refund()
        raise
    state.metrics.command(kind, "accepted")
    tenant = principal.tenant
    public_id = public_task_id(tenant, command.task_id)
    accepted = CommandResult(
        task_id=public_id, command_id=command.command_id, status="accepted", execution_id=execution_id
    )
    response.status_code = 202
    if not wait:
        return accepted
    timeout = min(wait, state.settings.max_wait_seconds)
    events = await state.views.wait_for_command(
        tenant, command.task_id, command.command_id, within=timeout, poll=state.settings.wait_poll_seconds
    )
    if not events:
        return accepted  # still accepted; the views have not shown an outcome in time
    for event in events:
        if event.get("type") == "CommandRejected":
            body: dict[str, Any] = event.get("body") or {}
            state.metrics.command(kind, "rejected")
            raise rejection_error(str(body.get("reason", "rejected")), body.get("field"))
    for event in events:
        if event.get("type") == "ExecutionDispatched":
            execution_id = (event.get("body") or {}).get("execution_id", execution_id)
    task_doc = await state.views.task(tenant, public_id)
    response.status_code = 200
    return CommandResult(
        task_id=public_id,
        command_id=command.command_id,
        status="applied",
        execution_id=execution_id,
        events=[str(e.get("type")) for e in events],
        task=task_public(task_doc, tenant) if task_doc is not None else None,
    )
