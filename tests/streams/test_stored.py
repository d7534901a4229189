"""The stored form of a task: what the due-index rebuild reads without validating the state."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import orjson

from scheduler import decide, evolve, next_wakeup
from schemas.commands import CreateTask, PauseTask
from schemas.specs import CronSchedule, HandlerWork, IntervalSchedule, TaskDefinition
from streams.store import STORED_VERSION, IndexEntry, Stored

AT = datetime(2026, 3, 28, 23, 30, 0, 123456, tzinfo=UTC)


def _stored(definition: TaskDefinition, *more: PauseTask) -> Stored:
    state = None
    events = []
    for command in (
        CreateTask(command_id="c1", task_id="t-1", tenant="acme", actor="a", at=AT, definition=definition),
        *more,
    ):
        events = decide(command, state)
        for event in events:
            state = evolve(state, event)
    assert state is not None
    return Stored(state, list(events), time.time(), 5)


def test_entry_matches_the_full_state() -> None:
    # A cron slot across the spring-forward gap, and a jittered interval with microseconds.
    for definition in (
        TaskDefinition(name="n", schedule=CronSchedule(expression="30 2 * * *", timezone="Europe/Berlin"),
                       work=HandlerWork(name="noop")),
        TaskDefinition(name="n", schedule=IntervalSchedule(every_seconds=7.5, anchor=AT), jitter_seconds=3,
                       work=HandlerWork(name="noop")),
    ):  # fmt: skip
        stored = _stored(definition)
        doc = orjson.loads(stored.dump())
        entry = IndexEntry.read(doc)
        assert entry.wakeup is not None
        assert entry.wakeup == next_wakeup(stored.state)
        assert (entry.task_id, entry.tenant, entry.applied_at, entry.partition) == ("t-1", "acme", stored.applied_at, 5)
        assert doc["v"] == STORED_VERSION
        assert Stored.from_doc(doc, partition=0) == stored


def test_a_paused_task_has_no_wakeup() -> None:
    definition = TaskDefinition(name="n", schedule=IntervalSchedule(every_seconds=60), work=HandlerWork(name="noop"))
    pause = PauseTask(command_id="c2", task_id="t-1", tenant="acme", actor="a", at=AT + timedelta(seconds=1))
    entry = IndexEntry.read(orjson.loads(_stored(definition, pause).dump()))
    assert entry.wakeup is None


def test_records_written_before_the_entry_existed_still_read() -> None:
    definition = TaskDefinition(name="n", schedule=IntervalSchedule(every_seconds=60), work=HandlerWork(name="noop"))
    stored = _stored(definition)
    doc = orjson.loads(stored.dump())
    del doc["index"], doc["v"]
    entry = IndexEntry.read(doc)
    assert entry == IndexEntry("t-1", "acme", next_wakeup(stored.state), stored.applied_at, None)
    assert Stored.from_doc(doc, partition=3).partition == 3


def test_version_1_records_with_an_entry_but_no_partition_still_read() -> None:
    definition = TaskDefinition(name="n", schedule=IntervalSchedule(every_seconds=60), work=HandlerWork(name="noop"))
    stored = _stored(definition)
    doc = orjson.loads(stored.dump())
    del doc["v"]
    doc["index"] = doc["index"][:3]
    entry = IndexEntry.read(doc)
    assert entry == IndexEntry("t-1", "acme", next_wakeup(stored.state), stored.applied_at, None)
