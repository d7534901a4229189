"""The agent reports offsets of ``commands`` faust never handed to it (streams/offsets.py),
and still applies every command it is handed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from schemas.events import ExecutionDispatched, TaskCreated
from streams import metrics
from tests.streams.test_processor_parts import _create, _events, _processor, _tick, at, task_in


@dataclass
class _Message:
    topic: str
    partition: int
    offset: int


@dataclass
class _Event:
    key: bytes
    value: bytes
    message: _Message


async def _stream(records: list[tuple[bytes, bytes]], partition: int, order: list[int]) -> AsyncIterator[_Event]:
    for offset in order:
        key, value = records[offset]
        yield _Event(key, value, _Message("commands", partition, offset))


class _Stream:
    def __init__(self, records: list[tuple[bytes, bytes]], partition: int, order: list[int]) -> None:
        self.args = (records, partition, order)

    def events(self) -> AsyncIterator[_Event]:
        return _stream(*self.args)


async def _drain(processor: Any, stream: _Stream) -> None:
    async for _ in processor._process(stream):
        pass


async def test_offsets_never_handed_over_are_counted_and_the_rest_applied() -> None:
    processor, producer = _processor()
    tasks = [task_in(2, n) for n in range(3)]
    records = [(t.encode(), _create(t)) for t in tasks] + [(b"tick", _tick(2, at(10)))]
    before = metrics.COMMANDS_SKIPPED._value.get()
    # Faust hands over offset 0, then 3 (the tick): the creates at 1 and 2 never come.
    await _drain(processor, _Stream(records, 2, [0, 3]))
    assert processor.stats.offsets_skipped == 2
    assert metrics.COMMANDS_SKIPPED._value.get() - before == 2
    events = _events(producer)
    assert [e.task_id for e in events if isinstance(e, TaskCreated)] == tasks[:1]
    assert [e.task_id for e in events if isinstance(e, ExecutionDispatched)] == tasks[:1]


async def test_contiguous_offsets_are_all_applied_and_nothing_is_counted() -> None:
    processor, producer = _processor()
    task = task_in(2, 0)
    records = [(task.encode(), _create(task)), (b"tick", _tick(2, at(10)))]
    await _drain(processor, _Stream(records, 2, [0, 1]))
    assert processor.stats.offsets_skipped == 0
    assert [e.type for e in _events(producer)] == ["TaskCreated", "ExecutionDispatched"]
