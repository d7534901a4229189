"""The views as functions of the events: histories applied to a real FerretDB database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from projections.folds import BUCKET_NAMES, apply_update, bucket_for, skipped_execution_id
from projections.read import CollectionNames, tenant_stats
from projections.store import apply_events
from schemas.events import SlotsMissed
from schemas.ids import execution_id_for_slot
from tests.projections.history import T0, TaskHistory, definition, full_history, positioned

Db = AsyncDatabase[dict[str, Any]]
NAMES = CollectionNames()


def naive(dt: Any) -> Any:
    # The fixture's client is not tz-aware: dates come back as naive UTC.
    return dt.replace(tzinfo=None)


@pytest.mark.parametrize(
    ("ms", "bucket"),
    [(0, "le_10"), (10, "le_10"), (11, "le_50"), (1000, "le_1000"), (300_000, "le_300000"), (300_001, "inf")],
)
def test_bucket_bounds_are_inclusive(ms: int, bucket: str) -> None:
    assert bucket_for(ms) == bucket


def test_apply_update_builds_what_the_update_makes_and_leaves_the_input_alone() -> None:
    update = {"$set": {"a": 1, "b.c": 2}, "$inc": {"b.d": 3}, "$push": {"tl": {"s": 1}}, "$max": {"m": 4}}
    assert apply_update({}, update) == {"a": 1, "b": {"c": 2, "d": 3}, "tl": [{"s": 1}], "m": 4}
    before = {"a": 0, "b": {"c": 0, "d": 1}, "tl": [{"s": 0}], "m": 9}
    after = apply_update(before, update)
    assert after == {"a": 1, "b": {"c": 2, "d": 4}, "tl": [{"s": 0}, {"s": 1}], "m": 9}
    assert before == {"a": 0, "b": {"c": 0, "d": 1}, "tl": [{"s": 0}], "m": 9}


async def test_task_lifecycle_through_an_execution(mongo_db: Db) -> None:
    h = TaskHistory("task-1")
    h.created(next_slot=T0 + timedelta(minutes=1))
    slot = T0 + timedelta(minutes=1)
    ex, _ = h.dispatched(slot, next_slot=slot + timedelta(minutes=1))
    h.started(ex, worker="w7")
    h.finished(ex, "succeeded", 42, slot=slot)
    await apply_events(mongo_db, NAMES, positioned(h.events))

    task = await mongo_db["tasks"].find_one({"_id": "task-1"})
    assert task is not None
    assert task["tenant"] == "acme" and task["name"] == "nightly" and task["type"] == "http"
    assert task["status"] == "active" and task["version"] == 4 and task["revision"] == 1
    assert task["tags"] == ["t1"] and task["definition"]["work"]["url"] == "https://example.test/run"
    assert task["created_at"] == naive(h.events[0].at)
    assert task["counters"]["runs"] == 1 and task["counters"]["succeeded"] == 1
    assert task["counters"]["failed"] == 0 and task["counters"]["retries"] == 0
    assert task["duration"]["buckets"]["le_50"] == 1 and task["duration"]["count"] == 1
    assert task["duration"]["sum_ms"] == 42 and task["duration"]["max_ms"] == 42
    assert set(task["duration"]["buckets"]) == set(BUCKET_NAMES)
    assert task["last_run"]["execution_id"] == ex and task["last_run"]["slot"] == naive(slot)
    assert task["last_status"] == "succeeded" and task["last_slot"] == naive(slot)
    # The dispatch states where the schedule stands after it.
    assert task["next_run"] == naive(slot + timedelta(minutes=1)) and task["next_run_known"] is True

    execution = await mongo_db["executions"].find_one({"_id": ex})
    assert execution is not None
    assert execution["status"] == "succeeded" and execution["task_id"] == "task-1"
    assert execution["worker"] == "w7" and execution["reason"] == "schedule" and execution["type"] == "http"
    assert execution["duration_ms"] == 42 and execution["result"] == {"ok": True}
    assert execution["scheduled_for"] == naive(slot) and execution["priority"] == "normal"
    assert [e["status"] for e in execution["timeline"]] == ["scheduled", "running", "succeeded"]
    assert execution["timeline"][1]["worker"] == "w7"

    audit = await mongo_db["audit"].find().sort("sequence", 1).to_list()
    assert [a["type"] for a in audit] == [
        "TaskCreated",
        "ExecutionDispatched",
        "ExecutionStarted",
        "ExecutionCompleted",
    ]
    assert [a["offset"] for a in audit] == [0, 1, 2, 3]
    assert audit[0]["actor"] == "alice" and audit[0]["causation_id"] == h.events[0].causation_id
    assert audit[0]["body"]["definition"]["name"] == "nightly"

    stats = await tenant_stats(mongo_db, "acme", NAMES)
    assert stats["tasks"] == {"active": 1}
    assert stats["executions"] == {"dispatched": 1, "in_flight": 0, "succeeded": 1}
    assert stats["by_type"]["http"]["duration"]["buckets"] == {"le_50": 1}


async def test_retries_timeouts_and_next_run_stated_again(mongo_db: Db) -> None:
    h = TaskHistory("task-2")
    h.created()
    slot = T0 + timedelta(minutes=1)
    ex, _ = h.dispatched(slot)
    h.started(ex)
    h.attempt_failed(ex, 1, retry=True)
    await apply_events(mongo_db, NAMES, positioned(h.events))
    execution = await mongo_db["executions"].find_one({"_id": ex})
    assert execution is not None
    assert execution["status"] == "retrying" and execution["next_retry_at"] is not None
    assert execution["error"] == "boom"

    more = len(h.events)
    h.dispatched(slot, attempt=2, reason="retry")
    h.started(ex, attempt=2, worker="w2")
    h.attempt_failed(ex, 2, retry=False, timed_out=True)
    h.finished(ex, "timed_out", 9000, attempts=2, slot=slot, started_at=h.events[2].at)
    h.updated(definition(every=120), next_slot=T0 + timedelta(hours=1))
    await apply_events(mongo_db, NAMES, positioned(h.events[more:], first_offset=more))

    execution = await mongo_db["executions"].find_one({"_id": ex})
    assert execution is not None
    assert execution["status"] == "timed_out" and execution["attempt"] == 2 and execution["attempts"] == 2
    assert execution["reason"] == "schedule" and execution["worker"] == "w2" and execution["next_retry_at"] is None
    assert execution["started_at"] == naive(h.events[2].at)  # the first attempt's start
    assert [e["status"] for e in execution["timeline"]] == [
        "scheduled",
        "running",
        "attempt_failed",
        "scheduled",
        "running",
        "attempt_timed_out",
        "timed_out",
    ]
    task = await mongo_db["tasks"].find_one({"_id": "task-2"})
    assert task is not None
    assert task["counters"]["runs"] == 1 and task["counters"]["retries"] == 1
    assert task["counters"]["timed_out"] == 1 and task["counters"]["attempts_failed"] == 2
    assert task["duration"]["buckets"]["le_30000"] == 1
    assert task["next_run"] == naive(T0 + timedelta(hours=1)) and task["next_run_known"] is True
    stats = await tenant_stats(mongo_db, "acme", NAMES)
    assert stats["executions"] == {"dispatched": 1, "retries": 1, "in_flight": 0, "timed_out": 1}


async def test_statuses_buffering_skips_and_tasks_by_status(mongo_db: Db) -> None:
    h = full_history("task-3")
    other = TaskHistory("task-4", tenant="acme")
    other.created()
    other.paused()
    foreign = TaskHistory("task-5", tenant="globex")
    foreign.created()
    await apply_events(mongo_db, NAMES, positioned(h.events) + positioned(other.events + foreign.events, 1))

    task = await mongo_db["tasks"].find_one({"_id": "task-3"})
    assert task is not None
    assert task["status"] == "deleted" and task["name"] == "renamed" and task["type"] == "handler"
    assert task["counters"] == {
        "runs": 5,
        "scheduled_runs": 4,
        "succeeded": 2,
        "failed": 1,
        "timed_out": 1,
        "cancelled": 1,
        "retries": 1,
        "attempts_failed": 2,
        "missed": 2,
        "rejected": 1,
    }
    # What max_runs counts, kept by the task (retention deletes executions): the executions of slots.
    slots = {"task_id": "task-3", "reason": {"$in": ["schedule", "buffered"]}}
    assert task["counters"]["scheduled_runs"] == await mongo_db["executions"].count_documents(slots)
    assert task["completed_reason"] == "run_limit" and task["deleted_at"] is not None
    assert task["last_rejection"]["command_type"] == "PauseTask"

    buffered_id = execution_id_for_slot("task-3", T0 + timedelta(minutes=6))
    buffered = await mongo_db["executions"].find_one({"_id": buffered_id})
    assert buffered is not None
    assert buffered["status"] == "succeeded" and buffered["reason"] == "buffered"
    assert [e["status"] for e in buffered["timeline"]] == ["buffered", "scheduled", "running", "succeeded"]
    missed = next(e for e in h.events if isinstance(e, SlotsMissed))
    skipped = await mongo_db["executions"].find_one({"_id": skipped_execution_id(missed)})
    assert skipped is not None
    assert skipped["status"] == "skipped" and skipped["missed_count"] == 2 and skipped["reason"] == "overlap"
    assert await mongo_db["executions"].count_documents({"task_id": "task-3"}) == 6

    acme = await tenant_stats(mongo_db, "acme", NAMES)
    assert acme["tasks"] == {"active": 0, "paused": 1, "completed": 0, "deleted": 1}
    assert acme["tasks_by_type"] == {"http": 1, "handler": 0}
    assert acme["executions"] == {
        "dispatched": 5,
        "buffered": 1,
        "retries": 1,
        "in_flight": 0,
        "succeeded": 2,
        "failed": 1,
        "timed_out": 1,
        "cancelled": 1,
        "skipped": 2,
    }
    assert acme["by_type"]["http"]["duration"]["count"] == 4
    globex = await tenant_stats(mongo_db, "globex", NAMES)
    assert globex["tasks"] == {"active": 1}
    assert await mongo_db["stats"].count_documents({}) == 3  # (acme, 0), (acme, 1), (globex, 1)


async def test_recreating_a_deleted_task_starts_afresh(mongo_db: Db) -> None:
    h = TaskHistory("task-6")
    h.created()
    ex, _ = h.dispatched(T0 + timedelta(minutes=1))
    h.finished(ex, "failed", 5)
    h.deleted()
    h.created()
    await apply_events(mongo_db, NAMES, positioned(h.events))
    task = await mongo_db["tasks"].find_one({"_id": "task-6"})
    assert task is not None
    assert task["status"] == "active" and task["version"] == 5 and task["counters"]["failed"] == 0
    assert (await tenant_stats(mongo_db, "acme", NAMES))["tasks"] == {"active": 1, "deleted": 0}


async def test_events_of_a_task_never_created_touch_no_task(mongo_db: Db) -> None:
    h = TaskHistory("ghost")
    h.rejected()
    await apply_events(mongo_db, NAMES, positioned(h.events))
    assert await mongo_db["tasks"].count_documents({}) == 0
    assert await mongo_db["audit"].count_documents({"task_id": "ghost"}) == 1
