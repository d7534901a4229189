"""The due-index: when each owned task next needs a Wake.

Kept small because a worker holds one entry per owned task (a million tasks on one worker is
a target). Wakeups are integer microseconds since the epoch, not datetimes, and tasks sharing
a wakeup (cron tasks firing on the same minute, the common case) share one **bucket**:

- ``_when``: task -> its wakeup (the source of truth);
- ``_due``: wakeup -> the task recorded at it (a bare ``str``: most wakeups of spread tasks
  have one) or a :class:`_Bucket` of them, whose ``at`` is the one ``int`` its tasks share;
- ``_times``: a heap of the distinct wakeups in ``_due``.

Per task that is a ``_when`` slot and, in a shared bucket, a list slot (about 50 bytes besides
the task id) instead of a datetime, a ``(time, task)`` tuple and its heap slot (about 150).
Deletion is lazy: moving or removing a task only updates ``_when``; an entry whose task no
longer has that wakeup is dropped when met. All operations are O(log n) in the distinct
wakeups, amortised.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(when: datetime) -> int:
    """``when`` (aware) as integer microseconds since the epoch: the due-index's time."""
    return (when - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The UTC datetime of :func:`to_micros`' integer."""
    return _EPOCH + timedelta(microseconds=micros)


class _Bucket:
    """The tasks recorded at one wakeup, when there are several."""

    __slots__ = ("at", "tasks")

    def __init__(self, at: int, tasks: list[str]) -> None:
        self.at = at
        """The wakeup; its tasks' ``_when`` values are this very object (one int, not one each)."""
        self.tasks = tasks
        """Tasks recorded here, live or stale (moved, removed or already popped)."""


class DueIndex:
    """Earliest wakeup per task, for the tasks of one partition this worker owns."""

    def __init__(self) -> None:
        self._when: dict[str, int] = {}
        self._due: dict[int, str | _Bucket] = {}
        self._times: list[int] = []
        self._entries = 0
        """Task entries in ``_due``, live or stale: compaction rebuilds when stale ones dominate."""

    def __len__(self) -> int:
        return len(self._when)

    @property
    def wakeups(self) -> Mapping[str, int]:
        """Task -> wakeup in :func:`to_micros` units (read only; a dict for speed: the firing
        loop looks tasks up here on every wake)."""
        return self._when

    def get(self, task_id: str) -> datetime | None:
        """The wakeup recorded for a task."""
        micros = self._when.get(task_id)
        return None if micros is None else from_micros(micros)

    def set(self, task_id: str, when: datetime | None) -> None:
        """Record a task's next wakeup; ``None`` removes it."""
        if when is None:
            self._when.pop(task_id, None)
            return
        micros = to_micros(when)
        if self._when.get(task_id) == micros:
            return
        self._add(task_id, micros)
        # Lazy deletion can let stale entries pile up (a task rescheduled many times before
        # its entry surfaces); rebuild when they dominate.
        bound = 4 * len(self._when) + 1024
        if self._entries > bound or len(self._times) > bound:
            self._compact()

    def forget(self, task_ids: Iterable[str]) -> None:
        """Forget the given tasks (their partitions were revoked)."""
        for task_id in task_ids:
            self._when.pop(task_id, None)

    def clear(self) -> None:
        self._when.clear()
        self._due.clear()
        self._times.clear()
        self._entries = 0

    def next_time(self) -> datetime | None:
        """The earliest recorded wakeup, if any."""
        times = self._times
        while times and not self._live(times[0]):
            if isinstance(self._due.pop(heapq.heappop(times)), str):
                self._entries -= 1  # a bucket's stale entries were counted off as they were dropped
        return from_micros(times[0]) if times else None

    def pop_due(self, now: datetime, limit: int = 10_000) -> list[tuple[str, datetime]]:
        """Remove and return the tasks whose wakeup is at or before ``now`` (earliest first;
        ties in task-id order)."""
        return [(task_id, from_micros(micros)) for task_id, micros in self._pop(to_micros(now), limit)]

    def pop_due_ids(self, now: datetime, limit: int = 10_000) -> list[str]:
        """:meth:`pop_due` without the wakeups (what a tick needs)."""
        return [task_id for task_id, _ in self._pop(to_micros(now), limit)]

    def _pop(self, until: int, limit: int) -> list[tuple[str, int]]:
        due: list[tuple[str, int]] = []
        times, when_of = self._times, self._when
        while times and len(due) < limit:
            micros = times[0]
            if micros > until:
                break
            found = self._due[micros]
            if isinstance(found, str):
                self._entries -= 1
                if when_of.get(found) == micros:
                    del when_of[found]
                    due.append((found, micros))
            else:
                tasks = found.tasks
                tasks.sort(reverse=True)  # popped from the end: ascending task ids
                while tasks and len(due) < limit:
                    task_id = tasks.pop()
                    self._entries -= 1
                    if when_of.get(task_id) == micros:
                        del when_of[task_id]
                        due.append((task_id, micros))
                if tasks:
                    break  # the limit is reached inside this bucket
            del self._due[heapq.heappop(times)]
        return due

    def due_after(self, after: datetime, now: datetime, budget: int = 256) -> bool:
        """Whether a task's wakeup lies in ``(after, now]``; True too when that takes more than
        ``budget`` entries to tell (a large backlog: the caller bounds what follows).

        Walks only the heap entries at or before ``now`` (the due ones): below an entry later
        than ``now`` every entry is later still.
        """
        low, high = to_micros(after), to_micros(now)
        heap = self._times
        stack = [0] if heap else []
        while stack:
            budget -= 1
            if budget < 0:
                return True
            i = stack.pop()
            micros = heap[i]
            if micros > high:
                continue
            if low < micros and self._live(micros):
                return True
            stack.extend(c for c in (2 * i + 1, 2 * i + 2) if c < len(heap))
        return False

    def _add(self, task_id: str, micros: int) -> None:
        found = self._due.get(micros)
        if found is None:
            self._due[micros] = task_id
            heapq.heappush(self._times, micros)
        elif isinstance(found, str):
            self._due[micros] = _Bucket(micros, [found, task_id])
        else:
            found.tasks.append(task_id)
            micros = found.at  # shared: one int for every task of the bucket
        self._when[task_id] = micros
        self._entries += 1

    def _live(self, micros: int) -> bool:
        """Whether some task still has the wakeup ``micros`` (dropping stale entries met)."""
        found = self._due[micros]
        when_of = self._when
        if isinstance(found, str):
            return when_of.get(found) == micros
        tasks = found.tasks
        while tasks and when_of.get(tasks[-1]) != micros:
            tasks.pop()
            self._entries -= 1
        return bool(tasks)

    def _compact(self) -> None:
        live = self._when
        self._when, self._due, self._times, self._entries = {}, {}, [], 0
        for task_id, micros in live.items():
            self._add(task_id, micros)
