"""``make run``'s demo: a transient API error is not the end of it (unit test of its shell)."""

from __future__ import annotations

import httpx

from streams import demo


async def test_a_connection_closed_by_the_server_is_retried() -> None:
    # uvicorn closes a kept-alive connection after 5 s idle, the sample task's period, so the
    # demo's poll can meet a connection as it closes: that once ended `make run`.
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(200, json={"counters": {"runs": 3}, "next_run": "soon"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://api") as http:
        view = await demo._view(http, "t1")
    assert view == {"counters": {"runs": 3}, "next_run": "soon"}
    assert calls == ["/v1/tasks/t1", "/v1/tasks/t1"]


async def test_an_api_that_stays_away_gives_no_view_and_no_exception() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://api") as http:
        assert await demo._view(http, "t1", attempts=2) is None
