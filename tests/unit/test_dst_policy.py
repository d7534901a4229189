"""DST policy per cron schedule (issue 12): each policy on the spring and fall transitions of
three zones, for a daily cron at a time inside the gap or overlap, an hourly and an
every-minute cron; occurrences() agreeing with fire_times(); what the wire model rejects.

Transitions used (2026), UTC instant T and the local wall times affected:

* America/New_York: spring 03-08 T=07:00Z, 02:00-02:59 do not exist; fall 11-01 T=06:00Z,
  01:00-01:59 happen twice (05:00-05:59Z EDT, then 06:00-06:59Z EST).
* Europe/Berlin: spring 03-29 T=01:00Z, 02:00-02:59 do not exist; fall 10-25 T=01:00Z,
  02:00-02:59 happen twice (00:00-00:59Z CEST, then 01:00-01:59Z CET).
* Australia/Lord_Howe (30-minute shift): fall 04-05 T=04-04 15:00Z, 01:30-01:59 happen twice
  (14:30-14:59Z at +11, then 15:00-15:29Z at +10:30); spring 10-04 T=10-03 15:30Z,
  02:00-02:29 do not exist (shifted: 15:30-15:59Z, which 02:30-02:59 +11 are anyway).

Every expected value below is written out from those facts, not computed.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scheduler.schedule import Occurrence, fire_times, jitter_offset, next_fire, occurrences
from schemas.cron import repeat_rule, repeated_windows, shortest_gap
from schemas.specs import TOLERANT, CronSchedule, IntervalSchedule, OnceSchedule, TaskDefinition

NY, BERLIN, LORD_HOWE = "America/New_York", "Europe/Berlin", "Australia/Lord_Howe"
ANCHOR = datetime(2020, 1, 1, tzinfo=UTC)
DAILY = {
    NY: ("30 2 * * *", "30 1 * * *"),
    BERLIN: ("30 2 * * *", "30 2 * * *"),
    LORD_HOWE: ("15 2 * * *", "45 1 * * *"),
}
"""Per zone: a daily cron inside the spring gap, and one inside the fall overlap."""
HOURLY, MINUTELY = "0 * * * *", "* * * * *"
SPRING_DAY = {NY: "2026-03-08", BERLIN: "2026-03-29", LORD_HOWE: "2026-10-04"}
FALL_DAY = {NY: "2026-11-01", BERLIN: "2026-10-25", LORD_HOWE: "2026-04-05"}

Window = tuple[str, list[str]]
"""(after, the next slots strictly after it), UTC, as ISO text without the zone."""
Expected = tuple[int, list[Window]]
"""(slots in the local day, windows around the transition)."""


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local_day(day: str, zone: str) -> tuple[datetime, datetime]:
    """The local calendar day as a UTC range [start, end)."""
    start = datetime.fromisoformat(day)
    tz = ZoneInfo(zone)
    return (
        start.replace(tzinfo=tz).astimezone(UTC),
        (start + timedelta(days=1)).replace(tzinfo=tz).astimezone(UTC),
    )


# ---------------------------------------------------------------------------------------------
# Spring forward: dst_gap decides; dst_repeat has no effect (the values of "shift" apply)
# ---------------------------------------------------------------------------------------------

SPRING: dict[tuple[str, str], dict[str, Expected]] = {
    (NY, "30 2 * * *"): {
        "shift": (1, [("2026-03-08T05:00", ["2026-03-08T07:30", "2026-03-09T06:30"])]),  # 03:30 EDT
        "skip": (0, [("2026-03-08T05:00", ["2026-03-09T06:30"])]),
    },
    (NY, HOURLY): {
        # 02:00 becomes 03:00 (07:00Z), which fires once.
        "shift": (23, [("2026-03-08T05:59", ["2026-03-08T06:00", "2026-03-08T07:00", "2026-03-08T08:00"])]),
        "skip": (23, [("2026-03-08T05:59", ["2026-03-08T06:00", "2026-03-08T07:00", "2026-03-08T08:00"])]),
    },
    (NY, MINUTELY): {
        "shift": (1380, [("2026-03-08T06:58", ["2026-03-08T06:59", "2026-03-08T07:00", "2026-03-08T07:01"])]),
        "skip": (1380, [("2026-03-08T06:58", ["2026-03-08T06:59", "2026-03-08T07:00", "2026-03-08T07:01"])]),
    },
    (BERLIN, "30 2 * * *"): {
        "shift": (1, [("2026-03-28T23:00", ["2026-03-29T01:30", "2026-03-30T00:30"])]),  # 03:30 CEST
        "skip": (0, [("2026-03-28T23:00", ["2026-03-30T00:30"])]),
    },
    (BERLIN, HOURLY): {
        "shift": (23, [("2026-03-28T23:59", ["2026-03-29T00:00", "2026-03-29T01:00", "2026-03-29T02:00"])]),
        "skip": (23, [("2026-03-28T23:59", ["2026-03-29T00:00", "2026-03-29T01:00", "2026-03-29T02:00"])]),
    },
    (BERLIN, MINUTELY): {
        "shift": (1380, [("2026-03-29T00:58", ["2026-03-29T00:59", "2026-03-29T01:00", "2026-03-29T01:01"])]),
        "skip": (1380, [("2026-03-29T00:58", ["2026-03-29T00:59", "2026-03-29T01:00", "2026-03-29T01:01"])]),
    },
    (LORD_HOWE, "15 2 * * *"): {
        "shift": (1, [("2026-10-03T13:00", ["2026-10-03T15:45", "2026-10-04T15:15"])]),  # 02:45 +11
        "skip": (0, [("2026-10-03T13:00", ["2026-10-04T15:15"])]),
    },
    (LORD_HOWE, HOURLY): {
        # The missing 02:00 fires at 02:30 +11 (15:30Z): 24 slots in a 23.5-hour day.
        "shift": (24, [("2026-10-03T14:29", ["2026-10-03T14:30", "2026-10-03T15:30", "2026-10-03T16:00"])]),
        "skip": (23, [("2026-10-03T14:29", ["2026-10-03T14:30", "2026-10-03T16:00", "2026-10-03T17:00"])]),
    },
    (LORD_HOWE, MINUTELY): {
        # 02:00-02:29 shift onto 02:30-02:59, which fire anyway: 1,410 either way.
        "shift": (1410, [("2026-10-03T15:28", ["2026-10-03T15:29", "2026-10-03T15:30", "2026-10-03T15:31"])]),
        "skip": (1410, [("2026-10-03T15:28", ["2026-10-03T15:29", "2026-10-03T15:30", "2026-10-03T15:31"])]),
    },
}

# ---------------------------------------------------------------------------------------------
# Fall back: dst_repeat decides; dst_gap has no effect (the values of "auto" apply)
# ---------------------------------------------------------------------------------------------

_NY_FIRST = ("2026-11-01T04:00", ["2026-11-01T05:30", "2026-11-02T06:30"])
_BERLIN_FIRST = ("2026-10-24T22:00", ["2026-10-25T00:30", "2026-10-26T01:30"])
_LH_FIRST = ("2026-04-04T13:00", ["2026-04-04T14:45", "2026-04-05T15:15"])

FALL: dict[tuple[str, str], dict[str, Expected]] = {
    (NY, "30 1 * * *"): {
        "first": (1, [_NY_FIRST]),  # 01:30 EDT
        "second": (1, [("2026-11-01T04:00", ["2026-11-01T06:30", "2026-11-02T06:30"])]),  # 01:30 EST
        "both": (2, [("2026-11-01T04:00", ["2026-11-01T05:30", "2026-11-01T06:30", "2026-11-02T06:30"])]),
        "auto": (1, [_NY_FIRST]),  # a fixed hour: first
    },
    (NY, HOURLY): {
        "first": (24, [("2026-11-01T03:59", ["2026-11-01T04:00", "2026-11-01T05:00", "2026-11-01T07:00"])]),
        "second": (24, [("2026-11-01T03:59", ["2026-11-01T04:00", "2026-11-01T06:00", "2026-11-01T07:00"])]),
        "both": (
            25,
            [("2026-11-01T03:59", ["2026-11-01T04:00", "2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00"])],
        ),
        "auto": (
            25,
            [("2026-11-01T03:59", ["2026-11-01T04:00", "2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00"])],
        ),
    },
    (NY, MINUTELY): {
        "first": (
            1440,
            [
                ("2026-11-01T04:58", ["2026-11-01T04:59", "2026-11-01T05:00", "2026-11-01T05:01"]),
                ("2026-11-01T05:58", ["2026-11-01T05:59", "2026-11-01T07:00", "2026-11-01T07:01"]),
                ("2026-11-01T06:58", ["2026-11-01T07:00", "2026-11-01T07:01", "2026-11-01T07:02"]),
            ],
        ),
        "second": (
            1440,
            [
                ("2026-11-01T04:58", ["2026-11-01T04:59", "2026-11-01T06:00", "2026-11-01T06:01"]),
                ("2026-11-01T05:58", ["2026-11-01T06:00", "2026-11-01T06:01", "2026-11-01T06:02"]),
                ("2026-11-01T06:58", ["2026-11-01T06:59", "2026-11-01T07:00", "2026-11-01T07:01"]),
            ],
        ),
        "both": (
            1500,
            [
                ("2026-11-01T04:58", ["2026-11-01T04:59", "2026-11-01T05:00", "2026-11-01T05:01"]),
                ("2026-11-01T05:58", ["2026-11-01T05:59", "2026-11-01T06:00", "2026-11-01T06:01"]),
                ("2026-11-01T06:58", ["2026-11-01T06:59", "2026-11-01T07:00", "2026-11-01T07:01"]),
            ],
        ),
        "auto": (
            1500,
            [
                ("2026-11-01T04:58", ["2026-11-01T04:59", "2026-11-01T05:00", "2026-11-01T05:01"]),
                ("2026-11-01T05:58", ["2026-11-01T05:59", "2026-11-01T06:00", "2026-11-01T06:01"]),
                ("2026-11-01T06:58", ["2026-11-01T06:59", "2026-11-01T07:00", "2026-11-01T07:01"]),
            ],
        ),
    },
    (BERLIN, "30 2 * * *"): {
        "first": (1, [_BERLIN_FIRST]),  # 02:30 CEST
        "second": (1, [("2026-10-24T22:00", ["2026-10-25T01:30", "2026-10-26T01:30"])]),  # 02:30 CET
        "both": (2, [("2026-10-24T22:00", ["2026-10-25T00:30", "2026-10-25T01:30", "2026-10-26T01:30"])]),
        "auto": (1, [_BERLIN_FIRST]),
    },
    (BERLIN, HOURLY): {
        "first": (24, [("2026-10-24T22:59", ["2026-10-24T23:00", "2026-10-25T00:00", "2026-10-25T02:00"])]),
        "second": (24, [("2026-10-24T22:59", ["2026-10-24T23:00", "2026-10-25T01:00", "2026-10-25T02:00"])]),
        "both": (
            25,
            [("2026-10-24T22:59", ["2026-10-24T23:00", "2026-10-25T00:00", "2026-10-25T01:00", "2026-10-25T02:00"])],
        ),
        "auto": (
            25,
            [("2026-10-24T22:59", ["2026-10-24T23:00", "2026-10-25T00:00", "2026-10-25T01:00", "2026-10-25T02:00"])],
        ),
    },
    (BERLIN, MINUTELY): {
        "first": (
            1440,
            [
                ("2026-10-24T23:58", ["2026-10-24T23:59", "2026-10-25T00:00", "2026-10-25T00:01"]),
                ("2026-10-25T00:58", ["2026-10-25T00:59", "2026-10-25T02:00", "2026-10-25T02:01"]),
                ("2026-10-25T01:58", ["2026-10-25T02:00", "2026-10-25T02:01", "2026-10-25T02:02"]),
            ],
        ),
        "second": (
            1440,
            [
                ("2026-10-24T23:58", ["2026-10-24T23:59", "2026-10-25T01:00", "2026-10-25T01:01"]),
                ("2026-10-25T00:58", ["2026-10-25T01:00", "2026-10-25T01:01", "2026-10-25T01:02"]),
                ("2026-10-25T01:58", ["2026-10-25T01:59", "2026-10-25T02:00", "2026-10-25T02:01"]),
            ],
        ),
        "both": (
            1500,
            [
                ("2026-10-24T23:58", ["2026-10-24T23:59", "2026-10-25T00:00", "2026-10-25T00:01"]),
                ("2026-10-25T00:58", ["2026-10-25T00:59", "2026-10-25T01:00", "2026-10-25T01:01"]),
                ("2026-10-25T01:58", ["2026-10-25T01:59", "2026-10-25T02:00", "2026-10-25T02:01"]),
            ],
        ),
        "auto": (
            1500,
            [
                ("2026-10-24T23:58", ["2026-10-24T23:59", "2026-10-25T00:00", "2026-10-25T00:01"]),
                ("2026-10-25T00:58", ["2026-10-25T00:59", "2026-10-25T01:00", "2026-10-25T01:01"]),
                ("2026-10-25T01:58", ["2026-10-25T01:59", "2026-10-25T02:00", "2026-10-25T02:01"]),
            ],
        ),
    },
    (LORD_HOWE, "45 1 * * *"): {
        "first": (1, [_LH_FIRST]),  # 01:45 +11
        "second": (1, [("2026-04-04T13:00", ["2026-04-04T15:15", "2026-04-05T15:15"])]),  # 01:45 +10:30
        "both": (2, [("2026-04-04T13:00", ["2026-04-04T14:45", "2026-04-04T15:15", "2026-04-05T15:15"])]),
        "auto": (1, [_LH_FIRST]),
    },
    (LORD_HOWE, HOURLY): {
        # 01:30-01:59 repeat, but no whole hour is in them: 24 slots in a 24.5-hour day.
        policy: (24, [("2026-04-04T13:59", ["2026-04-04T14:00", "2026-04-04T15:30", "2026-04-04T16:30"])])
        for policy in ("first", "second", "both", "auto")
    },
    (LORD_HOWE, MINUTELY): {
        "first": (
            1440,
            [
                ("2026-04-04T14:28", ["2026-04-04T14:29", "2026-04-04T14:30", "2026-04-04T14:31"]),
                ("2026-04-04T14:58", ["2026-04-04T14:59", "2026-04-04T15:30", "2026-04-04T15:31"]),
                ("2026-04-04T15:28", ["2026-04-04T15:30", "2026-04-04T15:31", "2026-04-04T15:32"]),
            ],
        ),
        "second": (
            1440,
            [
                ("2026-04-04T14:28", ["2026-04-04T14:29", "2026-04-04T15:00", "2026-04-04T15:01"]),
                ("2026-04-04T14:58", ["2026-04-04T15:00", "2026-04-04T15:01", "2026-04-04T15:02"]),
                ("2026-04-04T15:28", ["2026-04-04T15:29", "2026-04-04T15:30", "2026-04-04T15:31"]),
            ],
        ),
        "both": (
            1470,
            [
                ("2026-04-04T14:28", ["2026-04-04T14:29", "2026-04-04T14:30", "2026-04-04T14:31"]),
                ("2026-04-04T14:58", ["2026-04-04T14:59", "2026-04-04T15:00", "2026-04-04T15:01"]),
                ("2026-04-04T15:28", ["2026-04-04T15:29", "2026-04-04T15:30", "2026-04-04T15:31"]),
            ],
        ),
        "auto": (
            1470,
            [
                ("2026-04-04T14:28", ["2026-04-04T14:29", "2026-04-04T14:30", "2026-04-04T14:31"]),
                ("2026-04-04T14:58", ["2026-04-04T14:59", "2026-04-04T15:00", "2026-04-04T15:01"]),
                ("2026-04-04T15:28", ["2026-04-04T15:29", "2026-04-04T15:30", "2026-04-04T15:31"]),
            ],
        ),
    },
}


def _cases() -> list[Any]:
    """Every policy on every (zone, transition, cron): the acting policy's own values, and the
    other field's policies with the default's values (they have no effect on that transition)."""
    cases = []
    for (zone, expression), by_policy in SPRING.items():
        for gap in ("shift", "skip"):
            cases.append(pytest.param(zone, expression, {"dst_gap": gap}, SPRING_DAY[zone], *by_policy[gap]))
        for repeat in ("auto", "first", "second", "both"):
            fields = {"dst_repeat": repeat}
            cases.append(pytest.param(zone, expression, fields, SPRING_DAY[zone], *by_policy["shift"]))
    for (zone, expression), by_policy in FALL.items():
        for repeat in ("auto", "first", "second", "both"):
            cases.append(pytest.param(zone, expression, {"dst_repeat": repeat}, FALL_DAY[zone], *by_policy[repeat]))
        for gap in ("shift", "skip"):
            cases.append(pytest.param(zone, expression, {"dst_gap": gap}, FALL_DAY[zone], *by_policy["auto"]))
    return cases


CASES = _cases()


def test_the_table_covers_every_policy_zone_transition_and_kind() -> None:
    assert len(CASES) == 3 * 2 * 3 * 6
    for table in (SPRING, FALL):
        for zone in (NY, BERLIN, LORD_HOWE):
            assert {e for z, e in table if z == zone} >= {HOURLY, MINUTELY}
            assert {e for z, e in table if z == zone} & set(DAILY[zone])


@pytest.mark.parametrize(("zone", "expression", "policy", "day", "count", "windows"), CASES)
def test_dst_policy_table(
    zone: str, expression: str, policy: dict[str, str], day: str, count: int, windows: list[Window]
) -> None:
    schedule = CronSchedule(expression=expression, timezone=zone, **policy)  # type: ignore[arg-type]
    start, end = local_day(day, zone)
    slots = fire_times(schedule, start - timedelta(microseconds=1), 1600, anchor=ANCHOR)
    assert len([s for s in slots if s < end]) == count
    for after, expected in windows:
        assert fire_times(schedule, utc(after), len(expected), anchor=ANCHOR) == [utc(x) for x in expected]
    # The occurrence log's fired slots are the same, and every slot of the day is in it.
    fired = [o.slot for o in occurrences(schedule, start - timedelta(microseconds=1), end, anchor=ANCHOR)]
    assert [s for s in fired if s is not None and s < end] == [s for s in slots if s < end]


# ---------------------------------------------------------------------------------------------
# occurrences(): what DST did to each wall time, as the occurrence log shows it
# ---------------------------------------------------------------------------------------------


def _occ(wall: str, slot: str | None, dst: str | None) -> Occurrence:
    return Occurrence(datetime.fromisoformat(wall), None if slot is None else utc(slot), dst)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("expression", "policy", "after", "until", "expected"),
    [
        pytest.param(
            "30 1 * * *",
            {"dst_repeat": "first"},
            "2026-11-01T04:00",
            "2026-11-01T08:00",
            [_occ("2026-11-01T01:30", "2026-11-01T05:30", "first"), _occ("2026-11-01T01:30", None, "second")],
            id="first",
        ),
        pytest.param(
            "30 1 * * *",
            {"dst_repeat": "second"},
            "2026-11-01T04:00",
            "2026-11-01T08:00",
            [_occ("2026-11-01T01:30", None, "first"), _occ("2026-11-01T01:30", "2026-11-01T06:30", "second")],
            id="second",
        ),
        pytest.param(
            "30 1 * * *",
            {"dst_repeat": "both"},
            "2026-11-01T04:00",
            "2026-11-01T08:00",
            [
                _occ("2026-11-01T01:30", "2026-11-01T05:30", "first"),
                _occ("2026-11-01T01:30", "2026-11-01T06:30", "second"),
            ],
            id="both",
        ),
        pytest.param(
            "30 2 * * *",
            {"dst_gap": "shift"},
            "2026-03-08T04:00",
            "2026-03-09T07:00",
            [
                _occ("2026-03-08T02:30", "2026-03-08T07:30", "shifted"),
                _occ("2026-03-09T02:30", "2026-03-09T06:30", None),
            ],
            id="shifted",
        ),
        pytest.param(
            "30 2 * * *",
            {"dst_gap": "skip"},
            "2026-03-08T04:00",
            "2026-03-09T07:00",
            [_occ("2026-03-08T02:30", None, "skipped"), _occ("2026-03-09T02:30", "2026-03-09T06:30", None)],
            id="skipped",
        ),
        pytest.param(
            # 02:30 shifts onto 03:30, which fires anyway: one slot, listed under 03:30.
            "30 2,3 * * *",
            {"dst_gap": "shift"},
            "2026-03-08T06:00",
            "2026-03-08T08:00",
            [_occ("2026-03-08T03:30", "2026-03-08T07:30", None), _occ("2026-03-08T02:30", None, "shifted")],
            id="shifted-onto-another-slot",
        ),
    ],
)
def test_occurrences_say_what_dst_did(
    expression: str, policy: dict[str, str], after: str, until: str, expected: list[Occurrence]
) -> None:
    schedule = CronSchedule(expression=expression, timezone=NY, **policy)  # type: ignore[arg-type]
    assert list(occurrences(schedule, utc(after), utc(until), anchor=ANCHOR)) == expected


def test_occurrences_of_interval_and_once_have_no_wall_time() -> None:
    interval = IntervalSchedule(every_seconds=3600)
    got = list(occurrences(interval, utc("2026-11-01T04:30"), utc("2026-11-01T07:00"), anchor=utc("2026-01-01T00:00")))
    assert got == [Occurrence(None, utc(f"2026-11-01T0{h}:00"), None) for h in (5, 6, 7)]
    once = OnceSchedule(at=utc("2026-11-01T05:30"))
    assert list(occurrences(once, utc("2026-11-01T00:00"), utc("2026-11-02T00:00"), anchor=ANCHOR)) == [
        Occurrence(None, utc("2026-11-01T05:30"), None)
    ]


TRANSITIONS = {
    NY: ["2026-03-08T07:00", "2026-11-01T06:00"],
    BERLIN: ["2026-03-29T01:00", "2026-10-25T01:00"],
    LORD_HOWE: ["2026-04-04T15:00", "2026-10-03T15:30"],
    "Antarctica/Troll": ["2026-03-29T01:00", "2026-10-25T01:00"],  # a two-hour shift
    "Asia/Kolkata": ["2026-06-15T00:00"],  # no daylight saving
}
"""2026 transitions (UTC); the searches below start within a few hours of one."""
_CRON_SCHEDULES = st.builds(
    lambda second, minute, hour, zone, gap, repeat: CronSchedule(
        expression=f"{second} {minute} {hour} * * *" if second else f"{minute} {hour} * * *",
        timezone=zone,
        dst_gap=gap,
        dst_repeat=repeat,
    ),
    st.sampled_from([None, None, "0,30", "*/20"]),
    st.sampled_from(["*", "*/15", "0", "30", "0,30", "5-10", "59", "*/7", "10,40"]),
    st.sampled_from(["*", "0", "1", "2", "3", "1-3", "*/2", "2,14", "0-23"]),
    st.sampled_from(sorted(TRANSITIONS)),
    st.sampled_from(["shift", "skip"]),
    st.sampled_from(["auto", "first", "second", "both"]),
)


@st.composite
def near_a_transition(draw: st.DrawFn) -> tuple[CronSchedule, datetime]:
    """A schedule and a start within three hours of one of its zone's transitions, to the
    microsecond, so searches also begin mid-minute inside a gap or a repeat."""
    schedule = draw(_CRON_SCHEDULES)
    transition = utc(draw(st.sampled_from(TRANSITIONS[schedule.timezone])))
    micros = draw(st.integers(min_value=-3 * 3600 * 1_000_000, max_value=3 * 3600 * 1_000_000))
    return schedule, transition + timedelta(microseconds=micros)


@settings(max_examples=150, deadline=None)
@given(near_a_transition(), st.integers(min_value=1, max_value=6 * 60))
def test_occurrences_fire_exactly_what_fire_times_fires(case: tuple[CronSchedule, datetime], minutes: int) -> None:
    """The non-None slots of occurrences() are fire_times() over the same range, in order;
    each one that does not fire says why."""
    schedule, after = case
    until = after + timedelta(minutes=minutes)
    listed = list(occurrences(schedule, after, until, anchor=ANCHOR))
    slots = [o.slot for o in listed if o.slot is not None]
    expected: list[datetime] = []
    current = after
    while (slot := next_fire(schedule, current, anchor=ANCHOR)) is not None and slot <= until:
        assert slot > current
        expected.append(slot)
        current = slot
    assert slots == expected
    for occurrence in listed:
        assert occurrence.wall is not None
        if occurrence.slot is None:
            assert occurrence.dst is not None


@settings(max_examples=150, deadline=None)
@given(near_a_transition())
def test_next_fire_matches_a_brute_force_reading_of_the_policy(case: tuple[CronSchedule, datetime]) -> None:
    """Over six hours around a transition: the slots are what checking every wall-clock second
    of the window against the expression and the policy (PEP 495 folds) gives."""
    schedule, after = case
    until = after + timedelta(hours=6)
    zone = ZoneInfo(schedule.timezone)
    fields = schedule.expression.split()
    second_f, minute_f, hour_f = fields[:3] if len(fields) == 6 else ("0", *fields[:2])
    seconds, minutes_, hours = (_field(f, n) for f, n in ((second_f, 60), (minute_f, 60), (hour_f, 24)))
    repeat = schedule.dst_repeat
    if repeat == "auto":
        repeat = "both" if hours == set(range(24)) else "first"
    expected: set[datetime] = set()
    wall = after.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0) - timedelta(hours=4)
    stop = until.astimezone(zone).replace(tzinfo=None) + timedelta(hours=4)
    while wall <= stop:
        if wall.second in seconds and wall.minute in minutes_ and wall.hour in hours:
            first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
            second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
            if first == second:
                fired = [first]
            elif first > second:  # a gap: fold 0 reads it with the offset before, shifted forward
                fired = [first] if schedule.dst_gap == "shift" else []
            else:
                fired = {"first": [first], "second": [second], "both": [first, second]}[repeat]
            expected.update(f for f in fired if after < f <= until)
        wall += timedelta(seconds=1 if len(fields) == 6 else 60)
    got = []
    current = after
    while (slot := next_fire(schedule, current, anchor=ANCHOR)) is not None and slot <= until:
        got.append(slot)
        current = slot
    assert got == sorted(expected)


def _field(text: str, size: int) -> set[int]:
    """The values of one generated cron field (``*``, ``*/n``, ``a-b``, lists)."""
    values: set[int] = set()
    for part in text.split(","):
        body, _, step = part.partition("/")
        low, high = (0, size - 1) if body == "*" else (int(body.split("-")[0]), int(body.split("-")[-1]))
        values.update(range(low, high + 1, int(step or 1)))
    return values


# ---------------------------------------------------------------------------------------------
# auto, the jitter bound, and what the wire model rejects
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "rule"),
    [
        ("* * * * *", "both"),
        ("0 * * * *", "both"),
        ("*/15 */1 * * *", "both"),
        ("0 0-23 * * 1-5", "both"),
        ("0 0 * * * *", "both"),  # 6 fields: the hour is the third
        ("0 */2 * * *", "first"),
        ("30 1 * * *", "first"),
        ("0 1-3 * * *", "first"),
    ],
)
def test_auto_is_both_only_when_the_hour_field_is_every_hour(expression: str, rule: str) -> None:
    assert repeat_rule(expression, "auto") == rule
    assert repeat_rule(expression, "second") == "second"


def test_repeated_windows_of_the_zones() -> None:
    assert repeated_windows(NY) == ((3600, 3600),)  # 01:00-01:59
    assert repeated_windows(BERLIN) == ((7200, 3600),)  # 02:00-02:59
    assert repeated_windows(LORD_HOWE) == ((5400, 1800),)  # 01:30-01:59
    assert repeated_windows("Asia/Kolkata") == ()


JITTER_CASES = [
    # (expression, zone, dst_repeat, largest accepted jitter, smallest rejected jitter)
    pytest.param("30 1 * * *", NY, "both", 3599, 3600, id="daily-both-one-hour-apart"),
    pytest.param("30 1 * * *", NY, "first", 86399, 86400, id="daily-first-a-day-apart"),
    pytest.param("30 1 * * *", NY, "auto", 86399, 86400, id="daily-auto-is-first"),
    pytest.param("45 1 * * *", LORD_HOWE, "both", 1799, 1800, id="lord-howe-half-hour-apart"),
    pytest.param("0,50 1 * * *", NY, "both", 599, 600, id="01:50-EDT-then-01:00-EST"),
    pytest.param("0,50 1 * * *", BERLIN, "both", 2999, 3000, id="not-in-berlins-repeated-hour"),
    pytest.param("0 * * * *", NY, "auto", 3599, 3600, id="hourly-auto"),
    pytest.param("*/7 * * * *", NY, "auto", 239, 240, id="01:56-EDT-then-01:00-EST"),
    pytest.param("30 1 * * *", "Asia/Kolkata", "both", 86399, 86400, id="no-dst"),
]


@pytest.mark.parametrize(("expression", "zone", "repeat", "accepted", "rejected"), JITTER_CASES)
def test_jitter_bound_counts_both_occurrences(
    expression: str, zone: str, repeat: str, accepted: float, rejected: float
) -> None:
    base: dict[str, Any] = {"name": "t", "work": {"kind": "handler", "name": "h"}}
    schedule = {"kind": "cron", "expression": expression, "timezone": zone, "dst_repeat": repeat}
    assert TaskDefinition.model_validate(base | {"schedule": schedule, "jitter_seconds": accepted}).jitter_seconds
    with pytest.raises(ValidationError) as info:
        TaskDefinition.model_validate(base | {"schedule": schedule, "jitter_seconds": rejected})
    (error,) = info.value.errors()
    assert error["loc"] == ("jitter_seconds",)
    assert "jitter_seconds must be smaller than the shortest gap" in error["msg"]


@pytest.mark.parametrize(
    ("expression", "zone", "start"),
    [
        ("30 1 * * *", NY, "2026-11-01T00:00"),
        ("0,50 1 * * *", NY, "2026-11-01T00:00"),
        ("*/7 * * * *", NY, "2026-11-01T04:00"),
        ("45 1 * * *", LORD_HOWE, "2026-04-04T12:00"),
    ],
)
def test_a_jitter_below_the_bound_keeps_repeated_slots_in_order(expression: str, zone: str, start: str) -> None:
    """With both occurrences firing, slots are the bound apart at the repeat, and a jitter just
    below it still fires them in order."""
    schedule = CronSchedule(expression=expression, timezone=zone, dst_repeat="both")
    gap = shortest_gap(expression, 86_400, repeated=repeated_windows(zone))
    slots = fire_times(schedule, utc(start), 40, anchor=ANCHOR)
    assert min((b - a).total_seconds() for a, b in itertools.pairwise(slots)) == gap
    for task_id in ("a", "b", "c", "d"):
        fires = [s + jitter_offset(task_id, s, gap * 0.999) for s in slots]
        assert fires == sorted(fires)


@pytest.mark.parametrize("field", ["dst_gap", "dst_repeat"])
@pytest.mark.parametrize(
    "schedule",
    [{"kind": "interval", "every_seconds": 60}, {"kind": "once", "at": "2030-01-01T00:00:00Z"}],
    ids=["interval", "once"],
)
def test_a_dst_policy_on_a_schedule_that_is_not_cron_names_the_field(schedule: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {"name": "t", "work": {"kind": "handler", "name": "h"}}
    with pytest.raises(ValidationError) as info:
        TaskDefinition.model_validate(base | {"schedule": schedule | {field: "skip"}})
    (error,) = info.value.errors()
    assert error["loc"] == ("schedule", schedule["kind"], field)
    assert error["msg"].startswith(f"{field} applies only to cron schedules: ")
    assert "Extra inputs" not in error["msg"]


def test_other_errors_of_a_non_cron_schedule_are_still_reported() -> None:
    base: dict[str, Any] = {"name": "t", "work": {"kind": "handler", "name": "h"}}
    bad = {"kind": "interval", "every_seconds": 0, "dst_repeat": "both", "color": "red"}
    with pytest.raises(ValidationError) as info:
        TaskDefinition.model_validate(base | {"schedule": bad})
    found = {e["loc"][-1]: e["msg"] for e in info.value.errors()}
    assert set(found) == {"every_seconds", "dst_repeat", "color"}
    assert "applies only to cron schedules" in found["dst_repeat"]


@pytest.mark.parametrize(("field", "value"), [("dst_gap", "later"), ("dst_repeat", "twice"), ("dst_repeat", None)])
def test_an_unknown_policy_names_the_field_and_the_choices(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        CronSchedule.model_validate({"expression": "0 * * * *", field: value})
    (error,) = info.value.errors()
    assert error["loc"] == (field,)
    assert "'" in error["msg"]  # pydantic lists the allowed literals


def test_stored_schedules_without_policies_decode_to_the_defaults() -> None:
    """Everything accepted before issue 12 has no DST fields: it reads as shift and auto."""
    stored = CronSchedule.model_validate({"kind": "cron", "expression": "30 2 * * *", "timezone": NY})
    assert (stored.dst_gap, stored.dst_repeat) == ("shift", "auto")
    assert CronSchedule.model_validate(stored.model_dump(mode="json")) == stored


def test_a_skip_policy_under_which_the_schedule_never_fires_is_refused() -> None:
    # The second Sunday of March at 02:30 in New York is always inside the spring-forward gap:
    # with `skip` nothing ever fires, and each search for the next slot walked to the horizon
    # (0.36 s of the worker's agent per create or update, and of the API per preview).
    never = {"kind": "cron", "expression": "30 2 * 3 0#2", "timezone": "America/New_York", "dst_gap": "skip"}
    with pytest.raises(ValidationError) as info:
        CronSchedule.model_validate(never)
    assert info.value.errors()[0]["loc"] == ("dst_gap",) and "never fires" in info.value.errors()[0]["msg"]
    # Shifted, it fires; elsewhere (Berlin springs forward on the last Sunday) it is an ordinary time.
    assert CronSchedule.model_validate({**never, "dst_gap": "shift"}).dst_gap == "shift"
    assert CronSchedule.model_validate({**never, "timezone": "Europe/Berlin"}).dst_gap == "skip"
    # A stored definition accepted before stays readable.
    assert CronSchedule.model_validate(never, context=TOLERANT).dst_gap == "skip"
