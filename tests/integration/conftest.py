"""Fixtures shared by the end-to-end modules: one worker process per module, on the module's
own topic prefix, and per test a bus (commands in, events out) and an HTTP target.

A module defines ``prefix`` (module scope: its topic prefix) and asks for ``bus``, ``worker``
or ``target``. It overrides ``worker_settings`` to configure its worker (a fence, an
allow-list) and ``bus_follows`` to follow more topics than events and outcomes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.conftest import Infra
from tests.integration.harness import Bus, HttpTarget, WorkerProc, ready_bus, running_worker, worker_env

_ready: set[str] = set()
"""Prefixes whose worker has applied a command: the bus waits for a worker once per module."""


@pytest.fixture(scope="module")
def worker_settings() -> dict[str, str]:
    """Environment of the module's worker on top of :func:`worker_env`'s test defaults."""
    return {}


@pytest.fixture(scope="module")
def worker(
    infra: Infra, prefix: str, worker_settings: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProc]:
    """The module's worker process on ``prefix``, started once for all of the module's tests."""
    tmp = tmp_path_factory.mktemp("worker")
    env = worker_env(infra.bootstrap, infra.mongo_url, prefix, tmp / "data", **worker_settings)
    with running_worker(env, tmp, f"{prefix}-w1") as proc:
        yield proc


@pytest.fixture
def bus_follows() -> tuple[str, ...]:
    """The topics the ``bus`` follows from their beginning."""
    return ("task-events", "outcomes")


@pytest.fixture
async def bus(infra: Infra, prefix: str, worker: WorkerProc, bus_follows: tuple[str, ...]) -> AsyncIterator[Bus]:
    """A bus on the module's prefix, returned once the module's worker applies commands."""
    # The worker lives as long as the module: waiting for it once (a probe task) is enough, and
    # later tests then measure scheduling, not start-up.
    b = await ready_bus(infra.bootstrap, prefix, wait=prefix not in _ready, follow=bus_follows)
    _ready.add(prefix)
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
async def target() -> AsyncIterator[HttpTarget]:
    """An HTTP endpoint on this machine that records the requests it gets."""
    t = await HttpTarget().start()
    try:
        yield t
    finally:
        await t.stop()
