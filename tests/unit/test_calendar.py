"""Calendars: which instants they exclude (value tables), the all-excluded check, and what the
decider does with excluded slots (given/when/then)."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scheduler import decision
from scheduler.calendar import (
    Exclusions,
    every_slot_excluded,
    excluded_by,
    excludes_all_time,
    excludes_every_slot,
    exclusion_end,
)
from schemas.calendars import Calendar, CalendarBody, decode_calendar_event
from schemas.commands import TriggerTask, Wake
from schemas.events import TaskCreated
from schemas.specs import TaskDefinition
from tests.unit.unit_support import assert_then, at, cmd, definition, e, fold


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def cal(name: str = "hol", **fields: Any) -> Calendar:
    return Calendar(name=name, **fields)


CHRISTMAS = cal(dates=["2026-12-25"])
PARIS_CHRISTMAS = cal(timezone="Europe/Paris", dates=["2026-12-25"])
NY_CHRISTMAS = cal(timezone="America/New_York", dates=["2026-12-25"])
LONDON_NIGHT = cal(timezone="Europe/London", ranges=[{"start": "2026-06-01T22:00", "end": "2026-06-02T02:00"}])
SUNDAY_MAINTENANCE = cal(rules=[{"cron": "0 2 * * sun", "duration_seconds": 7200}])
WEEKENDS = cal(rules=[{"cron": "0 0 * * sat,sun"}])
WEEKENDS_ANY_MINUTE = cal(rules=[{"cron": "* * * * sat,sun"}])
NY_REPEATED_HOUR = cal(timezone="America/New_York", ranges=[{"start": "2026-11-01T01:00", "end": "2026-11-01T02:00"}])
NY_SPRING_DAY = cal(timezone="America/New_York", dates=["2026-03-08"])
NY_NIGHT_WINDOW = cal(timezone="America/New_York", rules=[{"cron": "30 1 * * *", "duration_seconds": 3600}])
WHOLE_RANGE_DAYS = cal(ranges=[{"start": "2026-12-24", "end": "2026-12-27"}])

EXCLUDED = [
    # dates: the whole local day, in the calendar's zone
    (CHRISTMAS, "2026-12-24T23:59:59", False),
    (CHRISTMAS, "2026-12-25T00:00:00", True),
    (CHRISTMAS, "2026-12-25T23:59:59.999999", True),
    (CHRISTMAS, "2026-12-26T00:00:00", False),
    (PARIS_CHRISTMAS, "2026-12-24T22:59:59", False),  # 23:59 in Paris on the 24th
    (PARIS_CHRISTMAS, "2026-12-24T23:30:00", True),  # 00:30 in Paris on the 25th
    (PARIS_CHRISTMAS, "2026-12-25T23:30:00", False),  # 00:30 in Paris on the 26th
    (NY_CHRISTMAS, "2026-12-25T04:59:00", False),  # 23:59 EST on the 24th
    (NY_CHRISTMAS, "2026-12-25T05:00:00", True),
    (NY_CHRISTMAS, "2026-12-26T04:59:59", True),
    # ranges: [start, end) local, here in British summer time (UTC+1)
    (LONDON_NIGHT, "2026-06-01T20:59:59", False),
    (LONDON_NIGHT, "2026-06-01T21:00:00", True),
    (LONDON_NIGHT, "2026-06-02T00:59:59", True),
    (LONDON_NIGHT, "2026-06-02T01:00:00", False),
    (WHOLE_RANGE_DAYS, "2026-12-26T23:59:59", True),
    (WHOLE_RANGE_DAYS, "2026-12-27T00:00:00", False),
    # rules with a window: every Sunday 02:00-04:00 (2026-01-04 is a Sunday)
    (SUNDAY_MAINTENANCE, "2026-01-04T01:59:59", False),
    (SUNDAY_MAINTENANCE, "2026-01-04T02:00:00", True),
    (SUNDAY_MAINTENANCE, "2026-01-04T03:59:59.999999", True),
    (SUNDAY_MAINTENANCE, "2026-01-04T04:00:00", False),
    (SUNDAY_MAINTENANCE, "2026-01-05T02:30:00", False),  # a Monday
    # rules without a window: every matching day, whole
    (WEEKENDS, "2026-01-02T23:59:59", False),  # Friday
    (WEEKENDS, "2026-01-03T00:00:00", True),  # Saturday
    (WEEKENDS, "2026-01-04T23:59:59", True),  # Sunday
    (WEEKENDS, "2026-01-05T00:00:00", False),  # Monday
    (WEEKENDS_ANY_MINUTE, "2026-01-03T12:00:00", True),
    (WEEKENDS_ANY_MINUTE, "2026-01-05T12:00:00", False),
    # daylight saving, America/New_York: the repeated 01:00 hour on 2026-11-01 is excluded both times
    (NY_REPEATED_HOUR, "2026-11-01T04:59:59", False),  # 00:59 EDT
    (NY_REPEATED_HOUR, "2026-11-01T05:00:00", True),  # 01:00 EDT
    (NY_REPEATED_HOUR, "2026-11-01T06:30:00", True),  # 01:30 EST, the second time round
    (NY_REPEATED_HOUR, "2026-11-01T07:00:00", False),  # 02:00 EST
    # the 23-hour spring-forward day, 2026-03-08
    (NY_SPRING_DAY, "2026-03-08T04:59:59", False),  # 23:59 EST on the 7th
    (NY_SPRING_DAY, "2026-03-08T05:00:00", True),  # 00:00 EST
    (NY_SPRING_DAY, "2026-03-09T03:59:59", True),  # 23:59 EDT on the 8th
    (NY_SPRING_DAY, "2026-03-09T04:00:00", False),  # 00:00 EDT on the 9th
    # a window 01:30-02:30 wall clock across the spring gap: 02:00-02:59 do not exist that night
    (NY_NIGHT_WINDOW, "2026-03-08T06:45:00", True),  # 01:45 EST
    (NY_NIGHT_WINDOW, "2026-03-08T07:00:00", False),  # 03:00 EDT
    (NY_NIGHT_WINDOW, "2026-03-09T06:15:00", True),  # 02:15 EDT the next night
]


@pytest.mark.parametrize(("calendar", "slot", "excluded"), EXCLUDED)
def test_excluded_by(calendar: Calendar, slot: str, excluded: bool) -> None:
    assert excluded_by([calendar], utc(slot)) == ("hol" if excluded else None)


def test_excluded_by_names_the_first_calendar_listed_that_excludes() -> None:
    slot = utc("2026-12-25T12:00:00")
    weekends, christmas = cal("weekends", rules=[{"cron": "0 0 * * sat,sun"}]), cal("xmas", dates=["2026-12-25"])
    assert excluded_by([weekends, christmas], slot) == "xmas"  # a Friday
    assert excluded_by([christmas, cal("all", rules=[{"cron": "* * * * *"}])], slot) == "xmas"
    assert excluded_by([cal("all", rules=[{"cron": "* * * * *"}]), christmas], slot) == "all"
    assert excluded_by([], slot) is None


END = [
    (CHRISTMAS, "2026-12-25T10:00:00", "2026-12-26T00:00:00"),
    (SUNDAY_MAINTENANCE, "2026-01-04T03:00:00", "2026-01-04T04:00:00"),
    (NY_REPEATED_HOUR, "2026-11-01T05:30:00", "2026-11-01T07:00:00"),  # through both 01:xx hours, to 02:00 EST
    (WEEKENDS, "2026-01-03T10:00:00", "2026-01-04T00:00:00"),  # Saturday's part; Sunday is the next step
]


@pytest.mark.parametrize(("calendar", "slot", "end"), END)
def test_exclusion_end(calendar: Calendar, slot: str, end: str) -> None:
    assert exclusion_end(calendar, utc(slot)) == utc(end)


def task(**overrides: Any) -> TaskDefinition:
    return TaskDefinition.model_validate(definition(**overrides))


NOW = utc("2026-01-01T00:00:00")
YEAR = NOW + timedelta(days=366)

EVERY_SLOT = [
    pytest.param(task(schedule={"kind": "cron", "expression": "0 9 * * 1-5"}), [WEEKENDS], False, id="weekday-job"),
    pytest.param(task(schedule={"kind": "cron", "expression": "0 9 * * 6,0"}), [WEEKENDS], True, id="weekend-job"),
    pytest.param(
        task(schedule={"kind": "cron", "expression": "0 9 * * 6"}),
        [WEEKENDS_ANY_MINUTE],
        True,
        id="saturday-job-any-minute-rule",
    ),
    pytest.param(
        task(schedule={"kind": "cron", "expression": "*/5 * * * *"}),
        [cal(rules=[{"cron": "* * * * *"}])],
        True,
        id="everything-excluded",
    ),
    pytest.param(
        task(schedule={"kind": "once", "at": "2026-12-25T09:00:00Z"}), [CHRISTMAS], True, id="one-shot-excluded"
    ),
    pytest.param(task(schedule={"kind": "once", "at": "2026-12-24T09:00:00Z"}), [CHRISTMAS], False, id="one-shot-open"),
    pytest.param(
        task(
            schedule={"kind": "interval", "every_seconds": 60},
            start_at="2026-12-24T00:00:00Z",
            end_at="2026-12-26T12:00:00Z",
        ),
        [WHOLE_RANGE_DAYS],
        True,
        id="bounded-minutely-inside-range",
    ),
    pytest.param(
        task(schedule={"kind": "interval", "every_seconds": 60}, start_at="2026-12-24T00:00:00Z"),
        [WHOLE_RANGE_DAYS],
        False,
        id="unbounded-minutely-after-range",
    ),
    pytest.param(task(schedule={"kind": "cron", "expression": "0 9 * * 6,0"}), [], False, id="no-calendar"),
    pytest.param(
        task(schedule={"kind": "cron", "expression": "0 3 * * sun"}),
        [SUNDAY_MAINTENANCE],
        True,
        id="weekly-job-in-weekly-window",
    ),
    pytest.param(
        task(schedule={"kind": "cron", "expression": "0 * * * *"}),
        [SUNDAY_MAINTENANCE, WEEKENDS],
        False,
        id="two-calendars-leave-weekdays",
    ),
]


@pytest.mark.parametrize(("definition_", "calendars", "expected"), EVERY_SLOT)
def test_excludes_every_slot(definition_: TaskDefinition, calendars: list[Calendar], expected: bool) -> None:
    assert excludes_every_slot(definition_, calendars, NOW, YEAR, anchor=NOW) is expected


def test_excludes_every_slot_walks_by_exclusion_not_by_slot() -> None:
    # A minutely schedule under a calendar excluding every day: 527,040 slots a year, one step a day.
    definition_ = task(schedule={"kind": "interval", "every_seconds": 60})
    started = time.perf_counter()
    assert excludes_every_slot(
        definition_, [WEEKENDS_ANY_MINUTE, cal(rules=[{"cron": "0 0 * * 1-5"}])], NOW, YEAR, anchor=NOW
    )
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"ranges": [{"start": "2026-01-02", "end": "2026-01-01"}]}, "ranges.0"),
        ({"ranges": [{"start": "2026-01-01T00:00:00Z", "end": "2026-01-02"}]}, "ranges.0.start"),
        ({"rules": [{"cron": "61 * * * *"}]}, "rules.0.cron"),
        ({"rules": [{"cron": "0 0 30 2 *"}]}, "rules.0.cron"),
        ({"rules": [{"cron": "0 2 * * sun", "duration_seconds": 0}]}, "rules.0.duration_seconds"),
        ({"dates": ["2026-01-01"] * 1001}, "dates"),
        ({"holidays": []}, "holidays"),
    ],
)
def test_bad_calendars_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        CalendarBody.model_validate(body)
    assert ".".join(str(p) for p in info.value.errors()[0]["loc"]) == field


def test_calendar_events_round_trip() -> None:
    event = decode_calendar_event(
        {
            "type": "CalendarUpserted",
            "event_id": "x",
            "tenant": "acme",
            "name": "hol",
            "revision": 1,
            "at": "2026-01-01T00:00:00Z",
            "actor": "alice",
            "calendar": CHRISTMAS.model_dump(mode="json"),
        }
    )
    assert event.key == "acme/hol"
    assert decode_calendar_event(event.model_dump(mode="json")) == event


# ---------------------------------------------------------------------------------------------
# The decider: excluded slots at wake time
# ---------------------------------------------------------------------------------------------

# Every 10 minutes from T0 (2026-01-01T00:00Z); "maint" excludes 00:20-00:40 on that day.
MAINT = cal("maint", ranges=[{"start": "2026-01-01T00:20", "end": "2026-01-01T00:40"}])
FIRST = cal("first", ranges=[{"start": "2026-01-01T00:10", "end": "2026-01-01T00:30"}])


def wake(given: list[Any], command: Any, calendars: dict[str, Calendar]) -> list[Any]:
    state, _ = fold(given)
    return decision(command, state, calendars).events


def created(**overrides: Any) -> Any:
    return e(TaskCreated, definition=definition(**overrides), revision=1, next_slot=at(10), next_fire_at=at(10))


RUN_ALL = {"overlap": "allow_all", "catch_up": {"mode": "run_all"}}


def run(minute: int) -> tuple[str, dict[str, Any]]:
    return ("ExecutionDispatched", {"reason": "schedule", "slot": at(minute)})


def test_excluded_slots_are_missed_with_the_calendar_and_the_others_run() -> None:
    events = wake([created(calendars=["maint"], **RUN_ALL)], cmd(Wake, at(50, seconds=1)), {"maint": MAINT})
    assert_then(
        events,
        [
            run(10),
            (
                "SlotsMissed",
                {"reason": "calendar", "calendar": "maint", "first_slot": at(20), "last_slot": at(30), "count": 2},
            ),
            run(40),
            run(50),
        ],
    )


def test_adjacent_slots_of_two_calendars_are_two_events() -> None:
    given = [created(calendars=["first", "maint"], **RUN_ALL)]
    events = wake(given, cmd(Wake, at(40, seconds=1)), {"maint": MAINT, "first": FIRST})
    assert_then(
        events,
        [
            ("SlotsMissed", {"reason": "calendar", "calendar": "first", "first_slot": at(10), "count": 2}),
            ("SlotsMissed", {"reason": "calendar", "calendar": "maint", "first_slot": at(30), "count": 1}),
            run(40),
        ],
    )


def test_run_once_runs_the_latest_slot_not_excluded() -> None:
    # Late slots 10..30; 20 and 30 excluded: run_once runs 10, the latest one left.
    events = wake([created(calendars=["maint"])], cmd(Wake, at(35)), {"maint": MAINT})
    assert_then(events, [run(10), ("SlotsMissed", {"reason": "calendar", "count": 2})])


def test_on_time_excluded_slot_is_missed_and_the_schedule_moves_on() -> None:
    given = [created(calendars=["maint"]), cmd(Wake, at(10))]
    events = wake(given, cmd(Wake, at(20)), {"maint": MAINT})
    assert_then(events, [("SlotsMissed", {"reason": "calendar", "calendar": "maint", "next_slot": at(30)})])


def test_without_calendars_or_with_an_unknown_name_slots_run() -> None:
    given = [created(calendars=["maint"], overlap="allow_all"), cmd(Wake, at(10))]
    assert_then(wake(given, cmd(Wake, at(20)), {}), [run(20)])
    assert_then(wake(given, cmd(Wake, at(20)), {"other": MAINT.model_copy(update={"name": "other"})}), [run(20)])
    # A calendar the task does not list is not applied.
    given = [created(overlap="allow_all"), cmd(Wake, at(10))]
    assert_then(wake(given, cmd(Wake, at(20)), {"maint": MAINT}), [run(20)])


def test_manual_triggers_ignore_calendars() -> None:
    given = [created(calendars=["maint"])]
    events = wake(given, cmd(TriggerTask, at(25), trigger_id="t1"), {"maint": MAINT})
    assert_then(events, [("ExecutionDispatched", {"reason": "manual"})])


def test_excluded_one_shot_completes() -> None:
    once = {"schedule": {"kind": "once", "at": at(20).isoformat()}, "calendars": ["maint"]}
    given = [e(TaskCreated, definition=definition(**once), revision=1, next_slot=at(20), next_fire_at=at(20))]
    events = wake(given, cmd(Wake, at(20)), {"maint": MAINT})
    assert_then(events, [("SlotsMissed", {"reason": "calendar"}), ("TaskCompleted", {"reason": "one_shot"})])


def test_task_definition_calendars_are_checked() -> None:
    with pytest.raises(ValidationError, match="twice"):
        task(calendars=["a", "a"])
    with pytest.raises(ValidationError) as info:
        task(calendars=["Bad Name"])
    assert info.value.errors()[0]["loc"] == ("calendars", 0)


def test_every_slot_excluded_answers_undecided_beyond_its_budget() -> None:
    half_hourly = task(schedule={"kind": "cron", "expression": "*/30 * * * *"})
    windows = cal(
        rules=[{"cron": "0 * * * *", "duration_seconds": 1800}, {"cron": "30 * * * *", "duration_seconds": 1800}]
    )
    proven, spent = every_slot_excluded(half_hourly, [windows], NOW, YEAR, anchor=NOW, max_steps=100)
    assert proven is None and 100 <= spent <= 102  # a step may finish past the budget by its rules
    assert not excludes_every_slot(half_hourly, [windows], NOW, YEAR, anchor=NOW, max_steps=100)
    # Within a day the same is proven: 48 windows, and the cron matches their rules computed.
    day = NOW + timedelta(days=1)
    proven, spent = every_slot_excluded(half_hourly, [windows], NOW, day, anchor=NOW, max_steps=1000)
    assert proven is True and 48 < spent < 200
    assert every_slot_excluded(half_hourly, [CHRISTMAS], NOW, day, anchor=NOW) == (False, 1)


def test_the_check_budget_counts_the_cron_matches_of_every_rule() -> None:
    # An attack on the API's check: calendars of 50 windowed every-second rules each. Every
    # exclusion stepped over computed a match of each rule: with a budget counted in exclusions
    # alone, 3,000 of them cost 10 s of CPU under 4 calendars (a minute under 20).
    rules = [{"cron": "* * * * * *", "duration_seconds": 1}] * 50
    calendars = [cal(f"c{i}", rules=rules) for i in range(4)]
    every_second = task(schedule={"kind": "cron", "expression": "* * * * * *"})
    # The work is bounded by the budget itself (counted, not timed: a timed bound flakes on a
    # busy machine): the steps spent never pass it by more than one round of rule matches.
    proven, spent = every_slot_excluded(every_second, calendars, NOW, YEAR, anchor=NOW, max_steps=3000)
    assert proven is None and spent < 3000 + 4 * 50 + 1
    assert not excludes_all_time(calendars[0], NOW, YEAR, max_steps=3000)


@pytest.mark.parametrize("name", ["", "Upper", "-lead", "a b", "abc\n", "x" * 64, "é"])
def test_calendar_names_are_checked(name: str) -> None:
    with pytest.raises(ValidationError):
        Calendar(name=name)
    with pytest.raises(ValidationError):
        task(calendars=[name])


@pytest.mark.parametrize(
    ("calendar", "expected"),
    [
        (cal(rules=[{"cron": "* * * * *"}]), True),
        (cal(rules=[{"cron": "0 0 * * *", "duration_seconds": 86400}]), True),  # back-to-back daily windows
        (cal(rules=[{"cron": "0 0 * * *", "duration_seconds": 86399}]), False),  # one second a day is open
        (cal(rules=[{"cron": "0 0 * * 1-5"}, {"cron": "0 0 * * sat,sun"}]), True),
        (cal(rules=[{"cron": "0 0 * * 1-5"}]), False),
        (cal(ranges=[{"start": "2025-01-01", "end": "2028-01-01"}]), True),
        (CHRISTMAS, False),
    ],
)
def test_excludes_all_time(calendar: Calendar, expected: bool) -> None:
    assert excludes_all_time(calendar, NOW, YEAR) is expected


# Skipping ahead to exclusion_end is what proves "every slot excluded" (a 422): it must never
# pass an instant that is open.
ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata"]
RULES = [
    {"cron": "0 2 * * sun", "duration_seconds": 7200},
    {"cron": "30 1 * * *", "duration_seconds": 3600},
    {"cron": "0 0 * * sat,sun"},
    {"cron": "*/20 * * * *", "duration_seconds": 600},
    {"cron": "0 0 1 * *", "duration_seconds": 3 * 86400},
]


@given(
    zone=st.sampled_from(ZONES),
    rules=st.lists(st.sampled_from(RULES), max_size=3),
    dates=st.lists(st.dates(date(2026, 1, 1), date(2026, 12, 31)), max_size=5),
    slot=st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)),
    fractions=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=5),
)
@settings(max_examples=300, deadline=None)
def test_every_instant_before_the_exclusion_end_is_excluded(
    zone: str, rules: list[dict[str, Any]], dates: list[date], slot: datetime, fractions: list[float]
) -> None:
    calendar = cal(timezone=zone, rules=rules, dates=dates)
    end = exclusion_end(calendar, slot)
    assert (end is None) == (excluded_by([calendar], slot) is None)
    if end is None:
        return
    assert end > slot
    for fraction in fractions:
        instant = min(slot + (end - slot) * fraction, end - timedelta(microseconds=1))  # rounding
        assert excluded_by([calendar], instant) == "hol", (instant, end)


@given(
    zone=st.sampled_from(ZONES),
    rules=st.lists(st.sampled_from(RULES), max_size=3),
    start=st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 29), timezones=st.just(UTC)),
    every=st.sampled_from([300, 600, 3600, 5400]),
)
@settings(max_examples=100, deadline=None)
def test_excludes_every_slot_agrees_with_checking_each_slot(
    zone: str, rules: list[dict[str, Any]], start: datetime, every: int
) -> None:
    calendar = cal(timezone=zone, rules=rules)
    definition_ = task(schedule={"kind": "interval", "every_seconds": every, "anchor": start.isoformat()})
    until = start + timedelta(hours=6)
    slots = [start + timedelta(seconds=every * k) for k in range(1, 6 * 3600 // every + 1)]
    brute = all(excluded_by([calendar], s) is not None for s in slots)
    assert excludes_every_slot(definition_, [calendar], start, until, anchor=start) is brute


@given(
    zone=st.sampled_from(ZONES),
    rules=st.lists(st.sampled_from(RULES), min_size=1, max_size=3),
    start=st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 1), timezones=st.just(UTC)),
    steps=st.lists(st.integers(0, 40 * 86400), min_size=1, max_size=40),
)
@settings(max_examples=200, deadline=None)
def test_prepared_exclusions_asked_in_order_agree_with_asking_afresh(
    zone: str, rules: list[dict[str, Any]], start: datetime, steps: list[int]
) -> None:
    # Ascending instants mostly (as a wake asks), with one step back in the middle.
    instants = list(accumulate((timedelta(seconds=s) for s in steps), initial=start))
    instants.insert(len(instants) // 2, start)
    calendar = cal(timezone=zone, rules=rules, ranges=[{"start": "2026-03-01T10:00", "end": "2026-03-20"}])
    exclusions = Exclusions([calendar])
    for instant in instants:
        assert exclusions.excluded_by(instant) == excluded_by([calendar], instant), instant
        assert exclusions.end(instant) == exclusion_end(calendar, instant), instant


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        # Ending in year 9999 on a wall clock twelve hours behind UTC: the decider's
        # exclusion end overflowed `datetime` and crashed the worker on every such slot.
        ({"timezone": "Etc/GMT+12", "ranges": [{"start": "2027-01-01", "end": "9999-12-31T23:00:00"}]},
         ("ranges", 0, "end")),
        ({"ranges": [{"start": "0001-01-01", "end": "2027-01-01"}]}, ("ranges", 0, "start")),
        ({"dates": ["9999-12-31"]}, ("dates",)),
    ],
)  # fmt: skip
def test_calendar_dates_and_ranges_stay_within_the_wire_years(body: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        CalendarBody.model_validate(body)
    assert info.value.errors()[0]["loc"] == loc
    assert "years 1971 to 2998" in info.value.errors()[0]["msg"]
    # At the bounds the wall-clock arithmetic holds in every zone.
    edge = cal(timezone="Etc/GMT+12", ranges=[{"start": "2020-01-01", "end": "2998-12-31T23:59:59"}])
    assert excluded_by([edge], datetime(2998, 12, 31, 12, tzinfo=UTC)) == "hol"
    assert excludes_all_time(edge, NOW, YEAR)
