"""The due-index: when each owned task next needs a Wake.

A heap of ``(time, task_id)`` with lazy deletion: ``set`` records the task's current
wakeup and pushes an entry; stale heap entries (whose time no longer matches) are dropped
when popped. All operations are O(log n); memory is one dict entry per task plus heap
entries not yet popped.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import datetime


class DueIndex:
    """Earliest wakeup per task, for the tasks of the partitions this worker owns."""

    def __init__(self) -> None:
        self._when: dict[str, datetime] = {}
        self._heap: list[tuple[datetime, str]] = []

    def __len__(self) -> int:
        return len(self._when)

    def get(self, task_id: str) -> datetime | None:
        """The wakeup recorded for a task."""
        return self._when.get(task_id)

    def set(self, task_id: str, when: datetime | None) -> None:
        """Record a task's next wakeup; ``None`` removes it."""
        if when is None:
            self._when.pop(task_id, None)
            return
        if self._when.get(task_id) == when:
            return
        self._when[task_id] = when
        heapq.heappush(self._heap, (when, task_id))
        # Lazy deletion can let stale entries pile up (a task rescheduled many times before
        # its entry surfaces); rebuild when they dominate.
        if len(self._heap) > 4 * len(self._when) + 1024:
            self._compact()

    def forget(self, task_ids: Iterable[str]) -> None:
        """Forget the given tasks (their partitions were revoked)."""
        for task_id in task_ids:
            self._when.pop(task_id, None)

    def clear(self) -> None:
        self._when.clear()
        self._heap.clear()

    def next_time(self) -> datetime | None:
        """The earliest recorded wakeup, if any."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: datetime, limit: int = 10_000) -> list[tuple[str, datetime]]:
        """Remove and return the tasks whose wakeup is at or before ``now`` (earliest first)."""
        due: list[tuple[str, datetime]] = []
        while self._heap and len(due) < limit:
            when, task_id = self._heap[0]
            if self._when.get(task_id) != when:
                heapq.heappop(self._heap)
                continue
            if when > now:
                break
            heapq.heappop(self._heap)
            del self._when[task_id]
            due.append((task_id, when))
        return due

    def due_after(self, after: datetime, now: datetime, budget: int = 256) -> bool:
        """Whether a task's wakeup lies in ``(after, now]``; True too when that takes more than
        ``budget`` entries to tell (a large backlog: the caller bounds what follows).

        Walks only the heap entries at or before ``now`` (the due ones): below an entry later
        than ``now`` every entry is later still.
        """
        heap, when_of = self._heap, self._when
        stack = [0] if heap else []
        while stack:
            budget -= 1
            if budget < 0:
                return True
            i = stack.pop()
            when, task_id = heap[i]
            if when > now:
                continue
            if after < when and when_of.get(task_id) == when:
                return True
            stack.extend(c for c in (2 * i + 1, 2 * i + 2) if c < len(heap))
        return False

    def _drop_stale(self) -> None:
        while self._heap and self._when.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def _compact(self) -> None:
        self._heap = [(when, task_id) for task_id, when in self._when.items()]
        heapq.heapify(self._heap)
