"""Redelivery and replay change nothing: every view ends identical to applying each event once."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from projections import apply
from projections.apply import Positioned, apply_events
from projections.read import CollectionNames
from tests.projections.history import dump, full_history, positioned

Db = AsyncDatabase[dict[str, Any]]


def interleaved_log() -> list[Positioned]:
    """Three tasks of two tenants over two partitions, interleaved as a broker would deliver them."""
    p0 = positioned(full_history("a", "acme").events, 0)
    b = full_history("b", "globex").events
    c = full_history("c", "acme").events
    p1 = positioned([e for pair in zip(b, c, strict=True) for e in pair], 1)
    merged: list[Positioned] = []
    for i in range(max(len(p0), len(p1))):
        merged.extend(p0[i : i + 1])
        merged.extend(p1[i : i + 1])
    return merged


async def test_every_event_twice_equals_once(mongo_db: Db) -> None:
    log = interleaved_log()
    once, twice = CollectionNames().with_suffix("_once"), CollectionNames().with_suffix("_twice")
    await apply_events(mongo_db, once, log)
    for item in log:
        await apply_events(mongo_db, twice, [item])
        await apply_events(mongo_db, twice, [item])
    assert await dump(mongo_db, twice) == await dump(mongo_db, once)


async def test_a_whole_batch_applied_again_equals_once(mongo_db: Db) -> None:
    log = interleaved_log()
    once, again = CollectionNames().with_suffix("_once"), CollectionNames().with_suffix("_again")
    await apply_events(mongo_db, once, log)
    await apply_events(mongo_db, again, log)
    await apply_events(mongo_db, again, log)
    assert await dump(mongo_db, again) == await dump(mongo_db, once)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_shuffled_redelivery_of_old_events_changes_nothing(mongo_db: Db, seed: int) -> None:
    rng = random.Random(seed)
    log = interleaved_log()
    once, noisy = CollectionNames().with_suffix("_once"), CollectionNames().with_suffix("_noisy")
    await apply_events(mongo_db, once, log)
    done = 0
    while done < len(log):
        size = rng.randint(1, 9)
        chunk = log[done : done + size]
        await apply_events(mongo_db, noisy, chunk)
        done += len(chunk)
        # At-least-once: any already-applied events may come again, in any order.
        old = rng.sample(log[:done], k=min(done, rng.randint(1, 12)))
        await apply_events(mongo_db, noisy, old)
    assert await dump(mongo_db, noisy) == await dump(mongo_db, once)


async def test_crash_between_views_then_redelivery_counts_once(mongo_db: Db) -> None:
    """Stats were written but the other views were not (crash), then the batch comes again."""
    from projections import apply as apply_module
    from projections.views import project

    log = interleaved_log()
    once, crashed = CollectionNames().with_suffix("_once"), CollectionNames().with_suffix("_crashed")
    await apply_events(mongo_db, once, log)
    half = len(log) // 2
    await apply_events(mongo_db, crashed, log[:half])
    facts = await apply_module.load_facts(mongo_db[crashed.tasks], {i.event.task_id for i in log[half:]})
    ops = project(((i.event, i.partition, i.offset) for i in log[half:]), facts)
    await apply_module.write_ops(mongo_db[crashed.stats], ops.stats)  # ... and the process dies here
    await apply_events(mongo_db, crashed, log[half:])
    assert await dump(mongo_db, crashed) == await dump(mongo_db, once)


@pytest.mark.parametrize("on_server", [True, False])
async def test_guards_checked_here_or_on_the_server_give_the_same_views(mongo_db: Db, on_server: bool) -> None:
    """Both ways of guarding writes (see ``guards_on_server``) yield the same views, redelivery included."""
    log = interleaved_log()
    reference, other = CollectionNames().with_suffix("_ref"), CollectionNames().with_suffix("_other")
    await apply_events(mongo_db, reference, log)
    apply._GUARDS_ON_SERVER[mongo_db.client] = on_server
    try:
        for item in log:
            await apply_events(mongo_db, other, [item])
            await apply_events(mongo_db, other, [item])
    finally:
        del apply._GUARDS_ON_SERVER[mongo_db.client]
    assert await dump(mongo_db, other) == await dump(mongo_db, reference)


def test_guard_matching_follows_mongodb() -> None:
    assert apply.guard_matches({"version": 2}, {"version": {"$lt": 3}})
    assert not apply.guard_matches({"version": 3}, {"version": {"$lt": 3}})
    assert not apply.guard_matches({}, {"version": {"$lt": 3}}), "a missing field never matches $lt"
    assert apply.guard_matches({"started_at": None}, {"started_at": None})
    assert apply.guard_matches({}, {"started_at": None}), "None matches a missing field"
    assert not apply.guard_matches({"started_at": 5}, {"started_at": None})
    with pytest.raises(ValueError, match="unsupported guard"):
        apply.guard_matches({"version": 1}, {"version": {"$lte": 3}})
