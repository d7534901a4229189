"""When schedules fire: pure slot arithmetic.

A *slot* is the nominal instant a schedule fires at; it is the identity of a scheduled
execution. *Jitter* delays when a slot is woken and dispatched, never its identity.

Cron schedules are evaluated on **local wall-clock times** of their IANA zone, then mapped to
UTC under the schedule's daylight-saving policy:

* **Nonexistent wall time** (spring-forward gap), ``dst_gap``: ``shift`` (the default) fires
  it shifted forward by the length of the gap: ``30 2 * * *`` in America/New_York on
  2026-03-08 fires at 03:30 EDT (07:30Z). If the shifted time coincides with another slot
  (``*/30`` yields 02:30, shifted to 03:30, and 03:30 itself), it fires **once**. ``skip``
  does not fire it.
* **Repeated wall time** (fall-back overlap), ``dst_repeat``: ``first`` fires at the first
  occurrence (the earlier, daylight-time instant: ``30 1 * * *`` on 2026-11-01 fires at 01:30
  EDT, 05:30Z), ``second`` at the second (01:30 EST, 06:30Z), ``both`` at both. ``auto`` (the
  default) is ``both`` when the hour field matches every hour (see
  :func:`schemas.cron.repeat_rule`), so ``0 * * * *`` has 25 slots on the 25-hour day and
  ``* * * * *`` fires through the repeated hour; otherwise ``first``.
* Everything else is a plain wall-clock match. Zones with 30-minute shifts
  (Australia/Lord_Howe) follow the same rules with a 30-minute gap or overlap.

In terms of :pep:`495`: a plain wall time ``w`` has one instant; a gap time's ``fold=0``
reading is the shifted instant; a repeated time's ``fold=0`` and ``fold=1`` readings are its
first and second occurrence. Which wall times match (the day-of-month / day-of-week rule
included) is decided by :func:`schemas.cron.wall_times`, the same helper the wire model
validates with. The user-facing copy of these rules is the ``CronSchedule`` docstring (the
OpenAPI description) and the README's "Schedules" section. Interval schedules are in absolute
time and unaffected by daylight saving. One-shot schedules have a single slot.

:func:`next_fire` knows only the raw schedule. :func:`next_slot` applies the task-level bounds
(``start_at`` and ``end_at``, both inclusive, and ``max_runs``) and is what the decider uses.
:func:`occurrences` lists every matched wall time with what daylight saving did to it, the
skipped ones included (for the occurrence log).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal, assert_never
from zoneinfo import ZoneInfo

from schemas._types import LATEST
from schemas.cron import DstRepeat, RepeatRule, repeat_rule, transition_between, wall_times
from schemas.specs import CronSchedule, IntervalSchedule, OnceSchedule, Schedule, TaskDefinition

_MICROSECOND = timedelta(microseconds=1)
_DAY = timedelta(days=1)

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


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One matched wall time of a schedule and what daylight saving did to it."""

    wall: datetime | None
    """The matched local wall time (naive); None for interval and one-shot schedules."""
    slot: datetime | None
    """The UTC instant it fires at; None when the DST policy does not fire it (a skipped gap
    time, the occurrence of a repeated time the policy leaves out, or a shifted time that lands
    on a slot the schedule has anyway: that slot fires once, listed under its own wall time)."""
    dst: Literal["shifted", "skipped", "first", "second"] | None
    """None: a plain wall time. ``shifted``/``skipped``: a time in a spring-forward gap, per
    ``dst_gap``. ``first``/``second``: one of the two occurrences of a time in a repeated hour
    (each repeated wall time is listed twice, once per occurrence)."""


def occurrences(schedule: Schedule, after: datetime, until: datetime, *, anchor: datetime) -> Iterator[Occurrence]:
    """Every matched wall time of ``schedule`` whose instant lies in (``after``, ``until``], in
    the order of those instants, the ones the DST policy does not fire included.

    An occurrence that does not fire is placed where it would have fired (a skipped gap time at
    its shifted instant, an unfired occurrence of a repeated time at that occurrence). Its
    non-None slots are exactly :func:`fire_times` over the same range.
    """
    match schedule:
        case CronSchedule():
            yield from _cron_occurrences(schedule, after, until)
        case IntervalSchedule() | OnceSchedule():
            current = after
            while (slot := next_fire(schedule, current, anchor=anchor)) is not None and slot <= until:
                yield Occurrence(wall=None, slot=slot, dst=None)
                current = slot
        case _:
            assert_never(schedule)


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


@lru_cache(maxsize=4096)
def _rule(expression: str, dst_repeat: DstRepeat) -> RepeatRule:
    # Resolving "auto" parses the expression; next_fire is on the firing hot path.
    return repeat_rule(expression, dst_repeat)


def _offsets(zone: ZoneInfo, wall: datetime) -> tuple[timedelta, timedelta]:
    """The UTC offsets of the two PEP 495 readings (fold 0 and fold 1) of a naive wall time.

    Equal: a plain time. fold 0 < fold 1: in a spring-forward gap (fold 0 is the shifted,
    later instant). fold 0 > fold 1: repeated (fold 0 is the first occurrence).
    """
    first = zone.utcoffset(wall)
    second = zone.utcoffset(wall.replace(fold=1))
    assert first is not None and second is not None  # a ZoneInfo always has an offset
    return first, second


def _cron_next(schedule: CronSchedule, after: datetime) -> datetime | None:
    zone = ZoneInfo(schedule.timezone)
    shift = schedule.dst_gap == "shift"
    rule = _rule(schedule.expression, schedule.dst_repeat)
    expression = schedule.expression
    local = after.astimezone(zone)
    offset = local.utcoffset()
    assert offset is not None
    moment = after.astimezone(UTC).replace(tzinfo=None)  # compared naive: no tz arithmetic
    try:
        best = _behind(expression, zone, after, moment, offset, shift=shift, rule=rule)
        walls = wall_times(expression, local.replace(tzinfo=None, fold=0))
        while (wall := next(walls, None)) is not None:
            if wall.year > HORIZON.year:
                break
            fold0, fold1 = _offsets(zone, wall)
            first, second = wall - fold0, wall - fold1
            if fold0 == fold1:
                # A plain wall time maps monotonically, and later wall times (gap or repeated
                # ones included) map later still: nothing after it can be earlier.
                if first > moment:
                    return _aware(first if best is None else min(best, first))
            elif fold0 < fold1:
                # In a gap: later gap times shift later still, but the plain times right after
                # the gap start at the transition, possibly before this one's shifted instant.
                if shift and first > moment:
                    best = first if best is None else min(best, first)
                end = transition_between(zone, second, first) + fold1  # first wall time after the gap
                walls = wall_times(expression, end - _MICROSECOND)
            elif first > moment:
                # Repeated, and ``after`` is before the transition: this is the earliest of what
                # is left (earlier wall times' second occurrences are in ``best``).
                chosen = second if rule == "second" else first
                return _aware(chosen if best is None else min(best, chosen))
            elif rule != "first":
                # ``after`` is in the second pass: this wall time's second occurrence is next.
                return _aware(second if best is None else min(best, second))
            else:
                # Only first occurrences fire, and they are all past: resume after the repeat.
                end = transition_between(zone, first, second) + fold0
                walls = wall_times(expression, end - _MICROSECOND)
    except OverflowError:
        return None if best is None else _aware(best)
    return None if best is None else _aware(best)


def _behind(
    expression: str,
    zone: ZoneInfo,
    after: datetime,
    moment: datetime,
    offset: timedelta,
    *,
    shift: bool,
    rule: RepeatRule,
) -> datetime | None:
    """The earliest slot after ``after`` (naive UTC) of a wall time at or before ``after``'s own.

    Only two kinds exist, both within a transition's length of it: gap times shifted forward
    past ``after`` when it is within G after a spring-forward (the gap's wall times lie before
    its wall time), and second occurrences of repeated times when it is within D before a
    fall-back (they all lie ahead). Both are found in closed form rather than by walking back.
    """
    if shift:
        before = (after - _DAY).astimezone(zone).utcoffset()
        if (
            before is not None
            and before < offset
            and (after - (offset - before)).astimezone(zone).utcoffset() == before
        ):
            # after in [T, T + G): gap wall w maps to w - before, from T on.
            wall = next(wall_times(expression, moment + before), None)
            if wall is not None:
                fold0, fold1 = _offsets(zone, wall)
                if fold0 < fold1:
                    return wall - fold0
    if rule != "first":
        later = (after + _DAY).astimezone(zone).utcoffset()
        if later is not None and later < offset and (after + (offset - later)).astimezone(zone).utcoffset() == later:
            # after in [T - D, T): the repeated wall times [T + later, T + offset) all have
            # their second occurrence (w - later) ahead; the first one's is the earliest.
            transition = transition_between(zone, moment, moment + (offset - later))
            wall = next(wall_times(expression, transition + later - _MICROSECOND), None)
            if wall is not None and wall < transition + offset:
                return wall - later
    return None


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC)


def _cron_occurrences(schedule: CronSchedule, after: datetime, until: datetime) -> Iterator[Occurrence]:
    """Walk the matched wall times in order, and release each occurrence once no later wall
    time can map before it (instants are not monotonic in wall time across a transition)."""
    zone = ZoneInfo(schedule.timezone)
    shift = schedule.dst_gap == "shift"
    rule = _rule(schedule.expression, schedule.dst_repeat)
    low, high = after.astimezone(UTC).replace(tzinfo=None), until.astimezone(UTC).replace(tzinfo=None)
    horizon = HORIZON.replace(tzinfo=None)
    # A wall time w reads as w - o for the offsets o around; the smallest offset near ``after``
    # finds the earliest wall time that can still land after it.
    nearby = [(after + d).astimezone(zone).utcoffset() for d in (-_DAY, timedelta(0), _DAY)]
    start = low + min(o for o in nearby if o is not None)
    pending: list[tuple[datetime, bool, datetime, Occurrence]] = []
    try:
        for wall in wall_times(schedule.expression, start - _MICROSECOND):
            fold0, fold1 = _offsets(zone, wall)
            first, second = wall - fold0, wall - fold1
            # Every later wall time maps at or after min(first, second) of this one.
            floor = min(first, second)
            yield from _release(pending, floor, low)
            if floor > high or floor > horizon:
                break
            if fold0 == fold1:
                found = [(first, Occurrence(wall, _aware(first), None))]
            elif fold0 < fold1:
                found = [(first, Occurrence(wall, _aware(first) if shift else None, "shifted" if shift else "skipped"))]
            else:
                fires_first, fires_second = rule in ("first", "both"), rule in ("second", "both")
                found = [
                    (first, Occurrence(wall, _aware(first) if fires_first else None, "first")),
                    (second, Occurrence(wall, _aware(second) if fires_second else None, "second")),
                ]
            for moment, occurrence in found:
                if low < moment <= min(high, horizon):
                    # Ties: a plain or repeated time before a shifted one (which then gives up its slot).
                    heapq.heappush(pending, (moment, occurrence.dst == "shifted", wall, occurrence))
    except OverflowError:
        pass
    yield from _release(pending, None, low)


def _release(
    pending: list[tuple[datetime, bool, datetime, Occurrence]], floor: datetime | None, low: datetime
) -> Iterator[Occurrence]:
    """Pop the pending occurrences before ``floor`` (all when None); a shifted time landing on
    an instant already taken by another occurrence loses its slot."""
    taken: datetime | None = None
    while pending and (floor is None or pending[0][0] < floor):
        moment, _, _, occurrence = heapq.heappop(pending)
        if occurrence.dst == "shifted" and taken == moment:
            occurrence = Occurrence(occurrence.wall, None, "shifted")
        if occurrence.slot is not None:
            taken = moment
        yield occurrence
