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
import base64
import copy
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


def _not_unicode(value: Any) -> bool:
    """Whether ``value`` holds text (a key or a string, at any depth) that UTF-8 cannot encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_not_unicode(k) or _not_unicode(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_not_unicode(v) for v in value)
    return False


@schemathesis.check
def not_unicode_is_refused(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool:
    """A body holding text that is not Unicode is never accepted (it once was, with keys mangled)."""
    if _not_unicode(case.body) and 200 <= response.status_code < 300:
        raise AssertionError(f"a body holding a lone surrogate was answered {response.status_code}")
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    not_unicode_is_refused,
]

# The document does not depend on the deployment, so it is read at collection, from an app whose
# lifespan never runs; `live_app` checks that it serves the same document.
schema = schemathesis.openapi.from_dict(create_app(ApiSettings(jwt_hs256_secret=SECRET)).openapi())
# Cases of the fuzzing phase per operation; the examples and coverage phases add their own, finite, sets.
schema.config.generation.update(max_examples=25)

# Schemathesis never generates lone surrogates ("they cannot be encoded for the wire"), yet JSON
# spells them (`"\\ud800"`) and the API once answered them 500; nor integers past 64 bits, nor
# cursors other than the API's. These hooks mix such values into what it generates.
BAD_STRINGS = ["\ud800", "x\udfff", "\udc80\u00e9"]
BAD_INTEGERS = [2**63, -(2**63) - 1, 2**64, 10**30]
BAD_CURSORS = [
    base64.urlsafe_b64encode(raw).decode().rstrip("=")
    for raw in (
        b'{"k":"tasks:created_at","p":0,"x":{"v":9223372036854775808},"i":"t/1"}',
        b'{"k":"executions","p":0,"x":{"v":18446744073709551616},"i":"t/1"}',
        b'{"k":"tasks:name","p":0,"x":{"v":"\\ud800"},"i":"t/1"}',
        b'{"k":"tasks:next_run","p":0,"x":{"d":5},"i":null}',
        b'{"k":"occurrences:t","p":0,"x":{"d":"2026-01-01T00:00:00"},"i":"99999999999999999999"}',
    )
]
BAD_HEADERS = [("If-Match", '"\u00b2"'), ("If-Match", '"' + "9" * 5000 + '"'), ("Idempotency-Key", "caf\u00e9")]
CURSOR_LISTS = frozenset({"/v1/tasks", "/v1/tasks/{task_id}/executions", "/v1/tasks/{task_id}/occurrences"})

Spot = tuple[tuple[str | int, ...], str]
"""Where a value can be spoiled: its path in the body, and ``key``, ``string``, ``integer`` or
``entry`` (a new entry of an object: free-form ones such as ``params`` take it)."""


def _spots(value: Any, path: tuple[str | int, ...] = ()) -> list[Spot]:
    if isinstance(value, dict):
        found: list[Spot] = [((*path, "spoiled"), "entry")] + [((*path, k), "key") for k in value]
        for k, v in value.items():
            found += _spots(v, (*path, k))
        return found
    if isinstance(value, list):
        return [spot for i, v in enumerate(value) for spot in _spots(v, (*path, i))]
    if isinstance(value, str):
        return [(path, "string")]
    if isinstance(value, int) and not isinstance(value, bool):
        return [(path, "integer")]
    return []


def _spoiled(body: Any, spot: Spot, bad: Any) -> Any:
    body = copy.deepcopy(body)
    path, kind = spot
    if not path:
        return bad
    node = body
    for step in path[:-1]:
        node = node[step]
    last = path[-1]
    if kind == "entry":
        node[last] = bad
    elif kind == "key":
        node[str(last) + str(bad)] = node.pop(last)
    elif kind == "string":
        node[last] = str(node[last]) + str(bad)
    else:
        node[last] = bad
    return body


@schema.hook
def flatmap_body(ctx: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """The generated body, or the same with a lone surrogate in a key or string, or a huge integer."""
    spots = _spots(body)
    # Free-form objects (`params`, an HTTP `body`) take any key and value: a spoiled one there
    # reaches the command, where a lone surrogate used to fail; a typed field refuses it earlier.
    free = [spot for spot in spots if any(step in ("params", "body", "headers") for step in spot[0][:-1])]
    spots = free or spots
    if not spots:
        return st.just(body)
    spoiled = st.sampled_from(spots).flatmap(
        lambda spot: st.sampled_from(BAD_INTEGERS if spot[1] != "key" and spot[1] != "string" else BAD_STRINGS).map(
            lambda bad: _spoiled(body, spot, bad)
        )
    )
    return st.one_of(st.just(body), spoiled, spoiled)  # spoiled two times in three


@schema.hook
def flatmap_query(ctx: schemathesis.HookContext, query: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """The generated query, or the same with a malformed cursor where the operation takes one."""
    if ctx.operation is None or ctx.operation.method.upper() != "GET" or ctx.operation.path not in CURSOR_LISTS:
        return st.just(query)
    query = query or {}
    return st.one_of(st.just(query), st.sampled_from(BAD_CURSORS).map(lambda c: {**query, "cursor": c}))


@schema.hook
def flatmap_headers(ctx: schemathesis.HookContext, headers: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """The generated headers, or the same with an odd If-Match or Idempotency-Key."""
    spoiled = st.sampled_from(BAD_HEADERS).map(lambda pair: {**(headers or {}), pair[0]: pair[1]})
    return st.one_of(st.just(headers), spoiled)


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
