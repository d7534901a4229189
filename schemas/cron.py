"""The one cron rule: which wall-clock times an expression matches, and how it is checked.

Both the wire model's validator (:class:`schemas.specs.CronSchedule`) and the pure core
(:mod:`scheduler.schedule`) go through this module, so what is accepted and what fires can
never disagree.

**Day-of-month and day-of-week** follow Vixie/ISC cron: when either field starts with ``*``
(or ``?``), a day must match **both**; when both are restricted, a day matching **either**
fires. So ``0 0 */2 * 1`` fires on Mondays that are odd days of the month, and
``0 0 31 2 1`` fires on every Monday of February (31 February never comes).

croniter evaluates single expressions; its own ``day_or`` test looks at the expanded field
(``*/2`` expands to a list, so it picked OR) and it cannot evaluate an OR whose day-of-month
half never occurs (``31 2``). Here an OR is evaluated as the union of its two halves, each a
plain AND expression with the other day field ``*``.
"""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

DAY_SECONDS = 86_400

DstGap = Literal["shift", "skip"]
"""What a cron slot does when its wall time does not exist (spring forward)."""
DstRepeat = Literal["auto", "first", "second", "both"]
"""What a cron slot does when its wall time happens twice (fall back), as written."""
RepeatRule = Literal["first", "second", "both"]
"""A :data:`DstRepeat` with ``auto`` resolved for one expression (:func:`repeat_rule`)."""

_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31 (or L for the last day)"),
    ("month", "1-12 (or jan-dec)"),
    ("day-of-week", "0-7 (0 and 7 are Sunday; or sun-sat; n#k is the k-th weekday n of the month)"),
)
_SECOND = ("second", "0-59")
_FORMS = "a value, a range a-b, a step */n or a-b/n, or a comma-separated list of those"
_ZERO_STEP = re.compile(r"/0*(?:$|[^0-9])")
_REFERENCE = datetime(2001, 1, 1)
"""Fixed start of bounded look-aheads: validation must not depend on the clock."""
_GAPS_FROM = datetime(2030, 1, 1)
"""Fixed start of :func:`only_in_gaps`: a year whose zone rules are those of the years ahead."""
PARSED_CACHE_SIZE = 1024
"""Most parsed expressions kept (:func:`_parsed`), least recently used dropped first: a few
KB each, and a worker's tasks share few distinct expressions."""


def cron_fields(expression: str) -> list[str]:
    """Split a cron expression into its whitespace-separated fields."""
    return expression.split()


def cron_has_seconds(expression: str) -> bool:
    """True when the expression has 6 fields, the first being seconds."""
    return len(cron_fields(expression)) == 6


def field_problem(fields: list[str]) -> str | None:
    """Why the expression (already split, 5 or 6 fields) is malformed, naming the field and
    its allowed range; None when croniter accepts it."""
    seconds = len(fields) == 6
    if croniter.is_valid(" ".join(fields), second_at_beginning=seconds):
        return None
    names = (_SECOND, *_FIELDS) if seconds else _FIELDS
    for i, (value, (name, allowed)) in enumerate(zip(fields, names, strict=True)):
        probe = ["*"] * len(fields)
        probe[i] = value
        if croniter.is_valid(" ".join(probe), second_at_beginning=seconds):
            continue
        if _ZERO_STEP.search(value):
            return f"{name} field {value!r} is invalid: a step after '/' must be at least 1"
        return f"{name} field {value!r} is invalid: {name} must be {allowed}; use {_FORMS}"
    return "invalid cron expression"


def days_or(fields: list[str]) -> bool:
    """The Vixie rule: day-of-month and day-of-week combine with OR only when neither starts
    with ``*`` (or ``?``); otherwise a day must match both."""
    dom, dow = fields[-3], fields[-1]
    return not (dom.startswith(("*", "?")) or dow.startswith(("*", "?")))


def wall_times(expression: str, after: datetime) -> Iterator[datetime]:
    """The naive wall-clock times ``expression`` matches strictly after ``after``, ascending.

    Ends when no further time is found (croniter searches up to 50 years between matches).
    """
    fields = cron_fields(expression)
    seconds = len(fields) == 6
    if days_or(fields):
        dom_half, dow_half = list(fields), list(fields)
        dom_half[-1] = "*"
        dow_half[-3] = "*"
        halves = [" ".join(dom_half), " ".join(dow_half)]
    else:
        halves = [" ".join(fields)]
    iters = [_croniter_at(h, seconds, after) for h in halves]
    heads = [_next(it) for it in iters]
    while True:
        live = [h for h in heads if h is not None]
        if not live:
            return
        smallest = min(live)
        yield smallest
        heads = [_next(iters[i]) if h == smallest else h for i, h in enumerate(heads)]


_PARSED: OrderedDict[tuple[str, bool], croniter] = OrderedDict()


def _parsed(expression: str, seconds: bool) -> croniter:
    """A croniter of ``expression``, parsed once (a bounded LRU; the result never depends on
    what the cache holds, so the core stays deterministic).

    Parsing expands every field and was about 80% of :func:`scheduler.schedule.next_fire` for
    a cron (which is on the firing path): each search parsed the expression again. An
    ``OrderedDict``, not ``functools.lru_cache``: ``schemas`` imports only what the purity
    test allows.
    """
    key = (expression, seconds)
    found = _PARSED.get(key)
    if found is None:
        found = _PARSED[key] = croniter(expression, _REFERENCE, day_or=False, second_at_beginning=seconds)
        if len(_PARSED) > PARSED_CACHE_SIZE:
            with contextlib.suppress(KeyError):  # another thread (the API's pool) emptied it
                _PARSED.popitem(last=False)
    else:
        with contextlib.suppress(KeyError):  # another thread dropped it meanwhile
            _PARSED.move_to_end(key)
    return found


def _croniter_at(expression: str, seconds: bool, after: datetime) -> croniter:
    """A fresh croniter of ``expression`` positioned at ``after``, copied from the parsed one.

    A copy as ``copy.copy`` makes it (``copy`` is not an allowed import here): its position is
    its own. The parsed fields are read only, except the sets of ``n#k`` day-of-week values
    that croniter merges in place (idempotently) while searching: copied too, so no search
    can touch another's.
    """
    parsed = _parsed(expression, seconds)
    it: croniter = croniter.__new__(croniter)
    it.__dict__.update(parsed.__dict__)
    it.expanded = list(parsed.expanded)
    it.nth_weekday_of_month = {day: set(nths) for day, nths in parsed.nth_weekday_of_month.items()}
    it.set_current(after, force=True)
    return it


def _next(it: croniter) -> datetime | None:
    try:
        value: datetime = it.get_next(datetime)
    except (CroniterBadDateError, OverflowError):
        return None
    return value


def never_matches(expression: str) -> bool:
    """True when no wall-clock time ever matches (e.g. ``0 0 30 2 *``)."""
    return next(wall_times(expression, _REFERENCE), None) is None


def only_in_gaps(expression: str, timezone: str, limit: int = 60) -> bool:
    """True when each of the first ``limit`` times ``expression`` matches from 2030 on is a wall
    time ``timezone`` skips (spring forward): with ``dst_gap`` ``skip`` such a schedule never
    fires (``30 2 * 3 0#2`` in America/New_York), and looking for its next slot walked
    centuries of matches every time a task was created, updated or previewed. (A fixed start,
    not the clock: validation must not depend on it; zones' past rules do not matter.)"""
    zone = ZoneInfo(timezone)
    for count, wall in enumerate(wall_times(expression, _GAPS_FROM)):
        if count >= limit:
            return True
        before, after = zone.utcoffset(wall), zone.utcoffset(wall.replace(fold=1))
        if before is None or after is None or before >= after:
            return False  # an ordinary or a repeated wall time: it fires
    return False


def every_hour(expression: str) -> bool:
    """True when the hour field matches all 24 hours (``*``, ``*/1``, ``0-23``)."""
    fields = cron_fields(expression)
    expanded = _parsed(" ".join(fields), len(fields) == 6).expanded
    return bool(expanded[1] == ["*"])


def repeat_rule(expression: str, dst_repeat: DstRepeat) -> RepeatRule:
    """The repeated-wall-time rule ``dst_repeat`` stands for with ``expression``.

    ``auto`` is ``both`` when the hour field matches every hour, so an hourly or every-minute
    cron keeps firing in absolute time through the repeated hour (the fall-back day of
    ``0 * * * *`` has 25 slots); otherwise ``first``. A step over hours (``*/2``) is not every
    hour: "every two hours" has no absolute-time reading across a one-hour repeat, so it keeps
    the first occurrence like any other fixed hour.
    """
    if dst_repeat != "auto":
        return dst_repeat
    return "both" if every_hour(expression) else "first"


_REPEATS: dict[str, tuple[tuple[int, int], ...]] = {}


def repeated_windows(timezone: str) -> tuple[tuple[int, int], ...]:
    """The repeated wall-clock windows of ``timezone``: (start second of the day, length in
    seconds) for every distinct fall-back from 2001 to 2040 (tz rules after 2037 repeat yearly).

    ``America/New_York`` gives ``((3600, 3600),)``: 01:00-01:59 happens twice.
    ``Australia/Lord_Howe`` gives ``((5400, 1800),)``: 01:30-01:59. Cached per zone.
    """
    if (known := _REPEATS.get(timezone)) is not None:
        return known
    zone = ZoneInfo(timezone)
    windows: set[tuple[int, int]] = set()
    start = _REFERENCE.replace(tzinfo=UTC)
    previous = start.astimezone(zone).utcoffset()
    for day in range(1, 40 * 366):
        instant = start + timedelta(days=day)
        offset = instant.astimezone(zone).utcoffset()
        if previous is not None and offset is not None and offset < previous:
            transition = transition_between(zone, instant - timedelta(days=1), instant)
            wall = transition + offset  # the first repeated wall time (naive)
            begin = wall.hour * 3600 + wall.minute * 60 + wall.second
            windows.add((begin, int((previous - offset).total_seconds())))
        previous = offset
    _REPEATS[timezone] = found = tuple(sorted(windows))
    return found


def transition_between(zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The instant (naive UTC, whole seconds) at which ``zone``'s offset changes between
    ``low`` and ``high`` (naive or aware UTC), given one change in (low, high]."""
    lo = int(low.replace(tzinfo=UTC).timestamp() // 1)
    hi = -int(-high.replace(tzinfo=UTC).timestamp() // 1)
    before = datetime.fromtimestamp(lo, zone).utcoffset()
    # tz transitions fall on whole seconds: bisect over integer POSIX seconds.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC).replace(tzinfo=None)


def shortest_gap(expression: str, limit: float, *, repeated: tuple[tuple[int, int], ...] = ()) -> float:
    """The shortest gap in seconds between consecutive slots of ``expression``.

    ``repeated`` are the zone's repeated wall-clock windows (:func:`repeated_windows`) when
    both occurrences of a repeated wall time fire: from the last first occurrence in a window
    to the first second occurrence is the window's length minus the span of the matches in it
    (``30 1 * * *`` with a one-hour window: 3600 s; ``0,50 1 * * *``: 600 s). The window is
    counted on every day the expression matches (the day rule is not consulted), which can
    only make the gap shorter than on the zone's real fall-back days.
    """
    gap = _wall_gap(expression, limit)
    if repeated:
        gap = min(gap, _repeat_gap(expression, repeated))
    return gap


def _repeat_gap(expression: str, repeated: tuple[tuple[int, int], ...]) -> float:
    times = _times_of_day(expression)
    doubled = times + [t + DAY_SECONDS for t in times]  # a window may run past midnight
    gap = float("inf")
    for begin, length in repeated:
        inside = [t for t in doubled if begin <= t < begin + length]
        if inside:
            gap = min(gap, length - (inside[-1] - inside[0]))
    return gap


def _times_of_day(expression: str) -> list[int]:
    """Every second of the day ``expression`` matches at, ascending."""
    secs, mins, hours = _day_sets(expression)
    return [h * 3600 + m * 60 + s for h in hours for m in mins for s in secs]


def _day_sets(expression: str) -> tuple[list[int], list[int], list[int]]:
    """The second, minute and hour values ``expression`` matches, each ascending."""
    fields = cron_fields(expression)
    seconds = len(fields) == 6
    expanded = _parsed(" ".join(fields), seconds).expanded
    second_f = expanded[5] if seconds else [0]
    secs, mins, hours = (_values(f, n) for f, n in ((second_f, 60), (expanded[0], 60), (expanded[1], 24)))
    return secs, mins, hours


def _wall_gap(expression: str, limit: float) -> float:
    """The shortest wall-clock gap in seconds between consecutive matches of ``expression``.

    Exact when it is at most ``limit`` (the caller compares it with ``limit`` only); otherwise
    some value above ``limit``. Within a day the matches are the product of the second, minute
    and hour sets, so the shortest gap follows from those sets in closed form. Across midnight
    the gap is a whole number of days minus the day's span, shorter than a day only between
    consecutive matching days; those are looked for only when it matters, among the matching
    days of 28 years (every weekday and date combination), at most 400 of them.
    """
    fields = cron_fields(expression)
    secs, mins, hours = _day_sets(expression)
    first = hours[0] * 3600 + mins[0] * 60 + secs[0]
    last = hours[-1] * 3600 + mins[-1] * 60 + secs[-1]
    gap = min(
        _min_step(secs),
        60 * _min_step(mins) - (secs[-1] - secs[0]),
        3600 * _min_step(hours) - (mins[-1] * 60 + secs[-1] - mins[0] * 60 - secs[0]),
    )
    across = DAY_SECONDS - (last - first)  # from the day's last match to the next day's first
    if across >= gap or across > limit:
        return min(gap, across)
    return across if _consecutive_days(fields) else min(gap, across + DAY_SECONDS)


def _values(field: list[int | str], size: int) -> list[int]:
    if field == ["*"]:
        return list(range(size))
    return sorted({int(v) for v in field})


def _min_step(values: list[int]) -> float:
    return min((values[i + 1] - values[i] for i in range(len(values) - 1)), default=float("inf"))


def _consecutive_days(fields: list[str]) -> bool:
    """Whether two consecutive calendar days both match (bounded look-ahead)."""
    days = wall_times(" ".join(["0", "0", *fields[-3:]]), _REFERENCE - timedelta(days=1))
    stop = _REFERENCE.replace(year=_REFERENCE.year + 28)
    previous: datetime | None = None
    for count, day in enumerate(days):
        if day > stop or count >= 400:
            return False
        if previous is not None and day - previous == timedelta(days=1):
            return True
        previous = day
    return False
