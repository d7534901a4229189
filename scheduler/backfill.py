"""Backfill slots: which slots of a task's schedule fall in a past range, enumerated lazily.

Pure, like the rest of ``scheduler/``. The decider (a ``BackfillTask``) and the API (before it
sends one, for an early 422) check a range with the same :func:`range_problem`, so they agree.

A backfill's slots are the schedule's slots ``s`` with ``from <= s < to``, honouring the task's
``start_at`` and ``end_at`` (a backfill never runs a slot the task could never have had). The
task's ``max_runs`` is not applied: it bounds the schedule's own runs, and a backfill's runs do
not count towards it. Interval schedules without an anchor of their own are anchored where the
schedule is (``start_at``, else the creation instant), extended backwards in time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from scheduler.schedule import anchor_for, next_slot
from schemas.commands import MAX_BACKFILL_SLOTS
from schemas.specs import TaskDefinition

_MICROSECOND = timedelta(microseconds=1)


def slot_after(
    definition: TaskDefinition, created_at: datetime, after: datetime | None, start: datetime, end: datetime
) -> datetime | None:
    """The first slot of the range ``[start, end)`` strictly after ``after`` (None: from ``start``)."""
    lower = start - _MICROSECOND if after is None else max(after, start - _MICROSECOND)
    slot = next_slot(definition, lower, anchor=anchor_for(definition, created_at))
    return slot if slot is not None and slot < end else None


def slots(definition: TaskDefinition, created_at: datetime, start: datetime, end: datetime) -> Iterator[datetime]:
    """Every slot of the range ``[start, end)``, in order."""
    slot = slot_after(definition, created_at, None, start, end)
    while slot is not None:
        yield slot
        slot = slot_after(definition, created_at, slot, start, end)


def count_slots(definition: TaskDefinition, created_at: datetime, start: datetime, end: datetime, limit: int) -> int:
    """How many slots the range holds, counting no further than ``limit + 1``."""
    n = 0
    for _ in slots(definition, created_at, start, end):
        n += 1
        if n > limit:
            break
    return n


@dataclass(frozen=True)
class RangeProblem:
    """Why a backfill range is refused, and the field of ``BackfillTask`` at fault."""

    reason: str
    field: str | None
    """None when the task, not the input, is at fault (it has no schedule)."""


def checked_range(
    definition: TaskDefinition,
    created_at: datetime,
    start: datetime,
    end: datetime,
    at: datetime,
    *,
    limit: int = MAX_BACKFILL_SLOTS,
) -> int | RangeProblem:
    """How many slots a backfill of ``[start, end)`` asked at ``at`` holds, or why it is refused.

    Refused: a task without a schedule; ``to`` after ``at`` (no future slots); more than
    ``limit`` slots (naming ``to``; the decider's limit is :data:`MAX_BACKFILL_SLOTS`, the
    API's may be lower); no slot at all (naming ``from``).
    """
    if definition.schedule is None:
        return RangeProblem("the task has no schedule to backfill", None)
    if end > at:
        return RangeProblem(f"must not be in the future (after {at.isoformat()})", "to")
    n = count_slots(definition, created_at, start, end, limit)
    if n > limit:
        return RangeProblem(f"the range holds more than {limit} slots; backfill a shorter range", "to")
    if n == 0:
        return RangeProblem("the range holds no slot of the task's schedule", "from")
    return n
