"""Task specifications: schedules, policies and work, as carried inside commands and events.

All models are frozen and reject unknown fields. Datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from schemas._types import UtcDatetime, WireModel, iana_zone
from schemas.calendars import CalendarName
from schemas.cron import (
    DstGap,
    DstRepeat,
    cron_fields,
    field_problem,
    never_matches,
    only_in_gaps,
    repeat_rule,
    repeated_windows,
    shortest_gap,
)
from schemas.notifications import MAX_TASK_RULES, NotificationRule
from schemas.triggers import MAX_RULES, TriggerRule

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

    **Daylight saving.** Times are matched on the zone's wall clock. ``dst_gap`` says what a
    matched time that does not exist (spring forward) does, ``dst_repeat`` what one that
    happens twice (fall back) does. Each acts on one transition only. In America/New_York
    (2026-03-08: 02:00-02:59 do not exist; 2026-11-01: 01:00-01:59 happen twice, EDT then EST):

    | policy | spring forward | fall back |
    |---|---|---|
    | ``dst_gap: shift`` (default) | fires shifted forward by the gap (once if that is another slot) | no effect |
    | ``dst_gap: skip`` | does not fire that day | no effect |
    | ``dst_repeat: first`` | no effect | fires at the first occurrence only |
    | ``dst_repeat: second`` | no effect | fires at the second occurrence only |
    | ``dst_repeat: both`` | no effect | fires at both occurrences, an hour apart |
    | ``dst_repeat: auto`` (default) | no effect | ``both`` when the hour field is every hour, else ``first`` |

    "Every hour" is an hour field matching all 24 hours (``*``, as in ``* * * * *`` and
    ``0 * * * *``): such crons fire through the repeated hour in absolute time. A step such as
    ``*/2`` is not every hour. What fires in America/New_York on the two days:

    | expression | spring day: shift / skip | fall day: first / second / both |
    |---|---|---|
    | ``30 2 * * *`` | 03:30 EDT / nothing | 02:30 EST (not a repeated time) |
    | ``30 1 * * *`` | 01:30 EST (not a skipped time) | 01:30 EDT / 01:30 EST / both |
    | ``0 * * * *`` | 23 slots / 23 | 24 slots / 24 / 25 |
    | ``* * * * *`` | 1,380 slots / 1,380 | 1,440 slots / 1,440 / 1,500 |

    With the defaults ``0 * * * *`` has 23 slots on the 23-hour day and 25 on the 25-hour day.
    Zones with 30-minute shifts (Australia/Lord_Howe) have a 30-minute gap and repeat: there
    ``0 * * * *`` with ``shift`` fires the missing 02:00 at 02:30. The policies exist on cron
    schedules only (interval schedules run in absolute time, one-shots are an instant).

    Example: ``{"kind": "cron", "expression": "30 2 * * *", "timezone": "Europe/Berlin",
    "dst_gap": "skip", "dst_repeat": "both"}`` fires at 02:30 every day, not at all on the last
    Sunday of March, and twice (02:30 CEST and 02:30 CET) on the last Sunday of October.
    """

    kind: Literal["cron"] = "cron"
    expression: str = Field(min_length=1, max_length=200)
    """The cron expression: 5 fields (minute hour day-of-month month day-of-week), or 6 with
    seconds first. Day-of-month and day-of-week combine with OR only when both are restricted
    (neither starts with ``*``); otherwise a day must match both (Vixie cron). An invalid field
    is reported with its allowed range, e.g. "minute must be 0-59"."""
    timezone: str = "UTC"
    """IANA time zone name the wall-clock times are in, e.g. ``Europe/London``. What a
    daylight-saving change does to a matched time is set by ``dst_gap`` and ``dst_repeat``."""
    dst_gap: DstGap = "shift"
    """A matched wall time that does not exist (spring forward). ``shift``: fire it shifted
    forward by the gap (``30 2 * * *`` in America/New_York on 2026-03-08 fires at 03:30 EDT;
    once if that is another slot too). ``skip``: do not fire it that day."""
    dst_repeat: DstRepeat = "auto"
    """A matched wall time that happens twice (fall back). ``first``: fire at the first
    occurrence only (``30 1 * * *`` in America/New_York on 2026-11-01: 01:30 EDT). ``second``:
    at the second only (01:30 EST). ``both``: at both, one hour apart there. ``auto``: ``both``
    when the hour field matches every hour (``* * * * *``, ``0 * * * *``: the repeated hour
    fires in absolute time, so the 25-hour day has 25 hourly slots), otherwise ``first``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"kind": "cron", "expression": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
                {
                    "kind": "cron",
                    "expression": "30 2 * * *",
                    "timezone": "America/New_York",
                    "dst_gap": "skip",
                    "dst_repeat": "both",
                },
            ]
        }
    )

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
        iana_zone(value)
        return value

    @field_validator("dst_gap")
    @classmethod
    def _fires_despite_gaps(cls, value: DstGap, info: ValidationInfo) -> DstGap:
        expression, timezone = info.data.get("expression"), info.data.get("timezone")
        if value != "skip" or _tolerant(info) or expression is None or timezone is None:
            return value
        if only_in_gaps(expression, timezone):
            raise ValueError(
                f"with dst_gap 'skip' the schedule never fires: every time {expression!r} matches is skipped by "
                f"a daylight-saving change in {timezone} (use 'shift', or another expression)"
            )
        return value


_CRON_ONLY = ("dst_gap", "dst_repeat")
_NOT_CRON = {
    "interval": "an interval schedule runs in absolute time, which daylight saving does not change",
    "once": "a one-shot schedule is a single instant, which daylight saving does not change",
}


def _cron_only_fields(data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
    """Validate with ``handler``; a DST policy sent on a schedule that is not cron is reported
    as "dst_gap applies only to cron schedules" (naming the field), not "Extra inputs"."""
    misplaced = [name for name in _CRON_ONLY if isinstance(data, dict) and name in data]
    if not misplaced:
        return handler(data)
    why = _NOT_CRON.get(str(data.get("kind")), "daylight saving does not affect this schedule")
    errors: list[InitErrorDetails] = [
        InitErrorDetails(
            type=PydanticCustomError(
                "cron_only", "{field} applies only to cron schedules: {why}", {"field": name, "why": why}
            ),
            loc=(name,),
            input=data[name],
        )
        for name in misplaced
    ]
    try:
        handler({k: v for k, v in data.items() if k not in misplaced})
    except ValidationError as exc:
        errors = [*exc.errors(), *errors]  # type: ignore[list-item]
    raise ValidationError.from_exception_data("schedule", errors)


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

    @model_validator(mode="wrap")
    @classmethod
    def _no_dst_policy(cls, data: Any, handler: ModelWrapValidatorHandler[IntervalSchedule]) -> IntervalSchedule:
        result: IntervalSchedule = _cron_only_fields(data, handler)
        return result


class OnceSchedule(WireModel):
    """Fire exactly once, at ``at``."""

    kind: Literal["once"] = "once"
    at: UtcDatetime
    """The single slot."""

    @model_validator(mode="wrap")
    @classmethod
    def _no_dst_policy(cls, data: Any, handler: ModelWrapValidatorHandler[OnceSchedule]) -> OnceSchedule:
        result: OnceSchedule = _cron_only_fields(data, handler)
        return result


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


SHELL_OUTPUT_MAX = 6144
"""Largest ``limits.output_bytes``: both streams' tails must fit the result an execution keeps."""
_SHELL_ARGS_BYTES = 128 * 1024
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class ShellLimits(WireModel):
    """Resource limits of shell work, enforced by the operating system (``setrlimit``) on the
    process it starts; its children inherit them, each with its own count."""

    cpu_seconds: int = Field(default=60, ge=1, le=_DAY)
    """CPU time the process may use; past it the OS sends SIGXCPU (one second later SIGKILL).
    Wall-clock time is bounded by the task's ``timeout_seconds``."""
    memory_mb: int = Field(default=512, ge=16, le=64 * 1024)
    """Address space (virtual memory, ``RLIMIT_AS``) of the process, in MiB; an allocation past
    it fails (the execution's error then says the memory limit was exceeded). Runtimes that
    reserve much virtual memory up front (the JVM, Go) need a generous value."""
    open_files: int = Field(default=256, ge=8, le=65_536)
    """File descriptors the process may have open at once (``RLIMIT_NOFILE``)."""
    file_size_mb: int = Field(default=1024, ge=0, le=1024 * 1024)
    """Largest file the process may write, in MiB (``RLIMIT_FSIZE``); past it, SIGXFSZ."""
    output_bytes: int = Field(default=4096, ge=0, le=SHELL_OUTPUT_MAX)
    """Bytes of the end of stdout, and of stderr, kept in the execution's result. Output past
    it is read and dropped (the process is not stopped); the result says it was truncated."""


MAX_TAGS = 50
"""Most tags of one task."""
MAX_TAG_CHARS = 200
"""Longest tag (the longest a ``tag`` filter takes)."""


def _no_nul(value: str, what: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters")
    return value


class ShellWork(WireModel):
    """Run a command (no shell: ``argv`` is executed as is) under OS-enforced limits.

    Off unless an operator allows it: ``argv[0]`` must resolve (through symlinks and ``..``) to
    an executable allowed by ``SCHED_SHELL_COMMANDS``, every ``env`` name must be allowed by
    ``SCHED_SHELL_ENV`` and ``cwd`` must lie under a root of ``SCHED_SHELL_CWD``. The process
    never inherits the executor's environment: it gets ``PATH`` (fixed by the operator),
    ``HOME`` (its working directory), ``env``, and ``SCHED_TASK_ID``, ``SCHED_EXECUTION_ID``,
    ``SCHED_ATTEMPT`` and ``SCHED_PARAMS`` (the execution's params as JSON). The exit code is
    the outcome; the ends of stdout and stderr are kept in the result.
    """

    kind: Literal["shell"] = "shell"
    argv: list[str] = Field(min_length=1, max_length=256)
    """The program and its arguments; the program is an absolute path or a name looked up in
    the executor's fixed ``PATH``. Nothing is interpreted: no globbing, no variables, no pipes
    (run ``/bin/sh -c`` if the operator allows it)."""
    env: dict[str, str] = Field(default_factory=dict, max_length=100)
    """Environment variables for the process, by name; each name must be allowed by the
    operator. ``PATH``, ``HOME``, ``SCHED_*``, ``LD_*`` and other loader variables are refused."""
    cwd: str | None = Field(default=None, max_length=4096)
    """Absolute working directory, under a root the operator allows. None: a fresh empty
    directory, removed after the attempt."""
    limits: ShellLimits = Field(default_factory=ShellLimits)
    """OS-enforced resource limits."""
    success_exit_codes: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=256)
    """Exit codes that count as success; any other exit (or a signal) fails the attempt."""
    sensitive_env: list[str] = Field(default_factory=list, max_length=100)
    """Names of ``env`` variables whose values are secrets: encrypted at rest, shown as ``***``,
    and replaced by ``***`` where the process prints them."""

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("argv[0], the program, must not be empty")
        for i, arg in enumerate(value):
            _no_nul(arg, f"argv[{i}]")
        if sum(len(a.encode()) + 1 for a in value) > _SHELL_ARGS_BYTES:
            raise ValueError(f"argv must be at most {_SHELL_ARGS_BYTES} bytes in all")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"env name {name!r} must be letters, digits and '_', not starting with a digit")
            _no_nul(text, f"env {name}")
        if sum(len(k) + len(v.encode()) + 2 for k, v in value.items()) > _SHELL_ARGS_BYTES:
            raise ValueError(f"env must be at most {_SHELL_ARGS_BYTES} bytes in all")
        return value

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "\x00" in value):
            raise ValueError("cwd must be an absolute path (starting with '/') without NUL characters")
        return value

    @field_validator("success_exit_codes")
    @classmethod
    def _codes(cls, value: list[int]) -> list[int]:
        if any(not 0 <= code <= 255 for code in value):
            raise ValueError("exit codes must be between 0 and 255")
        return value


Work = Annotated[HttpWork | KafkaWork | HandlerWork | ShellWork, Field(discriminator="kind")]
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
    """Labels to filter and report by: at most 50, each at most 200 characters."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Parameters passed to the work; a trigger may override them per execution."""
    pause_after_failures: int | None = Field(default=None, ge=1, le=1000)
    """Pause the task after this many consecutive executions ended ``failed`` or ``timed_out``
    (their final outcome, after retries). Scheduled, manual and backfill executions all count; a
    success resets the count, a cancellation leaves it as it is, and resuming the task clears it.
    The pause says why (``TaskPaused.reason`` ``consecutive_failures``, with the last error in its
    note). None: never pause on failures."""
    sensitive_params: list[str] = Field(default_factory=list, max_length=50)
    """JSON pointers (RFC 6901) of params whose values are secrets, e.g. ``/api_token``: in
    ``params``, in a handler's ``work.params`` and in a trigger's overrides, they are encrypted
    at rest and shown as ``***`` (send ``***`` back in an update to keep the stored value)."""
    triggers: list[TriggerRule] = Field(default_factory=list, max_length=MAX_RULES)
    """CloudEvents of the task's tenant that run it (see ``schemas/triggers.py``): each rule
    matches on the event's type, source, subject and data; a matching event runs the task once,
    with the event in the run's params."""
    calendars: list[CalendarName] = Field(default_factory=list, max_length=20)
    """Names of the tenant's calendars whose excluded days, ranges and windows this task's
    slots skip (recorded as missed with reason ``calendar``); manual triggers ignore them.
    Each must name an existing calendar of the tenant, listed once."""

    @field_validator("calendars")
    @classmethod
    def _distinct_calendars(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("calendars must not list a calendar twice")
        return value

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

    @field_validator("tags")
    @classmethod
    def _bounded_tags(cls, value: list[str], info: ValidationInfo) -> list[str]:
        # A report by tag counts every run under each tag of its task: 50,000 one-letter tags
        # (well inside a request) made one report hold 50,000 groups of every run's figures.
        if _tolerant(info):
            return value  # stored definitions accepted before stay readable
        if len(value) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags")
        for tag in value:
            if len(tag) > MAX_TAG_CHARS:
                raise ValueError(f"a tag is at most {MAX_TAG_CHARS} characters")
        return value

    @field_validator("triggers")
    @classmethod
    def _event_not_in_a_secret(cls, value: list[TriggerRule], info: ValidationInfo) -> list[TriggerRule]:
        # The router puts the event (and, debounced, its count) in the run's params in clear: under
        # a sensitive param it would replace the task's secret with whatever an event says, and
        # travel and be stored in clear where only encrypted values may be.
        if _tolerant(info):
            return value
        tops = {p.split("/")[1].replace("~1", "/").replace("~0", "~") for p in info.data.get("sensitive_params") or ()}
        for i, rule in enumerate(value):
            keys = [rule.params_key] + ([f"{rule.params_key}_count"] if rule.debounce_seconds is not None else [])
            for key in keys:
                if key in tops:
                    raise ValueError(
                        f"triggers.{i}.params_key: the event would be put under param {key!r}, which "
                        "sensitive_params marks as a secret; choose another params_key"
                    )
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
        if isinstance(schedule, CronSchedule) and (gap := _cron_gap(schedule, value)) <= value:
            raise ValueError(
                f"jitter_seconds must be smaller than the shortest gap between two slots of the cron "
                f"schedule ({gap:g} s, counting a daylight-saving repeat that fires twice), or a slot "
                "could fire after the next one"
            )
        return value

    @field_validator("end_at")
    @classmethod
    def _end_after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start_at")
        if value is not None and start is not None and value <= start:
            raise ValueError("end_at must be after start_at")
        return value


def _cron_gap(schedule: CronSchedule, limit: float) -> float:
    """The shortest gap between slots of ``schedule``: the wall-clock gap, or less where both
    occurrences of a repeated wall time fire (``30 1 * * *`` with ``both``: one hour)."""
    both = repeat_rule(schedule.expression, schedule.dst_repeat) == "both"
    windows = repeated_windows(schedule.timezone) if both else ()
    return shortest_gap(schedule.expression, limit, repeated=windows)
