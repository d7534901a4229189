"""The worker feeds each tenant's calendars to the decider, and fires nothing before it has
read them (the agent's apply path and the firing loop, over a dict table and a recording producer)."""

from __future__ import annotations

import asyncio
import contextlib

from schemas.calendars import Calendar, CalendarUpserted
from schemas.commands import CreateTask
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
