"""Firing on time: which partitions need a tick now, and which tasks a tick wakes.

The worker keeps, for the partitions it owns, each task's next wakeup (the due-index) and
the partition the task lives in. The firing loop sends at most one :class:`~schemas.control.Tick`
to a partition with anything due, and none while one is on its way (applied, it is marked
done; lost, it is sent again after ``resend_seconds``). The agent, applying a tick, takes the
partition's due tasks and wakes each of them in one go. A tick lost or repeated changes
nothing: the next one covers everything due, and a stale one finds nothing due.

No I/O here: the loop and the agent in ``streams.app`` do the sending and applying.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime

from streams.due_index import PartitionedDueIndex


@dataclass
class FiringStats:
    ticks_sent: int = 0
    ticks_applied: int = 0
    ticks_resent: int = 0
    wakes_applied: int = 0


class Firing:
    """The due-index of the owned partitions and the ticks on their way."""

    def __init__(self, resend_seconds: float) -> None:
        self.resend_seconds = resend_seconds
        self.index = PartitionedDueIndex()
        self.stats = FiringStats()
        self._tenants: dict[str, str] = {}
        self._in_flight: dict[int, float] = {}
        """Partition -> when (monotonic seconds) its last tick was sent, until one is applied."""

    def __len__(self) -> int:
        return len(self.index)

    def clear(self) -> None:
        """Forget everything (partitions are moving; a rebuild follows)."""
        self.index.clear()
        self._tenants.clear()
        self._in_flight.clear()

    def track(self, task_id: str, tenant: str, partition: int, wakeup: datetime | None) -> None:
        """Record where a task lives and when it next needs waking (None: never, or gone)."""
        self.index.set(task_id, partition, wakeup)
        if wakeup is None:
            self._tenants.pop(task_id, None)
        else:
            self._tenants[task_id] = sys.intern(tenant)

    def to_tick(self, now: datetime, clock: float) -> list[int]:
        """The partitions to send a tick to now, marked as having one on its way.

        ``now`` is the wall clock the tick carries; ``clock`` a monotonic time for resending.
        """
        chosen = []
        for partition in self.index.due_partitions(now):
            sent = self._in_flight.get(partition)
            if sent is not None:
                if clock - sent < self.resend_seconds:
                    continue
                self.stats.ticks_resent += 1
            self._in_flight[partition] = clock
            chosen.append(partition)
        self.stats.ticks_sent += len(chosen)
        return chosen

    def next_time(self) -> datetime | None:
        """The earliest wakeup of a partition that has no tick on its way."""
        return self.index.next_time(p for p in self.index.partitions if p not in self._in_flight)

    def oldest_in_flight(self) -> float | None:
        """When (monotonic) the oldest tick still on its way was sent."""
        return min(self._in_flight.values(), default=None)

    def take_due(self, partition: int, at: datetime, limit: int = 10_000) -> list[tuple[str, str]]:
        """Apply a tick: the tasks of ``partition`` due at or before ``at`` (task id, tenant), earliest first.

        They leave the index; the agent puts each back with its new wakeup once woken.
        """
        self._in_flight.pop(partition, None)
        self.stats.ticks_applied += 1
        due = []
        for task_id, _ in self.index.pop_due(partition, at, limit):
            tenant = self._tenants.pop(task_id, None)
            if tenant is not None:
                due.append((task_id, tenant))
        self.stats.wakes_applied += len(due)
        return due
