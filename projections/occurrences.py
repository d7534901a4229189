"""The ``occurrences`` view: the facts the occurrence log is built from, folded from events.

Pure (the storage adapter is :mod:`projections.store`; the log itself is
:mod:`scheduler.occurrence_log`). One collection, documents told apart by ``kind``:

* ``segment`` (``_id`` ``s:<event id>``), one per ``TaskCreated`` / ``TaskUpdated``: the
  schedule, bounds and jitter in effect from then (``spec``, JSON, no secrets), the first slot
  (the event's ``next_slot``), and ``closes_us``, the last slot handled before it (the end of
  the segment it closes);
* ``completed`` / ``deleted`` (``c:`` / ``d:<event id>``): the task completed or was deleted,
  with the last slot handled then (``handled_us``);
* ``missed`` (``m:<event id>``), one per ``SlotsMissed``: the range, count, reason, calendar;
* ``run`` (``r:<execution id>``), one per execution of a slot: reason, attempts, status.

Instants that identify slots are kept as integer microseconds (``*_us``) besides the BSON
dates (milliseconds): an interval anchored at a creation instant has slots to the microsecond,
and a slot must match its facts exactly.

Writes need no read: segment, marker and missed documents are written once (a second insert
is a duplicate and skipped), and a run document is an upsert of fields each written by one
kind of event (``$set`` of the same values, ``$max`` of attempts, ``$min`` of the first
sequence), so any redelivery, in any order, leaves the same document. The fold writes only for
an event new to its task (like the ``tasks`` view), so a task's view is complete up to its
``tasks`` document's version (written after this view in a batch).

Retention: these documents are small and are **not** expired with the executions
(``SCHED_RETENTION_DAYS`` deletes ``executions`` only), so the log covers every slot since the
task was created, as far back as ``task-events`` keeps events; a replay rebuilds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from scheduler.occurrence_log import MissedFact, RunFact, Segment
from scheduler.schedule import anchor_for
from schemas.events import (
    Event,
    ExecutionBuffered,
    ExecutionCompleted,
    ExecutionDispatched,
    SlotsMissed,
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskUpdated,
)
from schemas.specs import TOLERANT, TaskDefinition

Doc = dict[str, Any]

SEGMENT, COMPLETED, DELETED, MISSED, RUN = "segment", "completed", "deleted", "missed", "run"
"""Values of ``kind``."""
SCHEDULE_KINDS = (SEGMENT, COMPLETED, DELETED)
"""Kinds that say which schedule was in effect when (read whole for a task)."""
FACT_KINDS = (MISSED, RUN)
"""Kinds that record what happened to slots (read by slot range)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SPEC_FIELDS = ("schedule", "start_at", "end_at", "max_runs", "jitter_seconds")
_PLACEHOLDER_WORK = {"kind": "handler", "name": "occurrence-log"}


def micros(instant: datetime) -> int:
    """An instant as integer microseconds since the epoch (exact, unlike a BSON date)."""
    return (_aware(instant) - _EPOCH) // timedelta(microseconds=1)


def instant(us: int) -> datetime:
    """Inverse of :func:`micros`."""
    return _EPOCH + timedelta(microseconds=us)


def _aware(value: datetime) -> datetime:
    # A client that is not tz-aware reads BSON dates back naive (they are UTC).
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _opt_micros(value: datetime | None) -> int | None:
    return None if value is None else micros(value)


def last_slot_us(task: Mapping[str, Any] | None) -> int | None:
    """The last slot a ``tasks`` document says was handled, in microseconds (None: none).

    ``last_slot_us`` is exact; documents projected before it existed have only the BSON date.
    """
    if task is None:
        return None
    exact = task.get("last_slot_us")
    if isinstance(exact, int):
        return exact
    rough = task.get("last_slot")
    return micros(rough) if isinstance(rough, datetime) else None


# ---------------------------------------------------------------------------------------------
# The fold
# ---------------------------------------------------------------------------------------------


@dataclass
class OccurrenceWrites:
    """What events change in the view: documents to insert once, upserts per ``_id``."""

    inserts: list[Doc] = field(default_factory=list)
    updates: dict[str, Doc] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.inserts) + len(self.updates)

    def add(self, event: Event, task_before: Mapping[str, Any] | None) -> None:
        """Fold one event, new to its task, whose ``tasks`` document was ``task_before``."""
        doc = occurrence_doc(event, task_before)
        if doc is not None:
            self.inserts.append(doc)
        update = run_update(event)
        if update is not None:
            key, change = update
            self.updates[key] = merge_updates(self.updates.get(key), change)


def occurrence_doc(event: Event, task_before: Mapping[str, Any] | None) -> Doc | None:
    """The write-once document an event makes (a segment, a marker, a missed range), if any."""
    common: Doc = {
        "task_id": event.task_id,
        "tenant": event.tenant,
        "seq": event.sequence,
        "at": event.at,
        "at_us": micros(event.at),
    }
    match event:
        case TaskCreated() | TaskUpdated():
            d = event.definition
            spec = d.model_dump(mode="json", include=set(_SPEC_FIELDS))
            return {
                "_id": f"s:{event.event_id}",
                "kind": SEGMENT,
                **common,
                "created": isinstance(event, TaskCreated),
                "first_slot": event.next_slot,
                "first_slot_us": _opt_micros(event.next_slot),
                # The slots of the segment this one closes end at the last one handled.
                "closes_us": None if isinstance(event, TaskCreated) else last_slot_us(task_before),
                "spec": spec,
            }
        case TaskCompleted():
            return {"_id": f"c:{event.event_id}", "kind": COMPLETED, **common, "handled_us": last_slot_us(task_before)}
        case TaskDeleted():
            return {"_id": f"d:{event.event_id}", "kind": DELETED, **common, "handled_us": last_slot_us(task_before)}
        case SlotsMissed():
            return {
                "_id": f"m:{event.event_id}",
                "kind": MISSED,
                **common,
                "slot": event.first_slot,
                "slot_us": micros(event.first_slot),
                "last_slot": event.last_slot,
                "last_slot_us": micros(event.last_slot),
                "count": event.count,
                "reason": event.reason,
                # Added by the calendars work; read defensively so either order of merging works.
                "calendar": getattr(event, "calendar", None),
                "truncated": event.truncated,
            }
        case _:
            return None


def run_update(event: Event) -> tuple[str, Doc] | None:
    """``(_id, update)`` of the run document an execution event of a slot changes, if any.

    Each field is written by one kind of event only, so updates commute (see the module
    docstring). Manual runs (no slot) are not occurrences of the schedule.
    """
    match event:
        case ExecutionDispatched(slot=datetime() as slot):
            fields: Doc = {}
            if event.reason != "retry":
                fields = {"reason": event.reason, "dispatched_at": event.at, "dispatched_us": micros(event.at)}
            return _run(event, slot, fields, attempts=event.attempt)
        case ExecutionBuffered():
            return _run(event, event.slot, {"buffered_at": event.at}, attempts=0)
        case ExecutionCompleted(slot=datetime() as slot):
            fields = {"status": event.status, "finished_at": event.finished_at}
            return _run(event, slot, fields, attempts=event.attempts)
        case _:
            return None


def _run(
    event: ExecutionDispatched | ExecutionBuffered | ExecutionCompleted, slot: datetime, fields: Doc, *, attempts: int
) -> tuple[str, Doc]:
    slot_us = micros(slot)
    identity = {
        "kind": RUN,
        "task_id": event.task_id,
        "tenant": event.tenant,
        "execution_id": event.execution_id,
        "slot": slot,
        "slot_us": slot_us,
        "last_slot_us": slot_us,
    }
    update = {"$set": {**identity, **fields}, "$max": {"attempts": attempts}, "$min": {"seq": event.sequence}}
    return f"r:{event.execution_id}", update


def merge_updates(first: Doc | None, second: Doc) -> Doc:
    """One update doing what ``first`` then ``second`` do (``$set``, ``$max``, ``$min``)."""
    if first is None:
        return {op: dict(fields) for op, fields in second.items()}
    out = {op: dict(fields) for op, fields in first.items()}
    for op, fields in second.items():
        target = out.setdefault(op, {})
        for key, value in fields.items():
            if op == "$set" or key not in target:
                target[key] = value
            elif op == "$max":
                target[key] = max(target[key], value)
            elif op == "$min":
                target[key] = min(target[key], value)
            else:
                raise ValueError(f"merge_updates does not know {op}")
    return out


# ---------------------------------------------------------------------------------------------
# Reading: documents to the log's inputs
# ---------------------------------------------------------------------------------------------


def segments(schedule_docs: Iterable[Mapping[str, Any]], task: Mapping[str, Any]) -> list[Segment]:
    """The segments of the task's current incarnation, in order, from its schedule documents
    (kinds :data:`SCHEDULE_KINDS`) and its ``tasks`` document (status, last slot handled).

    Documents of earlier incarnations (before the last ``TaskCreated``) are left out: the log
    lists the slots of the task that exists now, or existed last.
    """
    docs = sorted(schedule_docs, key=lambda d: int(d["seq"]))
    starts = [i for i, d in enumerate(docs) if d["kind"] == SEGMENT and d.get("created")]
    if not starts:
        return []
    docs = docs[starts[-1] :]
    created_at = instant(int(docs[0]["at_us"]))
    status = task.get("status")
    out: list[Segment] = []
    for i, doc in enumerate(docs):
        if doc["kind"] != SEGMENT:
            continue
        rest = docs[i + 1 :]
        following = next((d for d in rest if d["kind"] == SEGMENT), None)
        closing = next((d for d in rest if d["kind"] != SEGMENT), None)
        if closing is not None and following is not None and int(closing["seq"]) > int(following["seq"]):
            closing = None
        handled: int | None
        until: datetime | None
        unhandled = "paused" if status == "paused" else "due"
        if following is not None:
            handled = following.get("closes_us")
            until = None if handled is None else instant(handled)
        elif closing is not None and closing["kind"] == COMPLETED:
            handled = closing.get("handled_us")
            until = None if handled is None else instant(handled)
        elif closing is not None:  # deleted: the slots not handled by then never ran
            handled, unhandled = closing.get("handled_us"), "task_deleted"
            # Clocks differ (the API stamps a delete, the worker its ticks): a slot handled
            # "after" the deletion's instant still belongs here.
            until = instant(max(int(closing["at_us"]), int(handled) if handled is not None else 0))
        else:
            handled, until = last_slot_us(task), None
        if until is None and (following is not None or closing is not None):
            # Closed before any slot was handled: the segment has none.
            until = instant(int(doc["first_slot_us"]) - 1) if doc.get("first_slot_us") is not None else None
        definition = spec_definition(doc["spec"])
        first = doc.get("first_slot_us")
        out.append(
            Segment(
                seq=int(doc["seq"]),
                task_id=str(doc["task_id"]),
                definition=definition,
                anchor=anchor_for(definition, created_at),
                first_slot=None if first is None else instant(int(first)),
                handled_until=None if handled is None else instant(int(handled)),
                until=until,
                unhandled=unhandled,
            )
        )
    return out


def spec_definition(spec: Mapping[str, Any]) -> TaskDefinition:
    """A definition carrying a segment's schedule, bounds and jitter (what slot arithmetic reads).

    Validated TOLERANT: the definition was accepted when the event was written.
    """
    fields = {k: v for k, v in spec.items() if k in _SPEC_FIELDS}
    return TaskDefinition.model_validate(
        {"name": "occurrence-log", "work": _PLACEHOLDER_WORK, **fields}, context=TOLERANT
    )


def incarnation_seq(schedule_docs: Iterable[Mapping[str, Any]]) -> int:
    """Sequence of the current incarnation's ``TaskCreated`` (0 when none is known)."""
    return max((int(d["seq"]) for d in schedule_docs if d["kind"] == SEGMENT and d.get("created")), default=0)


def run_fact(doc: Mapping[str, Any]) -> RunFact:
    """A ``run`` document as the log reads it."""
    dispatched = doc.get("dispatched_us")
    return RunFact(
        slot=instant(int(doc["slot_us"])),
        execution_id=str(doc["execution_id"]),
        reason=doc.get("reason"),
        attempts=int(doc.get("attempts") or 0),
        status=doc.get("status"),
        dispatched_at=None if dispatched is None else instant(int(dispatched)),
    )


def missed_fact(doc: Mapping[str, Any]) -> MissedFact:
    """A ``missed`` document as the log reads it."""
    return MissedFact(
        first_slot=instant(int(doc["slot_us"])),
        last_slot=instant(int(doc["last_slot_us"])),
        count=int(doc["count"]),
        reason=str(doc["reason"]),
        calendar=doc.get("calendar"),
        truncated=bool(doc.get("truncated")),
    )
