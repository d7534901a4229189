"""The processor finds offsets of ``commands`` that faust never handed over (streams/offsets.py)."""

from __future__ import annotations

from streams.offsets import OffsetWatch


def test_contiguous_offsets_are_no_skip() -> None:
    watch = OffsetWatch()
    assert [watch.handed(0, o) for o in (5, 6, 7)] == [None, None, None]
    assert [watch.handed(1, o) for o in (100, 101)] == [None, None]  # each partition on its own
    assert watch.skipped == 0


def test_a_jump_names_the_offsets_skipped() -> None:
    watch = OffsetWatch()
    watch.handed(0, 10)
    assert watch.handed(0, 14) == range(11, 14)
    assert watch.handed(0, 15) is None
    assert watch.skipped == 3


def test_a_re_read_after_a_seek_back_is_no_skip() -> None:
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
    # Another worker applied 2..49 of partition 0 meanwhile: where it comes back is no skip.
    assert watch.handed(0, 50) is None
    assert watch.handed(1, 3) == range(2, 3)  # partition 1 never left
