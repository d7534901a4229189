"""The worker feeds each tenant's calendars to the decider, and fires nothing before it has
read them (the agent's apply path and the firing loop, over a dict table and a recording producer)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

import orjson

from schemas.calendars import Calendar, CalendarUpserted, DateRange
from schemas.commands import CreateTask, Wake
from schemas.envelope import command_envelope, encode
from schemas.events import ExecutionDispatched, SlotsMissed
from schemas.specs import HandlerWork, IntervalSchedule, TaskDefinition
from streams.app import _Source
from streams.calendars import calendar_event_id
from streams.store import partition_for
from tests.streams.test_processor_parts import T0, _events, _processor, _tick, at, task_in


def _create(task_id: str, calendars: list[str]) -> bytes:
    command = CreateTask(
        command_id=f"create-{task_id}", task_id=task_id, tenant=task_id.split("/")[0], actor="a", at=T0,
        definition=TaskDefinition(name="n", schedule=IntervalSchedule(every_seconds=10, anchor=at(10)),
                                  work=HandlerWork(name="noop"), calendars=calendars),
    )  # fmt: skip
    return encode(command_envelope(command, source="test"))


def _calendar(tenant: str, name: str) -> CalendarUpserted:
    """A calendar excluding T0's day (the first slots of the tasks here)."""
    return CalendarUpserted(
        event_id=calendar_event_id(tenant, name, 1, "r"), tenant=tenant, name=name, revision=1, at=T0, actor="a",
        calendar=Calendar(name=name, dates=[T0.date()]),
    )  # fmt: skip


async def test_a_tick_applies_the_calendars_of_each_task_tenant_only() -> None:
    processor, producer = _processor()
    excluded, other = task_in(1, 0), "zeta/t1"
    processor.calendars.book.apply(_calendar("acme", "closed"))
    processor.calendars.book.apply(_calendar("zeta", "elsewhere"))  # another tenant, another name
    for task_id in (excluded, other):
        source = _Source("commands", partition_for(task_id.encode(), 4), 0)
        await processor.apply(task_id.encode(), _create(task_id, ["closed"]), source)
    for partition in range(4):
        await processor.apply(b"tick", _tick(partition, at(10)), _Source("commands", partition, 10))
    events = _events(producer)
    missed = [e for e in events if isinstance(e, SlotsMissed)]
    assert [(e.task_id, e.reason, e.calendar, e.first_slot) for e in missed] == [
        (excluded, "calendar", "closed", at(10))
    ]
    # zeta has no calendar named "closed": its slot runs.
    assert [e.task_id for e in events if isinstance(e, ExecutionDispatched)] == [other]


async def test_the_firing_loop_waits_until_the_calendars_are_read() -> None:
    processor, producer = _processor()
    task_id = task_in(1, 0)
    await processor.apply(task_id.encode(), _create(task_id, []), _Source("commands", 1, 0))
    loop = asyncio.create_task(processor._firing_loop())
    try:
        await asyncio.sleep(0.3)
        assert [key for _, key, _, _ in producer.sent if key == b"tick"] == []
        processor.calendars.caught_up.set()
        for _ in range(60):
            await asyncio.sleep(0.05)
            if any(key == b"tick" for _, key, _, _ in producer.sent):
                break
        assert [partition for _, key, _, partition in producer.sent if key == b"tick"] == [1]
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


def _poison_calendar(tenant: str, name: str) -> CalendarUpserted:
    """A calendar no decider can evaluate: a range ending in year 9999 twelve hours behind UTC
    (the schema refuses it now; one accepted before, or any other defect of the pure core, must
    not stop the worker)."""
    calendar = Calendar.model_construct(
        name=name, timezone="Etc/GMT+12", description=None, dates=[], rules=[],
        ranges=[DateRange.model_construct(start=datetime(2020, 1, 1), end=datetime(9999, 12, 31, 23))],
    )  # fmt: skip
    return CalendarUpserted.model_construct(
        event_id=calendar_event_id(tenant, name, 1, "r"), tenant=tenant, name=name, revision=1, at=T0, actor="a",
        calendar=calendar, type="CalendarUpserted",
    )  # fmt: skip


async def test_a_task_the_decider_fails_on_is_dead_lettered_and_the_others_still_fire() -> None:
    # A defect of the pure core used to escape the agent: the worker stopped on the message,
    # and its successor met the same message (or the same due task at every tick) again.
    processor, producer = _processor()
    processor.calendars.book.apply(_poison_calendar("acme", "broken"))
    broken, fine = task_in(1, 0), task_in(1, 1)
    for task_id, calendars in ((broken, ["broken"]), (fine, [])):
        await processor.apply(task_id.encode(), _create(task_id, calendars), _Source("commands", 1, 0))
    await processor.apply(b"tick", _tick(1, at(10)), _Source("commands", 1, 10))
    assert [e.task_id for e in _events(producer) if isinstance(e, ExecutionDispatched)] == [fine]
    letters = [orjson.loads(v) for topic, _, v, _ in producer.sent if topic.endswith("dead-letter")]
    assert len(letters) == 1 and "OverflowError" in orjson.dumps(letters[0]).decode()
    # A command the decider fails on is dead-lettered as it came, and the partition moves on.
    wake = Wake(command_id="w", task_id=broken, tenant="acme", actor="system", at=at(20))
    raw = encode(command_envelope(wake, source="test"))
    await processor.apply(broken.encode(), raw, _Source("commands", 1, 11))
    letters = [orjson.loads(v) for topic, _, v, _ in producer.sent if topic.endswith("dead-letter")]
    assert len(letters) == 2 and "OverflowError" in orjson.dumps(letters[1]).decode()
