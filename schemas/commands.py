"""Commands: imperative requests put on the ``commands`` topic, keyed by task id.

Time comes in on the command (``at``); the pure core never reads a clock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from schemas._types import UtcDatetime, WireModel
from schemas.specs import Priority, TaskDefinition

_Id = Annotated[str, Field(min_length=1, max_length=200)]


class CommandBase(WireModel):
    """Fields every command carries."""

    command_id: _Id
    """Unique id of this command; redelivery of the same id is harmless."""
    task_id: _Id
    tenant: _Id
    actor: _Id
    """Who asked: a user id, a service name, or ``system`` for the firing loop and executors."""
    at: UtcDatetime
    """When the command was issued; the decider's only notion of "now"."""


class CreateTask(CommandBase):
    """Create a task with the given definition."""

    type: Literal["CreateTask"] = "CreateTask"
    definition: TaskDefinition


class UpdateTask(CommandBase):
    """Replace a task's definition; the schedule restarts from ``at``."""

    type: Literal["UpdateTask"] = "UpdateTask"
    definition: TaskDefinition
    expected_revision: int | None = Field(default=None, ge=1)
    """Optimistic concurrency: reject unless the task is at this revision."""


class PauseTask(CommandBase):
    """Stop firing scheduled slots; in-flight executions and their retries continue."""

    type: Literal["PauseTask"] = "PauseTask"
    note: str | None = Field(default=None, max_length=2000)


class ResumeTask(CommandBase):
    """Resume firing; slots missed while paused go through the catch-up policy."""

    type: Literal["ResumeTask"] = "ResumeTask"


class DeleteTask(CommandBase):
    """Delete the task; everything in flight is cancelled."""

    type: Literal["DeleteTask"] = "DeleteTask"


class TriggerTask(CommandBase):
    """Run the task now, once per ``trigger_id``."""

    type: Literal["TriggerTask"] = "TriggerTask"
    trigger_id: _Id
    """Idempotency key of the trigger; the execution id is derived from it."""
    params: dict[str, Any] | None = None
    """Merged over the definition's params for this execution only."""
    priority: Priority | None = None
    """Overrides the definition's priority for this execution only."""


class CancelExecution(CommandBase):
    """Cancel one execution that is in flight, waiting for a retry, or buffered."""

    type: Literal["CancelExecution"] = "CancelExecution"
    execution_id: _Id
    reason: str | None = Field(default=None, max_length=2000)


MAX_BACKFILL_SLOTS = 10_000
"""Most slots one backfill may hold: a bigger range is rejected (naming ``to``), so one command
cannot queue unbounded work. Split a longer range into several backfills."""


class BackfillTask(CommandBase):
    """Run the task for each slot of its schedule in the past range ``[from, to)``, as if it had
    been up then: every slot once, at most ``max_concurrency`` at a time.

    ``to`` must not be after ``at`` (no future slots), and the range must hold 1 to
    :data:`MAX_BACKFILL_SLOTS` slots. One backfill runs per task at a time.
    """

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    type: Literal["BackfillTask"] = "BackfillTask"
    backfill_id: _Id
    """Id of the backfill; its execution ids derive from it and the slot, and a repeated id is
    ignored (redelivery is harmless)."""
    from_: UtcDatetime = Field(alias="from")
    """First instant of the range (inclusive). On the wire: ``from``."""
    to: UtcDatetime
    """End of the range (exclusive); not after ``at``."""
    max_concurrency: int = Field(default=1, ge=1, le=100)
    """Most backfill executions in flight at once. Under an overlap policy other than
    ``allow_all``, backfill slots run one at a time whatever this says."""

    @field_validator("to")
    @classmethod
    def _after_from(cls, value: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("from_")
        if start is not None and value <= start:
            raise ValueError("to must be after from")
        return value


class CancelBackfill(CommandBase):
    """Cancel a running backfill: its pending slots are dropped, its executions in flight cancelled."""

    type: Literal["CancelBackfill"] = "CancelBackfill"
    backfill_id: _Id
    reason: str | None = Field(default=None, max_length=2000)


class Wake(CommandBase):
    """Sent by the firing loop when the task's next wakeup is due; ``at`` is the loop's clock."""

    type: Literal["Wake"] = "Wake"


class ReportExecutionStarted(CommandBase):
    """An executor started an attempt."""

    type: Literal["ReportExecutionStarted"] = "ReportExecutionStarted"
    execution_id: _Id
    attempt: int = Field(ge=1)
    worker: str
    started_at: UtcDatetime


class ReportExecutionOutcome(CommandBase):
    """An executor finished an attempt."""

    type: Literal["ReportExecutionOutcome"] = "ReportExecutionOutcome"
    execution_id: _Id
    attempt: int = Field(ge=1)
    worker: str
    status: Literal["succeeded", "failed"]
    error: str | None = None
    result: Any = None
    started_at: UtcDatetime
    finished_at: UtcDatetime


Command = Annotated[
    CreateTask
    | UpdateTask
    | PauseTask
    | ResumeTask
    | DeleteTask
    | TriggerTask
    | CancelExecution
    | BackfillTask
    | CancelBackfill
    | Wake
    | ReportExecutionStarted
    | ReportExecutionOutcome,
    Field(discriminator="type"),
]
"""Any command, discriminated by ``type``."""

COMMAND_TYPES: dict[str, type[CommandBase]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        CreateTask,
        UpdateTask,
        PauseTask,
        ResumeTask,
        DeleteTask,
        TriggerTask,
        CancelExecution,
        BackfillTask,
        CancelBackfill,
        Wake,
        ReportExecutionStarted,
        ReportExecutionOutcome,
    )
}
"""Command classes by their ``type`` literal."""
