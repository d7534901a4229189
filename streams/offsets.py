"""Watching the offsets the task processor is handed, partition by partition.

Nothing writes to ``commands`` in transactions and nothing compacts it, so its offsets are
contiguous: a message the agent is handed after offset ``n`` of a partition it kept owning
should be ``n + 1``. faust-streaming 0.15.3 can break that at a rebalance: records fetched
before the rebalance are still being handed over when recovery seeks the partition back to
its committed offset, the consumer records the distance between the two as a "gap" of
offsets that do not exist (meant for transaction markers), counts them as acknowledged and
drops the records of the seek that fall below what it already handed over. The commands in
that range are never decided (an executor's report among them left an execution in flight
for good). :class:`OffsetWatch` finds such a gap so the processor can read it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OffsetWatch:
    """The next offset expected per partition, and the gaps found."""

    _next: dict[int, int] = field(default_factory=dict)
    _resync: dict[int, int] = field(default_factory=dict)
    gaps: int = 0
    """Gaps found since the start."""

    def handed(self, partition: int, offset: int) -> range | None:
        """Record that the agent is handed ``offset`` of ``partition``; returns the offsets
        skipped before it (then the caller seeks back to the range's start and drops this
        message, see :meth:`sought`), or None when the message is to be applied.

        An offset at or below one seen already is a re-read (a seek back after a rebalance):
        applied again, harmlessly (commands are idempotent)."""
        expected = self._resync.get(partition)
        if expected is not None:
            if offset != expected:
                return range(0)  # a message handed before the seek took effect: dropped
            del self._resync[partition]
        nxt = self._next.get(partition)
        self._next[partition] = offset + 1
        if nxt is not None and offset > nxt:
            self.gaps += 1
            self._next[partition] = nxt
            return range(nxt, offset)
        return None

    def sought(self, partition: int, offset: int) -> None:
        """The caller sought ``partition`` back to ``offset``: messages are dropped until it arrives."""
        self._resync[partition] = offset

    def keep(self, partitions: set[int]) -> None:
        """A new assignment: forget the partitions not in ``partitions`` (moved to another
        worker: when one comes back, it is read from its committed offset, wherever the other
        left it), and every seek awaited (recovery seeks each partition to its committed offset,
        which may lie past the offset sought: a gap left there is found again)."""
        for p in list(self._next):
            if p not in partitions:
                del self._next[p]
        self._resync.clear()
