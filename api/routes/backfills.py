"""``/v1/tasks/{id}/backfills``: run a task for the slots of a past range, see and cancel it.

A shell like the other command routes: the range is checked here with the decider's own rule
(:func:`scheduler.backfill.checked_range`) for an early 422 naming the field, then a
``BackfillTask`` goes on the commands topic, where the task processor checks it again (the
views may be a little behind, and Kafka clients need no API).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Path, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from api.commands import check_idempotency_key, command_id_for, now, submit
from api.deps import IdempotencyKey, Operator, State, Viewer, Wait
from api.errors import ERROR_RESPONSES, NotFound, problem_responses, rejection_error
from api.models import BackfillPublic, CommandResult
from api.routes.tasks import live_task
from projections.folds import from_micros
from scheduler.backfill import RangeProblem, checked_range
from schemas._types import UtcDatetime
from schemas.commands import BackfillTask, CancelBackfill
from schemas.specs import TOLERANT, TaskDefinition

router = APIRouter(prefix="/v1/tasks", tags=["backfills"], responses=ERROR_RESPONSES)

TaskId = Annotated[str, Path(description="The task's id (as returned on create).", max_length=200)]
BackfillId = Annotated[str, Path(description="The backfill's id (as returned when it was asked).", max_length=200)]


class BackfillCreate(BaseModel):
    """Body of ``POST /v1/tasks/{id}/backfills``: the past range ``[from, to)`` to run."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)

    from_: UtcDatetime = Field(alias="from", examples=["2026-03-01T00:00:00Z"])
    """First instant of the range (inclusive)."""
    to: UtcDatetime = Field(examples=["2026-03-02T00:00:00Z"])
    """End of the range (exclusive); after `from`, and not in the future."""
    max_concurrency: int = Field(default=1, ge=1, le=100)
    """Most backfill executions in flight at once (one at a time unless the overlap policy is `allow_all`)."""

    @field_validator("to")
    @classmethod
    def _after_from(cls, value: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("from_")
        if start is not None and value <= start:
            raise ValueError("to must be after from")
        return value


class BackfillResult(CommandResult):
    """The answer to a backfill command, with the backfill's id."""

    backfill_id: str
    """Id of the backfill: its executions carry it, and `DELETE .../backfills/{backfill_id}` cancels it."""


@router.post(
    "/{task_id}/backfills",
    status_code=202,
    summary="Backfill a past range",
    responses={
        200: {"model": BackfillResult, "description": "Applied (with `?wait`)"},
        **problem_responses(400, 404, 409),
    },
)
async def create_backfill(
    state: State,
    principal: Operator,
    task_id: TaskId,
    response: Response,
    body: Annotated[
        BackfillCreate,
        Body(
            openapi_examples={
                "day": {
                    "summary": "One day, four at a time",
                    "value": {"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "max_concurrency": 4},
                }
            }
        ),
    ],
    wait: Wait = None,
    idempotency_key: IdempotencyKey = None,
) -> BackfillResult:
    """Run the task for each slot of its schedule in `[from, to)`, as if it had been up then. Needs the operator role.

    Each slot runs once (reason `backfill`), at most `max_concurrency` at a time, whether or not
    the schedule ran it then; scheduled slots go on as usual beside it. One backfill runs per
    task at a time (another is a 409 until it ends); a paused task holds it until resumed.
    `to` in the future, or a range of more than `SCHED_BACKFILL_MAX_SLOTS` slots (10,000), is a
    422 naming `to`; a range without a slot, a 422 naming `from`.
    """
    key = check_idempotency_key(idempotency_key)
    doc = await live_task(state.views, principal.tenant, task_id)
    at = now()
    # TOLERANT: a definition accepted under older rules still backfills.
    definition = TaskDefinition.model_validate(doc["definition"], context=TOLERANT)
    micros = doc.get("created_at_us")
    created_at = from_micros(micros) if isinstance(micros, int) else doc.get("created_at") or at
    # Counting up to 10,000 cron slots takes a while: off the event loop.
    checked = await asyncio.to_thread(
        checked_range, definition, created_at, body.from_, body.to, at, limit=state.settings.backfill_max_slots
    )
    if isinstance(checked, RangeProblem):
        state.metrics.command("BackfillTask", "rejected")
        raise rejection_error(checked.reason, checked.field)
    backfill_id = command_id_for(principal.tenant, "backfill-id", task_id, key)
    command = BackfillTask(
        command_id=command_id_for(principal.tenant, "backfill", task_id, key),
        task_id=doc["_id"],
        tenant=principal.tenant,
        actor=principal.actor,
        at=at,
        backfill_id=backfill_id,
        from_=body.from_,
        to=body.to,
        max_concurrency=body.max_concurrency,
    )
    result = await submit(state, principal, command, response, wait=wait, idempotency_key=key)
    return BackfillResult(**result.model_dump(), backfill_id=backfill_id)


@router.get("/{task_id}/backfills/{backfill_id}", summary="A backfill's progress", responses=problem_responses(404))
async def get_backfill(state: State, principal: Viewer, task_id: TaskId, backfill_id: BackfillId) -> BackfillPublic:
    """The task's latest backfill, if it is this one: its range, status and counts."""
    doc = await state.views.task(principal.tenant, task_id)
    backfill = (doc or {}).get("backfill")
    if doc is None or not isinstance(backfill, dict) or backfill.get("id") != backfill_id:
        raise NotFound(f"backfill {backfill_id!r} of task {task_id!r} not found")
    return BackfillPublic.model_validate(backfill)


@router.delete(
    "/{task_id}/backfills/{backfill_id}",
    status_code=202,
    summary="Cancel a backfill",
    responses={200: {"model": BackfillResult, "description": "Applied (with `?wait`)"}, **problem_responses(404, 409)},
)
async def cancel_backfill(
    state: State,
    principal: Operator,
    task_id: TaskId,
    backfill_id: BackfillId,
    response: Response,
    wait: Wait = None,
    idempotency_key: IdempotencyKey = None,
) -> BackfillResult:
    """Cancel a running backfill: pending slots are dropped, executions in flight cancelled. Needs the operator role.

    With `?wait`: a backfill the task processor does not know is a 404, one that already ended a 409.
    """
    key = check_idempotency_key(idempotency_key)
    doc = await live_task(state.views, principal.tenant, task_id)
    command = CancelBackfill(
        command_id=command_id_for(principal.tenant, "cancel-backfill", f"{task_id}\x1f{backfill_id}", key),
        task_id=doc["_id"],
        tenant=principal.tenant,
        actor=principal.actor,
        at=now(),
        backfill_id=backfill_id,
    )
    result = await submit(state, principal, command, response, wait=wait, idempotency_key=key)
    return BackfillResult(**result.model_dump(), backfill_id=backfill_id)
