"""The benchmark runners keep working: a short run of each, checking counts, never timings."""

from __future__ import annotations

import argparse
import socket

import pytest

from tests.bench import (
    compare,
    failover,
    inflight,
    lateness,
    peer_apscheduler,
    peer_dbscheduler,
    replay,
    scale,
    throughput,
)
from tests.conftest import Infra

pytestmark = pytest.mark.slow


async def test_lateness_runner_counts_every_slot_once(infra: Infra) -> None:
    result = await lateness.run(infra.bootstrap, infra.mongo_url, 20, 1.0, 4.0, 3.0, False, True)
    assert (result.expected, result.missed, result.doubled) == (80, 0, 0)
    assert result.dispatched == 80
    assert result.rss_peak_mb > 0


async def test_failover_runner_counts_every_slot_once_through_a_kill(infra: Infra) -> None:
    result = await failover.run(infra.bootstrap, infra.mongo_url, 20, 1.0, 8.0, 32.0, 0.05, False, grace=5.0)
    assert result.expected >= 20 * 25
    assert (result.lost, result.doubled_slots, result.doubled_attempts, result.doubled_outcomes) == (0, 0, 0, 0)
    assert result.takeover_s == result.takeover_s, "the survivor never fired the killed worker's tasks"  # not NaN


async def test_apscheduler_peer_runner_counts_every_slot_once() -> None:
    result = await peer_apscheduler.run("sqlite", 20, 1.0, 4.0, 2.0, True)
    assert (result.expected, result.missed, result.doubled) == (80, 0, 0)


async def test_dbscheduler_peer_runner_counts_every_slot_once() -> None:
    # Builds the Java peer with Maven on first use and installs PostgreSQL where it may (CI).
    result = await peer_dbscheduler.run(20, 1.0, 4.0, 2.0, True)
    assert (result.expected, result.missed, result.doubled) == (80, 0, 0)
    assert result.dispatched == 80
    assert result.rss_peak_mb > 0


def test_postgres_cluster_is_stopped_and_removed_also_on_failure() -> None:
    with pytest.raises(RuntimeError, match="the run failed"), peer_dbscheduler.postgres_cluster() as cluster:
        with socket.create_connection(("127.0.0.1", cluster.port), timeout=5):
            pass  # it answers while the run lasts
        raise RuntimeError("the run failed")
    assert not cluster.directory.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", cluster.port), timeout=5).close()


def test_compare_runs_the_chosen_peers_in_table_order() -> None:
    assert compare._peers("dbscheduler, ours") == ["ours", "dbscheduler"]
    assert compare._peers("aps-memory,ours-split,ours") == ["ours", "ours-split", "aps-memory"]
    with pytest.raises(argparse.ArgumentTypeError, match="choose from"):
        compare._peers("quartz")


async def test_scale_runner_restarts_over_every_task(infra: Infra) -> None:
    result = await scale.run(infra.bootstrap, infra.mongo_url, 300, quiet=0)
    assert result.rss_mb > 0
    assert result.warm.rss_mb > 0 and result.cold.rss_mb > 0
    assert result.ingest_per_second > 0


async def test_inflight_runner_completes_every_execution_once(infra: Infra) -> None:
    result = await inflight.run(infra.bootstrap, infra.mongo_url, 40, 1.0)
    assert (result.succeeded, result.failed, result.repeated) == (40, 0, 0)
    assert 1 <= result.open_max <= 40


async def test_throughput_runner_sees_every_fire_through_to_the_views(infra: Infra) -> None:
    ceiling = await throughput.ceiling(infra.bootstrap, 2000, 100)
    assert ceiling.per_second > 0
    result = await throughput.end_to_end(infra.bootstrap, infra.mongo_url, 60, ceiling, straight_batch=100)
    assert (result.dispatched, result.completed, result.visible) == (60, 60, 60)
    # The drain written straight: each execution inserted once, an audit document per event.
    assert result.straight is not None and result.straight.seconds > 0
    assert result.straight.documents["executions insert"] == 60
    assert result.straight.documents["audit insert"] == result.straight.events


async def test_replay_runner_replays_every_event_it_produced(infra: Infra) -> None:
    result = await replay.run(infra.bootstrap, infra.mongo_url, 600, 20, quiet=True)
    assert result.applied == 600
    assert result.views["tasks"] == 20 and result.views["audit"] == 600
    assert result.rss_peak_mb > 0
