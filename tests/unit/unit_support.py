"""Builders for the pure-core tests: commands, events, and a given/when/then runner."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from scheduler import decide, evolve
from scheduler.state import TaskState
from schemas.commands import CommandBase
from schemas.events import EventBase
from schemas.ids import event_id

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TASK = "task-1"
TENANT = "acme"

_ids = itertools.count(1)


def at(minutes: float = 0, *, seconds: float = 0, hours: float = 0) -> datetime:
    """An instant relative to T0."""
    return T0 + timedelta(hours=hours, minutes=minutes, seconds=seconds)


def definition(**overrides: Any) -> dict[str, Any]:
    """A task definition (as a dict) running every 10 minutes in UTC, with overrides."""
    base: dict[str, Any] = {
        "name": "nightly tests",
        "schedule": {"kind": "cron", "expression": "*/10 * * * *"},
        "work": {"kind": "http", "url": "https://engine.example/runs"},
    }
    base.update(overrides)
    return base


def cmd(cls: type[CommandBase], when: datetime = T0, **fields: Any) -> Any:
    """A command of ``cls`` on the test task at ``when``."""
    fields.setdefault("command_id", f"cmd-{next(_ids)}")
    fields.setdefault("task_id", TASK)
    fields.setdefault("tenant", TENANT)
    fields.setdefault("actor", "system" if cls.__name__.startswith(("Wake", "Report")) else "alice")
    return cls(at=when, **fields)


@dataclass
class E:
    """A given event, written without the bookkeeping fields (filled in when folded)."""

    cls: type[EventBase]
    fields: dict[str, Any] = field(default_factory=dict)
    when: datetime = T0


def e(cls: type[EventBase], when: datetime = T0, **fields: Any) -> E:
    """Shorthand for a given event."""
    return E(cls, fields, when)


def fold(given: list[Any]) -> tuple[TaskState | None, list[Any]]:
    """Fold a history. Items are events (:class:`E`) or commands (decided, then folded)."""
    state: TaskState | None = None
    history: list[Any] = []
    for item in given:
        if isinstance(item, E):
            seq = (state.version if state else 0) + 1
            event = item.cls(
                event_id=event_id(TASK, seq),
                task_id=TASK,
                tenant=TENANT,
                sequence=seq,
                at=item.when,
                causation_id=f"given-{seq}",
                actor="alice",
                **item.fields,
            )
            events: list[Any] = [event]
        else:
            events = decide(item, state)
        for event in events:
            state = evolve(state, event)
            history.append(event)
    return state, history


def when(given: list[Any], command: Any) -> tuple[list[Any], TaskState | None]:
    """Decide ``command`` on the folded ``given`` history; returns the events and new state."""
    state, _ = fold(given)
    events = decide(command, state)
    for event in events:
        state = evolve(state, event)
    return events, state


def shape(events: list[Any], *keys: str) -> list[tuple[Any, ...]]:
    """Each event's type followed by the named fields (missing ones as None)."""
    return [(ev.type, *(getattr(ev, k, None) for k in keys)) for ev in events]


def assert_then(events: list[Any], expected: list[tuple[str, dict[str, Any]]]) -> None:
    """Events have exactly the expected types, in order, and at least the given field values."""
    assert [ev.type for ev in events] == [t for t, _ in expected], shape(events)
    for ev, (_, fields) in zip(events, expected, strict=True):
        for name, value in fields.items():
            assert getattr(ev, name) == value, (ev.type, name, getattr(ev, name), value)
