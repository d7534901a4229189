"""``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.errors import PyMongoError

from api.deps import State
from api.models import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> Health:
    """The process is up (nothing else is checked)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness",
    responses={503: {"model": Health, "description": "Kafka or MongoDB unreachable (with `Retry-After`)"}},
)
async def readyz(state: State, response: Response) -> Health:
    """Kafka answers metadata requests (and the commands topic exists) and MongoDB answers a ping."""
    checks: dict[str, str] = {}
    kafka = await state.bus.ready()
    checks["kafka"] = kafka or "ok"
    try:
        await asyncio.wait_for(state.views.ping(), state.settings.mongo_timeout_ms / 1000 + 1)
        checks["mongo"] = "ok"
    except (PyMongoError, TimeoutError) as exc:
        checks["mongo"] = f"unreachable ({type(exc).__name__})"
    if all(v == "ok" for v in checks.values()):
        return Health(status="ok", checks=checks)
    response.status_code = 503
    response.headers["Retry-After"] = str(state.settings.retry_after_seconds)
    return Health(status="unavailable", checks=checks)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    """Request counts and latency histograms by route and status; commands by outcome."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
