"""The benchmark runners keep working: a short run of each, checking counts, never timings."""

from __future__ import annotations

import pytest

from tests.bench import lateness, peer_apscheduler
from tests.conftest import Infra

pytestmark = pytest.mark.slow


async def test_lateness_runner_counts_every_slot_once(infra: Infra) -> None:
    result = await lateness.run(infra.bootstrap, infra.mongo_url, 20, 1.0, 4.0, 3.0, False, True)
    assert (result.expected, result.missed, result.doubled) == (80, 0, 0)
    assert result.dispatched == 80
    assert result.rss_peak_mb > 0


async def test_apscheduler_peer_runner_counts_every_slot_once() -> None:
    result = await peer_apscheduler.run("sqlite", 20, 1.0, 4.0, 2.0, True)
    assert (result.expected, result.missed, result.doubled) == (80, 0, 0)
