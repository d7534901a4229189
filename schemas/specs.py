"""Task specifications: schedules, policies and work, as carried inside commands and events.

All models are frozen and reject unknown fields. Datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationInfo, field_validator

from schemas._types import UtcDatetime, WireModel
from schemas.cron import cron_fields, field_problem, never_matches, shortest_gap
from schemas.notifications import MAX_TASK_RULES, NotificationRule

# croniter's "H" (hashed) and "R" (random) fields are not deterministic functions of the
# expression alone, which would break the pure core's guarantee that a slot is computable.
_DAY = 86_400.0
_YEAR = 366 * _DAY

_NON_DETERMINISTIC_FIELD = re.compile(r"(?<![A-Za-z])[HhRr](?![A-Za-z])")

TOLERANT: dict[str, Any] = {"tolerant": True}
"""Validation context for reading what was accepted before (events, stored state, views).

Rules added later (a jitter bounded by the period, a cron expression that must match some day
under the current day rule) check new commands only: an event or a stored state that passed
the rules of its day must always decode. Pass it as ``model_validate(..., context=TOLERANT)``.
"""


def _tolerant(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("tolerant"))


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


class CronSchedule(WireModel):
    """Fire on the wall-clock times matched by a cron expression in an IANA time zone.

    **Fields.** 5 fields, ``minute hour day-of-month month day-of-week``, or 6 with **seconds
    first** (``second minute hour day-of-month month day-of-week``). Ranges: second and minute
    0-59, hour 0-23, day-of-month 1-31 (or ``L``, the last day), month 1-12 (or ``jan``-``dec``),
    day-of-week 0-7 (0 and 7 are Sunday; or ``sun``-``sat``; ``n#k`` is the k-th weekday n of
    the month). Each field is a value, a range ``a-b`` (``a > b`` wraps around: hour ``22-2``
    is 22, 23, 0, 1, 2), a step ``*/n`` or ``a-b/n``, or a comma-separated list of those.
    Hashed (``H``) and random (``R``) fields are not supported.

    **Day-of-month and day-of-week** (Vixie/ISC cron): when either field starts with ``*``,
    a day must match both; when both are restricted, a day matching either fires.
    ``0 0 */2 * 1`` fires on Mondays that are odd days of the month; ``0 0 31 2 1`` fires on
    every Monday of February.

    **Daylight saving.** Times are matched on the zone's wall clock, then:
    a wall time that does not exist (spring forward) fires shifted forward by the length of
    the gap (``30 2 * * *`` in America/New_York on 2026-03-08 fires at 03:30 EDT), and once
    only if that coincides with another slot; a wall time that happens twice (fall back) fires
    once, at its first occurrence (``30 1 * * *`` on 2026-11-01 fires at 01:30 EDT only).
    So ``0 * * * *`` has 23 slots on the spring-forward day (02:00 becomes 03:00, which fires
    once) and 24 on the fall-back day (the repeated 01:00 fires once); ``* * * * *`` has 1,380
    (02:00-02:59 become 03:00-03:59, each firing once) and 1,440 (nothing fires during the
    repeated 01:00-01:59). Interval schedules run in absolute time and ignore daylight saving.
    """

    kind: Literal["cron"] = "cron"
    expression: str = Field(min_length=1, max_length=200)
    """The cron expression: 5 fields (minute hour day-of-month month day-of-week), or 6 with
    seconds first. Day-of-month and day-of-week combine with OR only when both are restricted
    (neither starts with ``*``); otherwise a day must match both (Vixie cron). An invalid field
    is reported with its allowed range, e.g. "minute must be 0-59"."""
    timezone: str = "UTC"
    """IANA time zone name the wall-clock times are in, e.g. ``Europe/London``. A time skipped
    by a daylight-saving change fires shifted forward by the gap; a repeated time fires once, at
    its first occurrence."""

    @field_validator("expression")
    @classmethod
    def _valid_cron(cls, value: str, info: ValidationInfo) -> str:
        fields = cron_fields(value)
        if len(fields) not in (5, 6):
            raise ValueError(
                "cron expression must have 5 fields (minute hour day-of-month month day-of-week) "
                f"or 6 with seconds first; got {len(fields)}"
            )
        if any(_NON_DETERMINISTIC_FIELD.search(f) for f in fields):
            raise ValueError("hashed (H) and random (R) cron fields are not supported")
        if (problem := field_problem(fields)) is not None:
            raise ValueError(problem)
        normalised = " ".join(fields)
        # An expression accepted before under another day rule stays readable (TOLERANT).
        if _tolerant(info):
            return normalised
        try:
            never = never_matches(normalised)
        except (ValueError, KeyError, IndexError, TypeError) as exc:  # croniter errors are ValueErrors
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        if never:
            raise ValueError(f"cron expression {value!r} never matches any date")
        return normalised

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value


class IntervalSchedule(WireModel):
    """Fire every ``every_seconds`` in absolute (UTC) time: slots are ``anchor + k * every``.

    Intervals are unaffected by daylight-saving changes.
    """

    kind: Literal["interval"] = "interval"
    every_seconds: float
    """Period in seconds, greater than 0; at least 1 (sub-second schedules are not supported),
    at most ten years."""
    anchor: UtcDatetime | None = None
    """A reference slot; None means the task's ``start_at``, or its creation time."""

    @field_validator("every_seconds")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError("every_seconds must be greater than 0")
        if value < 1:
            raise ValueError("every_seconds must be at least 1 (sub-second schedules are not supported)")
        if value > 10 * _YEAR:
            raise ValueError("every_seconds must be at most ten years")
        return value


class OnceSchedule(WireModel):
    """Fire exactly once, at ``at``."""

    kind: Literal["once"] = "once"
    at: UtcDatetime
    """The single slot."""


Schedule = Annotated[CronSchedule | IntervalSchedule | OnceSchedule, Field(discriminator="kind")]
"""Any schedule, discriminated by ``kind``."""


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------


class RetryPolicy(WireModel):
    """How failed or timed-out attempts of one execution are retried."""

    max_attempts: int = Field(default=1, ge=1, le=100)
    """Total attempts including the first; 1 means no retry."""
    initial_backoff_seconds: float = Field(default=1.0, ge=0, le=_DAY)
    """Delay before the second attempt."""
    multiplier: float = Field(default=2.0, ge=1, le=100)
    """Factor applied to the delay after each further failure."""
    max_backoff_seconds: float = Field(default=300.0, ge=0, le=_DAY)
    """Cap on the delay."""
    jitter: float = Field(default=0.1, ge=0, le=1)
    """Fraction of the delay that may be taken off, deterministically per execution."""


class OverlapPolicy(StrEnum):
    """What a schedule slot does when an execution of the same task is still in flight.

    "In flight" includes executions waiting for a retry. Manual triggers are explicit intent
    and always dispatch, but they do count as in flight for later slots.
    """

    SKIP = "skip"
    """Do not run the new slot; it is recorded as missed with reason ``overlap``."""
    BUFFER_ONE = "buffer_one"
    """Buffer the new slot and run it once nothing is in flight; at most one is buffered,
    further slots are recorded as missed with reason ``overlap``."""
    ALLOW_ALL = "allow_all"
    """Run the new slot alongside whatever is in flight."""
    CANCEL_OTHER = "cancel_other"
    """Cancel everything in flight (status ``cancelled``), then run the new slot."""


class CatchUpMode(StrEnum):
    """What to do with slots that were missed by more than the misfire grace."""

    RUN_ONCE = "run_once"
    """Run only the latest missed slot; record the others as missed."""
    RUN_ALL = "run_all"
    """Run the missed slots that fall inside the window (at most ``max_runs``, the latest
    ones); record the rest as missed."""
    SKIP = "skip"
    """Run none of them; record them all as missed."""


class CatchUpPolicy(WireModel):
    """Catch-up after downtime or a pause. Slots within the misfire grace are never affected."""

    mode: CatchUpMode = CatchUpMode.RUN_ONCE
    """How missed slots are treated."""
    window_seconds: float = Field(default=3600.0, gt=0, le=_YEAR)
    """For ``run_all``: only missed slots at most this old (at wake time) are run."""
    max_runs: int = Field(default=100, ge=1, le=1000)
    """For ``run_all``: cap on the number of missed slots run in one catch-up."""


class Priority(StrEnum):
    """Dispatch priority class; each class has its own dispatch topic."""

    HIGH = "high"
    """Latency-sensitive work; served first."""
    NORMAL = "normal"
    """The default."""
    LOW = "low"
    """Background work; served with a smaller share, but never starved."""


# ---------------------------------------------------------------------------------------------
# Work
# ---------------------------------------------------------------------------------------------

HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("url must start with http:// or https://")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"url is not a valid URL: {exc}") from None
    if not parts.hostname:
        raise ValueError("url must name a host")
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL end up in views and logs; headers are the place for them.
        raise ValueError("url must not hold credentials (user:password@); send them in a header")
    return value


_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _kafka_topic(value: str) -> str:
    if not _TOPIC_CHARS.match(value) or value in (".", ".."):
        raise ValueError("topic must be a legal Kafka topic name: 1-249 of letters, digits, '.', '_' and '-'")
    return value


def _json_pointer(value: str) -> str:
    if value and not value.startswith("/"):
        raise ValueError("must be a JSON pointer (RFC 6901): empty or starting with '/'")
    return value


class HttpRequestSpec(WireModel):
    """A single HTTP request; ``{job_id}`` in ``url`` or ``body`` strings is substituted."""

    method: HttpMethod = "POST"
    url: str = Field(min_length=1, max_length=4000)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)


class HttpPoll(WireModel):
    """Poll an external job (e.g. a test-execution engine) started by the HTTP request.

    The executor reads the job id from the start response at ``job_id_pointer``, then GETs
    ``status_url`` (with ``{job_id}`` substituted) every ``interval_seconds`` until the value
    at ``status_pointer`` is one of ``success_values`` or ``failure_values``.
    """

    status_url: str = Field(min_length=1, max_length=4000)
    """URL of the status resource; may contain the ``{job_id}`` placeholder."""
    job_id_pointer: str = "/id"
    """JSON pointer to the job id in the start response body."""
    status_pointer: str = "/status"
    """JSON pointer to the status in the status response body."""
    success_values: list[str] = Field(default_factory=lambda: ["succeeded", "passed"], min_length=1)
    """Status values that end the execution successfully."""
    failure_values: list[str] = Field(default_factory=lambda: ["failed", "error"], min_length=1)
    """Status values that end the execution as failed."""
    interval_seconds: float = Field(default=5.0, gt=0)
    """Delay between status requests."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Headers for the status requests."""
    report_url_pointer: str | None = None
    """JSON pointer to the engine's report URL in the start or status response; kept in the
    execution's result as ``report_url`` (with ``job_id``). None: no report URL is kept."""

    @field_validator("status_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("report_url_pointer")
    @classmethod
    def _report_pointer(cls, value: str | None) -> str | None:
        return None if value is None else _json_pointer(value)

    @field_validator("job_id_pointer", "status_pointer")
    @classmethod
    def _pointer(cls, value: str) -> str:
        return _json_pointer(value)


class HttpWork(WireModel):
    """Send an HTTP request; optionally poll an external job it started, and cancel it."""

    kind: Literal["http"] = "http"
    method: HttpMethod = "POST"
    url: str = Field(min_length=1, max_length=4000)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    """Timeout of each single HTTP request (the execution's own timeout is on the task)."""
    accepted_statuses: list[int] = Field(default_factory=lambda: list(range(200, 300)), min_length=1)
    """Response statuses that count as success."""
    poll: HttpPoll | None = None
    """Poll an external job until it finishes; None means the response ends the execution."""
    cancel: HttpRequestSpec | None = None
    """Request sent to cancel the external job when the execution is cancelled or times out."""
    sensitive_headers: list[str] = Field(default_factory=list, max_length=50)
    """Further header names (any case) whose values are secrets, in ``headers``, ``poll.headers``
    and ``cancel.headers``; ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and
    ``X-Api-Key`` always are. Secrets are encrypted at rest and shown as ``***``."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("accepted_statuses")
    @classmethod
    def _statuses(cls, value: list[int]) -> list[int]:
        if any(not 100 <= s <= 599 for s in value):
            raise ValueError("HTTP statuses must be between 100 and 599")
        return value


class KafkaWork(WireModel):
    """Produce one message to a Kafka topic."""

    kind: Literal["kafka"] = "kafka"
    topic: str = Field(min_length=1, max_length=249)
    """The topic; it must be allowed by the deployment's operator (``SCHED_KAFKA_WORK_TOPICS``),
    and never one of the deployment's own or Kafka's internal topics."""
    key: str | None = None
    value: Any = None

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return _kafka_topic(value)


class HandlerWork(WireModel):
    """Call a Python handler registered with the executors under ``name``."""

    kind: Literal["handler"] = "handler"
    name: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)


Work = Annotated[HttpWork | KafkaWork | HandlerWork, Field(discriminator="kind")]
"""Any kind of work, discriminated by ``kind``."""


# ---------------------------------------------------------------------------------------------
# Task definition
# ---------------------------------------------------------------------------------------------


class TaskDefinition(WireModel):
    """Everything a user says about a task: when it runs, what it does, and the policies."""

    name: str = Field(min_length=1, max_length=200)
    schedule: Schedule | None = None
    """None means the task only runs when triggered."""
    work: Work
    priority: Priority = Priority.NORMAL
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    overlap: OverlapPolicy = OverlapPolicy.SKIP
    catch_up: CatchUpPolicy = Field(default_factory=CatchUpPolicy)
    misfire_grace_seconds: float = Field(default=30.0, ge=0, le=_YEAR)
    """A slot fired at most this late is on time and always runs, whatever the catch-up mode."""
    timeout_seconds: float = Field(default=3600.0, gt=0, le=30 * _DAY)
    """Deadline of each attempt, counted from its dispatch."""
    max_runs: int | None = Field(default=None, ge=1, le=10**12)
    """Maximum number of scheduled runs (manual triggers do not count); then the task completes."""
    start_at: UtcDatetime | None = None
    """No slot before this instant (inclusive bound)."""
    end_at: UtcDatetime | None = None
    """No slot after this instant (inclusive bound)."""
    jitter_seconds: float = Field(default=0.0, ge=0, le=_DAY)
    """Each slot fires a deterministic offset in [0, jitter_seconds) after its nominal time.
    Must be smaller than the shortest gap between two slots of the schedule (for an interval,
    ``every_seconds``; for cron, the shortest wall-clock gap between matches; any value for a
    one-shot), so slots always fire in order and a jitter never makes a slot late."""
    tags: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    """Parameters passed to the work; a trigger may override them per execution."""
    sensitive_params: list[str] = Field(default_factory=list, max_length=50)
    """JSON pointers (RFC 6901) of params whose values are secrets, e.g. ``/api_token``: in
    ``params``, in a handler's ``work.params`` and in a trigger's overrides, they are encrypted
    at rest and shown as ``***`` (send ``***`` back in an update to keep the stored value)."""
    notifications: list[NotificationRule] = Field(default_factory=list, max_length=MAX_TASK_RULES)
    """Who is told about this task's outcomes (see schemas/notifications.py); the tenant's own
    rules (``PUT /v1/notification-rules``) apply as well."""

    @field_validator("sensitive_params")
    @classmethod
    def _param_pointers(cls, value: list[str]) -> list[str]:
        for pointer in value:
            if not pointer.startswith("/") or len(pointer) > 1000:
                raise ValueError(f"{pointer!r} must be a JSON pointer into params starting with '/', e.g. '/api_token'")
        return value

    @field_validator("jitter_seconds")
    @classmethod
    def _jitter_below_gap(cls, value: float, info: ValidationInfo) -> float:
        # A jitter as long as the gap lets a slot fire after the next one; slots are handled
        # in order, so the next one would wait and count as late. Stored definitions accepted
        # before this rule stay readable (TOLERANT), and the decider tolerates them.
        schedule = info.data.get("schedule")
        if value <= 0 or _tolerant(info) or schedule is None:
            return value
        if isinstance(schedule, IntervalSchedule) and value >= schedule.every_seconds:
            raise ValueError(
                f"jitter_seconds must be smaller than the interval's every_seconds ({schedule.every_seconds:g})"
            )
        if isinstance(schedule, CronSchedule) and (gap := shortest_gap(schedule.expression, value)) <= value:
            raise ValueError(
                f"jitter_seconds must be smaller than the shortest gap between two slots of the cron "
                f"schedule ({gap:g} s), or a slot could fire after the next one"
            )
        return value

    @field_validator("end_at")
    @classmethod
    def _end_after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start_at")
        if value is not None and start is not None and value <= start:
            raise ValueError("end_at must be after start_at")
        return value
