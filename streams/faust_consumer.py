"""faust-streaming's Kafka consumer, adjusted for the task processor, in one place.

**Records handed over in order, from the committed offset, after every assignment.** Tracing
inside faust-streaming 0.15.3's consumer (issue 9) showed how commands sent while a second
worker joined were never applied (tests/integration/test_handover.py):

- While a new assignment recovers its table, aiokafka fetches the ``commands`` partitions
  too, and faust drops those records (the partitions are not active yet) while the fetch
  position moves on. At the end of recovery faust seeks every partition back to its committed
  offset, but aiokafka leaves a partition with no committed offset (or offset 0) where it is.
  A worker joining in the first seconds, before anything was committed, read on from where
  the dropped records ended: hundreds of commands never applied, and the next commit passed
  them.
- Records fetched before that seek can reach the stream after it. Faust then takes the
  offsets between the committed one and theirs as a gap (acknowledged, so committed past)
  and drops the records of the seek that fall below the ones it handed over.

So, in front of faust's own handling, :class:`Consumer` keeps per stream partition the next
offset it owes the stream (:class:`OrderGuard`), set when faust seeks after an assignment
(a partition with no committed offset is sought to its first offset, the ``earliest`` reset
the app asks for). A record is handed over only if it is the owed one. One past it (records
were consumed and dropped on the way) makes the consumer seek the partition back to the owed
offset and drop what was fetched before that seek; one below it was handed over already. If,
after the seek back, the first record fetched is still past the owed offset, the offsets
between hold no records (transaction markers, or retention) and it is taken.

**A short long-poll.** faust-streaming creates its aiokafka consumer with
``fetch_max_wait_ms=1500`` hard coded. aiokafka leaves a partition out of the next fetch
request while records fetched for it are still being processed, so the request in flight can
cover only idle partitions and long-poll for the full 1.5 s while new commands wait on the
busy one. Measured here: every dispatch 1.5-3 s late at 300 fires/s with the worker's CPU
two-thirds idle. A short wait removes that stall; the broker still answers at once whenever
data is there.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import faust
from faust.transport.consumer import RecordMap
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from streams import metrics

log = logging.getLogger(__name__)


class Verdict(Enum):
    HAND = "hand"
    """The owed record: hand it to the stream."""
    DROP = "drop"
    """Handed over already, or the partition is not positioned yet (faust's seek will come)."""
    SEEK = "seek"
    """Records are missing before this one: seek back to :meth:`OrderGuard.owed`, and drop the
    rest of the batch for the partition (fetched before the seek)."""


@dataclass
class OrderGuard:
    """The next offset owed to the stream, per partition.

    The consumer hands records over one fetched batch at a time, and a seek back is awaited
    before the next fetch, so the batch after a seek back holds only records read after it.
    """

    _owed: dict[TP, int] = field(default_factory=dict)
    _resumed: set[TP] = field(default_factory=set)
    """Partitions sought back whose next batch is the first fetched after the seek."""
    seeks: int = 0
    """Seeks back since the start."""
    missing: int = 0
    """Offsets found to hold no record (transaction markers, retention) since the start."""

    def assign(self) -> None:
        """A new assignment: nothing is owed until faust seeks the partitions."""
        self._owed.clear()
        self._resumed.clear()

    def positioned(self, tp: TP, offset: int) -> None:
        """The partition is sought to ``offset``: that record is owed next."""
        self._owed[tp] = offset
        self._resumed.discard(tp)

    def owed(self, tp: TP) -> int | None:
        return self._owed.get(tp)

    def fetched(self, tp: TP, first: int) -> int:
        """A batch holding records of ``tp`` from ``first`` on is about to be handed over.
        Returns how many owed offsets hold no record: the batch is the first read after a seek
        back to the owed offset and starts past it."""
        if tp not in self._resumed:
            return 0
        self._resumed.discard(tp)
        owed = self._owed.get(tp)
        if owed is None or first <= owed:
            return 0
        self.missing += first - owed
        self._owed[tp] = first
        return first - owed

    def verdict(self, tp: TP, offset: int) -> Verdict:
        owed = self._owed.get(tp)
        if owed is None or offset < owed:
            return Verdict.DROP
        if offset == owed:
            self._owed[tp] = offset + 1
            return Verdict.HAND
        return Verdict.SEEK

    def unhanded(self, tp: TP, last: int) -> bool:
        """The batch just handed over held records of ``tp`` up to ``last``: True if the owed
        one was among them and never reached :meth:`verdict` (faust dropped it on the way, with
        nothing fetched after it), so a seek back is due."""
        owed = self._owed.get(tp)
        return owed is not None and last >= owed

    def sought(self, tp: TP) -> None:
        """``tp`` was sought back to its owed offset."""
        self.seeks += 1
        self._resumed.add(tp)


def _tp(tp: Any) -> TP:
    """faust's TP from aiokafka's TopicPartition (equal as tuples; one type for the guard's keys)."""
    return TP(tp.topic, tp.partition)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait = getattr(self.app, "fetch_max_wait_ms", None)
        if wait is not None:
            if hasattr(consumer, "_fetch_max_wait_ms"):
                consumer._fetch_max_wait_ms = wait
            else:  # a future aiokafka: better slow than broken
                log.warning("cannot tune the Faust consumer's fetch wait; dispatches may lag")
        return consumer


class Consumer(faust_aiokafka.Consumer):
    """faust-streaming's aiokafka consumer with the :class:`OrderGuard` in front of its streams."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = OrderGuard()
        self._fetched: dict[TP, tuple[int, int]] = {}
        """The first and last offsets of each stream partition in the batch being handed over."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.guard.assign()
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self.guard.assign()
        await super().on_partitions_assigned(assigned, generation_id)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Faust's seek after an assignment; a stream partition without a committed offset is
        sought to its first one, and every stream partition is owed the offset sought."""
        committed = await super().seek_to_committed()
        positions = {_tp(tp): offset for tp, offset in committed.items() if not self._is_changelog_tp(tp)}
        fresh = [tp for tp, offset in positions.items() if not offset]
        if fresh:
            earliest = {_tp(tp): offset for tp, offset in (await self.earliest_offsets(*fresh)).items()}
            positions.update({tp: earliest[tp] for tp in fresh})
        for tp, offset in positions.items():
            self.guard.positioned(tp, offset)
        # Again, now that the guard owes them: records fetched since faust's seek were dropped
        # (nothing was owed yet) and moved the position on.
        if positions:
            await self.seek_wait(positions)
        return committed

    async def _wait_next_records(self, timeout: float) -> tuple[RecordMap | None, set[TP] | None]:  # noqa: ASYNC109
        records, active = await super()._wait_next_records(timeout)
        changelogs = self.app.tables.changelog_topics  # a new set at each call: once per batch
        self._fetched = {
            tp: (batch[0].offset, batch[-1].offset)
            for tp, batch in (records or {}).items()
            if batch and tp.topic not in changelogs
        }
        for tp, (first, _) in self._fetched.items():
            if empty := self.guard.fetched(tp, first):
                log.info("%s[%d]: offsets %d-%d hold no record (transaction markers or retention)",
                         tp.topic, tp.partition, first - empty, first - 1)  # fmt: skip
        return records, active

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109 (faust's signature)
        guard = self.guard
        changelogs = self.app.tables.changelog_topics
        self._fetched = {}
        sought: set[TP] = set()
        async for tp, message in super().getmany(timeout):
            if tp.topic in changelogs:
                yield tp, message
                continue
            if tp in sought:
                continue
            verdict = guard.verdict(tp, message.offset)
            if verdict is Verdict.HAND:
                yield tp, message
            elif verdict is Verdict.SEEK:
                sought.add(tp)
                await self._seek_back(tp, message.offset)
        if self.flow_active:  # not in a rebalance (that positions every partition again)
            assigned = self.assignment()
            for tp, (_, last) in self._fetched.items():
                if tp not in sought and tp in assigned and guard.unhanded(tp, last):
                    await self._seek_back(tp, last)

    async def _seek_back(self, tp: TP, found: int) -> None:
        owed = self.guard.owed(tp)
        assert owed is not None
        log.warning(
            "%s[%d]: offset %d fetched while %d is owed and never handed over (records dropped on "
            "the way by faust); reading the partition again from %d",
            tp.topic, tp.partition, found, owed, owed,
        )  # fmt: skip
        metrics.CONSUMER_SEEKS_BACK.inc()
        try:
            await self.seek_wait({tp: owed})
        except Exception as exc:  # revoked meanwhile, or the broker away: the next batch asks again
            log.warning("%s[%d]: the seek back to %d failed: %r", tp.topic, tp.partition, owed, exc)
            return
        self.guard.sought(tp)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


class App(faust.App):
    """The task processor's Faust app: its consumer is :class:`Consumer`."""

    fetch_max_wait_ms: int | None = None

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)
