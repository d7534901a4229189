"""Issue 13 through the API: ``POST /v1/executions/{id}/cancel`` reaches the work the session's
worker runs (a long HTTP request, an engine run), and the execution shows ``cancelled`` once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from schemas.specs import HttpRequestSpec, HttpWork
from tests.api.conftest import Running, auth, new_tenant
from tests.integration.harness import HttpTarget, until
from tests.integration.test_cancel_e2e import Engine


async def _run_then_cancel(api: Running, work: HttpWork, running: Callable[[], bool]) -> dict[str, Any]:
    """Create a task doing ``work``, trigger it, cancel it through the API once ``running()``;
    the execution as the view shows it once it is cancelled."""
    http, tenant = api.http, new_tenant()
    body = {"name": "cancel me", "work": work.model_dump(mode="json")}
    r = await http.post("/v1/tasks?wait=20", json=body, headers=auth(tenant))
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    r = await http.post(f"/v1/tasks/{task_id}/trigger?wait=20", headers=auth(tenant))
    assert r.status_code == 200, r.text
    execution_id = r.json()["execution_id"]

    async def runs() -> bool:
        return running()

    await until(runs, 30, "the work to run")
    r = await http.post(
        f"/v1/executions/{execution_id}/cancel?wait=20", json={"reason": "wrong build"}, headers=auth(tenant)
    )
    assert r.status_code == 200, r.text

    async def cancelled() -> dict[str, Any] | None:
        r = await http.get(f"/v1/executions/{execution_id}", headers=auth(tenant))
        return r.json() if r.status_code == 200 and r.json()["status"] == "cancelled" else None

    await until(cancelled, 30, "the execution to show cancelled")
    await asyncio.sleep(2.0)  # an executor's late report, if any, would land now
    execution: dict[str, Any] = (await http.get(f"/v1/executions/{execution_id}", headers=auth(tenant))).json()
    assert execution["status"] == "cancelled" and execution["error"] == "wrong build", execution
    assert [e["status"] for e in execution["timeline"]].count("cancelled") == 1, execution["timeline"]
    return execution


async def test_cancelling_through_the_api_stops_a_long_http_request(api: Running) -> None:
    target = await HttpTarget(slow_paths={"/work": 6}).start()
    try:
        work = HttpWork(url=target.url, cancel=HttpRequestSpec(method="DELETE", url=f"{target.url}/stop"))
        execution = await _run_then_cancel(api, work, lambda: any(r["path"] == "/work" for r in target.requests))
        stops = [r for r in target.requests if r["path"] == "/work/stop"]
        assert [r["key"] for r in stops] == [execution["id"]], target.requests
    finally:
        await target.stop()


async def test_cancelling_through_the_api_cancels_the_engine_run(api: Running) -> None:
    engine = await Engine().start()
    try:
        await _run_then_cancel(api, engine.work(), lambda: engine.polls.get("run-1", 0) >= 1)
        assert engine.cancelled == ["run-1"]
    finally:
        await engine.stop()
