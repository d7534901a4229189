"""Watching the offsets the task processor is handed, partition by partition.

Nothing writes to ``commands`` in transactions and nothing compacts it, so its offsets are
contiguous: a message the agent is handed after offset ``n`` of a partition it kept owning
should be ``n + 1``, or lower (a seek back to the committed offset after a rebalance, read
again). A jump means commands were never handed over, so never applied: faust-streaming 0.15.3
can do that at a rebalance (records fetched before recovery's seek are handed over after it,
and the consumer then drops the records of the seek that fall below them). :class:`OffsetWatch`
finds such a jump, so it is logged and counted (``scheduler_commands_skipped``) rather than
silent.

It does not read the skipped commands again. Seeking Faust's consumer back was tried: records
fetched before the seek, still on their way, moved Faust's read offset past the one sought, so
it dropped the re-read too (and holding messages back until the sought one came lost a whole
partition in one run). Reading the range with a consumer of its own is the way left.
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
