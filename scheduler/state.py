"""The decider's state of one task, folded from its events by :func:`scheduler.decider.evolve`.

The state is a frozen pydantic model so the stream shell can store it as JSON
(:func:`dump_state` / :func:`load_state`); it is never mutated, only replaced.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas._types import LATEST, UtcDatetime
from schemas.events import DispatchReason
from schemas.specs import TOLERANT, OverlapPolicy, Priority, TaskDefinition, Work

TaskStatus = Literal["absent", "active", "paused", "completed", "deleted"]
"""Lifecycle of a task.

- ``absent``: no task, but the id has history (a rejected command); behaves as missing.
- ``active``: the schedule fires.
- ``paused``: the schedule does not fire; missed slots accumulate for catch-up on resume.
- ``completed``: the schedule is exhausted; executions finish, triggers still run.
- ``deleted``: gone; behaves as missing, except that a repeated delete is a no-op.
"""

RECENT_IDS = 64
"""How many recent command ids and trigger ids are remembered for idempotency."""

HOLD_MIN_SECONDS = 120.0
"""Least time a slot that came due while an execution was in flight waits for that execution's
outcome (``skip`` and ``buffer_one``) before it is decided as overlapping without it; the task's
``misfire_grace_seconds`` when larger. It bridges the time an outcome takes to be applied (the
executor's report batching, a processor behind by seconds, a failover of tens of seconds)."""

HOLDING_POLICIES = frozenset({OverlapPolicy.SKIP, OverlapPolicy.BUFFER_ONE})
"""Overlap policies under which a slot that comes due during an execution is held for its outcome."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Execution(_Frozen):
    """An execution that has not finished: running, queued, or waiting for a retry."""

    execution_id: str
    origin: DispatchReason
    """``schedule``, ``manual`` or ``backfill`` (buffered slots are ``schedule`` once dispatched)."""
    slot: UtcDatetime | None = None
    trigger_id: str | None = None
    scheduled_for: UtcDatetime
    priority: Priority
    work: Work
    params: dict[str, Any] = Field(default_factory=dict)
    attempt: int
    """The latest dispatched attempt."""
    deadline: UtcDatetime | None = None
    """Deadline of the running attempt; None while waiting for a retry."""
    retry_at: UtcDatetime | None = None
    """When the next attempt is due; None unless waiting for a retry."""
    attempt_started: bool = False
    """Whether the running attempt was reported started."""
    started_at: UtcDatetime | None = None
    """When the first attempt started."""
    last_error: str | None = None
    backfill_id: str | None = None
    """The backfill running this slot; None for scheduled and manual executions."""


class Buffered(_Frozen):
    """A slot held back by the ``buffer_one`` overlap policy."""

    execution_id: str
    slot: UtcDatetime


class Backfill(_Frozen):
    """The running backfill of a task: its range and how far it got, never a list of slots
    (they are enumerated from the schedule as they are dispatched, see :mod:`scheduler.backfill`)."""

    backfill_id: str
    start: UtcDatetime
    """First instant of the range (inclusive; ``from`` on the wire)."""
    end: UtcDatetime
    """End of the range (exclusive; ``to`` on the wire)."""
    max_concurrency: int
    """Most of its executions in flight at once, as asked (the overlap policy may lower it to 1)."""
    cursor: UtcDatetime | None = None
    """The last slot dispatched; None before the first."""
    dispatched: int = 0
    """Slots dispatched so far."""


class Counters(_Frozen):
    """Running totals, for views and metrics."""

    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    attempts_failed: int = 0
    slots_missed: int = 0
    rejected: int = 0


class TaskState(_Frozen):
    """Everything the decider knows about one task."""

    task_id: str
    tenant: str
    definition: TaskDefinition | None = None
    """None only while ``absent``."""
    status: TaskStatus
    revision: int = 0
    """Bumped by every user change (create, update, pause, resume); for ``expected_revision``."""
    version: int
    """Sequence number of the last event applied."""
    incarnation: int = 0
    """How many times a task was created under this id (1 for the first creation)."""
    created_at: UtcDatetime | None = None
    next_slot: UtcDatetime | None = None
    """The next nominal slot not yet handled (kept while paused, so resume can catch up)."""
    next_fire_at: UtcDatetime | None = None
    """When ``next_slot`` is due: the slot plus its jitter."""
    last_slot: UtcDatetime | None = None
    """The latest slot handled (run, buffered or missed)."""
    runs: int = 0
    """Executions created from the schedule or by triggers."""
    scheduled_runs: int = 0
    """Executions created from the schedule; compared with ``max_runs``."""
    in_flight: dict[str, Execution] = Field(default_factory=dict)
    buffered: Buffered | None = None
    recent_trigger_ids: tuple[str, ...] = ()
    recent_command_ids: tuple[str, ...] = ()
    counters: Counters = Field(default_factory=Counters)
    backfill: Backfill | None = None
    """The backfill running now (one at a time per task); None when none is."""
    recent_backfill_ids: tuple[str, ...] = ()
    """Ids of the latest backfills started, so a repeated ``BackfillTask`` does not run again."""
    consecutive_failures: int = 0
    """Executions in a row whose final outcome was ``failed`` or ``timed_out`` (a success resets
    it, a resume clears it); compared with ``pause_after_failures``."""

    @property
    def exists(self) -> bool:
        """Whether the task exists (not absent and not deleted)."""
        return self.status not in ("absent", "deleted")

    @property
    def scheduled_in_flight(self) -> list[Execution]:
        """Executions in flight that are not a backfill's: what the overlap policy of the
        schedule looks at (backfill executions run in a lane of their own)."""
        return [e for e in self.in_flight.values() if e.backfill_id is None]

    @property
    def backfill_in_flight(self) -> list[Execution]:
        """Executions in flight that belong to a backfill."""
        return [e for e in self.in_flight.values() if e.backfill_id is not None]

    @property
    def pending_retries(self) -> dict[str, datetime]:
        """Execution id -> when its next attempt is due, for executions waiting for a retry."""
        return {i: e.retry_at for i, e in self.in_flight.items() if e.retry_at is not None}


def execution_key(state: TaskState) -> str:
    """The task id as used to derive execution ids.

    A task re-created after a delete is a new incarnation whose slots may coincide with the
    old one's; qualifying its ids keeps every execution id unique for the life of the id.
    """
    return state.task_id if state.incarnation <= 1 else f"{state.task_id}#{state.incarnation}"


def holds_slots(state: TaskState) -> bool:
    """Whether a slot coming due now is *held*: left undecided until the execution in flight ends.

    True for an active task under overlap ``skip`` or ``buffer_one`` with an execution of the
    schedule's lane (scheduled, buffered or manual; not a backfill's) in flight. A held slot is
    simply not handled yet: ``next_slot`` stays on it, so it needs no field of its own and the
    state stays the fold of the events. The outcome decides it (see :mod:`scheduler.decider`).
    """
    definition = state.definition
    return (
        state.status == "active"
        and definition is not None
        and definition.overlap in HOLDING_POLICIES
        and any(e.backfill_id is None for e in state.in_flight.values())
    )


def hold_seconds(definition: TaskDefinition) -> float:
    """How long a held slot waits for the outcome, counted from its fire time (the bound)."""
    return max(definition.misfire_grace_seconds, HOLD_MIN_SECONDS)


def release_at(definition: TaskDefinition, fire_time: datetime) -> datetime:
    """When a slot held since ``fire_time`` is decided as overlapping without waiting any longer."""
    return min(fire_time + timedelta(seconds=hold_seconds(definition)), LATEST)


def next_wakeup(state: TaskState | None) -> datetime | None:
    """When the task next needs a ``Wake``: the earliest of its next fire time (when active),
    any retry time and any in-flight deadline. None when nothing is pending.

    While slots are held (:func:`holds_slots`) the next slot needs no ``Wake`` at its fire time:
    the outcome decides it. It needs one when the hold's bound passes (:func:`release_at`), so the
    firing loop neither spins on a held slot nor forgets it.
    """
    if state is None or not state.exists:
        return None
    candidates: list[datetime] = []
    definition = state.definition
    if state.status == "active" and state.next_fire_at is not None:
        if definition is not None and holds_slots(state):
            candidates.append(release_at(definition, state.next_fire_at))
        else:
            candidates.append(state.next_fire_at)
    for execution in state.in_flight.values():
        if execution.retry_at is not None:
            candidates.append(execution.retry_at)
        if execution.deadline is not None:
            candidates.append(execution.deadline)
    return min(candidates, default=None)


def dump_state(state: TaskState) -> bytes:
    """Serialise a state for a state store."""
    return state.model_dump_json().encode()


def load_state(raw: bytes) -> TaskState:
    """Inverse of :func:`dump_state`."""
    return TaskState.model_validate_json(raw, context=TOLERANT)


def remember(ids: tuple[str, ...], new: str) -> tuple[str, ...]:
    """Append ``new`` to a bounded, most-recent-last tuple of ids."""
    if new in ids:
        return ids
    return (*ids, new)[-RECENT_IDS:]
