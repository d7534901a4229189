"""Invalid input is a 422 (or 413) problem naming the field; no input produces a 500."""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import AsyncIterator
from typing import Any

import pytest

from api.commands import check_idempotency_key
from api.errors import Unprocessable
from api.queries import Views
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
        # A lone surrogate too: json.dumps writes it as the escape "\ud800", which Python's reader takes.
        alphabet = string.printable + "\u00e9\u2603\U0001f600\x00\ud800\udfff"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
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
    huge = _cursor(MALFORMED_CURSORS[0][1])  # an integer of 2^63
    queries = ["", "?wait=abc", "?wait=0", "?limit=-5", "?cursor=%00%ff", "?sort=name&cursor=eyJrIjoxfQ", "?n=0",
               "?status=active&type=http&tag=%F0%9F%98%80", f"?sort=name&cursor={huge}"]  # fmt: skip
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


# Request bodies as raw JSON text: `"\ud800"` is a lone surrogate escape, which Python's JSON
# reader turns into a string that neither orjson (the commands topic) nor BSON can encode.
SURROGATE = '"\\ud800"'
TASK_ID = "00000000-0000-4000-8000-000000000000"
NOOP_WORK = '"work": {"kind": "handler", "name": "noop"}'
SURROGATE_CASES: list[tuple[str, str]] = [
    (f'{{"name": {SURROGATE}, {NOOP_WORK}}}', "definition.name"),
    (f'{{"name": "n", {NOOP_WORK}, "params": {{"k": {SURROGATE}}}}}', "definition.params.k"),
    (f'{{"name": "n", {NOOP_WORK}, "params": {{{SURROGATE}: 1}}}}', "definition.params"),
    (f'{{"name": "n", {NOOP_WORK}, "params": {{"a": [{{"b": {{"c": {SURROGATE}}}}}]}}}}', "definition.params.a.0.b.c"),
    (f'{{"name": "n", "work": {{"kind": "http", "url": "https://example.com/", "body": {{"x": {SURROGATE}}}}}}}',
     "definition.work.body.x"),
    (f'{{"name": "n", {NOOP_WORK}, "tags": [{SURROGATE}]}}', "definition.tags.0"),
    (f'{{"name": "n", {NOOP_WORK}, "schedule": {{"kind": "cron", "expression": {SURROGATE}}}}}',
     "definition.schedule.expression"),
    (f'{{"name": "n", {NOOP_WORK}, "params": {{"x": Infinity}}}}', "definition.params.x"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field"), SURROGATE_CASES, ids=[c[1] for c in SURROGATE_CASES])
async def test_text_that_is_not_unicode_is_a_422_naming_the_field(http: Any, body: str, field: str) -> None:
    """Regression (issue 11, item 4): a lone surrogate anywhere in a body answered 500."""
    headers = {**auth(new_tenant()), "Content-Type": "application/json"}
    for method, url in (("POST", "/v1/tasks"), ("PUT", f"/v1/tasks/{TASK_ID}")):
        r = await http.request(method, url, content=body.encode(), headers=headers)
        if method == "PUT" and r.status_code == 404:
            continue  # the definition was valid JSON for the model: the missing task answers first
        assert r.status_code == 422, (method, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert field in [e["field"] for e in r.json()["errors"]], r.text
    # The same client goes on (through uvicorn, a 500 also closed the connection: see test_server).
    r = await http.post("/v1/tasks", json=GOOD, headers=headers)
    assert r.status_code == 202, r.text


async def test_command_bodies_that_are_not_unicode_name_the_field(api: Running) -> None:
    """Trigger params (values and keys), trigger id, pause note and cancel reason: 422, never 500."""
    headers = {**auth(new_tenant()), "Content-Type": "application/json"}
    r = await api.http.post("/v1/tasks?wait=20", json=GOOD, headers=headers)
    assert r.status_code == 200, r.text
    task = r.json()["task_id"]
    r = await api.http.post(f"/v1/tasks/{task}/trigger?wait=20", json={}, headers=headers)
    assert r.status_code == 200, r.text
    execution = r.json()["execution_id"]
    cases = [
        (f"/v1/tasks/{task}/trigger", f'{{"params": {{"key": {SURROGATE}}}}}', "params.key"),
        (f"/v1/tasks/{task}/trigger", f'{{"params": {{{SURROGATE}: 1}}}}', "params"),
        (f"/v1/tasks/{task}/trigger", f'{{"params": {{"deep": [1, {SURROGATE}]}}}}', "params.deep.1"),
        (f"/v1/tasks/{task}/trigger", f'{{"params": {{"deep": [1, {{"x": {SURROGATE}}}]}}}}', "params.deep.1.x"),
        (f"/v1/tasks/{task}/trigger", f'{{"trigger_id": {SURROGATE}}}', "trigger_id"),
        (f"/v1/tasks/{task}/trigger", '{"params": {"n": NaN}}', "params.n"),
        (f"/v1/tasks/{task}/pause", f'{{"note": {SURROGATE}}}', "note"),
        (f"/v1/executions/{execution}/cancel", f'{{"reason": {SURROGATE}}}', "reason"),
    ]
    for url, body, field in cases:
        r = await api.http.post(url, content=body.encode(), headers=headers)
        assert r.status_code == 422, (url, body, r.text)
        assert [e["field"] for e in r.json()["errors"]] == [field], (body, r.text)
        r = await api.http.get(f"/v1/tasks/{task}", headers=headers)
        assert r.status_code == 200, r.text


def _cursor(raw: bytes, kind: str = "tasks:name") -> str:
    return base64.urlsafe_b64encode(raw.replace(b"KIND", kind.encode())).decode().rstrip("=")


MALFORMED_CURSORS: list[tuple[str, bytes]] = [
    ("integer of 2^63", b'{"k":"KIND","p":0,"x":{"v":9223372036854775808},"i":"t/1"}'),
    ("integer of 2^64-1", b'{"k":"KIND","p":0,"x":{"v":18446744073709551615},"i":"t/1"}'),
    ("integer past 2^64", b'{"k":"KIND","p":0,"x":{"v":1' + b"0" * 30 + b'},"i":"t/1"}'),
    ("integer below -2^63", b'{"k":"KIND","p":0,"x":{"v":-9223372036854775809},"i":"t/1"}'),
    ("huge float", b'{"k":"KIND","p":0,"x":{"v":1e400},"i":"t/1"}'),
    ("lone surrogate", b'{"k":"KIND","p":0,"x":{"v":"\\ud800"},"i":"t/1"}'),
    ("id of the wrong type", b'{"k":"KIND","p":0,"x":{"v":"a"},"i":5}'),
    ("value of the wrong type", b'{"k":"KIND","p":0,"x":{"v":[1]},"i":"t/1"}'),
    ("position not an object", b'{"k":"KIND","p":0,"x":"a","i":"t/1"}'),
    ("date not a string", b'{"k":"KIND","p":0,"x":{"d":5},"i":"t/1"}'),
    ("phase a boolean", b'{"k":"KIND","p":true,"x":{"v":"a"},"i":"t/1"}'),
    ("extra field", b'{"k":"KIND","p":0,"x":{"v":"a"},"i":"t/1","$where":1}'),
    ("wrong kind", b'{"k":"other","p":0,"x":{"v":"a"},"i":"t/1"}'),
    ("not an object", b"[1, 2]"),
    ("not JSON", b"\xff\xfe"),
]


@pytest.mark.parametrize("raw", [c[1] for c in MALFORMED_CURSORS], ids=[c[0] for c in MALFORMED_CURSORS])
async def test_malformed_cursors_are_a_422_naming_the_cursor(http: Any, raw: bytes) -> None:
    """Regression (issue 11, item 4): a cursor holding an integer of 2^63 or more answered 500."""
    headers = auth(new_tenant())
    for sort in ("name", "created_at", "next_run"):
        r = await http.get("/v1/tasks", params={"sort": sort, "cursor": _cursor(raw, f"tasks:{sort}")}, headers=headers)
        assert r.status_code == 422, (sort, r.text)
        assert [e["field"] for e in r.json()["errors"]] == ["cursor"], r.text
        r = await http.get("/v1/tasks", params={"sort": sort}, headers=headers)
        assert r.status_code == 200, r.text
    for cursor in ("!!!!", "\u00e9t\u00e9", "a"):
        r = await http.get("/v1/tasks", params={"cursor": cursor}, headers=headers)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "cursor", r.text


async def test_cursors_of_every_list_survive_a_round_trip(api: Running) -> None:
    """Every list and sort: a cursor the API wrote is read back (nothing valid is now refused)."""
    headers = auth(new_tenant())
    ids = []
    # A yearly slot: a scheduled slot falling while the triggers run would add a missed entry
    # to the executions list (overlap "skip"), and the count below depends on the minute.
    yearly = {"kind": "cron", "expression": "0 0 1 1 *", "timezone": "UTC"}
    for n in range(3):
        r = await api.http.post(
            "/v1/tasks?wait=20", json={**GOOD, "name": f"t{n}", "schedule": yearly}, headers=headers
        )
        assert r.status_code == 200, r.text
        ids.append(r.json()["task_id"])
    for _ in range(3):
        r = await api.http.post(f"/v1/tasks/{ids[0]}/trigger?wait=20", json={}, headers=headers)
        assert r.status_code == 200, r.text
    lists = [f"/v1/tasks?sort={s}" for s in ("created_at", "name", "next_run")] + [f"/v1/tasks/{ids[0]}/executions"]
    for url in lists:
        seen: list[str] = []
        cursor = None
        while True:
            r = await api.http.get(url, params={"limit": 1, **({"cursor": cursor} if cursor else {})}, headers=headers)
            assert r.status_code == 200, (url, r.text)
            page = r.json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 3 and len(set(seen)) == 3, (url, seen)
    for _, raw in MALFORMED_CURSORS:  # the executions list's cursor is checked as strictly
        cursor = _cursor(raw, "executions")
        r = await api.http.get(f"/v1/tasks/{ids[0]}/executions", params={"cursor": cursor}, headers=headers)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "cursor", r.text


class _NoDatabase:
    """A database no lookup may reach: a malformed id must be refused before any query."""

    def __getitem__(self, name: str) -> Any:
        raise AssertionError(f"queried {name!r} for a malformed id")

    async def command(self, *args: Any) -> Any:
        raise AssertionError("queried the database for a malformed id")


@pytest.mark.parametrize("bad", ["id\n", "id\r\n", "\nid", "id\x00", "id\t"])
async def test_malformed_ids_and_keys_are_refused_in_full(bad: str) -> None:
    """Regression (issue 11, item 6): patterns ended in `$`, which also matches before a final newline."""
    views = Views(_NoDatabase())  # type: ignore[arg-type]
    assert await views.task("acme", bad) is None
    assert await views.execution("acme", bad) is None
    with pytest.raises(Unprocessable) as caught:
        check_idempotency_key("key" + bad)
    assert caught.value.errors and caught.value.errors[0].field == "Idempotency-Key"


async def test_headers_with_odd_digits_are_not_a_500(http: Any) -> None:
    """If-Match with a non-ASCII digit or thousands of digits, Content-Length with thousands: 500 before."""
    headers = auth(new_tenant())
    for tag in ('"\xb2"'.encode("latin-1"), b'"' + b"1" * 5000 + b'"', b'W/"\xd9\xa1"'):
        r = await http.put(f"/v1/tasks/{TASK_ID}", json=GOOD, headers={**headers, "If-Match": tag})  # type: ignore[dict-item]
        assert r.status_code == 422, (tag[:20], r.text)
        assert [e["field"] for e in r.json()["errors"]] == ["If-Match"], r.text
    r = await http.post("/v1/tasks", json=GOOD, headers={**headers, "Content-Length": "9" * 5000})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json", r.text
