"""The due-index: earliest wakeup per task, lazy deletion, bounded growth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from streams.due_index import DueIndex

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_pops_due_tasks_in_time_order_and_keeps_the_rest() -> None:
    index = DueIndex()
    index.set("b", at(2))
    index.set("a", at(1))
    index.set("c", at(5))
    assert index.pop_due(at(3)) == [("a", at(1)), ("b", at(2))]
    assert index.next_time() == at(5)
    assert len(index) == 1


def test_rescheduling_replaces_the_old_time() -> None:
    index = DueIndex()
    index.set("a", at(1))
    index.set("a", at(10))
    assert index.pop_due(at(5)) == []
    assert index.pop_due(at(10)) == [("a", at(10))]


def test_none_and_forget_remove_tasks() -> None:
    index = DueIndex()
    index.set("a", at(1))
    index.set("b", at(1))
    index.set("a", None)
    index.forget(["b"])
    assert index.pop_due(at(100)) == []
    assert index.next_time() is None


def test_stale_entries_are_compacted() -> None:
    index = DueIndex()
    for i in range(10_000):
        index.set("a", at(i))
    assert len(index._heap) < 2_000
    assert index.pop_due(at(10_000)) == [("a", at(9_999))]


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.one_of(st.none(), st.integers(0, 100))), max_size=200),
       st.integers(0, 100))  # fmt: skip
def test_matches_a_plain_dict(ops: list[tuple[str, int | None]], now: int) -> None:
    index = DueIndex()
    model: dict[str, datetime] = {}
    for task, when in ops:
        index.set(task, None if when is None else at(when))
        if when is None:
            model.pop(task, None)
        else:
            model[task] = at(when)
    due = index.pop_due(at(now))
    expected = sorted(((t, w) for t, w in model.items() if w <= at(now)), key=lambda x: (x[1], x[0]))
    assert sorted(due, key=lambda x: (x[1], x[0])) == expected
    assert [w for _, w in due] == sorted(w for _, w in due)
