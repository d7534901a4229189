"""The parsed-expression cache of ``schemas.cron``: what fires is exactly what it was when
every search parsed the expression again, the parse happens once per expression, and the
cache stays bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import schemas.cron as cron
from scheduler.schedule import fire_times
from schemas.specs import CronSchedule

MINUTES = ["*", "0", "30", "*/15", "5,35", "0-30/10", "59"]
HOURS = ["*", "0", "2", "*/3", "1-5", "23"]
DAYS = ["*", "1", "15", "L", "*/2", "31", "29"]
MONTHS = ["*", "1", "2", "3,10", "*/4", "11"]
WEEKDAYS = ["*", "1", "1-5", "0", "sun", "2#3", "6#5", "5#1"]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]


def _uncached(expression: str, seconds: bool, after: datetime) -> croniter:
    """What every search did before the cache: parse the expression again."""
    return croniter(expression, after, day_or=False, second_at_beginning=seconds)


@st.composite
def schedules(draw: st.DrawFn) -> CronSchedule:
    fields = [draw(st.sampled_from(f)) for f in (MINUTES, HOURS, DAYS, MONTHS, WEEKDAYS)]
    if draw(st.booleans()):
        fields.insert(0, draw(st.sampled_from(["0", "*/20", "7,37"])))
    try:
        return CronSchedule(
            expression=" ".join(fields),
            timezone=draw(st.sampled_from(ZONES)),
            dst_gap=draw(st.sampled_from(["shift", "skip"])),
            dst_repeat=draw(st.sampled_from(["auto", "first", "second", "both"])),
        )
    except ValidationError:
        assume(False)
        raise


instants = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(schedules(), instants), min_size=1, max_size=4))
def test_cached_slots_are_the_uncached_ones(cases: list[tuple[CronSchedule, datetime]]) -> None:
    # Several schedules in turn: a parsed expression is reused after other searches used it
    # (croniter merges n#k sets in place while searching; each search has its own copy).
    anchor = datetime(2025, 1, 1, tzinfo=UTC)
    cached = [fire_times(s, after, 6, anchor=anchor) for s, after in cases]
    cached_again = [fire_times(s, after, 6, anchor=anchor) for s, after in cases]
    saved = cron._croniter_at
    cron._croniter_at = _uncached
    try:
        uncached = [fire_times(s, after, 6, anchor=anchor) for s, after in cases]
    finally:
        cron._croniter_at = saved
    assert cached == uncached
    assert cached_again == uncached


def test_a_schedule_is_parsed_once(cron_parses: list[str]) -> None:
    schedule = CronSchedule(expression="17 2 * * 1-5", timezone="Europe/Berlin")
    cron_parses.clear()  # validation parses too
    after = datetime(2026, 3, 1, tzinfo=UTC)
    slots = fire_times(schedule, after, 200, anchor=after)
    assert len(slots) == 200
    assert cron_parses.count("17 2 * * 1-5") <= 1  # each of the 200 searches parsed it before


def test_the_cache_is_bounded_and_drops_the_least_recently_used() -> None:
    after = datetime(2001, 1, 1)
    first = "0 0 1 1 *"
    next(cron.wall_times(first, after))
    for n in range(cron.PARSED_CACHE_SIZE + 10):
        next(cron.wall_times(f"{n % 60} {n // 60 % 24} {n // 1440 + 1} * *", after))
        if n == 5:
            next(cron.wall_times(first, after))  # used again: not the oldest any more
    assert len(cron._PARSED) == cron.PARSED_CACHE_SIZE
    assert (first, False) not in cron._PARSED  # dropped once over 1024 newer ones came
    assert next(cron.wall_times(first, after)) == datetime(2002, 1, 1)


def test_a_copy_searches_from_its_own_position() -> None:
    a = cron.wall_times("30 2 * * *", datetime(2026, 1, 1))
    b = cron.wall_times("30 2 * * *", datetime(2026, 6, 1))
    assert next(a) == datetime(2026, 1, 1, 2, 30)
    assert next(b) == datetime(2026, 6, 1, 2, 30)
    assert next(a) == datetime(2026, 1, 2, 2, 30)
    assert next(b) - timedelta(days=1) == datetime(2026, 6, 1, 2, 30)
