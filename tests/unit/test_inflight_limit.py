"""An overloaded API answers 503 at once instead of queueing (api/middleware.py)."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from api.middleware import InFlightLimitMiddleware


def _app(release: asyncio.Event, shed: list[int]) -> Starlette:
    async def slow(request: Request) -> PlainTextResponse:
        await release.wait()
        return PlainTextResponse("done")

    async def probe(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/v1/tasks", slow), Route("/healthz", probe)])
    app.add_middleware(InFlightLimitMiddleware, limit=2, retry_after=7, on_shed=lambda: shed.append(1))
    return app


async def test_past_the_limit_a_request_is_answered_503_at_once_and_served_again_later() -> None:
    release = asyncio.Event()
    shed: list[int] = []
    transport = httpx.ASGITransport(app=_app(release, shed))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        held = [asyncio.create_task(http.get("/v1/tasks")) for _ in range(2)]
        await asyncio.sleep(0.05)
        busy = await asyncio.wait_for(http.get("/v1/tasks"), 1)
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "7"
        assert busy.headers["content-type"].startswith("application/problem+json")
        assert "more than 2 requests in progress" in busy.json()["detail"]
        assert shed == [1]
        # Probes are not counted: a busy API is still alive.
        assert (await http.get("/healthz")).status_code == 200
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await http.get("/v1/tasks")).status_code == 200
