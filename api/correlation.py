"""The correlation id of each request: ``X-Request-Id`` in, the same header out, on every event.

A client (or a proxy in front) may send ``X-Request-Id``; otherwise one is generated. It is
returned on the response, bound to the request's log records, and sent as the correlation id of
the command's envelope, which the task processor copies onto every event the command causes
(and the executors onto their reports), so one id follows a request from the API to its
outcome on ``task-events``.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streams.logs import bound

HEADER = "X-Request-Id"
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")
"""A request id we accept: up to 128 token characters. Any other value (too long, spaces,
control characters) is replaced by a generated id rather than refused, as proxies do."""

current: ContextVar[str | None] = ContextVar("correlation_id", default=None)
"""The correlation id of the request being handled (None outside a request)."""


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's own ``X-Request-Id`` when it is acceptable, else a new UUID."""
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _VALID.fullmatch(text):
                return text
            break
    return str(uuid.uuid4())


class CorrelationMiddleware:
    """Pure ASGI middleware: picks the request id, exposes it as :data:`current`, returns it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope.get("headers", []))
        token = current.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            with bound(correlation_id=rid):
                await self.app(scope, receive, send_with_id)
        finally:
            current.reset(token)
