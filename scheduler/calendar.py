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

from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import accumulate
from zoneinfo import ZoneInfo

from scheduler.schedule import next_slot
from schemas.calendars import Calendar
from schemas.cron import wall_times
from schemas.specs import TaskDefinition

_DAY = timedelta(days=1)
_SECOND = timedelta(seconds=1)
_MICROSECOND = timedelta(microseconds=1)

MAX_CHECK_STEPS = 50_000
"""Most units of work :func:`excludes_every_slot` spends before it gives up (and answers False:
not proven): one per exclusion stepped over and one per cron match a calendar rule computed
(about 20 µs each, so about a second). A year of hourly windows is 8,760 exclusions and as many
matches. Counting the matches, not only the exclusions, is what bounds a step's cost: 20
calendars of 50 windowed ``* * * * * *`` rules made each exclusion compute 1,000 matches, and a
budget of 3,000 exclusions cost a minute of CPU."""


def task_calendars(definition: TaskDefinition, known: Mapping[str, Calendar]) -> list[Calendar]:
    """The calendars ``definition`` lists, in its order, among ``known`` (the tenant's).

    A name the tenant has no calendar for is left out: the API refuses unknown names and
    calendars still referenced, so this only happens to a command sent around the API or in
    a race with a deletion, and then the slot runs (a missing calendar never stops a task).
    """
    return [known[name] for name in definition.calendars if name in known]


def excluded_by(calendars: Sequence[Calendar], slot: datetime) -> str | None:
    """The name of the first of ``calendars`` that excludes the UTC instant ``slot``, or None.

    For many slots, build :class:`Exclusions` once and ask it (cheapest in ascending order).
    """
    return Exclusions(calendars).excluded_by(slot)


def exclusion_end(calendar: Calendar, slot: datetime) -> datetime | None:
    """When the exclusion of ``slot`` by ``calendar`` ends (a UTC instant after ``slot``), or
    None when ``calendar`` does not exclude ``slot``.

    Every instant from ``slot`` up to (not including) the answer is excluded by ``calendar``
    (the end need not be the farthest: a window's end, not its neighbour's).
    """
    return _Prepared(calendar).end(slot)


class Exclusions:
    """A task's calendars, prepared once to be asked about many slots (a wake's due slots, a
    year of them): dates as a set, ranges sorted with running maxima of their ends, and each
    windowed rule as a cursor that walks its cron matches forward. Asking about ascending
    instants costs about one cron step per match passed; going back restarts a cursor."""

    def __init__(self, calendars: Sequence[Calendar]) -> None:
        self._calendars = [_Prepared(c) for c in calendars]

    def __bool__(self) -> bool:
        return bool(self._calendars)

    @property
    def work(self) -> int:
        """Cron matches computed so far by the calendars' rules (what a check's budget counts)."""
        return sum(c.work for c in self._calendars)

    def excluded_by(self, slot: datetime) -> str | None:
        """The name of the first calendar (in the task's order) that excludes ``slot``, or None."""
        for calendar in self._calendars:
            if calendar.end(slot) is not None:
                return calendar.name
        return None

    def end(self, slot: datetime) -> datetime | None:
        """The farthest end of the calendars' exclusions holding ``slot``, or None when none does."""
        return max((e for c in self._calendars if (e := c.end(slot)) is not None), default=None)


class _Prepared:
    """One calendar, prepared (see :class:`Exclusions`)."""

    def __init__(self, calendar: Calendar) -> None:
        self.name = calendar.name
        self.zone = ZoneInfo(calendar.timezone)
        self.dates = frozenset(calendar.dates)
        ranges = sorted((r.start, r.end) for r in calendar.ranges)
        self.starts = [start for start, _ in ranges]
        # Running maximum of the ends: the ranges starting at or before a wall time hold it
        # exactly when the largest of their ends is after it, and that is where they end.
        self.max_ends = list(accumulate((end for _, end in ranges), max))
        self.day_rules = [r.cron for r in calendar.rules if r.duration_seconds is None]
        self.windows = [
            _Window(r.cron, timedelta(seconds=r.duration_seconds))
            for r in calendar.rules
            if r.duration_seconds is not None
        ]
        self._day_work = 0

    @property
    def work(self) -> int:
        """Cron matches computed so far (day rules asked, window cursors stepped or restarted)."""
        return self._day_work + sum(w.work for w in self.windows)

    def end(self, slot: datetime) -> datetime | None:
        wall = slot.astimezone(self.zone).replace(tzinfo=None)
        end = self._wall_end(wall)
        if end is None:
            return None
        return max(_earliest_utc(end, self.zone), slot + _MICROSECOND)

    def _wall_end(self, wall: datetime) -> datetime | None:
        """The local wall time the exclusion of ``wall`` ends at (the farthest of the parts
        that exclude it), or None."""
        ends: list[datetime] = []
        day = wall.date()
        self._day_work += len(self.day_rules)
        if day in self.dates or any(_matches_on(cron, day) for cron in self.day_rules):
            ends.append(datetime.combine(day, time()) + _DAY)
        i = bisect_right(self.starts, wall)
        if i and self.max_ends[i - 1] > wall:
            ends.append(self.max_ends[i - 1])
        ends.extend(e for window in self.windows if (e := window.end(wall)) is not None)
        return max(ends, default=None)


class _Window:
    """A windowed rule (``[match, match + length)`` on the wall clock), walked forward.

    A window holds ``wall`` exactly when the first match strictly after ``wall - length`` is at
    or before ``wall``; for ascending wall times that first match only moves forward, so the
    cursor keeps it and steps on, starting afresh when asked about an earlier time or when the
    next question is far ahead (a few steps, then one fresh search).
    """

    _STEPS = 8

    def __init__(self, cron: str, length: timedelta) -> None:
        self.cron = cron
        self.length = length
        self._low: datetime | None = None
        self._matches: Iterator[datetime] = iter(())
        self._first: datetime | None = None
        self.work = 0
        """Cron matches computed (each step of the cursor, each fresh search)."""

    def end(self, wall: datetime) -> datetime | None:
        low = wall - self.length
        if self._low is None or low < self._low:
            self._seek(low)
        else:
            for _ in range(self._STEPS):
                if self._first is None or self._first > low:
                    break
                self.work += 1
                self._first = next(self._matches, None)
            else:
                if self._first is not None and self._first <= low:
                    self._seek(low)
        self._low = low
        if self._first is not None and self._first <= wall:
            return self._first + self.length
        return None

    def _seek(self, low: datetime) -> None:
        self.work += 1
        self._matches = wall_times(self.cron, low)
        self._first = next(self._matches, None)


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
    (proven within ``max_steps`` units of work; see :func:`every_slot_excluded`)."""
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
    it has none there), or None when ``max_steps`` units of work (see :data:`MAX_CHECK_STEPS`:
    exclusions walked plus cron matches computed) were spent without deciding; and the work
    spent (a caller checking many tasks spends one budget across them).

    Walks from exclusion to exclusion rather than slot by slot, so a minutely schedule under a
    month-long range costs one step.
    """
    exclusions = Exclusions(calendars)
    if not exclusions:
        return False, 0
    slot = next_slot(definition, after, anchor=anchor, runs_so_far=runs_so_far)
    if slot is None or slot > until:
        return False, 0
    step = 0
    while (spent := step + exclusions.work) < max_steps:
        step += 1
        end = exclusions.end(slot)
        if end is None:
            return False, step + exclusions.work
        # The end bounds a contiguous excluded stretch that holds ``slot``: jump past it.
        resume = max(end - _MICROSECOND, slot)
        following = next_slot(definition, resume, anchor=anchor, runs_so_far=runs_so_far)
        if following is None or following > until:
            return True, step + exclusions.work
        slot = following
    return None, spent


def excludes_all_time(
    calendar: Calendar, after: datetime, until: datetime, *, max_steps: int = MAX_CHECK_STEPS
) -> bool:
    """True when ``calendar`` excludes every instant from ``after`` to ``until`` (proven within
    ``max_steps`` units of work, as :func:`every_slot_excluded` counts them): whatever a task's
    schedule, no slot of it there could run."""
    prepared = _Prepared(calendar)
    instant = after
    step = 0
    while step + prepared.work < max_steps:
        step += 1
        end = prepared.end(instant)
        if end is None:
            return False
        if end > until:
            return True
        instant = end
    return False


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
