"""Events: immutable facts on the ``task-events`` topic, keyed by task id.

``sequence`` is the task's version after the event (1, 2, 3 ... per task, contiguous); the
``event_id`` is derived from task id and sequence. ``ExecutionCompleted`` is also published on
the ``outcomes`` topic as the public contract of "what ran and how it ended".
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from schemas._types import UtcDatetime, WireModel
from schemas.specs import Priority, TaskDefinition, Work

MissedReason = Literal[
    "catch_up_skip",
    "catch_up_run_once",
    "catch_up_limit",
    "outside_window",
    "overlap",
    "superseded",
    "calendar",
]
"""Why slots did not run.

- ``catch_up_skip``: late beyond the misfire grace, catch-up mode ``skip``.
- ``catch_up_run_once``: late, and a later missed slot ran instead (mode ``run_once``).
- ``catch_up_limit``: late and inside the window, but beyond ``catch_up.max_runs`` (``run_all``).
- ``outside_window``: late and older than ``catch_up.window_seconds`` (``run_all``).

  Under overlap ``skip`` and ``buffer_one``, which run one slot at a time, a slot due together
  with a later one that ran instead (the worker was behind) gets the first three reasons too, by
  catch-up mode, even inside the misfire grace.
- ``overlap``: an execution was really running when the slot came due (or was still in flight
  when the slot had waited its bound for the outcome: the event's ``note`` says so) and the
  overlap policy did not run the slot.
- ``superseded``: due but not yet handled when the definition was updated.
- ``calendar``: excluded by one of the task's calendars (named in ``SlotsMissed.calendar``).
"""

ExecutionStatus = Literal["succeeded", "failed", "timed_out", "cancelled"]
DispatchReason = Literal["schedule", "manual", "retry", "buffered", "backfill"]
"""Why an attempt was dispatched: a slot of the schedule, a trigger, a retry, a buffered slot, or
a slot of a past range run by a backfill (``BackfillTask``)."""


class EventBase(WireModel):
    """Fields every event carries."""

    event_id: str
    """uuid5 of task id and sequence."""
    task_id: str
    tenant: str
    sequence: int = Field(ge=1)
    """The task's version after this event; contiguous per task."""
    at: UtcDatetime
    """The ``at`` of the command that caused the event."""
    causation_id: str
    """The ``command_id`` of the command that caused the event."""
    actor: str


class _NextFire(WireModel):
    """Where the task's schedule stands after the event (set by the decider)."""

    next_slot: UtcDatetime | None = None
    """The next nominal slot not yet handled; None when no slot is left."""
    next_fire_at: UtcDatetime | None = None
    """When ``next_slot`` fires: the slot plus its jitter."""


class TaskCreated(EventBase):
    """A task was created."""

    type: Literal["TaskCreated"] = "TaskCreated"
    definition: TaskDefinition
    revision: int = Field(ge=1)
    next_slot: UtcDatetime | None = None
    """The first nominal slot; None when the task has no schedule or it is already exhausted."""
    next_fire_at: UtcDatetime | None = None
    """When that slot fires: the slot plus its deterministic jitter."""


class TaskUpdated(EventBase):
    """A task's definition was replaced; its schedule restarts from the event's ``at``."""

    type: Literal["TaskUpdated"] = "TaskUpdated"
    definition: TaskDefinition
    revision: int = Field(ge=1)
    next_slot: UtcDatetime | None = None
    next_fire_at: UtcDatetime | None = None


class TaskPaused(EventBase):
    """A task stopped firing its schedule."""

    type: Literal["TaskPaused"] = "TaskPaused"
    note: str | None = None
    revision: int = Field(ge=1)
    reason: Literal["manual", "consecutive_failures"] = "manual"
    """``manual``: a ``PauseTask``; ``consecutive_failures``: the task's ``pause_after_failures``
    executions in a row ended failed or timed out (the note names the last error)."""
    failures: int | None = None
    """For ``consecutive_failures``: how many executions failed in a row."""


class TaskResumed(_NextFire, EventBase):
    """A paused task resumed firing its schedule."""

    type: Literal["TaskResumed"] = "TaskResumed"
    revision: int = Field(ge=1)


class TaskDeleted(EventBase):
    """A task was deleted."""

    type: Literal["TaskDeleted"] = "TaskDeleted"


class TaskCompleted(EventBase):
    """A task's schedule is exhausted; in-flight executions still finish, triggers still work."""

    type: Literal["TaskCompleted"] = "TaskCompleted"
    reason: Literal["run_limit", "end_reached", "one_shot"]


class SlotsMissed(_NextFire, EventBase):
    """A contiguous range of the task's slots that did not run, with the reason."""

    type: Literal["SlotsMissed"] = "SlotsMissed"
    first_slot: UtcDatetime
    last_slot: UtcDatetime
    count: int = Field(ge=1)
    reason: MissedReason
    truncated: bool = False
    """True when ``count`` is a lower bound because counting stopped at a safety limit."""
    calendar: str | None = None
    """For reason ``calendar``: the name of the calendar that excluded the slots."""
    note: str | None = None
    """Why, in words, where the reason alone does not say it: an ``overlap`` decided before the
    execution in flight reported its end, because the slots waited for it past their bound."""


class ExecutionDispatched(_NextFire, EventBase):
    """An attempt of an execution was sent to the executors."""

    type: Literal["ExecutionDispatched"] = "ExecutionDispatched"
    execution_id: str
    attempt: int = Field(ge=1)
    reason: DispatchReason
    slot: UtcDatetime | None = None
    """The scheduled slot; None for manual triggers."""
    trigger_id: str | None = None
    priority: Priority
    work: Work
    params: dict[str, Any] = Field(default_factory=dict)
    scheduled_for: UtcDatetime
    """The slot, or the trigger's ``at`` for manual executions."""
    deadline: UtcDatetime
    """The attempt times out at this instant (dispatch time plus the task's timeout)."""
    backfill_id: str | None = None
    """The backfill that runs this slot (reason ``backfill``, and its retries); None otherwise."""


class ExecutionBuffered(_NextFire, EventBase):
    """A slot was buffered (overlap ``buffer_one``); it is dispatched when nothing is in flight."""

    type: Literal["ExecutionBuffered"] = "ExecutionBuffered"
    execution_id: str
    slot: UtcDatetime


class ExecutionStarted(EventBase):
    """An executor reported it started an attempt."""

    type: Literal["ExecutionStarted"] = "ExecutionStarted"
    execution_id: str
    attempt: int = Field(ge=1)
    worker: str
    started_at: UtcDatetime


class AttemptFailed(EventBase):
    """An attempt failed or timed out; ``retry_at`` is set when another attempt will follow."""

    type: Literal["AttemptFailed"] = "AttemptFailed"
    execution_id: str
    attempt: int = Field(ge=1)
    error: str | None = None
    timed_out: bool = False
    retry_at: UtcDatetime | None = None


class ExecutionCompleted(EventBase):
    """The one final event of an execution. Published on the ``outcomes`` topic."""

    type: Literal["ExecutionCompleted"] = "ExecutionCompleted"
    execution_id: str
    status: ExecutionStatus
    attempts: int = Field(ge=0)
    """Attempts dispatched; 0 for a buffered execution cancelled before it ran."""
    result: Any = None
    error: str | None = None
    started_at: UtcDatetime | None = None
    """When the first attempt started; None if it never started."""
    finished_at: UtcDatetime
    duration_ms: int | None = None
    """``finished_at - started_at`` in milliseconds; None if it never started."""
    slot: UtcDatetime | None = None
    scheduled_for: UtcDatetime | None = None
    trigger_id: str | None = None
    backfill_id: str | None = None
    """The backfill that ran this execution; None for scheduled and manual executions."""


class _Range(WireModel):
    # The wire names are ``from`` and ``to``; ``from`` is a Python keyword, hence ``from_``.
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)


class BackfillStarted(_Range, EventBase):
    """A backfill of the slots in ``[from, to)`` started; its executions are dispatched as slots
    free up, at most ``max_concurrency`` at once (one at a time unless the overlap policy is
    ``allow_all``)."""

    type: Literal["BackfillStarted"] = "BackfillStarted"
    backfill_id: str
    from_: UtcDatetime = Field(alias="from")
    """First instant of the range (inclusive)."""
    to: UtcDatetime
    """End of the range (exclusive)."""
    max_concurrency: int = Field(ge=1)
    """Most backfill executions in flight at once, as asked."""
    slots: int = Field(ge=0)
    """How many slots of the schedule the range holds when the backfill starts."""


class BackfillEnded(EventBase):
    """A backfill ended: every slot ran (``completed``), or it was cancelled (pending slots dropped,
    its executions in flight cancelled; their ``ExecutionCompleted`` events follow this one)."""

    type: Literal["BackfillEnded"] = "BackfillEnded"
    backfill_id: str
    status: Literal["completed", "cancelled"]
    dispatched: int = Field(ge=0)
    """Slots of the range that were dispatched."""
    reason: str | None = None
    """Why it was cancelled."""


class CommandRejected(EventBase):
    """A command was refused for a business reason."""

    type: Literal["CommandRejected"] = "CommandRejected"
    command_id: str
    command_type: str
    reason: str
    field: str | None = None
    """Dotted path of the offending field in the command, or None."""


Event = Annotated[
    TaskCreated
    | TaskUpdated
    | TaskPaused
    | TaskResumed
    | TaskDeleted
    | TaskCompleted
    | SlotsMissed
    | ExecutionDispatched
    | ExecutionBuffered
    | ExecutionStarted
    | AttemptFailed
    | ExecutionCompleted
    | BackfillStarted
    | BackfillEnded
    | CommandRejected,
    Field(discriminator="type"),
]
"""Any event, discriminated by ``type``."""

EVENT_TYPES: dict[str, type[EventBase]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        TaskCreated,
        TaskUpdated,
        TaskPaused,
        TaskResumed,
        TaskDeleted,
        TaskCompleted,
        SlotsMissed,
        ExecutionDispatched,
        ExecutionBuffered,
        ExecutionStarted,
        AttemptFailed,
        ExecutionCompleted,
        BackfillStarted,
        BackfillEnded,
        CommandRejected,
    )
}
"""Event classes by their ``type`` literal."""
