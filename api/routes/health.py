"""``/healthz``, ``/readyz`` and ``/metrics`` (served where ``metrics_path`` says, if anywhere)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Header, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.errors import PyMongoError

from api.deps import State
from api.errors import Unauthorized, problem_responses
from api.models import Health
from api.settings import ApiSettings

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


def metrics_router(settings: ApiSettings) -> APIRouter:
    """The router of the metrics endpoint at ``settings.metrics_path`` (empty when it is not served)."""
    router = APIRouter(tags=["operations"])
    if not settings.metrics_path:
        return router
    expected = None if settings.metrics_token is None else f"Bearer {settings.metrics_token.get_secret_value()}"

    @router.get(
        settings.metrics_path, summary="Prometheus metrics", response_class=Response, responses=problem_responses(401)
    )
    async def metrics(
        state: State,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Response:
        """Request counts and latency histograms by route and status; commands by outcome.

        When the deployment sets a metrics token, only a bearer of that token is answered.
        """
        if expected is not None and not hmac.compare_digest((authorization or "").encode(), expected.encode()):
            raise Unauthorized("a metrics token is required" if authorization else None)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
