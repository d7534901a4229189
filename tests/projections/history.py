"""Builders of realistic event histories for the projection tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from projections.read import CollectionNames
from projections.store import Positioned
from schemas.envelope import encode, event_envelope
from schemas.events import (
    AttemptFailed,
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
from schemas.ids import event_id, execution_id_for_slot, execution_id_for_trigger
from schemas.specs import HandlerWork, HttpWork, IntervalSchedule, Priority, TaskDefinition

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def definition(
    name: str = "nightly", kind: str = "http", every: float = 60.0, tags: list[str] | None = None
) -> TaskDefinition:
    """A task definition with an interval schedule."""
    work: HttpWork | HandlerWork = (
        HttpWork(url="https://example.test/run") if kind == "http" else HandlerWork(name="noop")
    )
    return TaskDefinition(
        name=name, schedule=IntervalSchedule(every_seconds=every, anchor=T0), work=work, tags=tags or ["t1"]
    )


@dataclass
class TaskHistory:
    """Emits a task's events with contiguous sequences, deterministic ids and advancing time."""

    task_id: str
    tenant: str = "acme"
    actor: str = "alice"
    now: datetime = T0
    sequence: int = 0
    definition: TaskDefinition = field(default_factory=definition)
    events: list[Event] = field(default_factory=list)

    def _base(self, step: float = 1.0) -> dict[str, Any]:
        self.sequence += 1
        self.now += timedelta(seconds=step)
        return {
            "event_id": event_id(self.task_id, self.sequence),
            "task_id": self.task_id,
            "tenant": self.tenant,
            "sequence": self.sequence,
            "at": self.now,
            "causation_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.task_id}/{self.sequence}")),
            "actor": self.actor,
        }

    def _add(self, event: Event) -> Event:
        self.events.append(event)
        return event

    def created(self, next_slot: datetime | None = None) -> Event:
        slot = next_slot or T0 + timedelta(minutes=1)
        return self._add(
            TaskCreated(**self._base(), definition=self.definition, revision=1, next_slot=slot, next_fire_at=slot)
        )

    def updated(self, new: TaskDefinition, next_slot: datetime | None, revision: int = 2) -> Event:
        self.definition = new
        return self._add(
            TaskUpdated(**self._base(), definition=new, revision=revision, next_slot=next_slot, next_fire_at=next_slot)
        )

    def paused(self, revision: int = 2) -> Event:
        return self._add(TaskPaused(**self._base(), note="maintenance", revision=revision))

    def resumed(self, revision: int = 3) -> Event:
        return self._add(TaskResumed(**self._base(), revision=revision))

    def deleted(self) -> Event:
        return self._add(TaskDeleted(**self._base()))

    def completed_task(self) -> Event:
        return self._add(TaskCompleted(**self._base(), reason="run_limit"))

    def missed(self, first: datetime, count: int = 1) -> Event:
        last = first + timedelta(minutes=count - 1)
        return self._add(SlotsMissed(**self._base(), first_slot=first, last_slot=last, count=count, reason="overlap"))

    def dispatched(
        self,
        slot: datetime | None,
        attempt: int = 1,
        reason: str = "schedule",
        trigger: str | None = None,
        next_slot: datetime | None = None,
    ) -> tuple[str, Event]:
        ex_id = (
            execution_id_for_slot(self.task_id, slot)
            if slot
            else execution_id_for_trigger(self.task_id, trigger or "x")
        )
        base = self._base()
        event = ExecutionDispatched(
            **base,
            execution_id=ex_id,
            attempt=attempt,
            reason=reason,
            slot=slot,
            trigger_id=trigger,
            priority=Priority.NORMAL,
            work=self.definition.work,
            params={"p": 1},
            scheduled_for=slot or base["at"],
            deadline=base["at"] + timedelta(minutes=5),
            next_slot=next_slot,
            next_fire_at=next_slot,
        )
        self._add(event)
        return ex_id, event

    def buffered(self, slot: datetime) -> tuple[str, Event]:
        ex_id = execution_id_for_slot(self.task_id, slot)
        return ex_id, self._add(ExecutionBuffered(**self._base(), execution_id=ex_id, slot=slot))

    def started(self, ex_id: str, attempt: int = 1, worker: str = "w1") -> Event:
        base = self._base()
        return self._add(
            ExecutionStarted(**base, execution_id=ex_id, attempt=attempt, worker=worker, started_at=base["at"])
        )

    def attempt_failed(self, ex_id: str, attempt: int = 1, retry: bool = True, timed_out: bool = False) -> Event:
        base = self._base()
        retry_at = base["at"] + timedelta(seconds=10) if retry else None
        return self._add(
            AttemptFailed(
                **base,
                execution_id=ex_id,
                attempt=attempt,
                error="boom",
                timed_out=timed_out,
                retry_at=retry_at,
            )
        )

    def finished(
        self,
        ex_id: str,
        status: str = "succeeded",
        duration_ms: int | None = 40,
        attempts: int = 1,
        slot: datetime | None = None,
        started_at: datetime | None = None,
    ) -> Event:
        base = self._base(step=(duration_ms or 0) / 1000)
        started = started_at
        if started is None and duration_ms is not None:
            started = base["at"] - timedelta(milliseconds=duration_ms)
        return self._add(
            ExecutionCompleted(
                **base,
                execution_id=ex_id,
                status=status,
                attempts=attempts,
                result={"ok": status == "succeeded"},
                error=None if status == "succeeded" else "boom",
                started_at=started,
                finished_at=base["at"],
                duration_ms=duration_ms,
                slot=slot,
                scheduled_for=slot,
            )
        )

    def rejected(self) -> Event:
        return self._add(
            CommandRejected(**self._base(), command_id="c-rej", command_type="PauseTask", reason="task is completed")
        )


def positioned(events: list[Event], partition: int = 0, first_offset: int = 0) -> list[Positioned]:
    """Events at consecutive offsets of one partition."""
    return [Positioned(e, partition, first_offset + i) for i, e in enumerate(events)]


def full_history(task_id: str, tenant: str = "acme") -> TaskHistory:
    """A task exercising every event type and execution path."""
    h = TaskHistory(task_id, tenant)
    h.created()
    s1 = T0 + timedelta(minutes=1)
    ex1, _ = h.dispatched(s1)
    h.started(ex1)
    h.finished(ex1, "succeeded", 40, slot=s1)
    s2 = T0 + timedelta(minutes=2)
    ex2, _ = h.dispatched(s2)
    h.started(ex2)
    h.attempt_failed(ex2, 1, retry=True)
    h.dispatched(s2, attempt=2, reason="retry")
    h.started(ex2, attempt=2, worker="w2")
    h.attempt_failed(ex2, 2, retry=False, timed_out=True)
    h.finished(ex2, "timed_out", 7000, attempts=2, slot=s2)
    h.missed(T0 + timedelta(minutes=3), count=2)
    s5 = T0 + timedelta(minutes=5)
    ex5, _ = h.dispatched(s5)
    s6 = T0 + timedelta(minutes=6)
    exb, _ = h.buffered(s6)
    h.finished(ex5, "failed", 120, slot=s5)
    h.dispatched(s6, reason="buffered")
    h.started(exb)
    h.finished(exb, "succeeded", 3, slot=s6)
    exm, _ = h.dispatched(None, reason="manual", trigger="trig-1")
    h.finished(exm, "cancelled", None, attempts=1)
    h.paused()
    h.rejected()
    h.resumed()
    h.updated(definition("renamed", kind="handler"), next_slot=T0 + timedelta(hours=1), revision=4)
    h.completed_task()
    h.deleted()
    return h


def envelope_bytes(event: Event) -> bytes:
    """The wire form of an event, as the task processor produces it."""
    return encode(event_envelope(event, "/tests/projections", None))


async def dump(db: AsyncDatabase[Any], names: CollectionNames) -> dict[str, list[dict[str, Any]]]:
    """Every document of every view, sorted by ``_id``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for view, name in names.as_dict().items():
        out[view] = await db[name].find().sort("_id", 1).to_list()
    return out
