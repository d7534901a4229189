"""The guard in front of faust's streams hands each partition's records over in order, once, with
no gap (streams/faust_consumer.py). The broker test of the whole is
tests/integration/test_handover.py."""

from __future__ import annotations

from aiokafka.errors import IllegalStateError
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import faust_consumer
from streams.faust_consumer import OrderGuard, Verdict

P = TP("commands", 0)
Q = TP("commands", 1)


def test_nothing_is_handed_before_the_partition_is_positioned() -> None:
    guard = OrderGuard()
    assert guard.verdict(P, 0) is Verdict.DROP
    guard.positioned(P, 0)
    assert [guard.verdict(P, o) for o in (0, 1, 2)] == [Verdict.HAND] * 3
    assert guard.verdict(Q, 0) is Verdict.DROP  # each partition on its own


def test_records_handed_already_are_dropped() -> None:
    guard = OrderGuard()
    guard.positioned(P, 10)
    assert guard.verdict(P, 9) is Verdict.DROP
    assert guard.verdict(P, 10) is Verdict.HAND
    assert guard.verdict(P, 10) is Verdict.DROP


def test_a_record_past_the_owed_one_asks_for_a_seek_back() -> None:
    guard = OrderGuard()
    guard.positioned(P, 100)
    assert guard.verdict(P, 400) is Verdict.SEEK
    assert guard.owed(P) == 100
    guard.sought(P)
    assert guard.fetched(P, 100) == 0  # the first batch after the seek starts at the owed offset
    assert [guard.verdict(P, o) for o in (100, 101)] == [Verdict.HAND] * 2
    assert guard.verdict(P, 105) is Verdict.SEEK  # a later jump is a new one
    assert guard.seeks == 1


def test_offsets_without_records_are_passed_after_one_seek_back() -> None:
    guard = OrderGuard()
    guard.positioned(P, 0)  # committed 0; the log starts at 37 (retention) or markers sit there
    assert guard.fetched(P, 37) == 0  # not after a seek back: proves nothing
    assert guard.verdict(P, 37) is Verdict.SEEK
    guard.sought(P)
    assert guard.fetched(P, 37) == 37  # read after the seek back to 0, and starts at 37
    assert guard.missing == 37
    assert [guard.verdict(P, o) for o in (37, 38)] == [Verdict.HAND] * 2
    assert guard.fetched(P, 50) == 0  # only the first batch after the seek tells


def test_records_dropped_at_the_end_of_a_batch_ask_for_a_seek_back() -> None:
    guard = OrderGuard()
    guard.positioned(P, 10)
    assert guard.verdict(P, 10) is Verdict.HAND
    assert not guard.unhanded(P, 10)  # the batch ended at 10, handed
    assert guard.unhanded(P, 14)  # 11..14 fetched, none handed, nothing after them
    assert not guard.unhanded(Q, 3)  # not positioned: faust's seek will come


def test_a_new_assignment_forgets_every_partition_until_it_is_positioned() -> None:
    guard = OrderGuard()
    guard.positioned(P, 5)
    guard.assign()
    assert guard.verdict(P, 5) is Verdict.DROP
    guard.positioned(P, 7)  # the committed offset now
    assert guard.verdict(P, 7) is Verdict.HAND


class _Consumer:
    """One partition as the consumer sees it, and the guard's caller as in
    :meth:`streams.faust_consumer.Consumer.getmany`: a fetch position that moves with every
    batch fetched, records faust drops on the way, and rebalances that seek to a committed offset
    at or before the last one handed over."""

    def __init__(self, log: list[int]) -> None:
        self.log = log
        self.guard = OrderGuard()
        self.position = 0
        self.segments: list[tuple[int, list[int]]] = []  # (offset sought, offsets handed) per assignment
        self.position_at(0)  # nothing committed: the first offset, whatever the log holds

    def position_at(self, offset: int) -> None:
        self.guard.positioned(P, offset)
        self.position = offset  # the seek after positioning (Consumer.seek_to_committed)
        self.segments.append((offset, []))

    def fetch(self, size: int) -> list[int]:
        batch = [o for o in self.log if o >= self.position][:size]
        if batch:
            self.position = batch[-1] + 1
            self.guard.fetched(P, batch[0])
        return batch

    def hand(self, batch: list[int], drop: set[int]) -> None:
        sought = False
        for i, offset in enumerate(batch):
            if i in drop or sought:
                continue  # consumed from the fetcher, dropped by faust (not active, a rebalance)
            verdict = self.guard.verdict(P, offset)
            if verdict is Verdict.HAND:
                self.segments[-1][1].append(offset)
            elif verdict is Verdict.SEEK:
                sought = True
                self.seek_back()
        if batch and not sought and self.guard.unhanded(P, batch[-1]):
            self.seek_back()

    def seek_back(self) -> None:
        owed = self.guard.owed(P)
        assert owed is not None
        self.position = owed
        self.guard.sought(P)

    def rebalance(self, back: int, size: int, drop: set[int], late: bool) -> None:
        """Partitions revoked and assigned again; faust seeks to the committed offset, ``back``
        offsets before the owed one. A batch fetched meanwhile is dropped (nothing owed yet), or,
        if ``late``, reaches the guard only after it is positioned."""
        committed = max(0, (self.guard.owed(P) or 0) - back)
        self.guard.assign()
        self.position = committed  # faust's seek
        early = self.fetch(size)
        if not late:
            self.hand(early, drop)
        self.position_at(committed)
        if late:
            self.hand(early, drop)


_STEPS = st.lists(
    st.tuples(st.sampled_from(["step", "step", "step", "rebalance", "late"]), st.integers(1, 6), st.integers(0, 8),
              st.sets(st.integers(0, 5))),
    max_size=50,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(log=st.lists(st.integers(0, 60), min_size=1, max_size=40, unique=True).map(sorted), steps=_STEPS)
def test_every_record_is_handed_in_order_whatever_faust_drops(
    log: list[int], steps: list[tuple[str, int, int, set[int]]]
) -> None:
    consumer = _Consumer(log)
    for action, size, back, drop in steps:
        if action == "step":
            consumer.hand(consumer.fetch(size), drop)
        else:
            consumer.rebalance(back, size, drop, late=action == "late")
    for _ in range(2 * len(log) + 4):  # then faust drops nothing more: the rest arrives
        consumer.hand(consumer.fetch(5), set())
    # From every position sought, the log's records in order, none left out, none twice; the
    # last assignment reads to the end.
    for sought, handed in consumer.segments:
        assert handed == [o for o in log if o >= sought][: len(handed)]
    last_sought, last_handed = consumer.segments[-1]
    assert last_handed == [o for o in log if o >= last_sought]
    everything = {o for _, handed in consumer.segments for o in handed}
    assert {o for o in log if o < last_sought} <= everything  # committed only what was handed


async def test_the_processor_app_builds_the_guarded_consumer_with_a_short_long_poll() -> None:
    app = faust_consumer.App("wiring", broker="kafka://127.0.0.1:1", autodiscover=False)
    app.fetch_max_wait_ms = 20
    consumer = app.consumer
    assert isinstance(consumer, faust_consumer.Consumer)
    assert isinstance(consumer._thread, faust_consumer.ConsumerThread)
    kafka = consumer._thread._create_worker_consumer(app.transport)
    assert kafka._fetch_max_wait_ms == 20  # faust's own is 1,500


async def test_a_seek_back_that_fails_is_asked_for_again_by_the_next_batch() -> None:
    app = faust_consumer.App("seekback", broker="kafka://127.0.0.1:1", autodiscover=False)
    consumer = app.consumer
    assert isinstance(consumer, faust_consumer.Consumer)
    sought: list[dict[TP, int]] = []

    async def revoked_meanwhile(partitions: dict[TP, int]) -> None:
        raise IllegalStateError(f"No current assignment for partition {P}")

    async def seek(partitions: dict[TP, int]) -> None:
        sought.append(dict(partitions))

    consumer.guard.positioned(P, 50)
    consumer.seek_wait = revoked_meanwhile  # type: ignore[method-assign]
    await consumer._seek_back(P, 90)  # logged, not raised into faust's fetch loop
    assert consumer.guard.seeks == 0
    assert consumer.guard.verdict(P, 91) is Verdict.SEEK  # still owed 50: asked again
    consumer.seek_wait = seek  # type: ignore[method-assign]
    await consumer._seek_back(P, 91)
    assert sought == [{P: 50}]
    assert consumer.guard.seeks == 1
