"""Secrets end to end: a task's ``Authorization`` header and sensitive params, through the real
broker, worker, projector and FerretDB. The clear value reaches the HTTP target and nothing else:
no topic's bytes, no view document, no API answer."""

from __future__ import annotations

import uuid
from typing import Any

import bson
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo import AsyncMongoClient

from api.commands import task_public
from api.routes.events import public_event
from schemas.secrets import MARKER
from tests.api.conftest import Running, Stack, _running, auth, new_tenant, settings_for
from tests.integration.harness import HttpTarget, until


async def _topic_bytes(stack: Stack) -> dict[str, bytes]:
    """Every message (key, value, headers) of every topic of the session's deployment, raw."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.infra.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()  # every topic, not only subscribed ones
        names = sorted(t for t in cluster.topics() if t.startswith(stack.prefix))
        parts = [TopicPartition(t, p) for t in names for p in cluster.partitions_for_topic(t) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        out: dict[str, bytearray] = {t: bytearray() for t in names}
        pending = {tp for tp in parts if end[tp] > 0}
        while pending:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    out[tp.topic] += (record.key or b"") + (record.value or b"")
                    for _, value in record.headers:
                        out[tp.topic] += value
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
        return {t: bytes(b) for t, b in out.items()}
    finally:
        await consumer.stop()


async def _view_documents(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """Every document of every collection of the session's database."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.infra.mongo_url)
    try:
        db = client[stack.database]
        return {name: await db[name].find({}).to_list() for name in await db.list_collection_names()}
    finally:
        await client.close()


async def test_a_secret_reaches_the_target_and_nothing_else(api: Running, warm: Stack) -> None:
    http, tenant = api.http, new_tenant()
    admin, viewer = auth(tenant, ["admin"]), auth(tenant, ["viewer"])
    mark = uuid.uuid4().hex
    header_secret = f"Bearer hdr-{mark}"
    param_secret = f"prm-{mark}"
    trigger_secret = f"trg-{mark}"
    target = await HttpTarget(echo_headers=True).start()
    answers: list[str] = []

    async def call(method: str, url: str, **kw: Any) -> httpx.Response:
        r = await http.request(method, url, **kw)
        answers.append(r.text)
        return r

    try:
        definition = {
            "name": "with-secrets",
            "work": {"kind": "http", "url": target.url, "headers": {"Authorization": header_secret, "X-Plain": "p"}},
            "params": {"token": param_secret, "region": "eu"},
            "sensitive_params": ["/token"],
        }
        r = await call("POST", "/v1/tasks?wait=20", json=definition, headers=admin)
        assert r.status_code == 200, r.text
        task_id = r.json()["task_id"]
        shown = r.json()["task"]["definition"]
        assert shown["work"]["headers"] == {"Authorization": MARKER, "X-Plain": "p"}
        assert shown["params"] == {"token": MARKER, "region": "eu"}

        # A run with a trigger-time override of the sensitive param.
        body = {"params": {"token": trigger_secret}}
        r = await call("POST", f"/v1/tasks/{task_id}/trigger?wait=20", json=body, headers=admin)
        assert r.status_code == 200, r.text
        first = r.json()["execution_id"]

        async def finished(execution_id: str) -> dict[str, Any] | None:
            r = await call("GET", f"/v1/executions/{execution_id}", headers=viewer)
            doc: dict[str, Any] = r.json()
            return doc if r.status_code == 200 and doc["status"] in ("succeeded", "failed") else None

        run = await until(lambda: finished(first), 30, "the first run")
        assert run["status"] == "succeeded", run
        assert run["params"] == {"token": MARKER, "region": "eu"}
        # The work still works: the target got the clear header.
        assert target.requests[-1]["headers"]["Authorization"] == header_secret
        # The target echoed it back; the outcome shows the marker instead.
        assert MARKER in run["result"]["body"] and mark not in str(run["result"])

        # GET-then-PUT: the marker sent back keeps the stored secret.
        r = await call("GET", f"/v1/tasks/{task_id}", headers=viewer)
        shown = r.json()["definition"]
        r = await call(
            "PUT",
            f"/v1/tasks/{task_id}?wait=20",
            json={**shown, "name": "renamed"},
            headers={**admin, "If-Match": '"1"'},
        )
        assert r.status_code == 200, r.text
        r = await call("POST", f"/v1/tasks/{task_id}/trigger?wait=20", headers=admin)
        second = r.json()["execution_id"]
        run = await until(lambda: finished(second), 30, "the second run")
        assert run["status"] == "succeeded", run
        assert target.requests[-1]["headers"]["Authorization"] == header_secret

        # Every way to read it back.
        await call("GET", f"/v1/tasks/{task_id}", headers=viewer)
        await call("GET", "/v1/tasks", headers=viewer)
        await call("GET", f"/v1/tasks/{task_id}/executions", headers=viewer)
        await call("GET", "/v1/stats", headers=viewer)

        # The audit says the secrets were set, then kept, without their values.
        docs = await _view_documents(warm)
        audit = sorted(
            (
                d
                for d in docs["audit"]
                if d["type"] in ("TaskCreated", "TaskUpdated") and d["task_id"].endswith(task_id)
            ),
            key=lambda d: d["sequence"],
        )
        assert [d["secrets"] for d in audit] == [
            [{"field": "/params/token", "change": "set"}, {"field": "/work/headers/Authorization", "change": "set"}],
            [{"field": "/params/token", "change": "kept"}, {"field": "/work/headers/Authorization", "change": "kept"}],
        ]

        # Nowhere else: not in any API answer, any view document, or any topic's bytes.
        leaks = [a for a in answers if mark in a]
        assert leaks == [], leaks
        for name, documents in docs.items():
            for doc in documents:
                assert mark.encode() not in bson.encode(doc), (name, doc)
        topics = await _topic_bytes(warm)
        # The scans see the task (so they would see the secret): its id is in the topics and views.
        assert task_id.encode() in topics[f"{warm.prefix}commands"]
        assert task_id.encode() in topics[f"{warm.prefix}task-events"]
        changelogs = [t for t in topics if t.endswith("-changelog")]
        assert changelogs and any(task_id.encode() in topics[t] for t in changelogs), sorted(topics)
        assert any(d["_id"].endswith(task_id) for d in docs["tasks"])
        assert [t for t, data in topics.items() if mark.encode() in data] == []
    finally:
        await target.stop()


async def test_without_a_key_a_sensitive_value_is_refused_and_never_echoed(warm: Stack, keys: Any) -> None:
    tenant, mark = new_tenant(), uuid.uuid4().hex
    async for running in _running(settings_for(warm, keys, secret_keys={})):
        definition = {
            "name": "no-key",
            "work": {"kind": "http", "url": "https://example.com/", "headers": {"Authorization": f"Bearer {mark}"}},
        }
        r = await running.http.post("/v1/tasks", json=definition, headers=auth(tenant))
        assert r.status_code == 422, r.text
        problem = r.json()
        assert problem["errors"] == [
            {
                "field": "definition.work.headers.Authorization",
                "message": problem["errors"][0]["message"],
                "pointer": "#/work/headers/Authorization",
            }
        ]
        assert "no encryption key" in problem["detail"] and mark not in r.text
        # Refused before anything is sent: the task does not exist.
        r = await running.http.get("/v1/tasks", headers=auth(tenant, ["viewer"]))
        assert r.json()["items"] == []


async def test_invalid_requests_do_not_echo_a_secret(api: Running) -> None:
    tenant, mark = new_tenant(), uuid.uuid4().hex
    definition = {
        "name": "bad",
        "schedule": {"kind": "cron", "expression": "61 * * * *"},
        "work": {"kind": "http", "url": "https://example.com/", "headers": {"Cookie": f"s={mark}", "X-N": 1}},
    }
    r = await api.http.post("/v1/tasks", json=definition, headers=auth(tenant))
    assert r.status_code == 422 and mark not in r.text, r.text
    # A copied token is refused (nobody is shown tokens): only the clear value or *** are accepted.
    copied = {**definition, "schedule": None, "work": {**definition["work"], "headers": {"Cookie": "enc:v1:x:AAAA"}}}
    r = await api.http.post("/v1/tasks", json=copied, headers=auth(tenant))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "definition.work.headers.Cookie", r.text


def test_the_event_stream_shows_secrets_as_the_marker() -> None:
    data = {"tenant": "t", "task_id": "t/1", "work": {"headers": {"Authorization": "enc:v1:k:AAAA"}}}
    assert public_event(data, "t") == {"task_id": "1", "work": {"headers": {"Authorization": MARKER}}}
    clear = {"task_id": "t/1", "definition": {"work": {"headers": {"cookie": "c", "X": "x"}}}}
    assert public_event(clear, "t")["definition"]["work"]["headers"] == {"cookie": MARKER, "X": "x"}


def test_a_task_view_holding_a_clear_secret_is_shown_masked() -> None:
    doc = {
        "_id": "t/1",
        "name": "n",
        "type": "http",
        "status": "active",
        "revision": 1,
        "version": 1,
        "definition": {"name": "n", "work": {"kind": "http", "url": "https://x.test/", "headers": {"X-Api-Key": "k"}}},
    }
    assert task_public(doc, "t").definition.work.headers == {"X-Api-Key": MARKER}  # type: ignore[union-attr]
