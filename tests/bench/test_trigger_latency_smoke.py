"""The trigger latency runner keeps working: a short run, checking counts, never timings."""

from __future__ import annotations

import pytest

from tests.bench import trigger_latency
from tests.conftest import Infra

pytestmark = pytest.mark.slow


async def test_trigger_latency_runner_runs_every_event_once(infra: Infra) -> None:
    result = await trigger_latency.run(infra.bootstrap, infra.mongo_url, events=20, tasks=2, rate=50)
    assert (result.runs, result.doubled) == (20, 0)
