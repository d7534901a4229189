"""ASGI middleware: the request body size limit and the limit of requests in progress."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BadRequest, PayloadTooLarge, ServiceUnavailable, render_problem

_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyLimitMiddleware:
    """Answer 413 to bodies over ``max_bytes``, whether announced by Content-Length or streamed.

    The body (bounded) is read up front and replayed to the application, so an oversized or
    endless chunked body never reaches JSON parsing.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in _NO_BODY:
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        too_large = PayloadTooLarge(f"request body larger than {self.max_bytes} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                digits = value.strip()
                if not digits.isdigit():  # bytes.isdigit(): ASCII digits only
                    await render_problem(BadRequest("invalid Content-Length header"), path)(scope, receive, send)
                    return
                # Thousands of digits would make int() raise; any length past 18 digits is too large.
                if len(digits) > 18 or int(digits) > self.max_bytes:
                    await render_problem(too_large, path)(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await render_problem(too_large, path)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/events/stream"})
"""Not counted: probes must answer while the API is busy, and a live stream lasts for hours."""


class InFlightLimitMiddleware:
    """Answer 503 with ``Retry-After`` at once when ``limit`` requests are already in progress.

    Without it an overloaded API queues every request: at twice what the views' store could
    serve, requests waited tens of seconds and kept the API busy long after their clients had
    given up. A client told to come back later can; one left waiting cannot tell.
    """

    def __init__(self, app: ASGIApp, limit: int, retry_after: int, on_shed: Callable[[], None] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.retry_after = retry_after
        self.on_shed = on_shed
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            if self.on_shed is not None:
                self.on_shed()
            busy = ServiceUnavailable(
                f"more than {self.limit} requests in progress; try again later", retry_after=self.retry_after
            )
            await render_problem(busy, str(scope.get("path", "")))(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
