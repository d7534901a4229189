"""Calendars: named, per-tenant sets of local days, ranges and cron windows that exclude slots.

A task lists the calendars it is excluded by (``TaskDefinition.calendars``); a slot that falls
on an excluded day, in an excluded range or in an excluded window is recorded as missed with
reason ``calendar`` instead of running (see :mod:`scheduler.calendar`). Everything is evaluated
on the **wall clock of the calendar's own time zone**, whatever the task's schedule zone.

Changes travel as events on the compacted ``calendars`` topic, keyed ``<tenant>/<name>``:
:class:`CalendarUpserted` (the whole calendar, with a revision) and :class:`CalendarDeleted`.
Revisions grow by one per change of a name; a reader keeps, per key, the event of the highest
revision it has seen and ignores one that is not above it, so every reader (the worker, the
view) settles on the same calendar whatever it read before.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import Field, NaiveDatetime, TypeAdapter, ValidationInfo, field_validator, model_validator

from schemas._types import EARLIEST, LATEST, UtcDatetime, WireModel, iana_zone
from schemas.cron import cron_fields, field_problem, never_matches

CALENDAR_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
"""A calendar's name: lower-case letters, digits, ``_ . -``; 1-63 characters, starting with a
letter or digit. Unique per tenant."""

CalendarName = Annotated[str, Field(pattern=CALENDAR_NAME_PATTERN, min_length=1, max_length=63)]
"""The name of a calendar (see :data:`CALENDAR_NAME_PATTERN`)."""

MAX_DATES = 1000
MAX_RANGES = 500
MAX_RULES = 50
MAX_TASK_RULES = 100
"""Most rules a task's calendars may hold together: each rule is evaluated for every slot of the
task (by the worker's decider, and by the API's previews and checks), so 20 calendars of 50
every-other-second windows made one slot cost 15 ms, a thousand times a plain one. Dates and
ranges cost nothing per slot (a set, a bisection) and do not count."""
MAX_WINDOW_SECONDS = 31 * 86_400
"""Longest window of a rule: a month (longer exclusions are ranges)."""

_NON_DETERMINISTIC_FIELD = re.compile(r"(?<![A-Za-z])[HhRr](?![A-Za-z])")
_YEARS = range(EARLIEST.year + 1, LATEST.year)
"""Years a local date or time may fall in: those of the wire's instants (``UtcDatetime``), less
a year at each end, so any zone's wall clock maps to an instant and a day or window after it
still fits in ``datetime`` (a range ending 9999-12-31 in ``Etc/GMT+12`` overflowed in the
worker's decider and crashed it on every slot it held)."""


def _in_years(value: date, what: str) -> None:
    if value.year not in _YEARS:
        raise ValueError(f"{what} must be in the years {_YEARS.start} to {_YEARS.stop - 1}")


class DateRange(WireModel):
    """A half-open range ``[start, end)`` of local wall-clock time in the calendar's zone.

    A date alone (``2026-12-24``) means its midnight: ``{"start": "2026-12-24", "end":
    "2027-01-02"}`` excludes 24 December to 1 January inclusive.
    """

    start: NaiveDatetime
    """First excluded local time (no offset: the calendar's zone applies)."""
    end: NaiveDatetime
    """First local time no longer excluded; after ``start``."""

    @field_validator("start", "end")
    @classmethod
    def _bounded(cls, value: datetime, info: ValidationInfo) -> datetime:
        _in_years(value, str(info.field_name))
        return value

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class ExclusionRule(WireModel):
    """A recurring exclusion: a cron expression on the calendar's wall clock.

    With ``duration_seconds``, each match opens a window ``[match, match + duration)`` (wall
    clock): ``{"cron": "0 2 * * sun", "duration_seconds": 7200}`` is every Sunday 02:00-04:00.
    Without it, every local day on which the expression matches is excluded whole:
    ``{"cron": "0 0 * * sat,sun"}`` is every weekend.
    """

    cron: str = Field(min_length=1, max_length=200)
    """5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, with the
    same rules as a cron schedule (see ``CronSchedule``)."""
    duration_seconds: float | None = Field(default=None, ge=1, le=MAX_WINDOW_SECONDS)
    """Length of each window, up to 31 days; None excludes each matching day whole."""

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        fields = cron_fields(value)
        if len(fields) not in (5, 6):
            raise ValueError(f"cron expression must have 5 fields or 6 with seconds first; got {len(fields)}")
        if any(_NON_DETERMINISTIC_FIELD.search(f) for f in fields):
            raise ValueError("hashed (H) and random (R) cron fields are not supported")
        if (problem := field_problem(fields)) is not None:
            raise ValueError(problem)
        normalised = " ".join(fields)
        try:
            never = never_matches(normalised)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        if never:
            raise ValueError(f"cron expression {value!r} never matches any date")
        return normalised


class CalendarBody(WireModel):
    """What a client sends to create or replace a calendar (its name is in the URL)."""

    timezone: str = "UTC"
    """IANA time zone whose wall clock the dates, ranges and rules are in."""
    description: str | None = Field(default=None, max_length=2000)
    dates: list[date] = Field(default_factory=list, max_length=MAX_DATES)
    """Whole local days excluded, e.g. ``2026-12-25``."""
    ranges: list[DateRange] = Field(default_factory=list, max_length=MAX_RANGES)
    """Local ``[start, end)`` ranges excluded (maintenance windows, shutdowns)."""
    rules: list[ExclusionRule] = Field(default_factory=list, max_length=MAX_RULES)
    """Recurring exclusions (weekends, a weekly maintenance window)."""

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        iana_zone(value)
        return value

    @field_validator("dates")
    @classmethod
    def _sorted_dates(cls, value: list[date]) -> list[date]:
        for day in value:
            _in_years(day, f"date {day.isoformat()}")
        return sorted(set(value))


class Calendar(CalendarBody):
    """A tenant's named calendar, as the events carry it and the decider reads it."""

    name: CalendarName


class CalendarEventBase(WireModel):
    """Fields every calendar event carries."""

    event_id: str
    """uuid5 of the key and revision."""
    tenant: str = Field(min_length=1, max_length=200)
    name: CalendarName
    revision: int = Field(ge=1)
    """1 for the first version of a name, then one more per change (deletion included)."""
    at: UtcDatetime
    actor: str = Field(min_length=1, max_length=200)

    @property
    def key(self) -> str:
        """The message key: ``<tenant>/<name>``."""
        return calendar_key(self.tenant, self.name)


class CalendarUpserted(CalendarEventBase):
    """A calendar was created or replaced."""

    type: Literal["CalendarUpserted"] = "CalendarUpserted"
    calendar: Calendar


class CalendarDeleted(CalendarEventBase):
    """A calendar was deleted; tasks no longer referencing it are unaffected."""

    type: Literal["CalendarDeleted"] = "CalendarDeleted"


CalendarEvent = Annotated[CalendarUpserted | CalendarDeleted, Field(discriminator="type")]
"""Any calendar event, discriminated by ``type``."""

_ADAPTER: TypeAdapter[CalendarUpserted | CalendarDeleted] = TypeAdapter(CalendarEvent)


def calendar_key(tenant: str, name: str) -> str:
    """The key of a calendar's messages and view document."""
    return f"{tenant}/{name}"


def decode_calendar_event(obj: Any) -> CalendarUpserted | CalendarDeleted:
    """Validate a calendar event from its JSON form.

    :raises pydantic.ValidationError: not a calendar event.
    """
    return _ADAPTER.validate_python(obj)
