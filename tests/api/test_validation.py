"""Invalid input is a 422 (or 413) problem naming the field; no input produces a 500."""

from __future__ import annotations

import json
import random
import string
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.api.conftest import Running, auth, new_tenant

GOOD: dict[str, Any] = {
    "name": "ok",
    "schedule": {"kind": "cron", "expression": "*/5 * * * *", "timezone": "UTC"},
    "work": {"kind": "handler", "name": "noop"},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(GOOD))
    node = body
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return body


CASES: list[tuple[str, dict[str, Any], str]] = [
    ("bad cron", _with("schedule.expression", "61 * * * *"), "definition.schedule.expression"),
    ("cron with too few fields", _with("schedule.expression", "* *"), "definition.schedule.expression"),
    ("unknown time zone", _with("schedule.timezone", "Mars/Olympus_Mons"), "definition.schedule.timezone"),
    ("name of the wrong type", _with("name", 123), "definition.name"),
    ("empty name", _with("name", ""), "definition.name"),
    ("unknown schedule kind", _with("schedule", {"kind": "lunar"}), "definition.schedule"),
    ("interval of the wrong type", _with("schedule", {"kind": "interval", "every_seconds": "often"}),
     "definition.schedule.every_seconds"),
    ("sub-second interval", _with("schedule", {"kind": "interval", "every_seconds": 0.5}),
     "definition.schedule.every_seconds"),
    ("naive start_at", _with("start_at", "2030-01-01T00:00:00"), "definition.start_at"),
    ("end before start", {**GOOD, "start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"},
     "definition.end_at"),
    ("retry attempts out of range", _with("retry", {"max_attempts": 0}), "definition.retry.max_attempts"),
    ("http url without scheme", _with("work", {"kind": "http", "url": "example.com"}), "definition.work.url"),
    ("tags of the wrong type", _with("tags", "a,b"), "definition.tags"),
    ("unknown field", {**GOOD, "colour": "blue"}, "definition.colour"),
    ("missing work", {k: v for k, v in GOOD.items() if k != "work"}, "definition.work"),
]  # fmt: skip


@pytest.fixture
async def http(cold_api: Running) -> AsyncIterator[Any]:
    yield cold_api.http


@pytest.mark.parametrize(("body", "field"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
async def test_invalid_definitions_name_the_field(http: Any, body: dict[str, Any], field: str) -> None:
    tenant = new_tenant()
    for method, url in (("POST", "/v1/tasks"), ("PUT", "/v1/tasks/00000000-0000-4000-8000-000000000000")):
        r = await http.request(method, url, json=body, headers=auth(tenant))
        assert r.status_code == 422, (method, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["type"] == "/problems/validation" and problem["status"] == 422
        assert field in [e["field"] for e in problem["errors"]], problem
        assert all(e["message"] for e in problem["errors"])


async def test_other_invalid_requests_name_the_field(http: Any) -> None:
    headers = auth(new_tenant())
    task = "/v1/tasks/00000000-0000-4000-8000-000000000000"
    cases: list[tuple[str, str, dict[str, Any], Any, str]] = [
        ("GET", "/v1/tasks?limit=0", {}, None, "limit"),
        ("GET", "/v1/tasks?limit=201", {}, None, "limit"),
        ("GET", "/v1/tasks?limit=ten", {}, None, "limit"),
        ("GET", "/v1/tasks?sort=colour", {}, None, "sort"),
        ("GET", "/v1/tasks?status=sleeping", {}, None, "status"),
        ("GET", "/v1/tasks?cursor=not-a-cursor", {}, None, "cursor"),
        ("POST", "/v1/tasks?wait=31", {}, GOOD, "wait"),
        ("POST", "/v1/tasks?wait=-1", {}, GOOD, "wait"),
        ("POST", "/v1/tasks", {"Idempotency-Key": "has spaces"}, GOOD, "Idempotency-Key"),
        ("PUT", task, {"If-Match": "revision-three"}, GOOD, "If-Match"),
        ("POST", f"{task}/pause", {}, {"note": 5}, "note"),
        ("POST", f"{task}/pause", {}, {"reason": "x"}, "reason"),
        ("POST", f"{task}/trigger", {}, {"priority": "urgent"}, "priority"),
        ("POST", f"{task}/trigger", {}, {"params": [1, 2]}, "params"),
        ("POST", f"{task}/trigger", {}, {"trigger_id": ""}, "trigger_id"),
        ("GET", f"{task}/next-fire-times?n=1000", {}, None, "n"),
    ]
    for method, url, extra, body, field in cases:
        r = await http.request(method, url, json=body, headers={**headers, **extra})
        assert r.status_code == 422, (method, url, r.status_code, r.text)
        fields = [e["field"] for e in r.json()["errors"]]
        assert field in fields, (url, fields)


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


async def test_params_the_views_cannot_store_name_the_field(http: Any) -> None:
    """Params are free JSON, but only what the commands topic and the views carry is accepted."""
    headers = auth(new_tenant())
    cases: list[tuple[Any, str]] = [
        ({"n": 2**63}, "definition.params.n"),
        ({"n": [1, -(2**63) - 1]}, "definition.params.n.1"),
        ({"a.b": 1}, "definition.params"),
        ({"q": {"$gt": 1}}, "definition.params.q"),
        ({"a\x00": 1}, "definition.params"),
        ({"m": [1, [2]]}, "definition.params.m.1"),
        (_nested(100), "definition.params" + ".a" * 62),
    ]
    for params, field in cases:
        r = await http.post("/v1/tasks", json={**GOOD, "params": params}, headers=headers)
        assert r.status_code == 422, (params, r.text)
        assert [e["field"] for e in r.json()["errors"]] == [field], r.text
    for params in ({"n": 2**63 - 1, "m": -(2**63)}, {"": [1, {"a": [2]}], "s": "a.b$"}, _nested(62)):
        r = await http.post("/v1/tasks", json={**GOOD, "params": params}, headers=headers)
        assert r.status_code == 202, (params, r.text)


async def test_malformed_json_and_oversized_bodies(http: Any) -> None:
    headers = {**auth(new_tenant()), "Content-Type": "application/json"}
    r = await http.post("/v1/tasks", content=b'{"name": "x", ', headers=headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body", r.text
    r = await http.post("/v1/tasks", content=b'{"name": "\xff"}', headers=headers)  # not UTF-8: not even text
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", r.text
    huge = {**GOOD, "params": {"blob": "x" * (300 * 1024)}}
    r = await http.post("/v1/tasks", json=huge, headers=headers)
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/problem+json"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed, then cut off
        yield b'{"name": "x", "params": {"blob": "'
        for _ in range(100):
            yield b"y" * 8192
        yield b'"}}'

    r = await http.post("/v1/tasks", content=chunks(), headers=headers)
    assert r.status_code == 413, r.text
    r = await http.get("/v1/nothing-here", headers=headers)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    r = await http.patch("/v1/tasks", headers=headers)
    assert r.status_code == 405 and r.headers["content-type"] == "application/problem+json"


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 2**63, 1e308, -0.5, 3600, 10**30])
    if choice == 3:
        return "".join(rng.choice(string.printable + "\u00e9\u2603\U0001f600\x00") for _ in range(rng.randrange(12)))
    if choice == 4:
        return rng.choice(["cron", "interval", "once", "http", "handler", "kafka", "2030-01-01T00:00:00Z", "* * * * *"])
    if choice == 5:
        return rng.choice(["UTC", "Europe/London", "../../etc/passwd", "", "noop", "http://x", "9999-99-99"])
    if choice == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["name", "schedule", "work", "kind", "expression", "timezone", "every_seconds", "at", "url", "retry",
            "tags", "params", "note", "trigger_id", "priority", "reason", "start_at", "end_at", "max_runs"]  # fmt: skip
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def _mutated(rng: random.Random) -> Any:
    body = json.loads(json.dumps(GOOD))
    for _ in range(rng.randrange(1, 4)):
        node = body
        path = rng.choice([["name"], ["schedule"], ["schedule", "expression"], ["schedule", "timezone"], ["work"],
                           ["work", "name"], ["retry"], ["max_runs"], ["start_at"], ["jitter_seconds"]])  # fmt: skip
        for p in path[:-1]:
            node = node.setdefault(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node[path[-1]] = _random_json(rng)
    return body


async def test_fuzz_no_request_is_a_500(http: Any) -> None:
    rng = random.Random(20240611)
    tenant = new_tenant()
    task = "00000000-0000-4000-8000-000000000000"
    routes = [
        ("POST", "/v1/tasks"),
        ("PUT", f"/v1/tasks/{task}"),
        ("POST", f"/v1/tasks/{task}/pause"),
        ("POST", f"/v1/tasks/{task}/trigger"),
        ("POST", f"/v1/executions/{task}/cancel"),
        ("GET", "/v1/tasks"),
        ("GET", f"/v1/tasks/{task}/next-fire-times"),
    ]
    queries = ["", "?wait=abc", "?wait=0", "?limit=-5", "?cursor=%00%ff", "?sort=name&cursor=eyJrIjoxfQ", "?n=0",
               "?status=active&type=http&tag=%F0%9F%98%80"]  # fmt: skip
    statuses: dict[int, int] = {}
    for i in range(400):
        method, url = rng.choice(routes)
        url += rng.choice(queries)
        headers = auth(tenant, ["viewer"]) if i % 7 == 0 else auth(tenant, ["admin"])
        if rng.random() < 0.2:
            headers["If-Match"] = rng.choice(['"1"', 'W/"2"', "*", "x", '"-1"', '"99999999999999999999"'])
        if rng.random() < 0.3:
            content = json.dumps(_random_json(rng)).encode()
        elif rng.random() < 0.1:
            content = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        else:
            content = json.dumps(_mutated(rng)).encode()
        r = await http.request(method, url, content=content, headers={**headers, "Content-Type": "application/json"})
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (method, url, content[:300], r.status_code, r.text)
        if r.status_code >= 400:
            assert r.headers["content-type"] == "application/problem+json", r.text
            assert r.json()["status"] == r.status_code
    # The fuzz reached validation, authorisation and lookups, not just one of them.
    print("fuzz statuses:", sorted(statuses.items()))
    assert {403, 404, 422} <= set(statuses), statuses
