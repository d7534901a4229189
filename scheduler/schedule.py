"""When schedules fire: pure slot arithmetic.

A *slot* is the nominal instant a schedule fires at; it is the identity of a scheduled
execution. *Jitter* delays when a slot is woken and dispatched, never its identity.

Cron schedules are evaluated on **local wall-clock times** of their IANA zone, then mapped to
UTC with these daylight-saving rules:

* **Nonexistent wall time** (spring-forward gap): the slot fires at that wall time shifted
  forward by the length of the gap. ``30 2 * * *`` in America/New_York on 2026-03-08 fires at
  03:30 EDT (07:30Z). If the shifted time coincides with another slot (e.g. ``*/30`` yields
  02:30, shifted to 03:30, and 03:30 itself), it fires **once**.
* **Repeated wall time** (fall-back overlap): the slot fires **once, at its first
  occurrence** (the earlier, daylight-time instant). ``30 1 * * *`` in America/New_York on
  2026-11-01 fires at 01:30 EDT (05:30Z) only; ``0 * * * *`` fires at 01:00 EDT and not again
  at 01:00 EST, so that 25-hour day has 24 hourly slots (and the 23-hour spring-forward day
  has 23: 02:00 becomes 03:00, which fires once).
* Everything else is a plain wall-clock match. Zones with 30-minute shifts
  (Australia/Lord_Howe) follow the same rules with a 30-minute gap or overlap.

In short: every matching wall time ``w`` maps to ``w`` interpreted with ``fold=0`` (the
pre-transition offset), and duplicates collapse. Which wall times match (the day-of-month /
day-of-week rule included) is decided by :func:`schemas.cron.wall_times`, the same helper the
wire model validates with. The user-facing copy of these rules is the ``CronSchedule``
docstring (the OpenAPI description) and the README's "Schedules" section. Interval schedules are in absolute time and
unaffected by daylight saving. One-shot schedules have a single slot.

:func:`next_fire` knows only the raw schedule. :func:`next_slot` applies the task-level bounds
(``start_at`` and ``end_at``, both inclusive, and ``max_runs``) and is what the decider uses.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import assert_never
from zoneinfo import ZoneInfo

from schemas._types import LATEST
from schemas.cron import wall_times
from schemas.specs import CronSchedule, IntervalSchedule, OnceSchedule, Schedule, TaskDefinition

_MICROSECOND = timedelta(microseconds=1)

HORIZON = LATEST - timedelta(days=62)
"""No slot is produced after this instant, leaving room for jitter, timeouts and backoff
before the wire format's latest representable instant."""


def next_fire(schedule: Schedule, after: datetime, *, anchor: datetime) -> datetime | None:
    """The smallest slot of ``schedule`` strictly after ``after``, or None when exhausted.

    ``anchor`` is the reference slot of interval schedules (ignored by the others).
    """
    match schedule:
        case CronSchedule():
            slot = _cron_next(schedule, after)
        case IntervalSchedule():
            slot = _interval_next(schedule, after, schedule.anchor or anchor)
        case OnceSchedule():
            slot = schedule.at if schedule.at > after else None
        case _:
            assert_never(schedule)
    return slot if slot is not None and slot <= HORIZON else None


def fire_times(schedule: Schedule, after: datetime, n: int, *, anchor: datetime) -> list[datetime]:
    """Up to ``n`` successive slots strictly after ``after`` (a preview)."""
    slots: list[datetime] = []
    current = after
    while len(slots) < n:
        slot = next_fire(schedule, current, anchor=anchor)
        if slot is None:
            break
        slots.append(slot)
        current = slot
    return slots


def anchor_for(definition: TaskDefinition, created_at: datetime) -> datetime:
    """The interval anchor: the schedule's own, else the task's ``start_at``, else its creation."""
    schedule = definition.schedule
    if isinstance(schedule, IntervalSchedule) and schedule.anchor is not None:
        return schedule.anchor
    return definition.start_at or created_at


def next_slot(
    definition: TaskDefinition, after: datetime, *, anchor: datetime, runs_so_far: int = 0
) -> datetime | None:
    """The task's next slot strictly after ``after``, honouring ``start_at``/``end_at``
    (inclusive) and ``max_runs`` (compared with ``runs_so_far`` scheduled runs)."""
    schedule = definition.schedule
    if schedule is None:
        return None
    if definition.max_runs is not None and runs_so_far >= definition.max_runs:
        return None
    start = definition.start_at
    # "Strictly after one microsecond before start" is "at or after start": start is inclusive.
    lower = max(after, start - _MICROSECOND) if start is not None else after
    slot = next_fire(schedule, lower, anchor=anchor)
    if slot is None or (definition.end_at is not None and slot > definition.end_at):
        return None
    return slot


def jitter_offset(task_id: str, slot: datetime, jitter_seconds: float) -> timedelta:
    """Deterministic delay in ``[0, jitter_seconds)`` for one slot of one task."""
    if jitter_seconds <= 0:
        return timedelta(0)
    micros = int(_unit(f"{task_id}\x1f{slot.astimezone(UTC).isoformat()}") * jitter_seconds * 1_000_000)
    return timedelta(microseconds=micros)


def fire_at(task_id: str, definition: TaskDefinition, slot: datetime) -> datetime:
    """When ``slot`` is woken and dispatched: the slot plus its jitter."""
    return slot + jitter_offset(task_id, slot, definition.jitter_seconds)


def _unit(key: str) -> float:
    """A deterministic number in [0, 1) derived from ``key`` (no randomness: replay-safe)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# ---------------------------------------------------------------------------------------------
# Interval
# ---------------------------------------------------------------------------------------------


def _interval_next(schedule: IntervalSchedule, after: datetime, anchor: datetime) -> datetime:
    # Integer microseconds keep "anchor + k * every" exact; floats would drift over many periods.
    every = round(schedule.every_seconds * 1_000_000)
    elapsed = (after - anchor) // _MICROSECOND
    k = elapsed // every + 1  # floor division: also right for ``after`` before the anchor
    return anchor + timedelta(microseconds=k * every)


# ---------------------------------------------------------------------------------------------
# Cron
# ---------------------------------------------------------------------------------------------


def _cron_next(schedule: CronSchedule, after: datetime) -> datetime | None:
    zone = ZoneInfo(schedule.timezone)
    wall_after = after.astimezone(zone).replace(tzinfo=None, fold=0)
    start = wall_after - _gap_lookback(zone, after)
    best: datetime | None = None
    try:
        for wall in wall_times(schedule.expression, start):
            instant, exists = _to_utc(wall, zone)
            if instant > after:
                best = instant if best is None or instant < best else best
                # An existing wall time maps monotonically, and later gap times map later
                # still: nothing after it can be earlier, so the search ends here.
                if exists:
                    return best
            if wall.year > HORIZON.year:
                return best
    except OverflowError:
        return None
    return best


def _to_utc(wall: datetime, zone: ZoneInfo) -> tuple[datetime, bool]:
    """Map a wall time to UTC with fold=0 (gap: shifted forward; overlap: first occurrence)."""
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    exists = instant.astimezone(zone).replace(tzinfo=None) == wall
    return instant, exists


def _gap_lookback(zone: ZoneInfo, after: datetime) -> timedelta:
    """How far before ``after``'s wall time gap wall times can still map past ``after``.

    Wall times in a spring-forward gap of length G map to [T, T + G) in UTC, where T is the
    transition. When ``after`` falls in that range, matching gap wall times lie *before*
    ``after``'s own wall time, so the search must start up to G earlier.
    """
    now = after.astimezone(zone).utcoffset()
    before = (after - timedelta(days=1)).astimezone(zone).utcoffset()
    if now is None or before is None or now <= before:
        return timedelta(0)
    gap = now - before
    if (after - gap).astimezone(zone).utcoffset() == now:
        return timedelta(0)  # the transition is at least G ago: every gap time maps before after
    return gap
