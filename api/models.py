"""Public request and response models of the API (``XCreate`` / ``XPublic`` naming).

Responses never carry another tenant's data, the tenant itself, or the internal
``<tenant>/<id>`` task ids: every ``id`` / ``task_id`` is the one the client sees.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.specs import Priority, TaskDefinition

TaskCreate = TaskDefinition
"""Body of ``POST /v1/tasks`` and ``PUT /v1/tasks/{id}``: a full task definition."""

TASK_EXAMPLES: dict[str, dict[str, Any]] = {
    "cron": {
        "summary": "Every weekday at 06:30 in London, calling a webhook",
        "value": {
            "name": "nightly-report",
            "schedule": {"kind": "cron", "expression": "30 6 * * 1-5", "timezone": "Europe/London"},
            "work": {"kind": "http", "method": "POST", "url": "https://reports.example.com/run"},
            "retry": {"max_attempts": 3},
            "tags": ["reports"],
        },
    },
    "interval": {
        "summary": "Every 5 minutes, a registered Python handler",
        "value": {
            "name": "poll-inbox",
            "schedule": {"kind": "interval", "every_seconds": 300},
            "work": {"kind": "handler", "name": "noop"},
        },
    },
    "manual": {
        "summary": "No schedule: runs only when triggered",
        "value": {"name": "rebuild-index", "work": {"kind": "handler", "name": "noop"}},
    },
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PauseRequest(_Request):
    """Body of ``POST /v1/tasks/{id}/pause`` (optional)."""

    note: str | None = Field(default=None, max_length=2000, examples=["maintenance window"])
    """Why the task is paused; shown on the task."""


class TriggerRequest(_Request):
    """Body of ``POST /v1/tasks/{id}/trigger`` (optional)."""

    trigger_id: str | None = Field(default=None, min_length=1, max_length=200, examples=["deploy-1234"])
    """Idempotency key of the run: the same trigger id never runs twice. Defaults to the command id."""
    params: dict[str, Any] | None = Field(default=None, examples=[{"dry_run": True}])
    """Merged over the definition's params for this run only."""
    priority: Priority | None = None
    """Overrides the definition's priority for this run only."""


class CancelRequest(_Request):
    """Body of ``POST /v1/executions/{id}/cancel`` (optional)."""

    reason: str | None = Field(default=None, max_length=2000, examples=["wrong parameters"])


class _Public(BaseModel):
    model_config = ConfigDict(extra="ignore")


class LastRun(_Public):
    """The last execution the task started."""

    execution_id: str
    slot: datetime | None = None
    scheduled_for: datetime | None = None
    dispatched_at: datetime | None = None
    reason: str | None = None


class Rejection(_Public):
    """The last command the task refused."""

    command_id: str
    command_type: str
    reason: str
    field: str | None = None
    at: datetime | None = None


class Histogram(_Public):
    """Execution durations: non-cumulative buckets ``le_<ms>`` and ``inf``."""

    buckets: dict[str, int] = Field(default_factory=dict)
    sum_ms: int = 0
    count: int = 0
    max_ms: int | None = None


class BackfillPublic(_Public):
    """The task's latest backfill and its progress."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)

    id: str
    from_: datetime = Field(alias="from")
    """First instant of the range (inclusive)."""
    to: datetime
    """End of the range (exclusive)."""
    max_concurrency: int
    slots: int
    """Slots of the schedule in the range when it started."""
    status: Literal["running", "completed", "cancelled"]
    started_at: datetime | None = None
    started_by: str | None = None
    ended_at: datetime | None = None
    reason: str | None = None
    """Why it was cancelled."""
    dispatched: int = 0
    """Slots dispatched so far."""
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0


class TaskPublic(_Public):
    """A task as the views show it."""

    id: str = Field(examples=["5c1f2d0e-8a4b-4c53-9d1e-2f0b6a7c9e11"])
    name: str
    type: str = Field(examples=["http"])
    """The kind of work: ``http``, ``kafka`` or ``handler``."""
    tags: list[str] = Field(default_factory=list)
    status: Literal["active", "paused", "completed", "deleted"]
    definition: TaskDefinition
    revision: int
    """Increases with every definition change, pause and resume; send it back in ``If-Match``."""
    version: int
    """Number of events of the task applied to this view."""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    created_by: str | None = None
    next_run: datetime | None = None
    """When the next slot fires (slot plus jitter); None when unknown or none."""
    next_slot: datetime | None = None
    next_run_known: bool = True
    """False while the view does not know the next slot (after a run, until the next event states it)."""
    last_slot: datetime | None = None
    last_run: LastRun | None = None
    last_status: str | None = None
    last_error: str | None = None
    last_finished_at: datetime | None = None
    last_rejection: Rejection | None = None
    paused_note: str | None = None
    paused_reason: Literal["manual", "consecutive_failures"] | None = None
    """Why the task is paused: a pause command, or ``pause_after_failures`` failures in a row."""
    paused_failures: int | None = None
    """For ``consecutive_failures``: how many executions failed in a row."""
    backfill: BackfillPublic | None = None
    """The latest backfill (``POST /v1/tasks/{id}/backfills``) and its progress; None if none ran."""
    completed_reason: str | None = None
    deleted_at: datetime | None = None
    counters: dict[str, int] = Field(default_factory=dict)
    duration: Histogram = Field(default_factory=Histogram)


class TimelineEntry(_Public):
    """One status change of an execution."""

    status: str
    at: datetime | None = None
    attempt: int | None = None
    error: str | None = None
    worker: str | None = None
    retry_at: datetime | None = None


class ExecutionPublic(_Public):
    """One execution (a run of a task, or a record of skipped slots)."""

    id: str
    task_id: str
    type: str | None = None
    status: str = Field(examples=["succeeded"])
    """``buffered``, ``scheduled``, ``running``, ``retrying``, ``succeeded``, ``failed``,
    ``timed_out``, ``cancelled`` or ``skipped``."""
    reason: str | None = None
    """Why it ran (``schedule``, ``manual``, ``buffered``, ``backfill``) or, for ``skipped``, why not."""
    backfill_id: str | None = None
    """The backfill that ran it (reason ``backfill``)."""
    attempt: int = 0
    attempts: int = 0
    slot: datetime | None = None
    last_slot: datetime | None = None
    missed_count: int | None = None
    calendar: str | None = None
    """For ``skipped`` with reason ``calendar``: the calendar that excluded the slots."""
    scheduled_for: datetime | None = None
    trigger_id: str | None = None
    priority: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    deadline: datetime | None = None
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    worker: str | None = None
    result: Any = None
    error: str | None = None
    next_retry_at: datetime | None = None
    timeline: list[TimelineEntry] = Field(default_factory=list)


class TaskPage(BaseModel):
    """One page of tasks."""

    items: list[TaskPublic]
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page; None on the last page."""


class ExecutionPage(BaseModel):
    """One page of executions, newest first."""

    items: list[ExecutionPublic]
    next_cursor: str | None = None


class TaskEventPublic(BaseModel):
    """One event of a task, as its audit view holds it (secrets as ``***``)."""

    id: str
    """The event id."""
    type: str = Field(examples=["TaskPaused"])
    sequence: int
    """The event's position in the task's history (1 is its creation)."""
    at: datetime | None = None
    actor: str | None = None
    """Who caused it: the ``sub`` of the token behind the command, or the scheduler's own actor."""
    data: dict[str, Any] = Field(default_factory=dict)
    """The event's fields, ``task_id`` as the client knows it, without the tenant."""


class TaskEventPage(BaseModel):
    """One page of a task's events, newest first."""

    items: list[TaskEventPublic]
    next_before: int | None = None
    """Pass as ``before`` for the next (older) page; None on the last page."""


class CommandResult(BaseModel):
    """The answer to a command: 202 ``accepted`` (on Kafka), or 200 ``applied`` after ``?wait``."""

    task_id: str
    command_id: str
    status: Literal["accepted", "applied"]
    execution_id: str | None = None
    """For a trigger or cancel: the execution concerned (a trigger's is known once applied)."""
    events: list[str] = Field(default_factory=list)
    """Types of the events the command caused (when applied)."""
    task: TaskPublic | None = None
    """The task after the command (when applied)."""


class FireTime(BaseModel):
    """One upcoming slot."""

    slot: datetime
    """The nominal slot."""
    fire_at: datetime
    """When it fires: the slot plus the task's deterministic jitter."""
    excluded_by: str | None = None
    """The task's calendar that excludes the slot (it is then recorded missed, not run), as the
    calendars stand now; None when the slot runs."""


class NextFireTimes(BaseModel):
    """A preview of the task's next slots, computed from its stored definition."""

    task_id: str
    status: str
    fire_times: list[FireTime]


class StatsPublic(BaseModel):
    """A tenant's statistics, summed over the per-partition documents (missing counters are 0)."""

    executions: dict[str, int] = Field(default_factory=dict)
    by_type: dict[str, Any] = Field(default_factory=dict)
    tasks: dict[str, int] = Field(default_factory=dict)
    tasks_by_type: dict[str, int] = Field(default_factory=dict)


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
