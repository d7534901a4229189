"""Watching the offsets the task processor is handed, partition by partition: the last check
behind the consumer's own guard.

Nothing in this deployment writes to ``commands`` in transactions and nothing compacts it, so
its offsets are contiguous: a message the agent is handed after offset ``n`` of a partition it
kept owning should be ``n + 1``, or lower (a seek back to the committed offset after a
rebalance, read again). A jump means commands were never handed over, so never applied.
faust-streaming 0.15.3 did that at rebalances; streams/faust_consumer.py now keeps each
partition in order in front of faust (and reads again what faust dropped), so a jump seen here
means that guard missed a case. :class:`OffsetWatch` finds it, so it is logged and counted
(``scheduler_commands_skipped``, alerted on) rather than silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OffsetWatch:
    """The next offset expected per partition, and the offsets found skipped."""

    _next: dict[int, int] = field(default_factory=dict)
    skipped: int = 0
    """Offsets found skipped since the start."""

    def handed(self, partition: int, offset: int) -> range | None:
        """Record that the agent is handed ``offset`` of ``partition``; returns the offsets
        skipped just before it, if any."""
        nxt = self._next.get(partition)
        self._next[partition] = offset + 1
        if nxt is not None and offset > nxt:
            self.skipped += offset - nxt
            return range(nxt, offset)
        return None

    def keep(self, partitions: set[int]) -> None:
        """A new assignment: forget the partitions not in ``partitions`` (moved to another
        worker: when one comes back, it is read from its committed offset, wherever the other
        left it)."""
        for p in list(self._next):
            if p not in partitions:
                del self._next[p]
