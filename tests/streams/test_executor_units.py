"""Executor shells: weighted priority queues and the commit tracker (no broker needed)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiokafka import TopicPartition

from streams.executor import OffsetTracker, WeightedQueues


def test_weighted_queues_share_slots_6_3_1_without_starving_low() -> None:
    queues = WeightedQueues((6, 3, 1))
    for i in range(1000):
        for p in ("high", "normal", "low"):
            queues.push(p, (p, i))  # type: ignore[arg-type]
    served: Counter[str] = Counter()
    for _ in range(1000):
        record: Any = queues.pop()
        served[record[0]] += 1
    assert served == {"high": 600, "normal": 300, "low": 100}


def test_an_idle_class_gives_its_share_to_the_others() -> None:
    queues = WeightedQueues((6, 3, 1))
    for i in range(10):
        queues.push("low", ("low", i))  # type: ignore[arg-type]
    assert [queues.pop() for _ in range(10)] == [("low", i) for i in range(10)]
    assert queues.pop() is None


def test_commits_never_pass_unfinished_work() -> None:
    tp = TopicPartition("dispatch.normal", 0)
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.started(tp, offset)
    tracker.finished(tp, 11)
    tracker.finished(tp, 12)
    assert tracker.committable() == {tp: 10}  # 10 still runs: a crash must redeliver it
    tracker.finished(tp, 10)
    assert tracker.committable() == {tp: 13}
