"""``GET /v1/tasks/{id}/occurrences``: the occurrence log, every slot in a range with its fate."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.commands import now
from api.deps import State, Viewer
from api.errors import ERROR_RESPONSES, FieldError, NotFound, Unprocessable, problem_responses
from api.queries import Doc, decode_cursor, encode_cursor, public_task_id
from api.routes.tasks import TaskId
from projections.occurrences import instant
from scheduler.occurrence_log import Fate, Occurrence, Position, Segment, build, window
from schemas._types import UtcDatetime

router = APIRouter(prefix="/v1/tasks", tags=["tasks"], responses=ERROR_RESPONSES)

MAX_LIMIT = 1000
"""Most occurrences on one page: the bound on the work of one request, whatever the range."""


class RerunPublic(BaseModel):
    """Another execution of a slot that already has its fate (a backfill, say)."""

    execution_id: str
    reason: str | None
    """Its dispatch reason."""
    attempts: int
    outcome: str
    """Its final status, or ``running`` / ``waiting``."""


class OccurrencePublic(BaseModel):
    """One slot of the task's schedule and what happened to it."""

    slot: datetime | None
    """The nominal slot (the execution's identity); null when the DST policy skipped the wall time."""
    fate: Fate
    """``fired`` (an execution ran or runs), ``buffered`` (waited behind another, overlap
    ``buffer_one``), ``missed`` (recorded missed: see ``reason``), ``skipped_dst`` (the
    daylight-saving policy skipped the wall time), ``pending`` (due, not handled yet: ``reason``
    ``paused``, ``held`` (a running execution holds it: overlap ``skip`` or ``buffer_one``) or
    ``due``), ``not_yet_due``, ``not_run`` (the task was deleted first),
    ``unaccounted`` (nothing explains it; never expected)."""
    reason: str | None = None
    """Why: the missed reason (``catch_up_skip``, ``catch_up_run_once``, ``catch_up_limit``,
    ``outside_window``, ``overlap``, ``superseded``, ``calendar``, ...), the pending reason,
    ``task_deleted``, or a run's dispatch reason (``schedule``, ``buffered``)."""
    calendar: str | None = None
    """The calendar that excluded the slot (``missed`` for reason ``calendar``)."""
    fire_at: datetime | None = None
    """When the slot was due to fire, if jitter moved it off the slot."""
    wall: datetime | None = None
    """The local wall time, when the schedule's slot source gives it."""
    dst: str | None = None
    """A daylight-saving note: ``shifted``, ``skipped``, ``first``, ``second``."""
    execution_id: str | None = None
    attempts: int | None = None
    outcome: str | None = None
    """The run's final status (``succeeded``, ``failed``, ``timed_out``, ``cancelled``), or
    ``running`` while it runs, ``waiting`` while buffered."""
    dispatched_at: datetime | None = None
    """When the run's first attempt was dispatched."""
    reruns: list[RerunPublic] = Field(default_factory=list)


class OccurrencePage(BaseModel):
    """A page of a task's occurrence log."""

    model_config = ConfigDict(populate_by_name=True)

    task_id: str
    range_from: datetime = Field(alias="from")
    """Start of the range (inclusive)."""
    range_to: datetime = Field(alias="to")
    """End of the range (exclusive)."""
    as_of: datetime
    """The instant ``pending`` and ``not_yet_due`` were decided at."""
    items: list[OccurrencePublic]
    next_cursor: str | None
    """Pass as ``cursor`` (with the same ``from`` and ``to``) for the next page; null on the last."""


@router.get(
    "/{task_id}/occurrences",
    summary="The occurrence log: every slot and its fate",
    responses=problem_responses(404),
    response_model_by_alias=True,
)
async def list_occurrences(
    state: State,
    principal: Viewer,
    task_id: TaskId,
    range_from: Annotated[
        UtcDatetime | None,
        Query(
            alias="from",
            description="Start (inclusive, timezone-aware); default: the creation, or the first slot if earlier.",
        ),
    ] = None,
    range_to: Annotated[
        UtcDatetime | None, Query(alias="to", description="End (exclusive, timezone-aware); default: now.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Occurrences per page.")] = 100,
    cursor: Annotated[str | None, Query(max_length=2000, description="`next_cursor` of the previous page.")] = None,
) -> OccurrencePage:
    """Every slot of the task's schedule in `[from, to)`, oldest first, each exactly once with
    its fate, derived from the task's events (a replay rebuilds it). Covers the task as it
    exists now (or last existed), from its creation: every update's schedule for the slots it
    governed; slots before the creation or after a deletion are not listed. Deleted tasks'
    logs stay readable, like their executions. Kept as long as the events are: the executions
    retention does not shorten it.

    A wide range is paged (`limit` at most 1,000), never refused.
    """
    task = await state.views.task(principal.tenant, task_id)
    if task is None:
        raise NotFound(f"task {task_id!r} not found")
    as_of = now()
    internal_id = str(task["_id"])
    segs, since_seq = await state.views.occurrence_segments(principal.tenant, task)
    end = range_to or as_of
    start = range_from or _beginning(task, segs, as_of)
    if start >= end:
        message = "must be before `to` (default: now)"
        raise Unprocessable(f"from: {message}", errors=[FieldError(field="from", message=message)])
    kind = f"occurrences:{task_id}"
    after = None if cursor is None else _position(cursor, kind)
    page = window(segs, start, end, limit=limit, after=after)
    slots = [o.slot for _, o in page.slots if o.slot is not None]
    facts = await state.views.occurrence_facts(principal.tenant, internal_id, since_seq=since_seq, slots=slots)
    items = [_public(o) for o in build(page.slots, facts, as_of)]
    next_cursor = None
    if page.next is not None:
        next_cursor = encode_cursor(kind, 0, page.next.at, str(page.next.count))
    return OccurrencePage.model_validate(
        {
            "task_id": public_task_id(principal.tenant, internal_id),
            "from": start,
            "to": end,
            "as_of": as_of,
            "items": items,
            "next_cursor": next_cursor,
        }
    )


def _beginning(task: Doc, segs: list[Segment], as_of: datetime) -> datetime:
    """The default ``from``: the task's creation, or its first slot if that is earlier (a one-shot
    created for a time already past is due at once)."""
    micros_created = task.get("created_at_us")
    created = instant(micros_created) if isinstance(micros_created, int) else task.get("created_at") or as_of
    firsts = [s.first_slot for s in segs if s.first_slot is not None]
    return min([created, *firsts])


def _position(cursor: str, kind: str) -> Position:
    """The position a cursor of this task's log holds; 422 naming ``cursor`` otherwise."""
    phase, value, count = decode_cursor(cursor, kind)
    if (
        phase != 0
        or not isinstance(value, datetime)
        or value.tzinfo is None
        or count is None
        or not str(count).isdigit()
    ):
        message = "not a cursor returned by this list"
        raise Unprocessable(f"cursor: {message}", errors=[FieldError(field="cursor", message=message)])
    return Position(value, int(count))


def _public(occurrence: Occurrence) -> OccurrencePublic:
    return OccurrencePublic(
        slot=occurrence.slot,
        fate=occurrence.fate,
        reason=occurrence.reason,
        calendar=occurrence.calendar,
        fire_at=occurrence.fire_at,
        wall=occurrence.wall,
        dst=occurrence.dst,
        execution_id=occurrence.execution_id,
        attempts=occurrence.attempts,
        outcome=occurrence.outcome,
        dispatched_at=occurrence.dispatched_at,
        reruns=[RerunPublic(**r.__dict__) for r in occurrence.reruns],
    )
