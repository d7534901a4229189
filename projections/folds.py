"""The views as pure folds: ``(document, event) -> document``, one per view, and a batch fold.

No I/O here (the shell is :mod:`projections.store`). Every view document is a deterministic
function of the events folded into it, so redelivery and replay change nothing:

* ``tasks`` and ``executions`` documents carry ``version``, the task sequence of the last event
  folded in; an event whose sequence is not above it leaves the document as it is;
* ``stats`` documents (one per tenant and partition) carry ``offset``, the last offset counted,
  and count an event only if it is new to its task (``version`` again): a copy of an event at
  a later offset (a new owner of a partition re-sends the last events of recently touched
  tasks) is not counted twice, and an event redelivered after a crash, at an offset already
  counted, is not either;
* ``audit`` documents are one per event id, written once (a duplicate insert is skipped).

:func:`fold` folds a batch of events into the documents they touch; the shell loads those
documents first (:func:`touched`) and writes each changed one once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, assert_never

from projections.occurrences import OccurrenceWrites
from schemas.events import (
    AttemptFailed,
    BackfillEnded,
    BackfillStarted,
    CommandRejected,
    Event,
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
    """The counters of a new task (``scheduled_runs``: executions of slots of its schedule, run
    or buffered, since it was created: what ``max_runs`` counts, kept here because retention
    deletes old executions)."""
    keys = ("runs", "scheduled_runs", *OUTCOMES, "retries", "attempts_failed", "missed", "rejected")
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


def facts_of(doc: Doc | None, tenant: str) -> TaskFacts | None:
    """The facts a ``tasks`` document holds; None when absent or another tenant's."""
    if doc is None or "status" not in doc or doc.get("tenant") != tenant:
        return None
    secrets = tuple((s["field"], s["id"]) for s in doc.get("secrets") or ())
    return TaskFacts(doc["tenant"], doc["status"], doc["type"], doc["version"], secrets)


# ---------------------------------------------------------------------------------------------
# Updates applied in memory
# ---------------------------------------------------------------------------------------------


def apply_update(doc: Doc, update: Doc) -> Doc:
    """A copy of ``doc`` with a MongoDB-style update applied (``$set``, ``$inc``, ``$max``, ``$push``).

    Copies only the sub-documents on the paths it changes; ``doc`` itself is left as it was.
    ``$max`` treats a missing or None field as lower than anything (MongoDB sorts null first).
    """
    out = dict(doc)
    for operator, fields in update.items():
        for path, value in fields.items():
            *parents, leaf = path.split(".")
            node = out
            for part in parents:
                child = node.get(part)
                node[part] = child = dict(child) if isinstance(child, dict) else {}
                node = child
            match operator:
                case "$set":
                    node[leaf] = value
                case "$inc":
                    node[leaf] = (node.get(leaf) or 0) + value
                case "$max":
                    current = node.get(leaf)
                    if current is None or (value is not None and _comparable(value) > _comparable(current)):
                        node[leaf] = value
                case "$push":
                    node[leaf] = [*(node.get(leaf) or ()), value]
                case _:
                    raise ValueError(f"apply_update does not know {operator}")
    return out


def _comparable(value: Any) -> Any:
    # A client that is not tz-aware reads BSON dates back naive (they are UTC).
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# ---------------------------------------------------------------------------------------------
# A batch: the documents it touches, folded in memory
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """The ``_id`` of every document a batch of events touches, per view."""

    tasks: set[str] = field(default_factory=set)
    executions: set[str] = field(default_factory=set)
    stats: set[str] = field(default_factory=set)


def touched(events: Iterable[tuple[Event, int, int]]) -> Keys:
    """The documents that ``(event, partition, offset)`` in a batch may change (audit aside)."""
    keys = Keys()
    for event, partition, _offset in events:
        keys.tasks.add(event.task_id)
        key = execution_key(event)
        if key is not None:
            keys.executions.add(key)
        keys.stats.add(stats_id(event.tenant, partition))
    return keys


@dataclass
class ViewDocs:
    """Documents of the views by ``_id``; None (or no entry) is a document that does not exist."""

    tasks: dict[str, Doc | None] = field(default_factory=dict)
    executions: dict[str, Doc | None] = field(default_factory=dict)
    stats: dict[str, Doc | None] = field(default_factory=dict)


@dataclass
class Folded:
    """What a batch changed: the new documents, each once, and the audit documents."""

    tasks: dict[str, Doc] = field(default_factory=dict)
    executions: dict[str, Doc] = field(default_factory=dict)
    stats: dict[str, Doc] = field(default_factory=dict)
    audit: list[Doc] = field(default_factory=list)
    occurrences: OccurrenceWrites = field(default_factory=OccurrenceWrites)
    """What the batch changes in the ``occurrences`` view (see :mod:`projections.occurrences`)."""

    def __len__(self) -> int:
        return len(self.tasks) + len(self.executions) + len(self.stats) + len(self.audit) + len(self.occurrences)


def fold(before: ViewDocs, events: Iterable[tuple[Event, int, int]]) -> Folded:
    """Fold ``(event, partition, offset)`` in log order (per partition) into the documents.

    ``before`` holds the documents the events touch as stored (see :func:`touched`); it is
    not changed. Returns each changed document once, however many events changed it.
    """
    tasks, executions, stats = dict(before.tasks), dict(before.executions), dict(before.stats)
    out = Folded()
    for event, partition, offset in events:
        task_before = tasks.get(event.task_id)
        prior = facts_of(task_before, event.tenant)
        task_after = evolve_task(task_before, event)
        if task_after is not task_before and task_after is not None:
            tasks[event.task_id] = out.tasks[event.task_id] = task_after
            out.occurrences.add(event, task_before)
        execution_changed = False
        key = execution_key(event)
        if key is not None:
            kind = _kind(event, prior)
            execution_before = executions.get(key)
            execution_after = evolve_execution(execution_before, event, kind)
            if execution_after is not execution_before and execution_after is not None:
                executions[key] = out.executions[key] = execution_after
                execution_changed = True
        out.audit.append(audit_doc(event, partition, offset, prior))
        # Counted once per event: when it is new to its task (or, for a task whose creation
        # was not seen, new to the execution it changes).
        if task_before is not None:
            counted = task_after is not task_before
        else:
            counted = isinstance(event, TaskCreated) or execution_changed
        if counted:
            sid = stats_id(event.tenant, partition)
            stats_before = stats.get(sid)
            stats_after = evolve_stats(stats_before, event, partition, offset, prior)
            if stats_after is not stats_before and stats_after is not None:
                stats[sid] = out.stats[sid] = stats_after
    return out


def _kind(event: Event, prior: TaskFacts | None) -> str:
    # Filed under the task's kind, so an execution's dispatch and completion land in one place.
    if prior is not None:
        return prior.type
    if isinstance(event, ExecutionDispatched):
        return event.work.kind
    return UNKNOWN_TYPE


# ---------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------


def evolve_task(doc: Doc | None, event: Event) -> Doc | None:
    """The ``tasks`` document (``_id`` = task id) after ``event``; None while the task was never created.

    Returns ``doc`` itself when the event changes nothing (already folded in, or a task that
    does not exist: a rejected command on a missing task creates no document).
    """
    if doc is not None and doc.get("version", 0) >= event.sequence:
        return doc
    if isinstance(event, TaskCreated):
        return {"_id": event.task_id, **_task_created_doc(event)}
    if doc is None:
        return None
    return apply_update(doc, task_update(event, doc.get("status")))


def task_update(event: Event, status: str | None) -> Doc:
    """The update an event makes to an existing ``tasks`` document whose status is ``status``."""
    seq = event.sequence
    common: Doc = {"version": seq, "last_event_at": event.at}
    update: Doc
    match event:
        case TaskCreated():
            return {"$set": _task_created_doc(event)}
        case TaskUpdated():
            d = event.definition
            # An update keeps a paused task paused and re-activates a completed one.
            status = "paused" if status == "paused" else "active"
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
            return {"$set": {**common, **fields}}
        case TaskPaused():
            fields = {
                "status": "paused",
                "paused_note": event.note,
                "paused_reason": event.reason,
                "paused_failures": event.failures,
                "revision": event.revision,
            }
            return {"$set": {**common, **fields, "updated_at": event.at}}
        case TaskResumed():
            fields = {
                "status": "active",
                "paused_note": None,
                "paused_reason": None,
                "paused_failures": None,
                "revision": event.revision,
            }
            fields |= _next_run(event.next_slot, event.next_fire_at)
            return {"$set": {**common, **fields, "updated_at": event.at}}
        case TaskDeleted():
            fields = {"status": "deleted", "deleted_at": event.at, **_next_run(None, None)}
            return {"$set": {**common, **fields, "updated_at": event.at}}
        case TaskCompleted():
            fields = {"status": "completed", "completed_reason": event.reason, **_next_run(None, None)}
            return {"$set": {**common, **fields, "updated_at": event.at}}
        case SlotsMissed():
            update = {
                "$set": {**common, **_next_run(event.next_slot, event.next_fire_at)},
                "$inc": {"counters.missed": event.count},
                "$max": {"last_slot": event.last_slot, "last_slot_us": micros_since_epoch(event.last_slot)},
            }
            return update
        case ExecutionDispatched():
            common = {**common, **_next_run(event.next_slot, event.next_fire_at)}
            if event.reason == "retry":
                return {"$set": common, "$inc": {"counters.retries": 1}}
            last_run = {
                "execution_id": event.execution_id,
                "slot": event.slot,
                "scheduled_for": event.scheduled_for,
                "dispatched_at": event.at,
                "reason": event.reason,
            }
            update = {"$set": {**common, "last_run": last_run}, "$inc": {"counters.runs": 1}}
            if event.reason == "schedule":
                update["$inc"]["counters.scheduled_runs"] = 1
            if event.reason == "backfill":
                update["$inc"]["backfill.dispatched"] = 1
            if event.reason == "schedule" and event.slot is not None:
                update["$max"] = {"last_slot": event.slot, "last_slot_us": micros_since_epoch(event.slot)}
            return update
        case ExecutionBuffered():
            # A buffered slot has been handled: the schedule moved past it.
            update = {
                "$set": {**common, **_next_run(event.next_slot, event.next_fire_at)},
                "$max": {"last_slot": event.slot, "last_slot_us": micros_since_epoch(event.slot)},
                "$inc": {"counters.scheduled_runs": 1},
            }
            return update
        case ExecutionStarted():
            return {"$set": common}
        case AttemptFailed():
            update = {"$set": {**common, "last_error": event.error}, "$inc": {"counters.attempts_failed": 1}}
            return update
        case ExecutionCompleted():
            fields = {
                "last_status": event.status,
                "last_error": event.error,
                "last_finished_at": event.finished_at,
            }
            update = {"$set": {**common, **fields}, "$inc": {f"counters.{event.status}": 1}}
            if event.backfill_id is not None:
                # A backfill's executions all end before (completed) or right after (cancelled,
                # deleted) its BackfillEnded, so they count on the latest backfill, which is theirs.
                update["$inc"][f"backfill.{event.status}"] = 1
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
            return update
        case BackfillStarted():
            backfill = {
                "id": event.backfill_id,
                "from": event.from_,
                "to": event.to,
                "max_concurrency": event.max_concurrency,
                "slots": event.slots,
                "status": "running",
                "started_at": event.at,
                "started_by": event.actor,
                "ended_at": None,
                "reason": None,
                **dict.fromkeys(("dispatched", *OUTCOMES), 0),
            }
            return {"$set": {**common, "backfill": backfill}}
        case BackfillEnded():
            fields = {"backfill.status": event.status, "backfill.ended_at": event.at, "backfill.reason": event.reason}
            return {"$set": {**common, **fields}}
        case CommandRejected():
            rejection = {
                "command_id": event.command_id,
                "command_type": event.command_type,
                "reason": event.reason,
                "field": event.field,
                "at": event.at,
            }
            update = {"$set": {**common, "last_rejection": rejection}, "$inc": {"counters.rejected": 1}}
            return update
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
        # Exact (a BSON date keeps milliseconds): where the occurrence log's segments end.
        "last_slot_us": None,
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


# ---------------------------------------------------------------------------------------------
# executions
# ---------------------------------------------------------------------------------------------


def skipped_execution_id(event: SlotsMissed) -> str:
    """``_id`` of the ``skipped`` execution document recording a ``SlotsMissed`` event."""
    return f"missed:{event.event_id}"


def execution_key(event: Event) -> str | None:
    """``_id`` of the ``executions`` document an event changes; None for task-only events."""
    match event:
        case ExecutionDispatched() | ExecutionBuffered() | ExecutionStarted() | AttemptFailed() | ExecutionCompleted():
            return event.execution_id
        case SlotsMissed():
            return skipped_execution_id(event)
        case _:
            return None


def opens_execution(event: Event) -> bool:
    """Whether an event creates its execution's document (a dispatch that is not a retry or of a
    buffered slot, a buffering, missed slots)."""
    if isinstance(event, ExecutionDispatched):
        return event.reason not in ("retry", "buffered")
    return isinstance(event, ExecutionBuffered | SlotsMissed)


def evolve_execution(doc: Doc | None, event: Event, kind: str) -> Doc | None:
    """The ``executions`` document an event changes, after it (``doc`` itself if unchanged).

    A dispatch or buffering creates the document; later events of an execution that was never
    dispatched change nothing. ``kind`` is the task's work kind (``ExecutionBuffered`` and
    ``SlotsMissed`` do not carry it).
    """
    key = execution_key(event)
    if key is None or (doc is not None and doc.get("version", 0) >= event.sequence):
        return doc
    if doc is None and not isinstance(event, ExecutionDispatched | ExecutionBuffered | SlotsMissed):
        return None
    if isinstance(event, SlotsMissed):
        return doc if doc is not None else _skipped_doc(event, kind)
    return apply_update(doc if doc is not None else {"_id": key}, _execution_update(event, doc, kind))


def _execution_update(event: Event, doc: Doc | None, kind: str) -> Doc:
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
                "backfill_id": event.backfill_id,
                "version": seq,
            }
            if event.reason != "retry":
                # A retry keeps the reason the execution started for.
                fields["reason"] = event.reason
            if event.reason not in ("retry", "buffered"):
                fields.update(_execution_placeholders())
            entry = {"status": "scheduled", "at": event.at, "attempt": event.attempt}
            return {"$set": fields, "$push": {"timeline": entry}}
        case ExecutionBuffered():
            fields = {
                "task_id": event.task_id,
                "tenant": event.tenant,
                "type": kind,
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
            return {"$set": fields, "$push": {"timeline": entry}}
        case ExecutionStarted():
            entry = {
                "status": "running",
                "at": event.started_at,
                "attempt": event.attempt,
                "worker": event.worker,
            }
            fields = {"status": "running", "attempt": event.attempt, "worker": event.worker, "version": seq}
            if doc is None or doc.get("started_at") is None:
                # started_at is the first attempt's start: set only while it is still unset.
                fields["started_at"] = event.started_at
            return {"$set": fields, "$push": {"timeline": entry}}
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
            return {"$set": fields, "$push": {"timeline": entry}}
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
            return {"$set": fields, "$push": {"timeline": entry}}
        case (
            SlotsMissed()
            | TaskCreated()
            | TaskUpdated()
            | TaskPaused()
            | TaskResumed()
            | TaskDeleted()
            | TaskCompleted()
            | BackfillStarted()
            | BackfillEnded()
            | CommandRejected()
        ):
            raise ValueError(f"{event.type} changes no execution")
        case _:
            assert_never(event)


def _skipped_doc(event: SlotsMissed, kind: str) -> Doc:
    """The ``skipped`` execution document recording missed slots (written once)."""
    seq = event.sequence
    return {
        "_id": skipped_execution_id(event),
        "task_id": event.task_id,
        "tenant": event.tenant,
        "type": kind,
        "status": "skipped",
        "attempt": 0,
        "reason": event.reason,
        "slot": event.first_slot,
        "last_slot": event.last_slot,
        "missed_count": event.count,
        "truncated": event.truncated,
        "calendar": event.calendar,
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


# ---------------------------------------------------------------------------------------------
# audit
# ---------------------------------------------------------------------------------------------


def audit_doc(event: Event, partition: int, offset: int, prior: TaskFacts | None = None) -> Doc:
    """The ``audit`` document of an event (``_id`` = event id); written once.

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
    return doc


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


def evolve_stats(doc: Doc | None, event: Event, partition: int, offset: int, prior: TaskFacts | None) -> Doc | None:
    """The ``stats`` document of the event's tenant in ``partition`` after counting the event.

    ``prior`` is the task's facts before the event. The caller counts an event only if it is
    new to its task (see :func:`fold`); the ``offset`` kept here also skips an event at an
    offset already counted (redelivered after a crash that wrote ``stats`` but not ``tasks``).
    Returns ``doc`` itself when nothing changes.

    Fields (all counters; a tenant's statistics are the sum over its documents):

    * ``executions.{dispatched, buffered, retries, in_flight, succeeded, failed, timed_out,
      cancelled, skipped}`` (``skipped`` counts missed slots, ``in_flight`` is a gauge);
    * ``by_type.<kind>.executions.<same>`` and ``by_type.<kind>.duration`` (histogram);
    * ``tasks.<status>`` (a gauge of tasks per status) and ``tasks_by_type.<kind>`` (tasks
      not deleted).
    """
    if doc is not None and doc.get("offset", -1) >= offset:
        return doc
    inc = stats_delta(event, prior)
    if not inc:
        return doc
    base = doc if doc is not None else {"_id": stats_id(event.tenant, partition)}
    return apply_update(base, {"$set": {"tenant": event.tenant, "partition": partition, "offset": offset}, "$inc": inc})


def stats_delta(event: Event, prior: TaskFacts | None) -> dict[str, int]:
    """The counters an event moves (dotted paths to increments), given the task's prior facts."""
    inc: dict[str, int] = {}
    kind = _kind(event, prior)

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
            if event.reason in ("schedule", "manual", "backfill"):
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
            | BackfillStarted()
            | BackfillEnded()
            | CommandRejected()
        ):
            pass
        case _:
            assert_never(event)
    _task_transition(inc, prior, evolve_facts(prior, event))
    return {k: v for k, v in inc.items() if v != 0}


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
