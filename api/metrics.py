"""Prometheus metrics of the API, in a registry per application (so tests can build many apps)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Method label values; any other method (a client may send anything) is counted as ``other``."""
UNMATCHED = "unmatched"
"""Route label of requests no route matched (the raw path would be an unbounded label)."""


def request_labels(scope: Scope, status: int) -> tuple[str, str, str]:
    """``(method, route, status)`` labels of a request, each from a bounded set.

    Labels are series: one from client input (a method, a path, an id) would let any client,
    authenticated or not, grow the registry without bound. So the method is one of
    :data:`METHODS` or ``other``, the route is the matched route's template (never the path),
    and the status is a three-digit code.
    """
    method = str(scope.get("method", "")).upper()
    route = getattr(scope.get("route"), "path", None)
    return (
        method if method in METHODS else "other",
        route if isinstance(route, str) else UNMATCHED,
        str(status) if 100 <= status <= 599 else "other",
    )


class Metrics:
    """Request counts and latencies by route template and status; commands by outcome."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "scheduler_api_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "scheduler_api_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commands = Counter(
            "scheduler_api_commands",
            "Commands by type and outcome: accepted (on Kafka), rejected (invalid, or refused by the "
            "task processor while waiting), unavailable (Kafka did not acknowledge).",
            ["command", "outcome"],
            registry=self.registry,
        )
        self.shed = Counter(
            "scheduler_api_shed",
            "Requests answered 503 at once because too many were in progress.",
            registry=self.registry,
        )
        self.limits_unchecked = Counter(
            "scheduler_api_limits_unchecked",
            "Commands accepted without the quota and Idempotency-Key checks, MongoDB being unreachable.",
            ["command"],
            registry=self.registry,
        )

    def command(self, command: str, outcome: str) -> None:
        """Count one command outcome."""
        self.commands.labels(command=command, outcome=outcome).inc()


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request (streams included) by its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method, route, code = request_labels(scope, status)
            self.metrics.requests.labels(method=method, route=route, status=code).inc()
            self.metrics.latency.labels(method=method, route=route).observe(time.perf_counter() - start)
