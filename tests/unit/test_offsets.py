"""The processor finds offsets of ``commands`` that faust skipped at a rebalance (streams/offsets.py)."""

from __future__ import annotations

from streams.offsets import OffsetWatch


def test_contiguous_offsets_are_applied() -> None:
    watch = OffsetWatch()
    assert [watch.handed(0, o) for o in (5, 6, 7)] == [None, None, None]
    assert [watch.handed(1, o) for o in (100, 101)] == [None, None]  # each partition on its own
    assert watch.gaps == 0


def test_a_jump_is_a_gap_to_read_again_and_the_message_is_held_back() -> None:
    watch = OffsetWatch()
    watch.handed(0, 10)
    assert watch.handed(0, 14) == range(11, 14)
    assert watch.gaps == 1
    watch.sought(0, 11)
    # What was handed over before the seek took effect is dropped, in order to keep the order.
    assert watch.handed(0, 15) == range(0)
    assert watch.handed(0, 14) == range(0)
    # Then the offsets come again from the one sought, and are applied in order.
    assert [watch.handed(0, o) for o in (11, 12, 13, 14, 15)] == [None] * 5
    assert watch.gaps == 1


def test_a_re_read_after_a_seek_back_is_applied_again() -> None:
    watch = OffsetWatch()
    for o in (1, 2, 3, 4):
        watch.handed(0, o)
    # Recovery seeks back to the committed offset: the same commands again, idempotent.
    assert [watch.handed(0, o) for o in (2, 3, 4, 5)] == [None] * 4
    assert watch.handed(0, 7) == range(6, 7)


def test_a_partition_that_moved_away_starts_anew_when_it_comes_back() -> None:
    watch = OffsetWatch()
    watch.handed(0, 1)
    watch.handed(1, 1)
    watch.keep({1})
    # Another worker applied 2..49 of partition 0 meanwhile: where it comes back is no gap.
    assert watch.handed(0, 50) is None
    assert watch.handed(1, 3) == range(2, 3)  # partition 1 never left


def test_a_new_assignment_ends_the_wait_for_a_seek() -> None:
    watch = OffsetWatch()
    watch.handed(0, 10)
    assert watch.handed(0, 20) == range(11, 20)
    watch.sought(0, 11)
    # Recovery then seeks the partition to its committed offset, past the one sought: the
    # gap is found again from what was last applied, not waited for forever.
    watch.keep({0})
    assert watch.handed(0, 16) == range(11, 16)
