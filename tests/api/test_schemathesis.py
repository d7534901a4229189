"""The OpenAPI schema is the contract: schemathesis drives every operation and checks each answer.

Stateless property-based tests, one per operation (schemathesis' examples, coverage and fuzzing
phases), sent over HTTP-level ASGI to an app on the session's worker and projector: no 500, and
every status code, content type and body is one the schema declares. Schemathesis' ASGI client
runs the app's lifespan, so its Kafka producer and Mongo client are real. Before each operation
the tenant gets fresh tasks and an execution, and about half the generated ids are theirs, so
the answers about existing tasks are checked too, not only the 404s of made-up ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.settings import ApiSettings
from tests.api.conftest import SECRET, Keys, Running, Stack, auth, new_tenant, settings_for

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# The document does not depend on the deployment, so it is read at collection, from an app whose
# lifespan never runs; `live_app` checks that it serves the same document.
schema = schemathesis.openapi.from_dict(create_app(ApiSettings(jwt_hs256_secret=SECRET)).openapi())
# Cases of the fuzzing phase per operation; the examples and coverage phases add their own, finite, sets.
schema.config.generation.update(max_examples=25)

SEEDS: dict[str, list[str]] = {}
"""Ids of the current test's seeded tasks and execution, by path parameter name (see ``seeded``)."""


@schema.hook
def flatmap_path_parameters(
    ctx: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """The generated path parameters, or the same with a seeded id."""
    params = path_parameters or {}
    name = next((n for n in SEEDS if n in params), None)
    if name is None:
        return st.just(path_parameters)
    seeded = st.sampled_from(SEEDS[name]).map(lambda id_: {**params, name: id_})
    return st.one_of(st.just(path_parameters), seeded)


@pytest.fixture(scope="module")
def admin() -> dict[str, str]:
    """Every request is an admin of one tenant."""
    return auth(new_tenant(), ["admin"], sub="schemathesis")


@pytest.fixture
def live_app(warm: Stack, keys: Keys) -> FastAPI:
    """An app on the warm stack; schemathesis enters its lifespan and leaves it after each test."""
    app = create_app(
        settings_for(
            warm,
            keys,
            # `?wait` may be generated up to 30 s: an outcome the views never show costs 2 s instead.
            max_wait_seconds=2.0,
            # The event stream closes itself after half a second, so its response ends like any other.
            sse_max_seconds=0.5,
            sse_heartbeat_seconds=0.2,
        )
    )
    assert app.openapi() == schema.raw_schema
    return app


@pytest.fixture
async def seeded(api: Running, warm: Stack, admin: dict[str, str]) -> AsyncIterator[None]:
    """Fresh tasks of the tenant: active (cron, bounded runs), paused, deleted, and triggered (an execution).

    Afterwards the worker and the projector must still be up: an accepted command they cannot
    handle would otherwise only show as the next tests' timeouts.
    """

    async def applied(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = await api.http.request(method, f"{url}?wait=20", json=body, headers=admin)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    noop = {"kind": "handler", "name": "noop"}
    cron = {"kind": "cron", "expression": "*/5 * * * *", "timezone": "Europe/Paris"}
    bodies: list[dict[str, Any]] = [
        {"name": "cron", "schedule": cron, "work": noop, "max_runs": 3, "tags": ["st"], "params": {"n": 1}},
        {"name": "paused", "schedule": {"kind": "interval", "every_seconds": 3600}, "work": noop},
        {"name": "deleted", "schedule": cron, "work": noop},
        {"name": "manual", "work": noop},
    ]
    ids = [r["task_id"] for r in await asyncio.gather(*(applied("POST", "/v1/tasks", b) for b in bodies))]
    *_, run = await asyncio.gather(
        applied("POST", f"/v1/tasks/{ids[1]}/pause", {"note": "seeded"}),
        applied("DELETE", f"/v1/tasks/{ids[2]}"),
        applied("POST", f"/v1/tasks/{ids[3]}/trigger", {"params": {"n": 2}}),
    )
    SEEDS.update(task_id=ids, execution_id=[run["execution_id"]])
    try:
        yield
    finally:
        SEEDS.clear()
    assert warm.worker.alive(), "the worker died:\n" + warm.worker.tail()
    assert warm.projector.poll() is None, "the projector died:\n" + (warm.log_dir / "projector.log").read_text()[-3000:]


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_operation_conforms(case: schemathesis.Case, live_app: FastAPI, admin: dict[str, str], seeded: None) -> None:
    case.call_and_validate(app=live_app, headers=admin, checks=CHECKS)
