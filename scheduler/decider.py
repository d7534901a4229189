"""The Decider: ``decide(command, state) -> events`` and ``evolve(state, event) -> state``.

Pure and total. Time comes in on the command; business rejections are ``CommandRejected``
events, never exceptions; ``evolve`` never raises. ``decide`` folds each event it emits into
its working state as it goes, so later decisions in the same command see earlier ones, and
the events it returns are exactly what ``evolve`` will apply.

Decisions where the brief left room (documented once, here):

* **Idempotency.** A command whose ``command_id`` is among the task's recent command ids
  (see :data:`scheduler.state.RECENT_IDS`) yields no events, whatever its type.
* **Missing tasks.** User commands on a missing, deleted or other-tenant task are rejected
  with ``"task not found"`` (field ``task_id``); a repeated ``DeleteTask`` yields nothing.
  System commands (``Wake`` and the execution reports) on a missing or deleted task yield
  nothing: they are stale, not mistakes. ``CreateTask`` on an existing id is rejected with
  ``"task already exists"`` whatever the tenant (the id is taken either way; the API should
  give task ids a tenant-specific namespace). Creating again after a delete is allowed.
* **Tenants.** A task id of the form ``<tenant>/<id>`` belongs to that tenant: a command (of
  any type, ``CreateTask`` included) naming another tenant is rejected with ``"tenant does
  not match the task's tenant"`` (field ``tenant``), before anything else is looked at. For
  other ids the task's tenant is its state's: commands of another tenant on an existing task
  get ``"task not found"`` as above (its existence is not revealed). The rejection carries the
  command's tenant, like every rejection, and is counted on the task. A command forged with
  the owner's tenant cannot be told apart here: the fences on work (``streams/fence.py``) keep
  tenants from producing commands at all.
* **Pause/resume** are idempotent: pausing a paused task or resuming an active one yields no
  events. Both are rejected on a completed task (``"task is completed"``).
* **Update** restarts the schedule strictly after the command's ``at``. Slots that were due
  but not yet handled (typically while paused) are recorded as ``SlotsMissed(superseded)``.
  Updating a completed task re-activates it if the new definition has slots left.
* **Triggers** dispatch immediately, bypassing the overlap policy (explicit intent), on
  active, paused and completed tasks. They count in ``runs`` but not towards ``max_runs``.
* **Timeouts**: an attempt's deadline is its dispatch time plus ``timeout_seconds`` (queueing
  counts). A late outcome report for a timed-out attempt is stale and ignored.
* **Re-creating** a deleted task starts a new incarnation: execution ids are derived from
  ``task_id#N`` for N > 1 (see :func:`scheduler.state.execution_key`), so they never repeat.
  Recent command and trigger ids carry over, so redelivered commands stay harmless.
* **Deleting** a task cancels everything in flight or buffered (``ExecutionCompleted``
  ``cancelled``) so every execution still gets its one final event.
* **Jitter and order**: slots fire in order. A slot whose jittered time is before an earlier
  slot's waits for it and is not counted late for that wait (only possible when the jitter is
  not below the gap between slots, which new definitions may not have).
* **Calendars**: the worker passes the tenant's calendars in (``calendars``, by name; the core
  reads no topic). At wake time a due slot that one of the task's calendars excludes is recorded
  as ``SlotsMissed(reason="calendar", calendar=<name>)`` (adjacent slots of one calendar in one
  event) and is not counted as a run; the other due slots then go through catch-up as if the
  excluded ones did not exist (``run_once`` runs the latest slot not excluded). Triggers ignore
  calendars. A listed name the tenant has no calendar for excludes nothing.
* **Long outages**: one ``Wake`` handles at most :data:`MAX_SLOTS_PER_DECISION` due slots;
  the oldest are recorded as missed and the task stays due, so the firing loop wakes it again
  at once and the rest are handled in the next batch.
* **Backfill** (``BackfillTask``) runs every slot of the schedule in ``[from, to)`` once (see
  :mod:`scheduler.backfill` for which slots), whether or not the schedule ran or missed it then:
  its execution ids derive from the backfill id and the slot, so they differ from the
  schedule's. One backfill per task at a time (a second is rejected until the first ends; a
  repeated backfill id yields nothing). The state holds its range and a cursor, never a list of
  slots; the next slots are dispatched as its executions finish. Backfill executions run in a
  lane of their own: the overlap policy applies among them (``allow_all``: up to
  ``max_concurrency`` at once; ``skip``, ``buffer_one`` and ``cancel_other``: one at a time),
  and they neither hold back, cancel nor are cancelled by scheduled slots. They do not count
  towards ``max_runs``. A paused task holds its backfill's pending slots (executions in flight
  finish) until resumed; a completed task still backfills. Cancelling (``CancelBackfill``)
  drops the pending slots and cancels the executions in flight; deleting the task cancels it too.
* **Overlap holds** (issue 9): under ``skip`` and ``buffer_one`` a slot that comes due while an
  execution of the schedule's lane (scheduled, buffered or manual, not a backfill's) is in flight
  is *held*: not decided yet, ``next_slot`` stays on it, so the state stays the fold of the events
  and needs no new field. When that execution ends (success, failure without a retry left,
  timeout, cancellation), the held slots that fired within its run (its first attempt's start, or
  its scheduled time when that is unknown, to ``finished_at``) overlapped it: ``skip`` records them
  missed ``overlap``, ``buffer_one`` buffers the first (run at once when nothing else is in flight)
  and misses the others. The held slots after those came due while nothing ran: once nothing is
  in flight they are decided as late slots, by catch-up and misfire grace, in the same decision
  (the ones that run are dispatched there, with their slot's execution id). A retry keeps the
  execution in flight, so its slots stay held. A held slot waits at most
  :func:`scheduler.state.hold_seconds` from its fire time (``next_wakeup`` asks for a ``Wake``
  then, not at the fire time); past it, it is decided as overlapping with a note saying so. A slot
  a calendar excludes is not held. A pause leaves held slots pending like any slot due while
  paused (caught up on resume); an update supersedes them; a delete drops them (they never had
  an execution to cancel, unlike a buffered slot). Under ``skip`` and ``buffer_one``, several
  slots due at once (the worker was behind, or learned late that the run before them ended) run
  one: the latest; the older ones are missed with the catch-up mode's reason (run one after the
  other, each would wait for the previous outcome and the worker would fall further behind).
* **Pause after failures**: with ``pause_after_failures`` N, the execution whose final outcome
  makes N ``failed``/``timed_out`` in a row (scheduled, manual and backfill alike; a success
  resets the count, a cancellation does not) pauses an active task in the same decision
  (``TaskPaused`` reason ``consecutive_failures``), so no further slot is dispatched. Resuming
  clears the count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import accumulate
from typing import Any, Literal, TypeVar, assert_never, cast

from scheduler.backfill import RangeProblem, checked_range, slot_after
from scheduler.calendar import Exclusions, task_calendars
from scheduler.retry import backoff, should_retry
from scheduler.schedule import anchor_for, fire_at, next_slot
from scheduler.state import (
    HOLDING_POLICIES,
    Backfill,
    Buffered,
    Counters,
    Execution,
    TaskState,
    execution_key,
    hold_seconds,
    holds_slots,
    release_at,
    remember,
)
from schemas._types import LATEST
from schemas.calendars import Calendar
from schemas.commands import (
    BackfillTask,
    CancelBackfill,
    CancelExecution,
    Command,
    CreateTask,
    DeleteTask,
    PauseTask,
    ReportExecutionOutcome,
    ReportExecutionStarted,
    ResumeTask,
    TriggerTask,
    UpdateTask,
    Wake,
)
from schemas.errors import InvalidCommand
from schemas.events import (
    AttemptFailed,
    BackfillEnded,
    BackfillStarted,
    CommandRejected,
    Event,
    EventBase,
    ExecutionBuffered,
    ExecutionCompleted,
    ExecutionDispatched,
    ExecutionStarted,
    ExecutionStatus,
    MissedReason,
    SlotsMissed,
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskPaused,
    TaskResumed,
    TaskUpdated,
)
from schemas.ids import event_id, execution_id_for_backfill, execution_id_for_slot, execution_id_for_trigger
from schemas.specs import CatchUpMode, OnceSchedule, OverlapPolicy, TaskDefinition

initial_state: TaskState | None = None
"""The state of a task id that has no history."""

MAX_SLOTS_PER_DECISION = 10_000
"""Most due slots one ``Wake`` handles; bounds the work of a single decision."""

_E = TypeVar("_E", bound=EventBase)
_MICROSECOND = timedelta(microseconds=1)


# =============================================================================================
# decide
# =============================================================================================


@dataclass(frozen=True)
class Decision:
    """What a command decides: its events, and the state they lead to.

    ``state`` is ``evolve`` folded over ``events`` from the state the command saw (the decider
    folds each event as it emits it), so a shell stores it without folding the events again.
    """

    events: list[Event]
    state: TaskState | None


def decision(command: Command, state: TaskState | None, calendars: Mapping[str, Calendar] | None = None) -> Decision:
    """The events that result from ``command`` given the task's current ``state``, and the new state.

    ``calendars`` are the command tenant's calendars by name (only a ``Wake`` reads them).
    """
    if state is not None and command.command_id in state.recent_command_ids:
        return Decision([], state)
    d = _Decision(
        _Meta(command.task_id, command.tenant, command.actor, command.command_id, command.type, command.at),
        state,
        calendars or {},
    )
    if not tenant_owns(command.tenant, command.task_id):
        d.reject(TENANT_MISMATCH, "tenant")
        return d.finish()
    match command:
        case CreateTask():
            _create(d, command)
        case UpdateTask():
            _update(d, command)
        case PauseTask():
            _pause(d, command)
        case ResumeTask():
            _resume(d)
        case DeleteTask():
            _delete(d)
        case TriggerTask():
            _trigger(d, command)
        case CancelExecution():
            _cancel(d, command)
        case BackfillTask():
            _backfill(d, command)
        case CancelBackfill():
            _cancel_backfill(d, command)
        case Wake():
            _wake(d)
        case ReportExecutionStarted():
            _report_started(d, command)
        case ReportExecutionOutcome():
            _report_outcome(d, command)
        case _:
            assert_never(command)
    return d.finish()


TENANT_MISMATCH = "tenant does not match the task's tenant"
"""Reason of the rejection of a command whose tenant is not its task's."""


def tenant_owns(tenant: str, task_id: str) -> bool:
    """False when ``task_id`` is ``<other tenant>/<id>``: the id names its tenant, and it is not
    ``tenant``. Ids without a ``/`` carry no tenant (their state's tenant decides)."""
    owner, sep, _ = task_id.partition("/")
    return not sep or owner == tenant


def decide(command: Command, state: TaskState | None) -> list[Event]:
    """The events that result from ``command`` given the task's current ``state``."""
    return decision(command, state).events


def rejection(error: InvalidCommand, state: TaskState | None) -> Decision:
    """The ``CommandRejected`` event answering a command whose body failed validation, and the new state."""
    if state is not None and error.command_id in state.recent_command_ids:
        return Decision([], state)
    meta = _Meta(error.task_id, error.tenant, error.actor, error.command_id, error.command_type, error.at)
    d = _Decision(meta, state, {})
    d.reject(error.reason, error.field)
    return d.finish()


def reject_invalid(error: InvalidCommand, state: TaskState | None) -> list[Event]:
    """The ``CommandRejected`` event answering a command whose body failed validation."""
    return rejection(error, state).events


# ---------------------------------------------------------------------------------------------
# Task lifecycle
# ---------------------------------------------------------------------------------------------


def _create(d: _Decision, cmd: CreateTask) -> None:
    prior = d.state
    if prior is not None and prior.exists:
        d.reject("task already exists", "task_id")
        return
    definition = cmd.definition
    if (problem := _definition_problem(definition)) is not None:
        d.reject(*problem)
        return
    anchor = anchor_for(definition, cmd.at)
    first = _first_slot(definition, anchor, cmd.at, last_slot=None, runs=0)
    d.emit(
        TaskCreated,
        definition=definition,
        revision=(prior.revision if prior is not None else 0) + 1,
        next_slot=first,
        next_fire_at=_fire_at(d.meta.task_id, definition, first),
    )
    d.complete_if_exhausted()


def _update(d: _Decision, cmd: UpdateTask) -> None:
    if (live := d.live()) is None:
        return
    state, old = live
    if cmd.expected_revision is not None and cmd.expected_revision != state.revision:
        d.reject(
            f"expected revision {cmd.expected_revision} but the task is at revision {state.revision}",
            "expected_revision",
        )
        return
    definition = cmd.definition
    if (problem := _definition_problem(definition)) is not None:
        d.reject(*problem)
        return
    if state.status in ("active", "paused") and state.next_slot is not None and state.next_slot <= cmd.at:
        _supersede(d, state, old, cmd.at)
    state = d.require_state()
    assert state.created_at is not None  # set by TaskCreated on every existing task
    anchor = anchor_for(definition, state.created_at)
    nxt = _first_slot(definition, anchor, cmd.at, last_slot=state.last_slot, runs=state.scheduled_runs)
    d.emit(
        TaskUpdated,
        definition=definition,
        revision=state.revision + 1,
        next_slot=nxt,
        next_fire_at=_fire_at(d.meta.task_id, definition, nxt),
    )
    d.complete_if_exhausted()
    _advance_backfill(d)  # the new overlap policy may allow more at once


def _supersede(d: _Decision, state: TaskState, old: TaskDefinition, until: datetime) -> None:
    """Record the old definition's due-but-unhandled slots (at or before ``until``)."""
    assert state.next_slot is not None and state.created_at is not None
    anchor = anchor_for(old, state.created_at)
    first = last = state.next_slot
    count = 1
    truncated = False
    while (nxt := next_slot(old, last, anchor=anchor)) is not None and nxt <= until:
        if count >= MAX_SLOTS_PER_DECISION:
            truncated = True
            break
        last, count = nxt, count + 1
    d.emit(
        SlotsMissed,
        first_slot=first,
        last_slot=last,
        count=count,
        reason="superseded",
        truncated=truncated,
    )


def _pause(d: _Decision, cmd: PauseTask) -> None:
    if (live := d.live()) is None:
        return
    state, _ = live
    if state.status == "completed":
        d.reject("task is completed", None)
    elif state.status == "active":
        d.emit(TaskPaused, note=cmd.note, revision=state.revision + 1)


def _resume(d: _Decision) -> None:
    if (live := d.live()) is None:
        return
    state, _ = live
    if state.status == "completed":
        d.reject("task is completed", None)
    elif state.status == "paused":
        # next_slot is kept: the next Wake applies catch-up to everything missed meanwhile.
        d.emit(TaskResumed, revision=state.revision + 1)
        _advance_backfill(d)  # a pause held the backfill's pending slots


def _delete(d: _Decision) -> None:
    state = d.state
    if state is not None and state.status == "deleted" and state.tenant == d.meta.tenant:
        return
    if (live := d.live()) is None:
        return
    state, _ = live
    if state.backfill is not None:
        d.end_backfill(state.backfill, "cancelled", reason="task deleted")
    for execution in sorted(state.in_flight.values(), key=lambda e: e.execution_id):
        d.complete(execution, "cancelled", error="task deleted")
    if state.buffered is not None:
        d.cancel_buffered(state.buffered, "task deleted")
    d.emit(TaskDeleted)


# ---------------------------------------------------------------------------------------------
# Executions
# ---------------------------------------------------------------------------------------------


def _trigger(d: _Decision, cmd: TriggerTask) -> None:
    if (live := d.live()) is None:
        return
    state, definition = live
    execution_id = execution_id_for_trigger(execution_key(state), cmd.trigger_id)
    if cmd.trigger_id in state.recent_trigger_ids or execution_id in state.in_flight:
        return
    d.dispatch(
        execution_id=execution_id,
        attempt=1,
        reason="manual",
        slot=None,
        trigger_id=cmd.trigger_id,
        priority=cmd.priority or definition.priority,
        work=definition.work,
        params={**definition.params, **(cmd.params or {})},
        scheduled_for=cmd.at,
    )


def _cancel(d: _Decision, cmd: CancelExecution) -> None:
    if (live := d.live()) is None:
        return
    state, _ = live
    reason = cmd.reason or f"cancelled by {cmd.actor}"
    if (execution := state.in_flight.get(cmd.execution_id)) is not None:
        d.complete(execution, "cancelled", error=reason)
        _settle(d, execution)
        _advance_backfill(d)
    elif state.buffered is not None and state.buffered.execution_id == cmd.execution_id:
        d.cancel_buffered(state.buffered, reason)
    else:
        d.reject("execution not found", "execution_id")


def _report_started(d: _Decision, cmd: ReportExecutionStarted) -> None:
    if (live := d.system_target()) is None:
        return
    state, _ = live
    execution = state.in_flight.get(cmd.execution_id)
    if (
        execution is None
        or execution.attempt != cmd.attempt
        or execution.deadline is None  # waiting for a retry: the report is about an old attempt
        or execution.attempt_started
    ):
        return
    d.emit(
        ExecutionStarted,
        execution_id=cmd.execution_id,
        attempt=cmd.attempt,
        worker=cmd.worker,
        started_at=cmd.started_at,
    )


def _report_outcome(d: _Decision, cmd: ReportExecutionOutcome) -> None:
    if (live := d.system_target()) is None:
        return
    state, _ = live
    execution = state.in_flight.get(cmd.execution_id)
    if execution is None or execution.attempt != cmd.attempt or execution.deadline is None:
        return
    if cmd.status == "succeeded":
        d.complete(
            execution,
            "succeeded",
            result=cmd.result,
            error=None,
            started_at=cmd.started_at,
            finished_at=cmd.finished_at,
        )
        _settle(d, execution, started_at=cmd.started_at, finished_at=cmd.finished_at)
    else:
        d.fail_attempt(
            execution,
            error=cmd.error or "attempt failed",
            timed_out=False,
            result=cmd.result,
            started_at=cmd.started_at,
            finished_at=cmd.finished_at,
        )
    _advance_backfill(d)


# ---------------------------------------------------------------------------------------------
# Backfill
# ---------------------------------------------------------------------------------------------


def _backfill(d: _Decision, cmd: BackfillTask) -> None:
    if (live := d.live()) is None:
        return
    state, definition = live
    if cmd.backfill_id in state.recent_backfill_ids:
        return  # the same backfill asked again (a redelivery or a retried request)
    if state.backfill is not None:
        d.reject(f"backfill {state.backfill.backfill_id} is still running; cancel it or wait for it to end", None)
        return
    assert state.created_at is not None  # set by TaskCreated on every existing task
    checked = checked_range(definition, state.created_at, cmd.from_, cmd.to, cmd.at)
    if isinstance(checked, RangeProblem):
        d.reject(checked.reason, checked.field)
        return
    d.emit(
        BackfillStarted,
        backfill_id=cmd.backfill_id,
        from_=cmd.from_,
        to=cmd.to,
        max_concurrency=cmd.max_concurrency,
        slots=checked,
    )
    _advance_backfill(d)


def _cancel_backfill(d: _Decision, cmd: CancelBackfill) -> None:
    if (live := d.live()) is None:
        return
    state, _ = live
    backfill = state.backfill
    if backfill is None or backfill.backfill_id != cmd.backfill_id:
        if cmd.backfill_id in state.recent_backfill_ids:
            d.reject("backfill already ended", None)
        else:
            d.reject("backfill not found", "backfill_id")
        return
    reason = cmd.reason or f"cancelled by {cmd.actor}"
    d.end_backfill(backfill, "cancelled", reason=reason)
    for execution in sorted(state.backfill_in_flight, key=lambda e: e.execution_id):
        d.complete(execution, "cancelled", error=reason)


def _advance_backfill(d: _Decision) -> None:
    """Dispatch the running backfill's next slots up to its limit; end it once every slot ran."""
    state = d.state
    if state is None or not state.exists or state.backfill is None or state.definition is None:
        return
    if state.status == "paused":
        return
    assert state.created_at is not None
    definition = state.definition
    backfill: Backfill = state.backfill
    limit = backfill.max_concurrency if definition.overlap is OverlapPolicy.ALLOW_ALL else 1
    while True:
        slot = slot_after(definition, state.created_at, backfill.cursor, backfill.start, backfill.end)
        if slot is None:
            if not state.backfill_in_flight:
                d.end_backfill(backfill, "completed")
            return
        if len(state.backfill_in_flight) >= limit:
            return
        d.dispatch_slot(
            execution_id_for_backfill(execution_key(state), backfill.backfill_id, slot),
            slot,
            "backfill",
            backfill_id=backfill.backfill_id,
        )
        state = d.require_state()
        assert state.backfill is not None and state.created_at is not None
        backfill = state.backfill


# ---------------------------------------------------------------------------------------------
# Wake: timeouts, retries, due slots
# ---------------------------------------------------------------------------------------------


def _wake(d: _Decision) -> None:
    if d.system_target() is None:
        return
    at = d.meta.at
    state = d.require_state()
    timed_out = [e for e in state.in_flight.values() if e.deadline is not None and e.deadline <= at]
    for execution in sorted(timed_out, key=lambda e: (e.deadline, e.execution_id)):
        d.fail_attempt(
            execution,
            error=f"attempt {execution.attempt} timed out (deadline {execution.deadline})",
            timed_out=True,
        )
    state = d.require_state()
    due = [e for e in state.in_flight.values() if e.retry_at is not None and e.retry_at <= at]
    for execution in sorted(due, key=lambda e: (e.retry_at, e.execution_id)):
        d.dispatch(
            execution_id=execution.execution_id,
            attempt=execution.attempt + 1,
            reason="retry",
            slot=execution.slot,
            trigger_id=execution.trigger_id,
            priority=execution.priority,
            work=execution.work,
            params=execution.params,
            scheduled_for=execution.scheduled_for,
            backfill_id=execution.backfill_id,
        )
    if d.require_state().status == "active":
        _fire_due_slots(d)
    _advance_backfill(d)


def _fire_due_slots(d: _Decision) -> None:
    d.flush_missed()  # start from where the decisions so far left next_slot
    state = d.require_state()
    definition = state.definition
    if definition is None or definition.schedule is None or state.next_slot is None:
        return
    if holds_slots(state):
        # Due slots wait for the outcome of the execution in flight; only those held past the
        # bound are decided now.
        _release_held(d)
        d.complete_if_exhausted()
        return
    assert state.created_at is not None
    at, task_id = d.meta.at, d.meta.task_id
    anchor = anchor_for(definition, state.created_at)

    # Collect the due slots first: catch-up needs to know which late slot is the latest.
    slots: list[datetime] = []
    truncated = False
    cursor: datetime | None = state.next_slot
    while cursor is not None and fire_at(task_id, definition, cursor) <= at:
        if len(slots) >= MAX_SLOTS_PER_DECISION:
            truncated = True
            break
        slots.append(cursor)
        # runs_so_far=0: the run limit is applied as runs happen, through the state.
        cursor = next_slot(definition, cursor, anchor=anchor)
    if not slots:
        return

    # Slots a calendar excludes are not part of the schedule for catch-up: recorded, never run.
    exclusions = Exclusions(task_calendars(definition, d.calendars))
    excluded = {s: name for s in slots if (name := exclusions.excluded_by(s)) is not None} if exclusions else {}
    plan = dict(_catch_up_plan(task_id, definition, [s for s in slots if s not in excluded], at, truncated))
    if definition.overlap in HOLDING_POLICIES and not truncated:
        _one_at_a_time(definition, plan)
    for slot in slots:
        if slot in excluded:
            d.miss(slot, "calendar", calendar=excluded[slot])
            continue
        if slot not in plan:
            break  # held back for the next batch (truncated): nothing after it is handled yet
        if (missed := plan[slot]) is not None:
            d.miss(slot, missed)
            continue
        if not _run_slot(d, slot):
            # Held behind the execution just dispatched: this slot and the ones after it wait
            # for its outcome (those already past the bound are decided now).
            _release_held(d)
            break
        if d.require_state().next_slot is None:
            break  # run limit reached or schedule exhausted
    d.complete_if_exhausted()


_LATER_RAN_INSTEAD: dict[CatchUpMode, MissedReason] = {
    CatchUpMode.RUN_ONCE: "catch_up_run_once",
    CatchUpMode.RUN_ALL: "catch_up_limit",
    CatchUpMode.SKIP: "catch_up_skip",
}
"""Why a slot planned to run is missed when a later due slot runs instead (see :func:`_one_at_a_time`)."""


def _one_at_a_time(definition: TaskDefinition, plan: dict[datetime, MissedReason | None]) -> None:
    """Under ``skip`` and ``buffer_one`` run only the latest of several slots due at once.

    Several slots are due at once when the worker was behind (or learned late that the execution
    before them had ended). They cannot run together; run one after the other, each would wait for
    the previous one's outcome, and every later slot behind them, so a worker behind by more than
    the gap between slots would fall further behind with each slot (in a simulation of a worker
    3-13 s behind on 5-second slots: dispatch p50 23 s late that way, 7 s with this rule). The latest
    runs; the older ones are recorded missed with the catch-up mode's reason, as late slots a later
    one ran instead of.
    """
    runnable = [slot for slot, reason in plan.items() if reason is None]
    for slot in runnable[:-1]:
        plan[slot] = _LATER_RAN_INSTEAD[definition.catch_up.mode]


def _catch_up_plan(
    task_id: str, definition: TaskDefinition, slots: list[datetime], at: datetime, truncated: bool
) -> list[tuple[datetime, MissedReason | None]]:
    """Decide, for due slots in order, which run (None) and which are missed (with why)."""
    grace = timedelta(seconds=definition.misfire_grace_seconds)
    window = timedelta(seconds=definition.catch_up.window_seconds)
    mode = definition.catch_up.mode
    # Slots are handled in order, so a slot cannot fire before every earlier slot has. When a
    # jitter is not below the gap between slots (a definition accepted before that was checked,
    # or a spring-forward change shortening a gap) a slot waits for an earlier one with a larger
    # offset; that wait is not lateness, so lateness counts from the latest fire time so far.
    due = list(accumulate((fire_at(task_id, definition, s) for s in slots), max))
    lateness = [at - d for d in due]
    late = [i for i, lag in enumerate(lateness) if lag > grace]

    runnable: set[int] = set()
    if truncated:
        # More due slots follow this batch: hold back the tail that might still be chosen to
        # run, and record everything late before it as missed.
        hold = definition.catch_up.max_runs if mode is CatchUpMode.RUN_ALL else 1
        slots = slots[: max(len(slots) - hold, 1)]
    elif mode is CatchUpMode.RUN_ONCE and late:
        runnable = {late[-1]}
    elif mode is CatchUpMode.RUN_ALL:
        in_window = [i for i in late if lateness[i] <= window]
        runnable = set(in_window[-definition.catch_up.max_runs :])

    plan: list[tuple[datetime, MissedReason | None]] = []
    for i, slot in enumerate(slots):
        reason: MissedReason | None
        if lateness[i] <= grace or i in runnable:
            reason = None
        elif mode is CatchUpMode.SKIP:
            reason = "catch_up_skip"
        elif mode is CatchUpMode.RUN_ONCE:
            reason = "catch_up_run_once"
        elif mode is CatchUpMode.RUN_ALL:
            reason = "outside_window" if lateness[i] > window else "catch_up_limit"
        else:
            assert_never(mode)
        plan.append((slot, reason))
    return plan


def _run_slot(d: _Decision, slot: datetime) -> bool:
    """Run one slot under the overlap policy; False when the slot is held instead (``skip`` and
    ``buffer_one`` with an execution in flight: its outcome decides the slot, see :func:`_settle`)."""
    state = d.require_state()
    definition = state.definition
    assert definition is not None
    # Backfill executions run in a lane of their own: they never hold back a scheduled slot.
    in_flight = state.scheduled_in_flight
    if in_flight:
        match definition.overlap:
            case OverlapPolicy.SKIP | OverlapPolicy.BUFFER_ONE:
                return False  # held (see holds_slots); the execution's end decides the slot
            case OverlapPolicy.CANCEL_OTHER:
                for execution in sorted(in_flight, key=lambda e: e.execution_id):
                    d.complete(execution, "cancelled", error=f"cancelled by overlap policy for slot {slot}")
                if state.buffered is not None:
                    d.cancel_buffered(state.buffered, f"cancelled by overlap policy for slot {slot}")
            case OverlapPolicy.ALLOW_ALL:
                pass
            case _:
                assert_never(definition.overlap)
    d.dispatch_slot(execution_id_for_slot(execution_key(state), slot), slot, "schedule")
    return True


def _settle(
    d: _Decision, execution: Execution, *, started_at: datetime | None = None, finished_at: datetime | None = None
) -> None:
    """After ``execution`` ended for good: decide the slots held for it, then run what is due.

    Under ``skip`` and ``buffer_one`` a slot that comes due while an execution of the schedule's
    lane is in flight is held (left undecided) until that execution ends, because the task's owner
    learns of the end late (the report is batched, the processor may be behind) and "in flight"
    must mean "still running". Held slots whose fire time lies within the execution's run (from
    its first attempt's start, or its scheduled time when that is unknown, to ``finished_at``) really
    overlapped it: ``skip`` records them missed ``overlap``, ``buffer_one`` buffers the first
    (dispatched here once nothing else is in flight) and records the others missed. The held
    slots after them came due while nothing ran: once no execution is in flight they are
    decided as late slots, by the catch-up policy and the misfire grace (:func:`_fire_due_slots`),
    and the ones that run are dispatched now, each with its slot's execution id.

    A paused task decides nothing here (its slots wait for the resume and its catch-up); a
    buffered slot still runs once idle, as before holding existed.
    """
    state = d.require_state()
    definition = state.definition
    holding = (
        execution.backfill_id is None
        and state.status == "active"
        and definition is not None
        and definition.overlap in HOLDING_POLICIES
    )
    if holding:
        # The run began when its first attempt started. The report of a later attempt carries
        # that attempt's start only: without a "running" report of the first, the scheduled time
        # (before any attempt) stands in for it, and so it does when no start was reported at all.
        first_start = started_at if execution.attempt == 1 else None
        start = execution.started_at or first_start or execution.scheduled_for
        end = min(finished_at or d.meta.at, d.meta.at)
        _decide_overlapped_range(d, start, end)
    d.dispatch_buffered_if_idle()
    if holding:
        _fire_due_slots(d)
        d.complete_if_exhausted()  # the held slots decided may have been the schedule's last


def _decide_overlapped_range(d: _Decision, start: datetime, end: datetime) -> None:
    """Decide, as overlapping, the held slots from ``next_slot`` on that fired within ``[start, end]``."""
    state = d.require_state()
    definition = state.definition
    assert definition is not None and state.created_at is not None
    slot, count = state.next_slot, 0
    if slot is None or not start <= fire_at(d.meta.task_id, definition, slot) <= end:
        return  # the common case, nothing held: no schedule or calendar work on the hot path
    anchor = anchor_for(definition, state.created_at)
    exclusions = Exclusions(task_calendars(definition, d.calendars))
    while slot is not None and count < MAX_SLOTS_PER_DECISION:
        fired = fire_at(d.meta.task_id, definition, slot)
        if fired < start or fired > end:
            break  # the first held slot it did not overlap: it and the later ones are decided as late
        _decide_overlapped(d, slot, exclusions)
        if d.require_state().next_slot is None:
            break  # the buffered slot reached the run limit
        slot, count = next_slot(definition, slot, anchor=anchor), count + 1


def _release_held(d: _Decision) -> None:
    """Decide, as overlapping, the held slots that waited past the bound (:func:`release_at`), and
    those a calendar excludes.

    The bound keeps a task whose execution runs long (or whose outcome never comes) from
    holding slots undecided for that long; past it a slot is decided as before holding existed.
    """
    d.flush_missed()  # next_slot must be where the decisions so far left it
    state = d.require_state()
    definition = state.definition
    assert definition is not None and state.created_at is not None
    anchor = anchor_for(definition, state.created_at)
    exclusions = Exclusions(task_calendars(definition, d.calendars))
    running = ", ".join(sorted(e.execution_id for e in state.scheduled_in_flight)) or "none"
    note = (
        f"held {hold_seconds(definition):g} s for the end of the execution in flight ({running}) and decided without it"
    )
    slot, count = state.next_slot, 0
    while slot is not None and count < MAX_SLOTS_PER_DECISION:
        fired = fire_at(d.meta.task_id, definition, slot)
        # A slot a calendar excludes never runs, whatever the outcome: no need to hold it.
        excluded = fired <= d.meta.at and exclusions and exclusions.excluded_by(slot) is not None
        if not excluded and release_at(definition, fired) > d.meta.at:
            break
        _decide_overlapped(d, slot, exclusions, note=note)
        if d.require_state().next_slot is None:
            break
        slot, count = next_slot(definition, slot, anchor=anchor), count + 1


def _decide_overlapped(d: _Decision, slot: datetime, exclusions: Exclusions, *, note: str | None = None) -> None:
    """A slot that overlapped an execution: excluded by a calendar, buffered (``buffer_one``, the
    first), or missed ``overlap`` (with ``note`` saying why, if given)."""
    state = d.require_state()
    definition = state.definition
    assert definition is not None
    if exclusions and (calendar := exclusions.excluded_by(slot)) is not None:
        d.miss(slot, "calendar", calendar=calendar)
    elif definition.overlap is OverlapPolicy.BUFFER_ONE and state.buffered is None:
        d.emit(ExecutionBuffered, execution_id=execution_id_for_slot(execution_key(state), slot), slot=slot)
    else:
        d.miss(slot, "overlap", note=note)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _definition_problem(definition: TaskDefinition) -> tuple[str, str] | None:
    """Cross-field business rules the wire model does not check."""
    schedule = definition.schedule
    if isinstance(schedule, OnceSchedule):
        if definition.start_at is not None and schedule.at < definition.start_at:
            return "once schedule is before start_at", "definition.schedule.at"
        if definition.end_at is not None and schedule.at > definition.end_at:
            return "once schedule is after end_at", "definition.schedule.at"
    return None


def _first_slot(
    definition: TaskDefinition, anchor: datetime, at: datetime, *, last_slot: datetime | None, runs: int
) -> datetime | None:
    """The first slot of a new or updated definition.

    Cron and interval slots start strictly after ``at`` (and after the last slot handled, so
    a slot and its execution id never repeat). A one-shot keeps its ``at`` even if it is in the
    past: it is then due at once, and misfire grace and catch-up decide whether it runs.
    """
    if isinstance(definition.schedule, OnceSchedule):
        after = last_slot if last_slot is not None else definition.schedule.at - _MICROSECOND
    else:
        after = max(at, last_slot) if last_slot is not None else at
    return next_slot(definition, after, anchor=anchor, runs_so_far=runs)


def _fire_at(task_id: str, definition: TaskDefinition, slot: datetime | None) -> datetime | None:
    return fire_at(task_id, definition, slot) if slot is not None else None


def _later(at: datetime, seconds: float) -> datetime:
    """``at`` plus ``seconds``, clamped to the latest instant the wire format accepts."""
    return min(at + timedelta(seconds=seconds), LATEST)


@dataclass(frozen=True)
class _Meta:
    """What every event of one decision copies from its command."""

    task_id: str
    tenant: str
    actor: str
    command_id: str
    command_type: str
    at: datetime


@dataclass
class _MissedRange:
    first: datetime
    last: datetime
    count: int
    reason: MissedReason
    calendar: str | None = None
    note: str | None = None


_NOTE_ERROR_CHARS = 1000
"""Most characters of the last error quoted in the note of a pause after failures."""

_NEXT_FIRE_EVENTS = (TaskResumed, SlotsMissed, ExecutionDispatched, ExecutionBuffered)


class _Decision:
    """Accumulates the events of one decision, folding each into the working state."""

    def __init__(self, meta: _Meta, state: TaskState | None, calendars: Mapping[str, Calendar]) -> None:
        self.meta = meta
        self.state = state
        self.calendars = calendars
        self.events: list[Event] = []
        self._missed: _MissedRange | None = None

    def finish(self) -> Decision:
        self._flush_missed()
        return Decision(self.events, self.state)

    def require_state(self) -> TaskState:
        assert self.state is not None  # callers only reach here for an existing task
        return self.state

    # -- guards ---------------------------------------------------------------------------

    def live(self) -> tuple[TaskState, TaskDefinition] | None:
        """The task, if it exists for the command's tenant; otherwise reject and return None."""
        state = self.state
        if state is None or not state.exists or state.definition is None or state.tenant != self.meta.tenant:
            self.reject("task not found", "task_id")
            return None
        return state, state.definition

    def system_target(self) -> tuple[TaskState, TaskDefinition] | None:
        """Like :meth:`live`, but a missing or deleted task silently yields nothing."""
        state = self.state
        if state is None or not state.exists or state.definition is None:
            return None
        return self.live()

    # -- emitting -------------------------------------------------------------------------

    def emit(self, event_type: type[_E], **fields: Any) -> _E:
        self._flush_missed()
        return self._append(event_type, **fields)

    def _append(self, event_type: type[_E], **fields: Any) -> _E:
        sequence = (self.state.version if self.state is not None else 0) + 1
        event = event_type(
            event_id=event_id(self.meta.task_id, sequence),
            task_id=self.meta.task_id,
            tenant=self.meta.tenant,
            sequence=sequence,
            at=self.meta.at,
            causation_id=self.meta.command_id,
            actor=self.meta.actor,
            **fields,
        )
        self.state = evolve(self.state, cast(Event, event))
        if isinstance(event, _NEXT_FIRE_EVENTS) and self.state is not None:
            # Tell readers where the schedule stands now, so a view needs no decider.
            event = cast(
                _E,
                event.model_copy(update={"next_slot": self.state.next_slot, "next_fire_at": self.state.next_fire_at}),
            )
        self.events.append(cast(Event, event))
        return event

    def reject(self, reason: str, field: str | None) -> None:
        self.emit(
            CommandRejected,
            command_id=self.meta.command_id,
            command_type=self.meta.command_type,
            reason=reason,
            field=field,
        )

    def miss(
        self, slot: datetime, reason: MissedReason, calendar: str | None = None, *, note: str | None = None
    ) -> None:
        """Record a missed slot; adjacent misses with the same reason (and calendar, and note)
        become one event."""
        pending = self._missed
        if pending is not None and (pending.reason, pending.calendar, pending.note) == (reason, calendar, note):
            pending.last = slot
            pending.count += 1
            return
        self._flush_missed()
        self._missed = _MissedRange(slot, slot, 1, reason, calendar, note)

    def flush_missed(self) -> None:
        """Emit the pending range of missed slots, so the state reflects every decision so far."""
        self._flush_missed()

    def _flush_missed(self) -> None:
        pending, self._missed = self._missed, None
        if pending is not None:
            self._append(
                SlotsMissed,
                first_slot=pending.first,
                last_slot=pending.last,
                count=pending.count,
                reason=pending.reason,
                calendar=pending.calendar,
                note=pending.note,
            )

    # -- executions -----------------------------------------------------------------------

    def dispatch(self, **fields: Any) -> None:
        definition = self.require_state().definition
        assert definition is not None
        self.emit(ExecutionDispatched, deadline=_later(self.meta.at, definition.timeout_seconds), **fields)

    def dispatch_slot(
        self,
        execution_id: str,
        slot: datetime,
        reason: Literal["schedule", "buffered", "backfill"],
        *,
        backfill_id: str | None = None,
    ) -> None:
        """Dispatch the first attempt of ``slot`` with the task's current definition.

        The scheduled, buffered and backfill paths all run a slot this way; one helper keeps
        what a slot runs (work, params, priority, ``scheduled_for``) the same for all three.
        """
        definition = self.require_state().definition
        assert definition is not None
        self.dispatch(
            execution_id=execution_id,
            attempt=1,
            reason=reason,
            slot=slot,
            trigger_id=None,
            priority=definition.priority,
            work=definition.work,
            params=definition.params,
            scheduled_for=slot,
            backfill_id=backfill_id,
        )

    def end_backfill(
        self, backfill: Backfill, status: Literal["completed", "cancelled"], *, reason: str | None = None
    ) -> None:
        """End the running backfill: every slot ran (``completed``), or ``cancelled`` with
        ``reason`` (its pending slots are dropped).

        A cancelling caller ends it before cancelling its executions in flight, so that their
        completions do not dispatch its next slots.
        """
        self.emit(
            BackfillEnded,
            backfill_id=backfill.backfill_id,
            status=status,
            dispatched=backfill.dispatched,
            reason=reason,
        )

    def complete(
        self,
        execution: Execution,
        status: ExecutionStatus,
        *,
        error: str | None,
        result: Any = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
    ) -> None:
        started = execution.started_at or started_at
        finished = finished_at or self.meta.at
        duration = None if started is None else max(0, (finished - started) // timedelta(milliseconds=1))
        self.emit(
            ExecutionCompleted,
            execution_id=execution.execution_id,
            status=status,
            attempts=execution.attempt,
            result=result,
            error=error,
            started_at=started,
            finished_at=finished,
            duration_ms=duration,
            slot=execution.slot,
            scheduled_for=execution.scheduled_for,
            trigger_id=execution.trigger_id,
            backfill_id=execution.backfill_id,
        )

    def cancel_buffered(self, buffered: Buffered, reason: str) -> None:
        self.emit(
            ExecutionCompleted,
            execution_id=buffered.execution_id,
            status="cancelled",
            attempts=0,
            error=reason,
            finished_at=self.meta.at,
            slot=buffered.slot,
            scheduled_for=buffered.slot,
        )

    def fail_attempt(
        self,
        execution: Execution,
        *,
        error: str,
        timed_out: bool,
        result: Any = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
    ) -> None:
        definition = self.require_state().definition
        assert definition is not None
        policy = definition.retry
        retry_at = None
        if should_retry(policy, execution.attempt):
            retry_at = min(self.meta.at + backoff(policy, execution.attempt, execution.execution_id), LATEST)
        self.emit(
            AttemptFailed,
            execution_id=execution.execution_id,
            attempt=execution.attempt,
            error=error,
            timed_out=timed_out,
            retry_at=retry_at,
        )
        if retry_at is not None:
            return
        status: Literal["timed_out", "failed"] = "timed_out" if timed_out else "failed"
        self.complete(execution, status, error=error, result=result, started_at=started_at, finished_at=finished_at)
        self.pause_if_failing(error)
        _settle(self, execution, started_at=started_at, finished_at=finished_at)

    def pause_if_failing(self, error: str) -> None:
        """Pause an active task whose ``pause_after_failures`` executions in a row failed."""
        state = self.require_state()
        limit = state.definition.pause_after_failures if state.definition is not None else None
        if limit is None or state.status != "active" or state.consecutive_failures < limit:
            return
        failures = state.consecutive_failures
        last = error if len(error) <= _NOTE_ERROR_CHARS else error[: _NOTE_ERROR_CHARS - 1] + "…"
        self.emit(
            TaskPaused,
            note=f"paused after {failures} consecutive failures; last error: {last}",
            revision=state.revision + 1,
            reason="consecutive_failures",
            failures=failures,
        )

    def dispatch_buffered_if_idle(self) -> None:
        state = self.require_state()
        if state.buffered is None or state.scheduled_in_flight or not state.exists or state.definition is None:
            return
        self.dispatch_slot(state.buffered.execution_id, state.buffered.slot, "buffered")

    def complete_if_exhausted(self) -> None:
        """Emit ``TaskCompleted`` once a scheduled task has no slot left."""
        self._flush_missed()
        state = self.state
        if (
            state is None
            or state.status not in ("active", "paused")
            or state.definition is None
            or state.definition.schedule is None
            or state.next_slot is not None
        ):
            return
        definition = state.definition
        reason: Literal["run_limit", "end_reached", "one_shot"]
        if definition.max_runs is not None and state.scheduled_runs >= definition.max_runs:
            reason = "run_limit"
        elif isinstance(definition.schedule, OnceSchedule):
            reason = "one_shot"
        else:
            reason = "end_reached"
        self.emit(TaskCompleted, reason=reason)


# =============================================================================================
# evolve
# =============================================================================================


def evolve(state: TaskState | None, event: Event) -> TaskState | None:
    """The task's state after ``event``. Total: an event that does not apply only bumps the
    version, and an event for a task with no state (other than creation or a rejection)
    leaves it None."""
    match event:
        case TaskCreated():
            return _created(state, event)
        case CommandRejected():
            base = state or TaskState(task_id=event.task_id, tenant=event.tenant, status="absent", version=0)
            counters = base.counters.model_copy(update={"rejected": base.counters.rejected + 1})
            return _bump(base, event, counters=counters)
        case _:
            pass
    if state is None:
        return None
    match event:
        case TaskUpdated():
            return _bump(
                state,
                event,
                definition=event.definition,
                revision=event.revision,
                next_slot=event.next_slot,
                next_fire_at=event.next_fire_at,
                status="paused" if state.status == "paused" else "active",
            )
        case TaskPaused():
            return _bump(state, event, status="paused", revision=event.revision)
        case TaskResumed():
            return _bump(state, event, status="active", revision=event.revision, consecutive_failures=0)
        case TaskDeleted():
            return _bump(state, event, status="deleted", next_slot=None, next_fire_at=None, in_flight={}, buffered=None)
        case TaskCompleted():
            return _bump(state, event, status="completed", next_slot=None, next_fire_at=None)
        case SlotsMissed():
            counters = state.counters.model_copy(update={"slots_missed": state.counters.slots_missed + event.count})
            advanced = _advanced(state, event.last_slot, state.scheduled_runs)
            return _bump(state, event, counters=counters, **advanced)
        case ExecutionDispatched():
            return _dispatched(state, event)
        case ExecutionBuffered():
            runs = state.scheduled_runs + 1
            return _bump(
                state,
                event,
                buffered=Buffered(execution_id=event.execution_id, slot=event.slot),
                runs=state.runs + 1,
                scheduled_runs=runs,
                **_advanced(state, event.slot, runs),
            )
        case ExecutionStarted():
            execution = state.in_flight.get(event.execution_id)
            if execution is None or execution.attempt != event.attempt:
                return _bump(state, event)
            started = execution.model_copy(
                update={"attempt_started": True, "started_at": execution.started_at or event.started_at}
            )
            return _bump(state, event, in_flight={**state.in_flight, event.execution_id: started})
        case AttemptFailed():
            execution = state.in_flight.get(event.execution_id)
            counters = state.counters.model_copy(update={"attempts_failed": state.counters.attempts_failed + 1})
            if execution is None:
                return _bump(state, event, counters=counters)
            failed = execution.model_copy(
                update={
                    "deadline": None,
                    "retry_at": event.retry_at,
                    "attempt_started": False,
                    "last_error": event.error,
                }
            )
            return _bump(state, event, counters=counters, in_flight={**state.in_flight, event.execution_id: failed})
        case ExecutionCompleted():
            in_flight = {k: v for k, v in state.in_flight.items() if k != event.execution_id}
            buffered = state.buffered
            if buffered is not None and buffered.execution_id == event.execution_id:
                buffered = None
            failures = state.consecutive_failures
            if event.status in ("failed", "timed_out"):
                failures += 1
            elif event.status == "succeeded":
                failures = 0
            return _bump(
                state,
                event,
                in_flight=in_flight,
                buffered=buffered,
                counters=_count_outcome(state.counters, event.status),
                consecutive_failures=failures,
            )
        case BackfillStarted():
            backfill = Backfill(
                backfill_id=event.backfill_id,
                start=event.from_,
                end=event.to,
                max_concurrency=event.max_concurrency,
            )
            ids = remember(state.recent_backfill_ids, event.backfill_id)
            return _bump(state, event, backfill=backfill, recent_backfill_ids=ids)
        case BackfillEnded():
            ended = state.backfill is not None and state.backfill.backfill_id == event.backfill_id
            return _bump(state, event, backfill=None if ended else state.backfill)
        case TaskCreated() | CommandRejected():  # handled above; listed for exhaustiveness
            return state
        case _:
            assert_never(event)


def _created(state: TaskState | None, event: TaskCreated) -> TaskState:
    # Idempotency memory survives a delete and re-create, so old trigger ids stay used.
    triggers = state.recent_trigger_ids if state is not None else ()
    commands = state.recent_command_ids if state is not None else ()
    return TaskState(
        task_id=event.task_id,
        tenant=event.tenant,
        definition=event.definition,
        status="active",
        revision=event.revision,
        version=event.sequence,
        incarnation=(state.incarnation if state is not None else 0) + 1,
        created_at=event.at,
        next_slot=event.next_slot,
        next_fire_at=event.next_fire_at,
        recent_trigger_ids=triggers,
        recent_command_ids=remember(commands, event.causation_id),
    )


def _dispatched(state: TaskState, event: ExecutionDispatched) -> TaskState:
    previous = state.in_flight.get(event.execution_id)
    origin: Literal["manual", "schedule", "backfill"] = (
        event.reason if event.reason in ("manual", "backfill") else "schedule"
    )
    execution = Execution(
        execution_id=event.execution_id,
        origin=previous.origin if previous is not None else origin,
        slot=event.slot,
        trigger_id=event.trigger_id,
        scheduled_for=event.scheduled_for,
        priority=event.priority,
        work=event.work,
        params=event.params,
        attempt=event.attempt,
        deadline=event.deadline,
        started_at=previous.started_at if previous is not None else None,
        last_error=previous.last_error if previous is not None else None,
        backfill_id=event.backfill_id if previous is None else previous.backfill_id,
    )
    updates: dict[str, Any] = {"in_flight": {**state.in_flight, event.execution_id: execution}}
    match event.reason:
        case "schedule":
            runs = state.scheduled_runs + 1
            updates.update(runs=state.runs + 1, scheduled_runs=runs)
            if event.slot is not None:
                updates.update(_advanced(state, event.slot, runs))
        case "manual":
            updates["runs"] = state.runs + 1
            if event.trigger_id is not None:
                updates["recent_trigger_ids"] = remember(state.recent_trigger_ids, event.trigger_id)
        case "buffered":
            updates["buffered"] = None
        case "retry":
            pass
        case "backfill":
            # Counted in runs, not in scheduled_runs: max_runs bounds the schedule's own runs.
            updates["runs"] = state.runs + 1
            backfill = state.backfill
            if backfill is not None and backfill.backfill_id == event.backfill_id and event.slot is not None:
                cursor = event.slot if backfill.cursor is None else max(backfill.cursor, event.slot)
                updates["backfill"] = backfill.model_copy(
                    update={"cursor": cursor, "dispatched": backfill.dispatched + 1}
                )
        case _:
            assert_never(event.reason)
    return _bump(state, event, **updates)


def _advanced(state: TaskState, slot: datetime, scheduled_runs: int) -> dict[str, Any]:
    """State updates once ``slot`` has been handled: the next slot and when it fires."""
    last = slot if state.last_slot is None else max(state.last_slot, slot)
    definition = state.definition
    if definition is None or state.created_at is None:
        return {"last_slot": last}
    nxt = next_slot(definition, last, anchor=anchor_for(definition, state.created_at), runs_so_far=scheduled_runs)
    return {"last_slot": last, "next_slot": nxt, "next_fire_at": _fire_at(state.task_id, definition, nxt)}


def _count_outcome(counters: Counters, status: ExecutionStatus) -> Counters:
    # The status names double as the counter field names.
    return counters.model_copy(update={status: getattr(counters, status) + 1})


def _bump(state: TaskState, event: EventBase, **updates: Any) -> TaskState:
    return state.model_copy(
        update={
            "version": event.sequence,
            "recent_command_ids": remember(state.recent_command_ids, event.causation_id),
            **updates,
        }
    )
