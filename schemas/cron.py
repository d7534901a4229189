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

import re
from collections.abc import Iterator
from datetime import datetime, timedelta

from croniter import CroniterBadDateError, croniter

DAY_SECONDS = 86_400

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
    iters = [croniter(h, after, day_or=False, second_at_beginning=seconds) for h in halves]
    heads = [_next(it) for it in iters]
    while True:
        live = [h for h in heads if h is not None]
        if not live:
            return
        smallest = min(live)
        yield smallest
        heads = [_next(iters[i]) if h == smallest else h for i, h in enumerate(heads)]


def _next(it: croniter) -> datetime | None:
    try:
        value: datetime = it.get_next(datetime)
    except (CroniterBadDateError, OverflowError):
        return None
    return value


def never_matches(expression: str) -> bool:
    """True when no wall-clock time ever matches (e.g. ``0 0 30 2 *``)."""
    return next(wall_times(expression, _REFERENCE), None) is None


def shortest_gap(expression: str, limit: float) -> float:
    """The shortest wall-clock gap in seconds between consecutive matches of ``expression``.

    Exact when it is at most ``limit`` (the caller compares it with ``limit`` only); otherwise
    some value above ``limit``. Within a day the matches are the product of the second, minute
    and hour sets, so the shortest gap follows from those sets in closed form. Across midnight
    the gap is a whole number of days minus the day's span, shorter than a day only between
    consecutive matching days; those are looked for only when it matters, among the matching
    days of 28 years (every weekday and date combination), at most 400 of them.
    """
    fields = cron_fields(expression)
    seconds = len(fields) == 6
    expanded = croniter(" ".join(fields), second_at_beginning=seconds).expanded
    second_f = expanded[5] if seconds else [0]
    secs, mins, hours = (_values(f, n) for f, n in ((second_f, 60), (expanded[0], 60), (expanded[1], 24)))
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
