"""Firing on time: which partitions need a tick now, and which tasks a tick wakes.

The worker keeps, for the partitions it owns, each task's next wakeup (one due-index per
partition; the index holding a task is its partition, and a ``<tenant>/<id>`` id names its
tenant, so neither is stored per task). The firing loop sends at most
one :class:`~schemas.control.Tick` to a partition with anything due. While ticks are on
their way, another leaves only for tasks that fell due after the newest one's time, at most
:data:`MAX_IN_FLIGHT` per partition (a tick applied clears the ticks it covers; a lost one is
sent again after ``resend_seconds``). Waiting for the tick on its way instead cost a task
falling due meanwhile one more round trip through Kafka and Faust.
The agent, applying a tick, takes the partition's due tasks and wakes each of them in one
go. A tick lost or repeated changes nothing: the next one covers everything due, and a stale
one finds nothing due.

No I/O here: the loop and the agent in ``streams.app`` do the sending and applying.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from streams.due_index import DueIndex

MAX_IN_FLIGHT = 3
"""Most ticks on their way to one partition: bounds the messages when the partition lags."""


@dataclass
class FiringStats:
    ticks_sent: int = 0
    ticks_applied: int = 0
    ticks_resent: int = 0
    wakes_applied: int = 0


class Firing:
    """The due-indexes of the owned partitions and the ticks on their way."""

    def __init__(self, resend_seconds: float) -> None:
        self.resend_seconds = resend_seconds
        self.stats = FiringStats()
        self.partitions: dict[int, DueIndex] = {}
        """Partition -> the due-index of its tasks that have a wakeup. A task is in one at most;
        where it is, is the task's partition (no task -> partition map: memory per task)."""
        self._tenants: dict[str, str] = {}
        """Task -> tenant, only for tasks whose id does not name their tenant (see
        :func:`tenant_in`): ``<tenant>/<id>`` ids, all the API makes, cost nothing here."""
        self._tenant_names: dict[str, str] = {}
        """One string per tenant, shared by the entries of ``_tenants``."""
        self._in_flight: dict[int, list[tuple[float, datetime]]] = {}
        """Partition -> (when sent, monotonic seconds; the tick's time) of its ticks on their way,
        oldest first."""

    def __len__(self) -> int:
        return sum(len(index) for index in self.partitions.values())

    def clear(self) -> None:
        """Forget everything (partitions are moving; a rebuild follows)."""
        self.partitions.clear()
        self._tenants.clear()
        self._tenant_names.clear()
        self._in_flight.clear()

    def get(self, task_id: str) -> datetime | None:
        """The wakeup recorded for a task."""
        index = self._index_of(task_id)
        return None if index is None else index.get(task_id)

    def track(self, task_id: str, tenant: str, partition: int, wakeup: datetime | None) -> None:
        """Record where a task lives and when it next needs waking (None: never, or gone)."""
        index = self.partitions.get(partition)
        if index is None or task_id not in index.wakeups:
            # Not in this partition's index: drop it from another's, if it was there (a task
            # moving partition). In this one, ``set`` below replaces the wakeup.
            elsewhere = self._index_of(task_id)
            if elsewhere is not None:
                elsewhere.set(task_id, None)
        self._record(task_id, tenant, partition, index, wakeup)

    def restore(self, task_id: str, tenant: str, partition: int, wakeup: datetime | None) -> None:
        """:meth:`track` for a rebuild from the table after :meth:`clear`, where each task comes
        once: no other partition can hold it, so none is searched (a rebuild of a million)."""
        self._record(task_id, tenant, partition, self.partitions.get(partition), wakeup)

    def _record(
        self, task_id: str, tenant: str, partition: int, index: DueIndex | None, wakeup: datetime | None
    ) -> None:
        if wakeup is None:
            if index is not None:
                index.set(task_id, None)
            self._tenants.pop(task_id, None)
            return
        if tenant_in(task_id) == tenant:
            self._tenants.pop(task_id, None)
        else:
            self._tenants[task_id] = self._tenant_names.setdefault(tenant, tenant)
        if index is None:
            index = self.partitions[partition] = DueIndex()
        index.set(task_id, wakeup)

    def to_tick(self, now: datetime, clock: float) -> list[int]:
        """The partitions to send a tick to now, marked as having one on its way.

        ``now`` is the wall clock the tick carries; ``clock`` a monotonic time for resending.
        """
        chosen = []
        for partition, index in self.partitions.items():
            when = index.next_time()
            if when is None or when > now:
                continue
            flights = self._in_flight.setdefault(partition, [])
            if flights and clock - flights[0][0] >= self.resend_seconds:
                # The oldest is taken for lost (or the partition is that far behind): start over.
                self.stats.ticks_resent += 1
                flights.clear()
            if flights and (len(flights) >= MAX_IN_FLIGHT or not index.due_after(flights[-1][1], now)):
                continue  # what is due is covered by a tick on its way
            flights.append((clock, now))
            chosen.append(partition)
        self.stats.ticks_sent += len(chosen)
        return chosen

    def next_time(self) -> datetime | None:
        """The earliest wakeup of a partition that has no tick on its way."""
        return _earliest(index for p, index in self.partitions.items() if not self._in_flight.get(p))

    def covered(self) -> bool:
        """Whether some partition has ticks on their way (tasks may fall due behind them)."""
        return any(self._in_flight.values())

    def take_due(self, partition: int, at: datetime, limit: int = 10_000) -> list[tuple[str, str]]:
        """Apply a tick: the tasks of ``partition`` due at or before ``at`` (task id, tenant), earliest first.

        They leave the index; the agent puts each back with its new wakeup once woken.
        """
        flights = self._in_flight.get(partition)
        if flights:
            # This tick, and any sent before it, are applied now (they cover no later time).
            flights[:] = [f for f in flights if f[1] > at]
        self.stats.ticks_applied += 1
        index = self.partitions.get(partition)
        if index is None:
            return []
        due = [(task_id, self._pop_tenant(task_id)) for task_id in index.pop_due_ids(at, limit)]
        self.stats.wakes_applied += len(due)
        return due

    def _pop_tenant(self, task_id: str) -> str:
        """The tenant of a task leaving the index (recorded, or named by its id)."""
        tenant = self._tenants.pop(task_id, None)
        if tenant is None:
            tenant = tenant_in(task_id)
            assert tenant is not None  # track() records the tenant of every id that names none
        return tenant

    def _index_of(self, task_id: str) -> DueIndex | None:
        """The due-index holding ``task_id``, if any (a scan of the owned partitions)."""
        for index in self.partitions.values():
            if task_id in index.wakeups:
                return index
        return None


def tenant_in(task_id: str) -> str | None:
    """The tenant a ``<tenant>/<id>`` task id names; None for an id without a ``/``."""
    tenant, sep, _ = task_id.partition("/")
    return tenant if sep else None


def _earliest(indexes: Iterable[DueIndex]) -> datetime | None:
    times = [when for index in indexes if (when := index.next_time()) is not None]
    return min(times, default=None)
