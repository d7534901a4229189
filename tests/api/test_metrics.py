"""``/metrics``: labels from bounded sets whatever clients send; where it is served, and to whom."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import METHODS, UNMATCHED
from tests.api.conftest import Keys, Running, Stack, _running, auth, new_tenant, settings_for


@asynccontextmanager
async def api_with(stack: Stack, keys: Keys, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An API app of the session's deployment with some settings changed."""
    async for running in _running(settings_for(stack, keys, **overrides)):
        yield running.http


def _labels(text: str, metric: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == metric
    ]


async def test_labels_are_bounded_whatever_clients_send(cold_api: Running) -> None:
    """Regression (issue 11, item 7): every method sent without a token was a new label value."""
    http = cold_api.http
    templates = set(cold_api.app.openapi()["paths"])
    for n in range(40):
        method = f"X{uuid.uuid4().hex[:8].upper()}"
        await http.request(method, f"/v1/tasks/{uuid.uuid4()}")  # no token
        await http.request(method, "/metrics")
        await http.get(f"/no/such/path/{n}")
        await http.get(f"/v1/tasks/{uuid.uuid4()}", headers=auth(new_tenant(), ["viewer"]))
    await http.request("get", "/healthz")  # lower case is the same method
    text = (await http.get("/metrics")).text
    requests = _labels(text, "scheduler_api_requests_total")
    assert {labels["method"] for labels in requests} <= METHODS | {"other"}, requests
    assert "other" in {labels["method"] for labels in requests}
    routes = {labels["route"] for labels in requests}
    assert routes <= templates | {UNMATCHED}, routes
    assert {"/v1/tasks/{task_id}", UNMATCHED} <= routes
    assert all(labels["status"].isdigit() and len(labels["status"]) == 3 for labels in requests)
    # 160 requests of 80 methods and 80 paths: a handful of series, not hundreds.
    assert len(requests) <= 12, requests
    latency = _labels(text, "scheduler_api_request_duration_seconds_count")
    assert {labels["method"] for labels in latency} <= METHODS | {"other"}


async def test_the_metrics_endpoint_can_be_moved_protected_or_turned_off(stack: Stack, keys: Keys) -> None:
    async with api_with(stack, keys, metrics_path="/internal/metrics") as http:
        assert (await http.get("/metrics")).status_code == 404
        r = await http.get("/internal/metrics")
        assert r.status_code == 200 and "scheduler_api_requests_total" in r.text
        # The route label is the moved path, like any route template.
        assert 'route="/internal/metrics"' in (await http.get("/internal/metrics")).text
    async with api_with(stack, keys, metrics_path="") as http:
        assert (await http.get("/metrics")).status_code == 404
        assert "/metrics" not in (await http.get("/openapi.json")).json()["paths"]
    token = "scrape-token-" + uuid.uuid4().hex
    async with api_with(stack, keys, metrics_token=token) as http:
        r = await http.get("/metrics")
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json", r.text
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        for wrong in (f"Bearer {token}x", token, f"Basic {token}", "Bearer " + token[:-1]):
            assert (await http.get("/metrics", headers={"Authorization": wrong})).status_code == 401
        # A user's JWT is not the scrape token either.
        assert (await http.get("/metrics", headers=auth(new_tenant()))).status_code == 401
        r = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "scheduler_api_requests_total" in r.text
