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
* ``run`` (``r:<execution id>:<sequence>``), one per event of an execution of a slot (its
  dispatches, buffering, completion), read back together as the execution's reason, attempts
  and outcome.

Instants that identify slots are kept as integer microseconds (``*_us``) besides the BSON
dates (milliseconds): an interval anchored at a creation instant has slots to the microsecond,
and a slot must match its facts exactly.

Writes need no read and every document is written once, by one event (a second insert is a
duplicate and skipped), so any redelivery, in any order, leaves the same view; and an insert
costs a tenth of an upsert on FerretDB (0.08 against 0.84 ms a document, bulks of 50), which is
why an execution is a document per event rather than one updated in place. The fold writes only for
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
    """What events add to the view: documents, each written once."""

    inserts: list[Doc] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inserts)

    def add(self, event: Event, task_before: Mapping[str, Any] | None) -> None:
        """Fold one event, new to its task, whose ``tasks`` document was ``task_before``."""
        doc = occurrence_doc(event, task_before)
        if doc is not None:
            self.inserts.append(doc)


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
        case ExecutionDispatched(slot=datetime() as slot):
            # Manual runs (no slot) are not occurrences of the schedule.
            fields = {"reason": event.reason, "attempt": event.attempt, "at_us": micros(event.at)}
            return _run_doc(event, slot, step="dispatched", **fields)
        case ExecutionBuffered():
            return _run_doc(event, event.slot, step="buffered", reason="buffered", attempt=0)
        case ExecutionCompleted(slot=datetime() as slot):
            return _run_doc(event, slot, step="completed", status=event.status, attempt=event.attempts)
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


def _run_doc(event: ExecutionDispatched | ExecutionBuffered | ExecutionCompleted, slot: datetime, **fields: Any) -> Doc:
    """A ``run`` document: one execution event of a slot (``_id`` ``r:<execution id>:<sequence>``)."""
    slot_us = micros(slot)
    return {
        "_id": f"r:{event.execution_id}:{event.sequence}",
        "kind": RUN,
        "task_id": event.task_id,
        "tenant": event.tenant,
        "seq": event.sequence,
        "execution_id": event.execution_id,
        "slot": slot,
        "slot_us": slot_us,
        "last_slot_us": slot_us,
        **fields,
    }


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


def run_facts(docs: Iterable[Mapping[str, Any]]) -> list[RunFact]:
    """The runs the ``run`` documents (one per execution event) record, one per execution.

    Its reason is the first attempt's (a retry keeps it), its attempts the most any event
    says, its status the completion's; dispatched at its first non-retry dispatch.
    """
    by_execution: dict[str, list[Mapping[str, Any]]] = {}
    for doc in docs:
        by_execution.setdefault(str(doc["execution_id"]), []).append(doc)
    out: list[RunFact] = []
    for execution_id, events in by_execution.items():
        events.sort(key=lambda d: int(d["seq"]))
        opening = [d for d in events if d.get("step") in ("dispatched", "buffered") and d.get("reason") != "retry"]
        first = next((d for d in opening if d.get("step") == "dispatched"), None)
        completed = next((d for d in events if d.get("step") == "completed"), None)
        out.append(
            RunFact(
                slot=instant(int(events[0]["slot_us"])),
                execution_id=execution_id,
                reason=opening[0].get("reason") if opening else None,
                attempts=max(int(d.get("attempt") or 0) for d in events),
                status=None if completed is None else completed.get("status"),
                dispatched_at=None if first is None else instant(int(first["at_us"])),
            )
        )
    return out


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
