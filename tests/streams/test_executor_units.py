"""Executor shells: weighted priority queues and the commit tracker (no broker needed)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streams.executor import METADATA_LIMIT, OffsetTracker, WeightedQueues, decode_in_flight, encode_in_flight


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
    assert tracker.committable()[tp].offset == 10  # 10 still runs: a crash must redeliver it
    tracker.finished(tp, 10)
    assert tracker.committable() == {tp: OffsetAndMetadata(13, "")}


def test_a_successor_skips_what_finished_behind_the_oldest_unfinished_dispatch() -> None:
    tp = TopicPartition("dispatch.normal", 0)
    before = OffsetTracker()
    for offset in range(100, 2100):
        before.started(tp, offset)
    still_running = {100, 101, 555, 2099}
    for offset in range(100, 2100):
        if offset not in still_running:
            before.finished(tp, offset)
    [(committed_tp, committed)] = before.committable().items()
    assert committed_tp == tp and committed.offset == 100 and len(committed.metadata) <= METADATA_LIMIT

    after = OffsetTracker()
    after.resume(tp, committed)
    rerun = [offset for offset in range(100, 2200) if not after.finished_before(tp, offset)]
    # Only what was in flight at the crash, and what the last owner never fetched, runs again.
    assert rerun == [100, 101, 555, *range(2099, 2200)]


def test_metadata_that_does_not_fit_covers_less_and_never_skips_unfinished_work() -> None:
    tp = TopicPartition("dispatch.normal", 0)
    before = OffsetTracker()
    rng = random.Random(7)
    running = set(rng.sample(range(1, 400_000), 20_000)) | {0}
    for offset in range(0, 400_000):
        before.started(tp, offset)
        if offset not in running:
            before.finished(tp, offset)
    committed = before.committable()[tp]
    assert committed.offset == 0 and 0 < len(committed.metadata) <= METADATA_LIMIT
    after = OffsetTracker()
    after.resume(tp, committed)
    skipped = {offset for offset in range(400_000) if after.finished_before(tp, offset)}
    assert skipped and not skipped & running


def test_missing_or_foreign_metadata_skips_nothing() -> None:
    tp = TopicPartition("dispatch.normal", 0)
    for metadata in ("", "v1:x:y", "v1:20:!!!", "v9:20:eJwDAAAAAAE=", "v1:100000:eJwDAAAAAAE="):
        tracker = OffsetTracker()
        tracker.resume(tp, OffsetAndMetadata(10, metadata))
        assert not any(tracker.finished_before(tp, offset) for offset in range(0, 200)), metadata
    assert decode_in_flight(10, encode_in_flight(10, 12, {10})) is not None
