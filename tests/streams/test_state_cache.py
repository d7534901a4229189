"""The decoded-state cache's memory: cached states share their models' fields-sets (issue 9)."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pydantic import ValidationError

from scheduler import TaskState, decision
from schemas.commands import CreateTask, Wake
from schemas.specs import TOLERANT, CronSchedule, HandlerWork, TaskDefinition
from streams.store import StateStore, Stored, share_field_sets

T0 = datetime(2026, 11, 29, tzinfo=UTC)
CACHED = 2_000


def _created(n: int) -> TaskState:
    definition = TaskDefinition(
        name=f"t{n}",
        schedule=CronSchedule(expression="0 3 1 1 *", timezone="Europe/Berlin"),
        work=HandlerWork(name="noop", params={"n": n}),
    )
    create = CreateTask(command_id=f"c{n}", task_id=f"acme/t{n:05d}", tenant="acme", actor="a", at=T0,
                        definition=definition)  # fmt: skip
    state = decision(create, None).state
    assert state is not None
    return state


def _table(n: int) -> dict[bytes, bytes]:
    return {f"acme/t{i:05d}".encode(): Stored(_created(i), [], 1.0, 0).dump() for i in range(n)}


def test_a_cached_state_costs_a_third_of_what_it_did() -> None:
    # Each decoded state held seven fields-sets of its own: 11 KB a new task's state, 220 MB
    # for the default 20,000. Shared, about 3.9 KB.
    table = _table(CACHED)
    store = StateStore(table, partitions=8, cache_size=CACHED)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in table:
            store.load(key)
        gc.collect()
        per_state = (tracemalloc.get_traced_memory()[0] - before) / CACHED
    finally:
        tracemalloc.stop()
    assert per_state < 5_500


def test_shared_fields_sets_read_and_copy_as_their_own() -> None:
    table = _table(2)
    store = StateStore(table, partitions=8, cache_size=10)
    first, second = (store.load(key) for key in table)
    assert first is not None and second is not None
    assert first.model_fields_set is second.model_fields_set  # shared
    assert first.definition.model_fields_set is second.definition.model_fields_set
    assert first.model_fields_set == set(TaskState.model_fields)
    # A copy with changes gets a set of its own; the shared one is untouched.
    changed = first.model_copy(update={"revision": 7})
    assert changed.model_fields_set is not first.model_fields_set
    with pytest.raises(ValidationError):
        first.revision = 8  # frozen: refused before pydantic records anything
    assert first.model_fields_set == set(TaskState.model_fields)
    # What is read, dumped and compared is what the table holds.
    for key, state in zip(table, (first, second), strict=True):
        decoded = TaskState.model_validate(orjson.loads(table[key])["state"], context=TOLERANT)
        assert state == decoded
        assert state.model_dump(exclude_unset=True) == decoded.model_dump(exclude_unset=True)


def test_decided_states_share_too_and_decide_the_same() -> None:
    table = _table(1)
    key = next(iter(table))
    store = StateStore(table, partitions=8, cache_size=10)
    state = store.load(key)
    assert state is not None
    wake = Wake(command_id="w", task_id=state.task_id, tenant="acme", actor="system", at=T0 + timedelta(days=40))
    uncached = decision(wake, TaskState.model_validate_json(state.model_dump_json()))
    decided = decision(wake, state)
    assert decided == uncached
    assert decided.state is not None
    store.save(key, decided.state, decided.events, 0)
    share_field_sets(decided.state)  # again: a no-op
    assert store.load(key) == uncached.state
