"""Executors' reports to the task processor, batched per partition of ``commands``.

An outcome (or "running") report is a command for the task's owner. Sent one message each,
they cost the owner a trip through Faust's per-message machinery per execution; batched per
partition (a :class:`~schemas.control.CommandBatch` sent to that partition), one trip carries
many. A batch leaves when it is full or ``window`` seconds after its first command, whichever
comes first, so a report waits at most a few milliseconds. Each report's future resolves once
the batch carrying it is acknowledged, so a dispatch offset is committed only after its
outcome is on the broker.

On the broker is not yet applied: a batch that reaches ``commands`` while the task processors'
group rebalances can be skipped by the new owner of its partition (seen in
``tests.bench.failover --delay 2``: ten outcomes lost in one batch, their executions in flight
for good). So the batches sent in the last ``keep_seconds`` are kept and
:meth:`ReportBatcher.resend_recent` sends them again when a processor has taken partitions over;
the task processor ignores a report it has applied already (a repeated command id, or an
outcome for an execution no longer in flight).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from schemas.commands import CommandBase
from schemas.control import CommandBatch
from schemas.envelope import command_envelope, control_envelope, encode
from streams.store import partition_for

Produce = Callable[[bytes, bytes, int], Awaitable["asyncio.Future[Any]"]]
"""``produce(key, value, partition)``: enqueue one message; returns its delivery future."""


class ReportBatcher:
    """Collects commands per partition and sends each partition's batch as one message."""

    def __init__(
        self,
        produce: Produce,
        partitions: int,
        source: str,
        *,
        window: float = 0.005,
        max_size: int = 200,
        keep_seconds: float = 15.0,
        keep_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._produce = produce
        self.partitions = partitions
        self.source = source
        self.window = window
        self.max_size = max_size
        self._pending: dict[int, list[tuple[dict[str, Any], asyncio.Future[None]]]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self.batches_sent = 0
        self.keep_seconds = keep_seconds
        self.keep_bytes = keep_bytes
        self._recent: deque[tuple[float, int, bytes]] = deque()
        """Batches acknowledged in the last ``keep_seconds`` (at most ``keep_bytes``): when, partition, bytes."""
        self._recent_bytes = 0
        self.batches_resent = 0

    async def add(self, command: CommandBase, correlation_id: str | None = None) -> asyncio.Future[None]:
        """Queue ``command`` for its partition; the future resolves once it is on the broker."""
        partition = partition_for(command.task_id.encode(), self.partitions)
        envelope = command_envelope(command, source=self.source, correlation_id=correlation_id).model_dump(mode="json")
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = self._pending.setdefault(partition, [])
        pending.append((envelope, delivered))
        if len(pending) >= self.max_size:
            self._flush(partition)
        elif partition not in self._timers:
            self._timers[partition] = asyncio.get_running_loop().call_later(self.window, self._flush, partition)
        return delivered

    async def flush(self) -> None:
        """Send everything pending and wait until it is acknowledged (or failed)."""
        for partition in list(self._pending):
            self._flush(partition)
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _flush(self, partition: int) -> None:
        timer = self._timers.pop(partition, None)
        if timer is not None:
            timer.cancel()
        items = self._pending.pop(partition, [])
        if items:
            task = asyncio.ensure_future(self._send(partition, items))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, partition: int, items: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        batch = CommandBatch(batch_id=str(uuid.uuid4()), partition=partition, commands=[env for env, _ in items])
        value = encode(control_envelope(batch, self.source, "system", datetime.now(UTC)))
        try:
            delivery = await self._produce(b"batch", value, partition)
            await delivery
        except Exception as exc:
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.batches_sent += 1
        self._keep(partition, value)
        for _, fut in items:
            if not fut.done():
                fut.set_result(None)

    def _keep(self, partition: int, value: bytes) -> None:
        now = time.monotonic()
        self._recent.append((now, partition, value))
        self._recent_bytes += len(value)
        while self._recent and (self._recent[0][0] < now - self.keep_seconds or self._recent_bytes > self.keep_bytes):
            self._recent_bytes -= len(self._recent.popleft()[2])

    async def resend_recent(self) -> int:
        """Send again the batches acknowledged in the last ``keep_seconds``; how many.

        For after a rebalance of the task processors: a batch that arrived while partitions
        moved may have been skipped. Sent as they were (same batch, same command ids), in
        order; a failure is raised, and what was not sent is kept.
        """
        cutoff = time.monotonic() - self.keep_seconds
        again = [(partition, value) for at, partition, value in self._recent if at >= cutoff]
        for partition, value in again:
            delivery = await self._produce(b"batch", value, partition)
            await delivery
            self.batches_resent += 1
        return len(again)
