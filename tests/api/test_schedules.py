"""Schedule semantics through the API, against the real worker, projector, Kafka and FerretDB:
the preview fires what the decider fires, schedule errors name the field, and definitions
accepted under older rules stay readable."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from api.queries import internal_task_id
from scheduler.schedule import fire_at
from schemas.commands import CreateTask
from schemas.envelope import command_envelope, decode_event, encode, event_envelope
from schemas.events import CommandRejected, Event, TaskCreated
from schemas.ids import event_id
from schemas.specs import TOLERANT, TaskDefinition
from tests.api.conftest import Running, Stack, auth, new_tenant


async def _first_event(stack: Stack, task_id: str, within: float = 20) -> Event:
    """The first event of ``task_id`` as the worker wrote it (the decider's own values)."""
    consumer = AIOKafkaConsumer(
        f"{stack.prefix}task-events", bootstrap_servers=stack.infra.bootstrap, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    event = decode_event(record.value or b"")
                    if event.task_id == task_id:
                        return event
        raise AssertionError(f"no event of {task_id} within {within}s")
    finally:
        await consumer.stop()


async def test_preview_fires_what_the_decider_fires(api: Running, warm: Stack) -> None:
    """Interval anchored at creation, with jitter: the preview's first slot and fire time are
    exactly the decider's (the view kept created_at to the millisecond, the decider has the
    command's microseconds, so the slot was off by up to 1 ms and its jitter by many seconds)."""
    http, tenant = api.http, new_tenant()
    body = {
        "name": "hourly-jittered",
        "schedule": {"kind": "interval", "every_seconds": 3600},
        "jitter_seconds": 1800,
        "work": {"kind": "handler", "name": "noop"},
    }
    r = await http.post("/v1/tasks?wait=20", json=body, headers=auth(tenant, ["admin"]))
    assert r.status_code == 200, r.text
    public_id = r.json()["task_id"]
    created = await _first_event(warm, internal_task_id(tenant, public_id))
    assert isinstance(created, TaskCreated)

    r = await http.get(f"/v1/tasks/{public_id}/next-fire-times?n=3", headers=auth(tenant, ["viewer"]))
    assert r.status_code == 200, r.text
    times = [(datetime.fromisoformat(t["slot"]), datetime.fromisoformat(t["fire_at"])) for t in r.json()["fire_times"]]
    assert created.next_slot is not None and created.next_fire_at is not None
    assert times[0] == (created.next_slot, created.next_fire_at)
    slots = [created.next_slot + timedelta(hours=k) for k in range(3)]
    assert [s for s, _ in times] == slots
    assert [f for _, f in times] == [fire_at(created.task_id, created.definition, s) for s in slots]


EXPRESSION = "definition.schedule.expression"


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"schedule": {"kind": "cron", "expression": "61 * * * *"}}, EXPRESSION, "minute must be 0-59"),
        ({"schedule": {"kind": "cron", "expression": "0 0 * 13 *"}}, EXPRESSION, "month must be 1-12"),
        ({"schedule": {"kind": "cron", "expression": "*/0 * * * *"}}, EXPRESSION, "step"),
        ({"schedule": {"kind": "cron", "expression": "* * * * *"}, "jitter_seconds": 150}, "definition.jitter_seconds",
         "smaller than the shortest gap"),
        ({"schedule": {"kind": "interval", "every_seconds": 60}, "jitter_seconds": 60}, "definition.jitter_seconds",
         "smaller than the interval"),
        # Issue 12: a DST policy only applies to cron; both occurrences firing shorten the gap.
        ({"schedule": {"kind": "interval", "every_seconds": 60, "dst_gap": "skip"}}, "definition.schedule.dst_gap",
         "dst_gap applies only to cron schedules"),
        ({"schedule": {"kind": "once", "at": "2030-01-01T00:00:00Z", "dst_repeat": "both"}},
         "definition.schedule.dst_repeat", "dst_repeat applies only to cron schedules"),
        ({"schedule": {"kind": "cron", "expression": "0 * * * *", "dst_repeat": "twice"}},
         "definition.schedule.dst_repeat", "'both'"),
        ({"schedule": {"kind": "cron", "expression": "30 1 * * *", "timezone": "America/New_York",
                       "dst_repeat": "both"}, "jitter_seconds": 3600}, "definition.jitter_seconds", "(3600 s"),
    ],
)  # fmt: skip
async def test_schedule_errors_name_the_field(
    cold_api: Running, change: dict[str, Any], field: str, fragment: str
) -> None:
    body = {"name": "t", "work": {"kind": "handler", "name": "noop"}, **change}
    r = await cold_api.http.post("/v1/tasks", json=body, headers=auth(new_tenant(), ["admin"]))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    errors = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert fragment in errors.get(field, ""), errors


async def test_a_dst_policy_is_kept_through_the_views(api: Running) -> None:
    """Issue 12: the policies go through Kafka, the worker and the projection unchanged."""
    http, tenant = api.http, new_tenant()
    schedule = {"kind": "cron", "expression": "30 2 * * *", "timezone": "Europe/Berlin"}
    schedule |= {"dst_gap": "skip", "dst_repeat": "both"}
    body = {"name": "dst", "schedule": schedule, "work": {"kind": "handler", "name": "noop"}}
    r = await http.post("/v1/tasks?wait=20", json=body, headers=auth(tenant, ["admin"]))
    assert r.status_code == 200, r.text
    r = await http.get(f"/v1/tasks/{r.json()['task_id']}", headers=auth(tenant, ["viewer"]))
    assert r.status_code == 200, r.text
    assert r.json()["definition"]["schedule"] == schedule


async def test_every_monday_of_february_is_accepted(cold_api: Running) -> None:
    body = {
        "name": "t",
        "work": {"kind": "handler", "name": "noop"},
        "schedule": {"kind": "cron", "expression": "0 0 31 2 1"},
    }
    r = await cold_api.http.post("/v1/tasks", json=body, headers=auth(new_tenant(), ["admin"]))
    assert r.status_code == 202, r.text


async def test_a_definition_accepted_before_stays_readable(api: Running, warm: Stack) -> None:
    """A TaskCreated written by an older version (every-minute cron, 150 s jitter: accepted then,
    rejected now) is projected, and the task and its preview are served, not a 500."""
    tenant, public_id = new_tenant(), "legacy-jitter"
    task_id = internal_task_id(tenant, public_id)
    definition = TaskDefinition.model_validate(
        {
            "name": "legacy",
            "schedule": {"kind": "cron", "expression": "* * * * *"},
            "jitter_seconds": 150,
            "work": {"kind": "handler", "name": "noop"},
        },
        context=TOLERANT,
    )
    at = datetime.now(UTC)
    slot = at.replace(second=0, microsecond=0) + timedelta(minutes=1)
    event = TaskCreated(
        event_id=event_id(task_id, 1), task_id=task_id, tenant=tenant, sequence=1, at=at, causation_id="legacy-1",
        actor="old-version", definition=definition, revision=1, next_slot=slot,
        next_fire_at=fire_at(task_id, definition, slot),
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=warm.infra.bootstrap, acks="all")
    await producer.start()
    try:
        value = encode(event_envelope(event, "/scheduler/worker", None))
        await producer.send_and_wait(f"{warm.prefix}task-events", key=task_id.encode(), value=value)
    finally:
        await producer.stop()

    viewer = auth(tenant, ["viewer"])
    deadline = time.monotonic() + 20
    while (r := await api.http.get(f"/v1/tasks/{public_id}", headers=viewer)).status_code == 404:
        assert time.monotonic() < deadline, "the legacy task was never projected"
        await asyncio.sleep(0.1)
    assert r.status_code == 200, r.text
    assert r.json()["definition"]["jitter_seconds"] == 150
    r = await api.http.get(f"/v1/tasks/{public_id}/next-fire-times?n=3", headers=viewer)
    assert r.status_code == 200, r.text
    assert len(r.json()["fire_times"]) == 3


async def test_a_big_jitter_produced_straight_to_kafka_is_rejected_naming_the_field(warm: Stack) -> None:
    """Commands from other services skip the API: the worker answers CommandRejected."""
    task_id = internal_task_id(new_tenant(), "from-kafka")
    good = CreateTask(
        command_id=f"{task_id}-create", task_id=task_id, tenant=task_id.split("/")[0], actor="svc",
        at=datetime.now(UTC), definition=TaskDefinition(name="t", work={"kind": "handler", "name": "noop"}),
    )  # fmt: skip
    raw = (
        encode(command_envelope(good, "/other-service"))
        .replace(b'"schedule":null', b'"schedule":{"kind":"cron","expression":"* * * * *","timezone":"UTC"}')
        .replace(b'"jitter_seconds":0.0', b'"jitter_seconds":150.0')
    )
    assert b'"jitter_seconds":150.0' in raw and b"* * * * *" in raw
    producer = AIOKafkaProducer(bootstrap_servers=warm.infra.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(f"{warm.prefix}commands", key=task_id.encode(), value=raw)
    finally:
        await producer.stop()
    rejected = await _first_event(warm, task_id)
    assert isinstance(rejected, CommandRejected), rejected
    assert rejected.field == "definition.jitter_seconds" and "smaller than the shortest gap" in rejected.reason


async def test_preview_counts_runs_from_the_task_view_after_retention(api: Running, warm: Stack) -> None:
    """The runs ``max_runs`` counts come from the task view: retention deleting the executions
    (here: all of them) does not give back runs that already happened (the preview counted the
    executions still in their view and showed slots the worker will never fire)."""
    from pymongo import AsyncMongoClient

    http, tenant = api.http, new_tenant()
    every = 40
    anchor = datetime.now(UTC) - timedelta(seconds=every - 3)  # the first slot is ~3 s away
    body = {
        "name": "three-times",
        "schedule": {"kind": "interval", "every_seconds": every, "anchor": anchor.isoformat()},
        "max_runs": 3,
        "work": {"kind": "handler", "name": "noop"},
    }
    headers = auth(tenant, ["admin"])
    r = await http.post("/v1/tasks?wait=20", json=body, headers=headers)
    assert r.status_code == 200, r.text
    public_id = r.json()["task_id"]
    deadline = time.monotonic() + 30
    while True:
        task = (await http.get(f"/v1/tasks/{public_id}", headers=headers)).json()
        if task["counters"].get("scheduled_runs") == 1:
            break
        assert time.monotonic() < deadline, f"the first slot did not run: {task['counters']}"
        await asyncio.sleep(0.2)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(warm.infra.mongo_url)
    try:
        executions = client[warm.database]["executions"]
        deleted = await executions.delete_many({"task_id": internal_task_id(tenant, public_id)})
        assert deleted.deleted_count == 1
    finally:
        await client.close()
    r = await http.get(f"/v1/tasks/{public_id}/next-fire-times?n=10", headers=headers)
    assert r.status_code == 200, r.text
    assert len(r.json()["fire_times"]) == 2, r.json()
