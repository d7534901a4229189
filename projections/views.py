"""The pure part of the projections: one event (with its Kafka position) -> MongoDB write operations.

No I/O here. Every function maps an event, its partition and offset, and the task's
:class:`TaskFacts` *before* the event to pymongo write operations for one view. The shell
(:mod:`projections.apply`) writes them with ordered ``bulk_write`` calls.

Idempotence (redelivery and replay change nothing):

* per-task documents (``tasks``) and per-execution documents (``executions``) carry
  ``version``, the task sequence of the last event applied to them, and every update filters on
  ``version < event.sequence``;
* per-(tenant, partition) documents (``stats``) carry ``offset`` and filter on
  ``offset < event offset`` (a partition's events are applied in offset order);
* insert-only documents (``audit``, skipped-slot executions) are ``InsertOne``; a duplicate key
  (code 11000) means "already applied" and the shell skips it.

A document that may not exist yet is written as a pair: an *ensure* op
(``$setOnInsert`` of exactly what the update would produce on an empty document, upsert) and the
guarded update (no upsert). A guarded upsert would answer a replay with a duplicate-key error,
which FerretDB reports without ``nModified`` and pymongo's ``bulk_write`` then fails with a
``KeyError``; the pair never raises and behaves the same on MongoDB.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, assert_never

from pymongo.operations import InsertOne, UpdateOne

from schemas.events import (
    AttemptFailed,
    CommandRejected,
    Event,
    EventBase,
    ExecutionBuffered,
    ExecutionCompleted,
    ExecutionDispatched,
    ExecutionStarted,
    SlotsMissed,
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskPaused,
    TaskResumed,
    TaskUpdated,
)
from schemas.secrets import mask_clear, secret_ids
from schemas.specs import TaskDefinition

Doc = dict[str, Any]
WriteOp = InsertOne[Doc] | UpdateOne
TaskStatus = Literal["active", "paused", "completed", "deleted"]

TASK_STATUSES: tuple[TaskStatus, ...] = ("active", "paused", "completed", "deleted")
"""Every value of ``tasks.status``."""
OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "timed_out", "cancelled")
"""Final execution statuses (``ExecutionCompleted.status``)."""
EXECUTION_STATUSES: tuple[str, ...] = ("buffered", "scheduled", "running", "retrying", *OUTCOMES, "skipped")
"""Every value of ``executions.status``."""

DURATION_BUCKETS_MS: tuple[int, ...] = (10, 50, 100, 500, 1000, 5000, 30_000, 60_000, 300_000)
"""Upper bounds (inclusive, ms) of the duration histogram; a last bucket ``inf`` takes the rest."""
BUCKET_NAMES: tuple[str, ...] = (*(f"le_{b}" for b in DURATION_BUCKETS_MS), "inf")
"""Field names of the histogram buckets, in order."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

UNKNOWN_TYPE = "unknown"
"""Work kind used in statistics when the task's kind is not known (its creation was not seen)."""


def bucket_for(duration_ms: int) -> str:
    """The histogram bucket of a duration: ``le_<bound>`` for the first bound >= it, else ``inf``.

    Buckets are not cumulative: each completed execution counts in exactly one bucket.
    """
    for bound in DURATION_BUCKETS_MS:
        if duration_ms <= bound:
            return f"le_{bound}"
    return "inf"


def empty_histogram() -> Doc:
    """A duration histogram with no observations."""
    return {"buckets": dict.fromkeys(BUCKET_NAMES, 0), "sum_ms": 0, "count": 0, "max_ms": None}


def empty_task_counters() -> Doc:
    """The counters of a new task."""
    keys = ("runs", *OUTCOMES, "retries", "attempts_failed", "missed", "rejected")
    return dict.fromkeys(keys, 0)


# ---------------------------------------------------------------------------------------------
# Task facts: the little per-task state the statistics need and events do not repeat
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFacts:
    """What a task was like before an event: its status, work kind and tenant.

    ``stats`` need it to move a task from one status to another, and to file a completed
    execution under its task's work kind (``ExecutionCompleted`` does not carry the kind).
    """

    tenant: str
    status: TaskStatus
    type: str
    """The work kind (``http``, ``kafka``, ``handler``)."""
    version: int
    """Sequence of the last event folded in."""
    secrets: tuple[tuple[str, str], ...] = ()
    """``(pointer, token id)`` of each secret in the definition: the audit tells a changed
    secret from a kept one by its token (a new value has a new token, even if equal in clear)."""


def evolve_facts(prior: TaskFacts | None, event: Event) -> TaskFacts | None:
    """The task's facts after ``event``; None while the task does not exist."""
    if isinstance(event, TaskCreated):
        secrets = tuple(secret_ids(event.definition).items())
        return TaskFacts(event.tenant, "active", event.definition.work.kind, event.sequence, secrets)
    if prior is None:
        return None
    match event:
        case TaskUpdated():
            status: TaskStatus = "paused" if prior.status == "paused" else "active"
            kind, secrets = event.definition.work.kind, tuple(secret_ids(event.definition).items())
            return replace(prior, status=status, type=kind, version=event.sequence, secrets=secrets)
        case TaskPaused():
            return replace(prior, status="paused", version=event.sequence)
        case TaskResumed():
            return replace(prior, status="active", version=event.sequence)
        case TaskDeleted():
            return replace(prior, status="deleted", version=event.sequence)
        case TaskCompleted():
            return replace(prior, status="completed", version=event.sequence)
        case _:
            return replace(prior, version=event.sequence)


# ---------------------------------------------------------------------------------------------
# All views at once
# ---------------------------------------------------------------------------------------------


@dataclass
class ViewOps:
    """Write operations per view, in the order they must be applied."""

    tasks: list[WriteOp] = field(default_factory=list)
    executions: list[WriteOp] = field(default_factory=list)
    audit: list[WriteOp] = field(default_factory=list)
    stats: list[WriteOp] = field(default_factory=list)

    def extend(self, other: ViewOps) -> None:
        """Append another event's operations."""
        self.tasks.extend(other.tasks)
        self.executions.extend(other.executions)
        self.audit.extend(other.audit)
        self.stats.extend(other.stats)


def view_ops(event: Event, partition: int, offset: int, prior: TaskFacts | None) -> ViewOps:
    """Write operations of every view for one event; ``prior`` is the task's facts before it."""
    return ViewOps(
        tasks=task_ops(event, prior),
        executions=execution_ops(event, prior),
        audit=audit_ops(event, partition, offset, prior),
        stats=stats_ops(event, partition, offset, prior),
    )


def project(events: Iterable[tuple[Event, int, int]], facts: Mapping[str, TaskFacts] | None = None) -> ViewOps:
    """Operations for a sequence of ``(event, partition, offset)`` in log order.

    ``facts`` are the tasks' facts before the first event (what the ``tasks`` view holds);
    events already folded into them (``sequence <= version``) produce operations that the
    guards turn into no-ops.
    """
    known: dict[str, TaskFacts] = dict(facts or {})
    out = ViewOps()
    for event, partition, offset in events:
        prior = known.get(event.task_id)
        if prior is not None and prior.tenant != event.tenant:
            prior = None  # a task re-created under another tenant starts from nothing there
        out.extend(view_ops(event, partition, offset, prior))
        if prior is None or event.sequence > prior.version:
            new = evolve_facts(prior, event)
            if new is not None:
                known[event.task_id] = new
    return out


# ---------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------


def task_ops(event: Event, prior: TaskFacts | None) -> list[WriteOp]:
    """Operations on the ``tasks`` view (``_id`` = task id)."""
    seq = event.sequence
    common: Doc = {"version": seq, "last_event_at": event.at}
    update: Doc
    match event:
        case TaskCreated():
            return _ensure_then_update({"_id": event.task_id}, "version", seq, {"$set": _task_created_doc(event)})
        case TaskUpdated():
            d = event.definition
            # An update keeps a paused task paused and re-activates a completed one.
            status = "paused" if prior is not None and prior.status == "paused" else "active"
            fields = {
                "name": d.name,
                "type": d.work.kind,
                "tags": list(d.tags),
                "definition": mask_clear(d.model_dump(mode="python")),
                "secrets": _secrets_field(d),
                "revision": event.revision,
                "status": status,
                "updated_at": event.at,
                "completed_reason": None,
                **_next_run(event.next_slot, event.next_fire_at),
            }
            return [_guarded_task(event, {"$set": {**common, **fields}})]
        case TaskPaused():
            fields = {"status": "paused", "paused_note": event.note, "revision": event.revision}
            return [_guarded_task(event, {"$set": {**common, **fields, "updated_at": event.at}})]
        case TaskResumed():
            fields = {"status": "active", "paused_note": None, "revision": event.revision}
            fields |= _next_run(event.next_slot, event.next_fire_at)
            return [_guarded_task(event, {"$set": {**common, **fields, "updated_at": event.at}})]
        case TaskDeleted():
            fields = {"status": "deleted", "deleted_at": event.at, **_next_run(None, None)}
            return [_guarded_task(event, {"$set": {**common, **fields, "updated_at": event.at}})]
        case TaskCompleted():
            fields = {"status": "completed", "completed_reason": event.reason, **_next_run(None, None)}
            return [_guarded_task(event, {"$set": {**common, **fields, "updated_at": event.at}})]
        case SlotsMissed():
            update = {
                "$set": {**common, **_next_run(event.next_slot, event.next_fire_at)},
                "$inc": {"counters.missed": event.count},
                "$max": {"last_slot": event.last_slot},
            }
            return [_guarded_task(event, update)]
        case ExecutionDispatched():
            common = {**common, **_next_run(event.next_slot, event.next_fire_at)}
            if event.reason == "retry":
                return [_guarded_task(event, {"$set": common, "$inc": {"counters.retries": 1}})]
            last_run = {
                "execution_id": event.execution_id,
                "slot": event.slot,
                "scheduled_for": event.scheduled_for,
                "dispatched_at": event.at,
                "reason": event.reason,
            }
            update = {"$set": {**common, "last_run": last_run}, "$inc": {"counters.runs": 1}}
            if event.reason == "schedule" and event.slot is not None:
                update["$max"] = {"last_slot": event.slot}
            return [_guarded_task(event, update)]
        case ExecutionBuffered():
            # A buffered slot has been handled: the schedule moved past it.
            update = {
                "$set": {**common, **_next_run(event.next_slot, event.next_fire_at)},
                "$max": {"last_slot": event.slot},
            }
            return [_guarded_task(event, update)]
        case ExecutionStarted():
            return [_guarded_task(event, {"$set": common})]
        case AttemptFailed():
            update = {"$set": {**common, "last_error": event.error}, "$inc": {"counters.attempts_failed": 1}}
            return [_guarded_task(event, update)]
        case ExecutionCompleted():
            fields = {
                "last_status": event.status,
                "last_error": event.error,
                "last_finished_at": event.finished_at,
            }
            update = {"$set": {**common, **fields}, "$inc": {f"counters.{event.status}": 1}}
            if event.duration_ms is not None:
                bucket = bucket_for(event.duration_ms)
                update["$inc"].update(
                    {
                        f"duration.buckets.{bucket}": 1,
                        "duration.sum_ms": event.duration_ms,
                        "duration.count": 1,
                    }
                )
                update["$max"] = {"duration.max_ms": event.duration_ms}
            return [_guarded_task(event, update)]
        case CommandRejected():
            rejection = {
                "command_id": event.command_id,
                "command_type": event.command_type,
                "reason": event.reason,
                "field": event.field,
                "at": event.at,
            }
            update = {"$set": {**common, "last_rejection": rejection}, "$inc": {"counters.rejected": 1}}
            # No upsert: a rejection of a command on a missing task creates no task document.
            return [_guarded_task(event, update)]
        case _:
            assert_never(event)


def _task_created_doc(event: TaskCreated) -> Doc:
    d = event.definition
    return {
        "tenant": event.tenant,
        "name": d.name,
        "type": d.work.kind,
        "tags": list(d.tags),
        "status": "active",
        "definition": mask_clear(d.model_dump(mode="python")),
        "secrets": _secrets_field(d),
        "revision": event.revision,
        "version": event.sequence,
        "created_at": event.at,
        # BSON dates keep milliseconds; the decider anchors interval schedules at the exact
        # creation instant, so the preview needs it to the microsecond (see created_at_us).
        "created_at_us": micros_since_epoch(event.at),
        "updated_at": event.at,
        "last_event_at": event.at,
        "created_by": event.actor,
        **_next_run(event.next_slot, event.next_fire_at),
        "last_slot": None,
        "last_run": None,
        "last_status": None,
        "last_error": None,
        "last_finished_at": None,
        "last_rejection": None,
        "paused_note": None,
        "completed_reason": None,
        "deleted_at": None,
        "counters": empty_task_counters(),
        "duration": empty_histogram(),
    }


def _secrets_field(definition: TaskDefinition) -> list[Doc]:
    """The ``secrets`` of a task document: where its definition holds a secret, and its token id."""
    return [{"field": pointer, "id": tid} for pointer, tid in secret_ids(definition).items()]


def micros_since_epoch(instant: datetime) -> int:
    """An instant as integer microseconds since the epoch: exact, unlike a BSON date."""
    return (instant - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    """Inverse of :func:`micros_since_epoch` (an aware UTC datetime)."""
    return _EPOCH + timedelta(microseconds=micros)


def _next_run(next_slot: datetime | None, next_fire_at: datetime | None) -> Doc:
    return {"next_slot": next_slot, "next_run": next_fire_at, "next_run_known": True}


def _guarded_task(event: EventBase, update: Doc) -> UpdateOne:
    return UpdateOne({"_id": event.task_id, "version": {"$lt": event.sequence}}, update)


# ---------------------------------------------------------------------------------------------
# executions
# ---------------------------------------------------------------------------------------------


def skipped_execution_id(event: SlotsMissed) -> str:
    """``_id`` of the ``skipped`` execution document recording a ``SlotsMissed`` event."""
    return f"missed:{event.event_id}"


def execution_ops(event: Event, prior: TaskFacts | None) -> list[WriteOp]:
    """Operations on the ``executions`` view (``_id`` = execution id)."""
    seq = event.sequence
    match event:
        case ExecutionDispatched():
            fields: Doc = {
                "task_id": event.task_id,
                "tenant": event.tenant,
                "type": event.work.kind,
                "status": "scheduled",
                "attempt": event.attempt,
                "slot": event.slot,
                "scheduled_for": event.scheduled_for,
                "trigger_id": event.trigger_id,
                "priority": str(event.priority),
                "params": event.params,
                "deadline": event.deadline,
                "dispatched_at": event.at,
                "next_retry_at": None,
                "version": seq,
            }
            if event.reason != "retry":
                # A retry keeps the reason the execution started for.
                fields["reason"] = event.reason
            if event.reason not in ("retry", "buffered"):
                fields.update(_execution_placeholders())
            entry = {"status": "scheduled", "at": event.at, "attempt": event.attempt}
            update = {"$set": fields, "$push": {"timeline": entry}}
            return _ensure_then_update({"_id": event.execution_id}, "version", seq, update)
        case ExecutionBuffered():
            fields = {
                "task_id": event.task_id,
                "tenant": event.tenant,
                "type": prior.type if prior is not None else UNKNOWN_TYPE,
                "status": "buffered",
                "attempt": 0,
                "reason": "buffered",
                "slot": event.slot,
                "scheduled_for": event.slot,
                "trigger_id": None,
                "priority": None,
                "params": {},
                "deadline": None,
                "dispatched_at": None,
                "next_retry_at": None,
                "buffered_at": event.at,
                **_execution_placeholders(),
                "version": seq,
            }
            entry = {"status": "buffered", "at": event.at, "attempt": 0}
            update = {"$set": fields, "$push": {"timeline": entry}}
            return _ensure_then_update({"_id": event.execution_id}, "version", seq, update)
        case ExecutionStarted():
            entry = {
                "status": "running",
                "at": event.started_at,
                "attempt": event.attempt,
                "worker": event.worker,
            }
            fields = {"status": "running", "attempt": event.attempt, "worker": event.worker, "version": seq}
            return [
                # started_at is the first attempt's start: set only while it is still unset.
                UpdateOne(
                    {"_id": event.execution_id, "version": {"$lt": seq}, "started_at": None},
                    {"$set": {"started_at": event.started_at}},
                ),
                _guarded_execution(event.execution_id, seq, {"$set": fields, "$push": {"timeline": entry}}),
            ]
        case AttemptFailed():
            entry = {
                "status": "attempt_timed_out" if event.timed_out else "attempt_failed",
                "at": event.at,
                "attempt": event.attempt,
                "error": event.error,
                "retry_at": event.retry_at,
            }
            fields = {"error": event.error, "next_retry_at": event.retry_at, "version": seq}
            if event.retry_at is not None:
                fields["status"] = "retrying"
            # Without a retry the status stays as it is: ExecutionCompleted follows with the outcome.
            return [_guarded_execution(event.execution_id, seq, {"$set": fields, "$push": {"timeline": entry}})]
        case ExecutionCompleted():
            fields = {
                "status": event.status,
                "attempts": event.attempts,
                "result": event.result,
                "error": event.error,
                "finished_at": event.finished_at,
                "duration_ms": event.duration_ms,
                "next_retry_at": None,
                "version": seq,
            }
            if event.started_at is not None:
                fields["started_at"] = event.started_at
            entry = {
                "status": event.status,
                "at": event.finished_at,
                "attempt": event.attempts,
                "error": event.error,
            }
            return [_guarded_execution(event.execution_id, seq, {"$set": fields, "$push": {"timeline": entry}})]
        case SlotsMissed():
            doc = {
                "_id": skipped_execution_id(event),
                "task_id": event.task_id,
                "tenant": event.tenant,
                "type": prior.type if prior is not None else UNKNOWN_TYPE,
                "status": "skipped",
                "attempt": 0,
                "reason": event.reason,
                "slot": event.first_slot,
                "last_slot": event.last_slot,
                "missed_count": event.count,
                "truncated": event.truncated,
                "scheduled_for": event.first_slot,
                "trigger_id": None,
                "priority": None,
                "params": {},
                "deadline": None,
                "dispatched_at": None,
                "next_retry_at": None,
                **_execution_placeholders(),
                "started_at": None,
                "finished_at": event.at,
                "timeline": [{"status": "skipped", "at": event.at, "attempt": 0}],
                "version": seq,
            }
            return [InsertOne(doc)]
        case (
            TaskCreated()
            | TaskUpdated()
            | TaskPaused()
            | TaskResumed()
            | TaskDeleted()
            | TaskCompleted()
            | CommandRejected()
        ):
            return []
        case _:
            assert_never(event)


def _execution_placeholders() -> Doc:
    # Fields a reader can rely on from the start; started_at stays None until the first start.
    return {
        "worker": None,
        "started_at": None,
        "finished_at": None,
        "duration_ms": None,
        "attempts": 0,
        "result": None,
        "error": None,
    }


def _guarded_execution(execution_id: str, seq: int, update: Doc) -> UpdateOne:
    # No upsert: an execution's later events always follow its dispatch or buffering.
    return UpdateOne({"_id": execution_id, "version": {"$lt": seq}}, update)


# ---------------------------------------------------------------------------------------------
# audit
# ---------------------------------------------------------------------------------------------


def audit_ops(event: Event, partition: int, offset: int, prior: TaskFacts | None = None) -> list[WriteOp]:
    """The ``audit`` document of an event (``_id`` = event id); insert-only.

    Secrets stay encrypted in ``body`` (the API shows them as ``***``); for a task created or
    updated, ``secrets`` says which were set, changed, kept or removed (see :func:`secret_changes`).
    """
    doc: Doc = {
        "_id": event.event_id,
        "type": event.type,
        "task_id": event.task_id,
        "tenant": event.tenant,
        "actor": event.actor,
        "causation_id": event.causation_id,
        "at": event.at,
        "sequence": event.sequence,
        "partition": partition,
        "offset": offset,
        "body": _audit_body(event),
    }
    if isinstance(event, TaskCreated | TaskUpdated):
        changes = secret_changes(event, prior)
        if changes:
            doc["secrets"] = changes
    return [InsertOne(doc)]


def _audit_body(event: Event) -> Doc:
    body = event.model_dump(mode="python")
    if isinstance(event, TaskCreated | TaskUpdated):
        body["definition"] = mask_clear(body["definition"])
    elif isinstance(event, ExecutionDispatched):
        body = mask_clear(body)  # its work's headers (its params' sensitivity is not on the event)
    return body


def secret_changes(event: TaskCreated | TaskUpdated, prior: TaskFacts | None) -> list[Doc]:
    """What happened to each secret of the task's definition: ``set`` (new place), ``changed``
    (a new value was sent), ``kept`` (``***`` was sent back), ``removed``; ``unknown`` when
    ``prior`` is already past the event (a redelivery whose audit write was lost)."""
    after = secret_ids(event.definition)
    if isinstance(event, TaskCreated) or prior is None or prior.tenant != event.tenant:
        return [{"field": p, "change": "set"} for p in after]
    if prior.version >= event.sequence:
        return [{"field": p, "change": "unknown"} for p in after]
    before = dict(prior.secrets)
    out: list[Doc] = []
    for pointer, tid in after.items():
        old = before.get(pointer)
        out.append({"field": pointer, "change": "set" if old is None else "kept" if old == tid else "changed"})
    out.extend({"field": p, "change": "removed"} for p in before if p not in after)
    return out


# ---------------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------------


def stats_id(tenant: str, partition: int) -> str:
    """``_id`` of the statistics document of a tenant's events in one partition."""
    # The partition comes first: it has no separator in it, so any tenant string is safe.
    return f"{partition}/{tenant}"


def stats_ops(event: Event, partition: int, offset: int, prior: TaskFacts | None) -> list[WriteOp]:
    """Operations on the ``stats`` view: counters of one tenant in one partition, offset-guarded.

    Fields (all counters; a tenant's statistics are the sum over its documents):

    * ``executions.{dispatched, buffered, retries, in_flight, succeeded, failed, timed_out,
      cancelled, skipped}`` (``skipped`` counts missed slots, ``in_flight`` is a gauge);
    * ``by_type.<kind>.executions.<same>`` and ``by_type.<kind>.duration`` (histogram);
    * ``tasks.<status>`` (a gauge of tasks per status) and ``tasks_by_type.<kind>`` (tasks
      not deleted).
    """
    inc: dict[str, int] = {}
    # Filed under the task's kind, so an execution's dispatch and completion land in one place.
    if prior is not None:
        kind = prior.type
    elif isinstance(event, ExecutionDispatched):
        kind = event.work.kind
    else:
        kind = UNKNOWN_TYPE

    def count(name: str, n: int = 1) -> None:
        inc[f"executions.{name}"] = inc.get(f"executions.{name}", 0) + n
        key = f"by_type.{kind}.executions.{name}"
        inc[key] = inc.get(key, 0) + n

    match event:
        case ExecutionDispatched():
            if event.reason == "retry":
                count("retries")
            else:
                count("dispatched")
            if event.reason in ("schedule", "manual"):
                # A buffered execution was already counted in flight when it was buffered.
                count("in_flight")
        case ExecutionBuffered():
            count("buffered")
            count("in_flight")
        case ExecutionCompleted():
            count(event.status)
            count("in_flight", -1)
            if event.duration_ms is not None:
                base = f"by_type.{kind}.duration"
                inc[f"{base}.buckets.{bucket_for(event.duration_ms)}"] = 1
                inc[f"{base}.sum_ms"] = event.duration_ms
                inc[f"{base}.count"] = 1
        case SlotsMissed():
            count("skipped", event.count)
        case (
            TaskCreated()
            | TaskUpdated()
            | TaskPaused()
            | TaskResumed()
            | TaskDeleted()
            | TaskCompleted()
            | ExecutionStarted()
            | AttemptFailed()
            | CommandRejected()
        ):
            pass
        case _:
            assert_never(event)
    _task_transition(inc, prior, evolve_facts(prior, event))
    inc = {k: v for k, v in inc.items() if v != 0}
    if not inc:
        return []
    update = {"$set": {"tenant": event.tenant, "partition": partition, "offset": offset}, "$inc": inc}
    return _ensure_then_update({"_id": stats_id(event.tenant, partition)}, "offset", offset, update)


def _task_transition(inc: dict[str, int], before: TaskFacts | None, after: TaskFacts | None) -> None:
    old_status = before.status if before is not None else None
    new_status = after.status if after is not None else None
    if old_status != new_status:
        if old_status is not None:
            inc[f"tasks.{old_status}"] = inc.get(f"tasks.{old_status}", 0) - 1
        if new_status is not None:
            inc[f"tasks.{new_status}"] = inc.get(f"tasks.{new_status}", 0) + 1
    old_type = before.type if before is not None and before.status != "deleted" else None
    new_type = after.type if after is not None and after.status != "deleted" else None
    if old_type != new_type:
        if old_type is not None:
            inc[f"tasks_by_type.{old_type}"] = inc.get(f"tasks_by_type.{old_type}", 0) - 1
        if new_type is not None:
            inc[f"tasks_by_type.{new_type}"] = inc.get(f"tasks_by_type.{new_type}", 0) + 1


# ---------------------------------------------------------------------------------------------
# The ensure + guarded update pair
# ---------------------------------------------------------------------------------------------


def _ensure_then_update(key: Doc, guard: str, position: int, update: Doc) -> list[WriteOp]:
    """Upsert ``update`` guarded by ``<guard> < position`` without ever raising a duplicate key.

    The ensure op inserts what ``update`` makes of an empty document (with ``guard`` =
    ``position``) when the document is missing, so the guarded update then does not match;
    when the document exists, the ensure op changes nothing and the guarded update applies
    if, and only if, the event is new to it.
    """
    initial = materialize(update)
    initial[guard] = position
    return [
        UpdateOne(key, {"$setOnInsert": initial}, upsert=True),
        UpdateOne({**key, guard: {"$lt": position}}, update),
    ]


def materialize(update: Doc) -> Doc:
    """The document an update (``$set``, ``$inc``, ``$push``, ``$max``, ``$min``) makes of ``{}``."""
    doc: Doc = {}
    for operator, fields in update.items():
        for path, value in fields.items():
            match operator:
                case "$set" | "$max" | "$min" | "$inc":
                    _put(doc, path, value)
                case "$push":
                    _put(doc, path, [value])
                case _:
                    raise ValueError(f"materialize does not know {operator}")
    return doc


def _put(doc: Doc, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
