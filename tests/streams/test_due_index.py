"""The due-index: earliest wakeup per task, lazy deletion, bounded growth."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from streams.due_index import DueIndex
from streams.firing import Firing

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
    assert len(index._times) < 2_000 and index._entries < 2_000
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


# -- footprint: a worker holds one entry per owned task (issue 9: a million on one worker) ------

FOOTPRINT_TASKS = 20_000


def _bytes_per_task(ids: list[str], wakeup_of: Callable[[int], datetime], tenant: str = "acme") -> float:
    """What the due-indexes and tenant map of one worker hold per task, task ids not counted
    (they are the table's keys anyway), built as the worker's rebuild builds them: a fresh
    wakeup object per task, as decoded from each stored record."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        firing = Firing(resend_seconds=5)
        for n, task_id in enumerate(ids):
            firing.track(task_id, tenant, n % 8, wakeup_of(n))
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(firing) == len(ids)
    return used / len(ids)


def test_tasks_sharing_a_wakeup_cost_a_dict_slot_and_a_list_slot() -> None:
    # Cron tasks firing on the same minute, the common case. The heap of (datetime, id) tuples
    # and the task -> (tenant, partition) map held 154 bytes a task besides its id (20,000
    # tasks); now 29.
    ids = [f"acme/t{n:06d}" for n in range(FOOTPRINT_TASKS)]
    assert _bytes_per_task(ids, lambda n: at(3600) + timedelta(0)) < 60


def test_tasks_with_distinct_wakeups_cost_less_than_before() -> None:
    # Every task at its own microsecond (jitter): 154 bytes a task before, now 91.
    ids = [f"acme/t{n:06d}" for n in range(FOOTPRINT_TASKS)]
    assert _bytes_per_task(ids, lambda n: at(n / 7)) < 120


def test_only_tasks_whose_id_does_not_name_their_tenant_are_recorded() -> None:
    firing = Firing(resend_seconds=5)
    firing.track("acme/a", "acme", 0, at(1))
    firing.track("b", "acme", 0, at(1))  # no tenant in the id
    firing.track("acme/c", "other", 0, at(1))  # a tenant the id does not name (an old state)
    firing.restore("d", "acme", 1, at(2))
    assert firing._tenants == {"b": "acme", "acme/c": "other", "d": "acme"}
    assert firing._tenants["b"] is firing._tenants["d"]  # one string per tenant
    assert firing.take_due(0, at(5)) == [("acme/a", "acme"), ("acme/c", "other"), ("b", "acme")]
    firing.track("d", "acme", 1, None)
    assert firing._tenants == {} and len(firing) == 0


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from("abcdefgh"), st.one_of(st.none(), st.integers(0, 30))),
        st.tuples(st.just("pop"), st.integers(0, 30), st.integers(1, 4)),
        st.tuples(st.just("forget"), st.sampled_from("abcdefgh"), st.none()),
    ),
    max_size=120,
)


@given(_OPS, st.integers(0, 30), st.integers(0, 30))
def test_every_operation_agrees_with_a_plain_dict(ops: list[tuple[str, object, object]], after: int, now: int) -> None:
    # Buckets of tasks sharing a wakeup, lazy deletion, partial pops at a limit and compaction
    # behave as the dict they stand for: earliest first, ties in task-id order (as the tuple
    # heap popped them).
    index = DueIndex()
    model: dict[str, datetime] = {}
    for op, a, b in ops:
        if op == "set":
            assert isinstance(a, str) and (b is None or isinstance(b, int))
            index.set(a, None if b is None else at(b))
            if b is None:
                model.pop(a, None)
            else:
                model[a] = at(b)
        elif op == "forget":
            assert isinstance(a, str)
            index.forget([a])
            model.pop(a, None)
        else:
            assert isinstance(a, int) and isinstance(b, int)
            expected = sorted((w, t) for t, w in model.items() if w <= at(a))[:b]
            assert index.pop_due(at(a), limit=b) == [(t, w) for w, t in expected]
            for _, t in expected:
                del model[t]
        assert len(index) == len(model)
        assert index.next_time() == min(model.values(), default=None)
        assert all(index.get(t) == w for t, w in model.items())
    live = any(at(after) < w <= at(now) for w in model.values())
    assert index.due_after(at(after), at(now), budget=10_000) == live
