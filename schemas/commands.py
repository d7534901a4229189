"""Commands: imperative requests put on the ``commands`` topic, keyed by task id.

Time comes in on the command (``at``); the pure core never reads a clock.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

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
        Wake,
        ReportExecutionStarted,
        ReportExecutionOutcome,
    )
}
"""Command classes by their ``type`` literal."""
