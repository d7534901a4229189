"""The agent reads again the offsets of ``commands`` faust skipped at a rebalance (streams/offsets.py):
the commands in the gap are applied, in order, before those after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from faust.types import TP

from schemas.events import ExecutionDispatched, TaskCreated
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


class _Partition:
    """One partition of ``commands`` handed to the agent as faust would, seek included."""

    def __init__(self, records: list[tuple[bytes, bytes]], partition: int, order: list[int]) -> None:
        self.records = records
        self.partition = partition
        self.order = order  # the offsets faust hands over before any seek
        self.sought: list[int] = []

    async def seek(self, tp: TP, offset: int) -> None:
        assert tp == TP("commands", self.partition)
        self.sought.append(offset)
        self.order = list(range(offset, len(self.records)))

    async def events(self) -> AsyncIterator[_Event]:
        while self.order:
            offset = self.order.pop(0)
            key, value = self.records[offset]
            yield _Event(key, value, _Message("commands", self.partition, offset))


async def _drain(processor: Any, partition: _Partition) -> None:
    async for _ in processor._process(partition):
        pass


async def test_a_gap_is_read_again_and_applied_in_order() -> None:
    processor, producer = _processor()
    processor.offsets.keep({2})
    tasks = [task_in(2, n) for n in range(3)]
    records = [(t.encode(), _create(t)) for t in tasks] + [(b"tick", _tick(2, at(10)))]
    # Faust hands over offset 0, then 3 (the tick): the creates at 1 and 2 were dropped.
    partition = _Partition(records, 2, [0, 3])
    processor._seek = partition.seek
    await _drain(processor, partition)
    assert partition.sought == [1]
    assert processor.stats.offsets_read_again == 2
    events = _events(producer)
    # Every task was created before the tick, so the tick fired all three.
    assert [e.task_id for e in events if isinstance(e, TaskCreated)] == tasks
    assert sorted(e.task_id for e in events if isinstance(e, ExecutionDispatched)) == sorted(tasks)
    assert events.index(next(e for e in events if isinstance(e, ExecutionDispatched))) == 3


async def test_contiguous_offsets_are_applied_without_a_seek() -> None:
    processor, producer = _processor()
    task = task_in(2, 0)
    records = [(task.encode(), _create(task)), (b"tick", _tick(2, at(10)))]
    partition = _Partition(records, 2, [0, 1])
    processor._seek = partition.seek
    await _drain(processor, partition)
    assert partition.sought == []
    assert [e.type for e in _events(producer)] == ["TaskCreated", "ExecutionDispatched"]
