"""Slot arithmetic: DST rules, intervals, bounds, jitter; examples and properties."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.schedule import fire_times, jitter_offset, next_fire, next_slot
from schemas.cron import shortest_gap
from schemas.specs import CronSchedule, IntervalSchedule, OnceSchedule, TaskDefinition

NY = "America/New_York"
ANCHOR = datetime(2020, 1, 1, tzinfo=UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local(text: str, zone: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


def cron(expression: str, zone: str = "UTC") -> CronSchedule:
    return CronSchedule(expression=expression, timezone=zone)


# ---------------------------------------------------------------------------------------------
# Daylight saving, explicitly (America/New_York 2026: spring forward 03-08, fall back 11-01)
# ---------------------------------------------------------------------------------------------

DST_CASES = [
    # Spring forward: 02:00 EST -> 03:00 EDT (07:00Z); 02:xx does not exist.
    pytest.param("30 2 * * *", "2026-03-08T05:00", ["2026-03-08T07:30", "2026-03-09T06:30"], id="spring-0230-shifted"),
    pytest.param("30 1 * * *", "2026-03-08T05:00", ["2026-03-08T06:30", "2026-03-09T05:30"], id="spring-0130"),
    pytest.param(
        "0 * * * *",
        "2026-03-08T05:00",
        ["2026-03-08T06:00", "2026-03-08T07:00", "2026-03-08T08:00"],
        id="spring-hourly-0200-collides-with-0300",
    ),
    pytest.param(
        "*/30 * * * *",
        "2026-03-08T05:45",
        ["2026-03-08T06:00", "2026-03-08T06:30", "2026-03-08T07:00", "2026-03-08T07:30", "2026-03-08T08:00"],
        id="spring-half-hourly",
    ),
    # Fall back: 02:00 EDT -> 01:00 EST (06:00Z); 01:xx happens twice. A fixed hour fires at
    # the first occurrence; every-hour crons ("auto") fire at both, in absolute time.
    pytest.param("30 2 * * *", "2026-11-01T04:00", ["2026-11-01T07:30", "2026-11-02T07:30"], id="fall-0230"),
    pytest.param("30 1 * * *", "2026-11-01T04:00", ["2026-11-01T05:30", "2026-11-02T06:30"], id="fall-0130-first-only"),
    pytest.param(
        "0 * * * *",
        "2026-11-01T04:00",
        ["2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00", "2026-11-01T08:00"],
        id="fall-hourly-0100-twice",
    ),
    pytest.param(
        "*/30 * * * *",
        "2026-11-01T04:45",
        ["2026-11-01T05:00", "2026-11-01T05:30", "2026-11-01T06:00", "2026-11-01T06:30", "2026-11-01T07:00"],
        id="fall-half-hourly",
    ),
    # Searches that start inside the transition.
    pytest.param("30 2 * * *", "2026-03-08T07:10", ["2026-03-08T07:30"], id="spring-after-inside-gap-shadow"),
    pytest.param("*/30 * * * *", "2026-03-08T07:00", ["2026-03-08T07:30"], id="spring-after-at-transition"),
    pytest.param(
        "30 1 * * *",
        "2026-11-01T06:15",
        ["2026-11-02T06:30"],
        id="fall-after-in-repeated-hour-no-second-fire",
    ),
]


@pytest.mark.parametrize(("expression", "after", "expected"), DST_CASES)
def test_new_york_dst(expression: str, after: str, expected: list[str]) -> None:
    got = fire_times(cron(expression, NY), utc(after), len(expected), anchor=ANCHOR)
    assert got == [utc(x) for x in expected]


def test_lord_howe_half_hour_shift() -> None:
    zone = "Australia/Lord_Howe"  # +10:30 -> +11 on 2026-10-04 at 02:00 local (02:00..02:29 missing)
    got = fire_times(cron("15 2 * * *", zone), local("2026-10-03T12:00", zone), 2, anchor=ANCHOR)
    assert got == [local("2026-10-04T02:45", zone), local("2026-10-05T02:15", zone)]
    # Back to +10:30 on 2026-04-05 at 02:00 (01:30..01:59 twice): fires at the first.
    got = fire_times(cron("45 1 * * *", zone), local("2026-04-04T12:00", zone), 2, anchor=ANCHOR)
    assert got[0] == datetime(2026, 4, 4, 14, 45, tzinfo=UTC)  # 01:45 at +11:00
    assert got[1] == local("2026-04-06T01:45", zone)


def test_six_field_cron_has_seconds_first() -> None:
    schedule = cron("15 0 * * * *")  # second 15 of every hour
    assert fire_times(schedule, utc("2026-01-01T00:00"), 2, anchor=ANCHOR) == [
        utc("2026-01-01T00:00:15"),
        utc("2026-01-01T01:00:15"),
    ]


def test_cron_in_zone_without_dst() -> None:
    assert next_fire(cron("0 9 * * *", "Asia/Kolkata"), utc("2026-06-01T00:00"), anchor=ANCHOR) == utc(
        "2026-06-01T03:30"
    )


# ---------------------------------------------------------------------------------------------
# Interval and one-shot
# ---------------------------------------------------------------------------------------------


def test_interval_examples() -> None:
    schedule = IntervalSchedule(every_seconds=90)
    anchor = utc("2026-01-01T00:00")
    assert next_fire(schedule, anchor, anchor=anchor) == utc("2026-01-01T00:01:30")
    assert next_fire(schedule, utc("2026-01-01T00:01:30"), anchor=anchor) == utc("2026-01-01T00:03:00")
    # The anchor is a phase: slots before it exist too (start_at is the bound).
    assert next_fire(schedule, utc("2025-12-31T23:58:00"), anchor=anchor) == utc("2025-12-31T23:58:30")
    # The schedule's own anchor wins over the task's.
    own = IntervalSchedule(every_seconds=3600, anchor=utc("2026-01-01T00:15"))
    assert next_fire(own, anchor, anchor=anchor) == utc("2026-01-01T00:15")


def test_interval_ignores_dst() -> None:
    schedule = IntervalSchedule(every_seconds=3600)
    anchor = utc("2026-03-08T00:00")
    got = fire_times(schedule, anchor, 12, anchor=anchor)
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(got))


def test_once() -> None:
    schedule = OnceSchedule(at=utc("2026-05-01T12:00"))
    assert next_fire(schedule, utc("2026-05-01T11:59"), anchor=ANCHOR) == utc("2026-05-01T12:00")
    assert next_fire(schedule, utc("2026-05-01T12:00"), anchor=ANCHOR) is None
    assert fire_times(schedule, utc("2026-01-01T00:00"), 5, anchor=ANCHOR) == [utc("2026-05-01T12:00")]


# ---------------------------------------------------------------------------------------------
# Task bounds and jitter
# ---------------------------------------------------------------------------------------------


def task(**fields: object) -> TaskDefinition:
    return TaskDefinition.model_validate(
        {
            "name": "t",
            "work": {"kind": "handler", "name": "h"},
            "schedule": {"kind": "cron", "expression": "0 * * * *"},
        }
        | fields
    )


def test_next_slot_bounds() -> None:
    t0 = utc("2026-01-01T00:00")
    assert next_slot(task(start_at=utc("2026-01-01T05:00")), t0, anchor=t0) == utc("2026-01-01T05:00")
    assert next_slot(task(start_at=utc("2026-01-01T05:30")), t0, anchor=t0) == utc("2026-01-01T06:00")
    assert next_slot(task(end_at=utc("2026-01-01T01:00")), t0, anchor=t0) == utc("2026-01-01T01:00")
    assert next_slot(task(end_at=utc("2026-01-01T00:59")), t0, anchor=t0) is None
    assert next_slot(task(max_runs=3), t0, anchor=t0, runs_so_far=2) == utc("2026-01-01T01:00")
    assert next_slot(task(max_runs=3), t0, anchor=t0, runs_so_far=3) is None
    assert next_slot(task(schedule=None), t0, anchor=t0) is None


def test_jitter_offset_is_deterministic_and_bounded() -> None:
    slot = utc("2026-01-01T00:10")
    assert jitter_offset("a", slot, 0) == timedelta(0)
    assert jitter_offset("a", slot, 30) == jitter_offset("a", slot, 30)
    assert jitter_offset("a", slot, 30) != jitter_offset("b", slot, 30)
    # The same instant in another zone is the same slot.
    assert jitter_offset("a", slot, 30) == jitter_offset("a", slot.astimezone(ZoneInfo(NY)), 30)


@given(st.text(min_size=1, max_size=20), st.floats(min_value=0.001, max_value=86_400))
def test_jitter_in_range(task_id: str, seconds: float) -> None:
    offset = jitter_offset(task_id, utc("2026-01-01T00:00"), seconds)
    assert timedelta(0) <= offset < timedelta(seconds=seconds)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

ZONES = ["UTC", NY, "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata"]
# Dates around each zone's 2026 transitions, and an ordinary one.
DAYS = [
    datetime(2026, 3, 7),
    datetime(2026, 10, 31),
    datetime(2026, 3, 28),
    datetime(2026, 10, 24),
    datetime(2026, 4, 4),
    datetime(2026, 10, 3),
    datetime(2026, 6, 15),
]

minutes = st.sampled_from(["*", "*/15", "0", "30", "0,30", "5-10", "59", "*/7"])
hours = st.sampled_from(["*", "0", "1", "2", "3", "1-3", "*/2", "2,14"])
days_of_week = st.sampled_from(["*", "0", "1-5", "6,0"])
cron_specs = st.builds(
    lambda m, h, dow, zone, gap, repeat: CronSchedule(
        expression=f"{m} {h} * * {dow}", timezone=zone, dst_gap=gap, dst_repeat=repeat
    ),
    minutes,
    hours,
    days_of_week,
    st.sampled_from(ZONES),
    st.sampled_from(["shift", "skip"]),
    st.sampled_from(["auto", "first", "second", "both"]),
)
starts = st.builds(
    lambda day, offset: day.replace(tzinfo=UTC) + timedelta(minutes=offset),
    st.sampled_from(DAYS),
    st.integers(min_value=0, max_value=3 * 24 * 60),
)


def _matcher(expression: str) -> Callable[[datetime], bool]:
    """An independent matcher for the generated expressions (day-of-month and month are '*')."""
    expanded = croniter(expression).expanded
    minute, hour, dow = (
        {int(v) for v in field} if field != ["*"] else None for field in (expanded[0], expanded[1], expanded[4])
    )

    def matches(wall: datetime) -> bool:
        cron_dow = (wall.weekday() + 1) % 7  # cron counts from Sunday = 0
        return (
            (minute is None or wall.minute in minute)
            and (hour is None or wall.hour in hour)
            and (dow is None or cron_dow in dow or (cron_dow == 0 and 7 in dow))
        )

    return matches


@settings(max_examples=200, deadline=None)
@given(cron_specs, starts)
def test_cron_slots_match_brute_force_enumeration(schedule: CronSchedule, start: datetime) -> None:
    """next_fire chains through exactly the slots found by checking every wall-clock minute."""
    zone = ZoneInfo(schedule.timezone)
    end = start + timedelta(hours=30)
    matches = _matcher(schedule.expression)
    expected: set[datetime] = set()
    wall = start.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0) - timedelta(hours=3)
    stop = end.astimezone(zone).replace(tzinfo=None) + timedelta(hours=3)
    repeat = schedule.dst_repeat
    if repeat == "auto":  # every hour: both occurrences; a fixed hour or a step: the first
        repeat = "both" if schedule.expression.split()[1] == "*" else "first"
    while wall <= stop:
        if matches(wall):
            first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
            second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
            if first == second:  # plain
                instants = [first]
            elif first > second:  # in a gap: fold 0 is the shifted reading
                instants = [first] if schedule.dst_gap == "shift" else []
            else:  # repeated
                instants = {"first": [first], "second": [second], "both": [first, second]}[repeat]
            expected.update(i for i in instants if start < i <= end)
        wall += timedelta(minutes=1)
    got: list[datetime] = []
    current = start
    while (slot := next_fire(schedule, current, anchor=ANCHOR)) is not None and slot <= end:
        assert slot > current  # strictly increasing
        got.append(slot)
        current = slot
    assert got == sorted(expected)


@settings(max_examples=100, deadline=None)
@given(cron_specs, starts)
def test_cron_next_fire_strictly_increases(schedule: CronSchedule, start: datetime) -> None:
    slots = fire_times(schedule, start, 20, anchor=ANCHOR)
    assert slots and slots[0] > start
    assert all(a < b for a, b in itertools.pairwise(slots))


instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@settings(max_examples=200)
@given(
    st.floats(min_value=1, max_value=10_000_000, allow_nan=False).map(lambda x: round(x, 3)),
    instants,
    instants,
)
def test_interval_slots_are_anchor_plus_k_every(every: float, anchor: datetime, after: datetime) -> None:
    schedule = IntervalSchedule(every_seconds=every)
    period = timedelta(microseconds=round(every * 1_000_000))
    slots = fire_times(schedule, after, 3, anchor=anchor)
    for slot in slots:
        k, remainder = divmod(slot - anchor, period)
        assert remainder == timedelta(0)
        assert slot == anchor + k * period
    assert slots[0] > after >= slots[0] - period
    assert all(b - a == period for a, b in itertools.pairwise(slots))


# ---------------------------------------------------------------------------------------------
# DST: slots per local day, as the CronSchedule description and README state (issue 11, item 13)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "day", "count"),
    [
        ("0 * * * *", "2026-03-08", 23),  # 23-hour day: 02:00 becomes 03:00, which fires once
        ("0 * * * *", "2026-11-01", 25),  # 25-hour day: the repeated 01:00 fires twice (auto)
        ("0 * * * *", "2026-06-15", 24),
        ("* * * * *", "2026-03-08", 23 * 60),
        ("* * * * *", "2026-11-01", 25 * 60),  # fires through the repeated hour (auto)
        ("30 2 * * *", "2026-03-08", 1),  # shifted to 03:30
        ("30 1 * * *", "2026-11-01", 1),  # first occurrence only
    ],
)
def test_slots_per_local_day_around_dst(expression: str, day: str, count: int) -> None:
    start = local(f"{day}T00:00", NY)
    end = local((datetime.fromisoformat(day) + timedelta(days=1)).isoformat(), NY)
    slots = fire_times(cron(expression, NY), start - timedelta(microseconds=1), 2000, anchor=ANCHOR)
    assert len([s for s in slots if s < end]) == count


def test_every_minute_fires_through_the_repeated_hour() -> None:
    slots = fire_times(cron("* * * * *", NY), utc("2026-11-01T05:58"), 3, anchor=ANCHOR)
    # 01:58 EDT, 01:59 EDT, then 01:00 EST: the repeated hour fires in absolute time (auto).
    assert slots == [utc("2026-11-01T05:59"), utc("2026-11-01T06:00"), utc("2026-11-01T06:01")]
    # With the first occurrence only (the rule before dst_repeat), 01:00-01:59 EST are silent.
    first = CronSchedule(expression="* * * * *", timezone=NY, dst_repeat="first")
    slots = fire_times(first, utc("2026-11-01T05:58"), 3, anchor=ANCHOR)
    assert slots == [utc("2026-11-01T05:59"), utc("2026-11-01T07:00"), utc("2026-11-01T07:01")]


# ---------------------------------------------------------------------------------------------
# Day-of-month / day-of-week: the Vixie rule (issue 11, item 11)
# ---------------------------------------------------------------------------------------------

DAY_RULE_CASES = [
    # Day-of-month starts with '*': AND. Mondays in January 2026 are 5, 12, 19, 26.
    pytest.param("0 0 */2 * 1", ["2026-01-05", "2026-01-19", "2026-02-09", "2026-02-23"], id="odd-mondays"),
    # Both restricted: OR. 31 February never comes, so every Monday of February.
    pytest.param(
        "0 0 31 2 1",
        ["2026-02-02", "2026-02-09", "2026-02-16", "2026-02-23", "2027-02-01"],
        id="feb-31-or-monday",
    ),
    # Both restricted: OR. The 13th or any Friday (2026-01-02 is a Friday).
    pytest.param("0 0 13 * 5", ["2026-01-02", "2026-01-09", "2026-01-13", "2026-01-16"], id="13th-or-friday"),
    # Day-of-week starts with '*': AND. Days 1-7 that are Sundays: the first Sunday.
    pytest.param("0 0 1-7 * */7", ["2026-01-04", "2026-02-01", "2026-03-01", "2026-04-05"], id="first-sunday"),
    # The same days with a plain 0: OR, days 1-7 or any Sunday.
    pytest.param("0 0 1-7 * 0", ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"], id="or"),
    pytest.param("0 0 * * 1", ["2026-01-05", "2026-01-12"], id="plain-weekday"),
    pytest.param("0 0 L 2 *", ["2026-02-28", "2027-02-28", "2028-02-29"], id="last-day"),
]


@pytest.mark.parametrize(("expression", "days"), DAY_RULE_CASES)
def test_day_of_month_and_day_of_week_follow_vixie(expression: str, days: list[str]) -> None:
    got = fire_times(cron(expression), utc("2026-01-01T00:00") - timedelta(seconds=1), len(days), anchor=ANCHOR)
    assert got == [utc(f"{d}T00:00") for d in days]


def _field_values(field: str, low: int, high: int) -> set[int]:
    """An independent reading of one numeric cron field: lists of values, ranges and steps."""
    values: set[int] = set()
    for part in field.split(","):
        body, _, step = part.partition("/")
        if body in ("*", "?"):
            first, last = low, high
        elif "-" in body:
            first, last = (int(x) for x in body.split("-"))
        else:
            first = last = int(body)
            if step:
                last = high
        values.update(range(first, last + 1, int(step or 1)))
    return values


def _vixie_day(dom: str, month: str, dow: str) -> Callable[[datetime], bool]:
    """Brute-force day matcher written from the rule, not from croniter."""
    doms, months = _field_values(dom, 1, 31), _field_values(month, 1, 12)
    dows = {d % 7 for d in _field_values(dow, 0, 7)}
    either_star = dom.startswith(("*", "?")) or dow.startswith(("*", "?"))

    def matches(day: datetime) -> bool:
        if day.month not in months:
            return False
        dom_ok, dow_ok = day.day in doms, (day.weekday() + 1) % 7 in dows
        return (dom_ok and dow_ok) if either_star else (dom_ok or dow_ok)

    return matches


day_fields = st.sampled_from(["*", "*/2", "*/3", "1", "13", "31", "1-7", "10-20/5", "29,30,31", "?"])
month_fields = st.sampled_from(["*", "2", "*/2", "1-3", "2,11"])
weekday_fields = st.sampled_from(["*", "*/2", "1", "5", "0", "1-5", "6,7", "*/7", "?"])


@settings(max_examples=60, deadline=None)
@given(day_fields, month_fields, weekday_fields)
def test_validator_and_scheduler_agree_with_a_brute_force_day_rule(dom: str, month: str, dow: str) -> None:
    """Over a year: the scheduler fires on exactly the days the rule gives, and the validator
    calls an expression "never matches" exactly when the rule finds no day in 28 years."""
    if dom == "?" and dow == "?":
        return
    expression = f"0 0 {dom} {month} {dow}"
    matches = _vixie_day(dom, month, dow)
    start = datetime(2026, 1, 1)
    expected = [start + timedelta(days=i) for i in range(365) if matches(start + timedelta(days=i))]
    any_day = expected or [1 for i in range(28 * 366) if matches(start + timedelta(days=i))]
    try:
        schedule = cron(expression)
    except ValueError:
        assert not any_day, expression
        return
    assert any_day, expression
    got = fire_times(schedule, utc("2026-01-01T00:00") - timedelta(seconds=1), 366, anchor=ANCHOR)
    assert [s.replace(tzinfo=None) for s in got if s.year < 2027] == expected, expression


# ---------------------------------------------------------------------------------------------
# The jitter bound: the validator's shortest gap is the scheduler's (issue 11, item 9)
# ---------------------------------------------------------------------------------------------

gap_seconds = st.sampled_from(["0", "30", "0,10", "*/20", "5,55"])
gap_minutes = st.sampled_from(["0", "*/15", "0,59", "30", "5-10", "*/7"])
gap_hours = st.sampled_from(["*", "0", "23", "0,23", "1-3", "*/5", "9,17"])
gap_weekdays = st.sampled_from(["*", "1", "1-5", "0,1", "5,1"])


@settings(max_examples=25, deadline=None)
@given(gap_seconds, gap_minutes, gap_hours, gap_weekdays)
def test_shortest_gap_is_the_smallest_step_between_slots(second: str, minute: str, hour: str, dow: str) -> None:
    """Over eight days in UTC (every weekday pattern, Sunday to Monday too), the smallest step between the
    scheduler's consecutive slots is what the validator computes; a jitter below it keeps the
    jittered fire times in slot order."""
    expression = f"{second} {minute} {hour} * * {dow}"
    slots = fire_times(cron(expression), utc("2026-01-05T00:00") - timedelta(seconds=1), 1200, anchor=ANCHOR)
    slots = [s for s in slots if s < utc("2026-01-13T00:00")]
    brute = min((b - a).total_seconds() for a, b in itertools.pairwise(slots))
    limit = 86_400.0
    gap = shortest_gap(expression, limit)
    assert gap == brute if brute <= limit else gap > limit
    jitter = min(gap, limit) * 0.999
    fires = [s + jitter_offset("t", s, jitter) for s in slots]
    assert fires == sorted(fires)
