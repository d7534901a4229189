"""Which slots a task's calendars exclude: pure wall-clock arithmetic.

A calendar (:class:`schemas.calendars.Calendar`) is evaluated on the **wall clock of its own
time zone**: a slot (a UTC instant) is turned into that zone's local time, then

* ``dates``: excluded when its local date is listed (the whole local day, 00:00 to 24:00);
* ``ranges``: excluded when ``start <= local time < end``;
* ``rules`` with ``duration_seconds``: excluded when a match ``m`` of the cron expression has
  ``m <= local time < m + duration`` (wall clock);
* ``rules`` without a duration: excluded when the expression matches at some time of its
  local date (so ``0 0 * * sat,sun`` excludes whole weekends).

Daylight saving: a repeated local hour (fall back) is the same wall time twice, so both
instants are excluded or neither; a skipped hour (spring forward) holds no slot to exclude.
A calendar ends its exclusion at a wall time; mapped back to UTC, the earlier of the two
readings of an ambiguous wall time is used, so skipping ahead never passes an open slot.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from scheduler.schedule import next_slot
from schemas.calendars import Calendar
from schemas.cron import wall_times
from schemas.specs import TaskDefinition

_DAY = timedelta(days=1)
_SECOND = timedelta(seconds=1)
_MICROSECOND = timedelta(microseconds=1)

MAX_CHECK_STEPS = 10_000
"""Most exclusion windows :func:`excludes_every_slot` walks through before it gives up (and
answers False: not proven). A year of hourly windows is 8,760."""


def task_calendars(definition: TaskDefinition, known: Mapping[str, Calendar]) -> list[Calendar]:
    """The calendars ``definition`` lists, in its order, among ``known`` (the tenant's).

    A name the tenant has no calendar for is left out: the API refuses unknown names and
    calendars still referenced, so this only happens to a command sent around the API or in
    a race with a deletion, and then the slot runs (a missing calendar never stops a task).
    """
    return [known[name] for name in definition.calendars if name in known]


def excluded_by(calendars: Sequence[Calendar], slot: datetime) -> str | None:
    """The name of the first of ``calendars`` that excludes the UTC instant ``slot``, or None."""
    for calendar in calendars:
        if exclusion_end(calendar, slot) is not None:
            return calendar.name
    return None


def exclusion_end(calendar: Calendar, slot: datetime) -> datetime | None:
    """When the exclusion of ``slot`` by ``calendar`` ends (a UTC instant after ``slot``), or
    None when ``calendar`` does not exclude ``slot``.

    Every slot from ``slot`` up to (not including) the answer is excluded by ``calendar``.
    """
    zone = ZoneInfo(calendar.timezone)
    wall = slot.astimezone(zone).replace(tzinfo=None)
    end = _wall_end(calendar, wall)
    if end is None:
        return None
    return max(_earliest_utc(end, zone), slot + _MICROSECOND)


def excludes_every_slot(
    definition: TaskDefinition,
    calendars: Sequence[Calendar],
    after: datetime,
    until: datetime,
    *,
    anchor: datetime,
    runs_so_far: int = 0,
    max_steps: int = MAX_CHECK_STEPS,
) -> bool:
    """True when the task has a slot in ``(after, until]`` and ``calendars`` exclude every one
    (proven within ``max_steps`` exclusions; see :func:`every_slot_excluded`)."""
    proven, _ = every_slot_excluded(
        definition, calendars, after, until, anchor=anchor, runs_so_far=runs_so_far, max_steps=max_steps
    )
    return proven is True


def every_slot_excluded(
    definition: TaskDefinition,
    calendars: Sequence[Calendar],
    after: datetime,
    until: datetime,
    *,
    anchor: datetime,
    runs_so_far: int = 0,
    max_steps: int = MAX_CHECK_STEPS,
) -> tuple[bool | None, int]:
    """Whether ``calendars`` exclude every slot of the task in ``(after, until]`` (False too when
    it has none there), or None when ``max_steps`` exclusions were walked without deciding; and
    the steps taken (a caller checking many tasks spends one budget across them).

    Walks from exclusion to exclusion rather than slot by slot, so a minutely schedule under a
    month-long range costs one step.
    """
    if not calendars:
        return False, 0
    slot = next_slot(definition, after, anchor=anchor, runs_so_far=runs_so_far)
    if slot is None or slot > until:
        return False, 0
    for step in range(1, max_steps + 1):
        ends = [end for c in calendars if (end := exclusion_end(c, slot)) is not None]
        if not ends:
            return False, step
        # Each end bounds a contiguous excluded stretch that holds ``slot``: jump to the farthest.
        resume = max(max(ends) - _MICROSECOND, slot)
        following = next_slot(definition, resume, anchor=anchor, runs_so_far=runs_so_far)
        if following is None or following > until:
            return True, step
        slot = following
    return None, max_steps


def excludes_all_time(
    calendar: Calendar, after: datetime, until: datetime, *, max_steps: int = MAX_CHECK_STEPS
) -> bool:
    """True when ``calendar`` excludes every instant from ``after`` to ``until`` (proven within
    ``max_steps`` exclusions): whatever a task's schedule, no slot of it there could run."""
    instant = after
    for _ in range(max_steps):
        end = exclusion_end(calendar, instant)
        if end is None:
            return False
        if end > until:
            return True
        instant = end
    return False


def _wall_end(calendar: Calendar, wall: datetime) -> datetime | None:
    """The local wall time the exclusion of ``wall`` ends at (the farthest of the parts that
    exclude it), or None."""
    ends: list[datetime] = []
    day = datetime.combine(wall.date(), time())
    dates = calendar.dates  # sorted and distinct (the model sorts them)
    i = bisect_left(dates, wall.date())
    if i < len(dates) and dates[i] == wall.date():
        ends.append(day + _DAY)
    ends.extend(r.end for r in calendar.ranges if r.start <= wall < r.end)
    for rule in calendar.rules:
        if rule.duration_seconds is None:
            if _matches_on(rule.cron, wall.date()):
                ends.append(day + _DAY)
        else:
            length = timedelta(seconds=rule.duration_seconds)
            # The first match strictly after ``wall - length``: a window holds ``wall`` exactly
            # when such a match exists at or before ``wall``.
            match = next(wall_times(rule.cron, wall - length), None)
            if match is not None and match <= wall:
                ends.append(match + length)
    return max(ends, default=None)


@lru_cache(maxsize=4096)
def _matches_on(cron: str, day: date) -> bool:
    """Whether ``cron`` matches some wall time of ``day`` (cached: every slot of a day asks)."""
    midnight = datetime.combine(day, time())
    # The first match from the day's midnight on (wall_times is strictly after).
    match = next(wall_times(cron, midnight - _SECOND), None)
    return match is not None and match.date() == day


def _earliest_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """The earlier of the instants a local wall time can denote (both readings of a repeated
    or skipped time)."""
    return min(wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
