"""The application factory: ``create_app(settings) -> FastAPI``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pymongo import AsyncMongoClient

from api import errors
from api.auth import TokenVerifier
from api.bus import CommandBus
from api.correlation import CorrelationMiddleware
from api.deps import ApiState
from api.idempotency import IdempotencyKeys
from api.metrics import Metrics, MetricsMiddleware
from api.middleware import BodyLimitMiddleware, InFlightLimitMiddleware
from api.queries import Views
from api.quotas import Quotas
from api.routes import (
    backfills,
    calendars,
    cloudevents,
    events,
    executions,
    health,
    notifications,
    occurrences,
    reports,
    stats,
    tasks,
    ui,
)
from api.settings import ApiSettings
from streams.connections import mongo_options

DESCRIPTION = """
Commands are validated, put on the `commands` topic and answered **202 Accepted** with their
ids; add `?wait=<seconds>` to wait until the views show the outcome (200 with the task, or the
rejection as a problem). Reads come from the MongoDB views only.

Authenticate with a bearer JWT (HS256 or RS256) carrying `sub`, `tenant` and `roles`
(`viewer` < `operator` < `admin`). Everything is scoped to the token's tenant; another
tenant's tasks and executions are simply not found. Errors are RFC 9457 problem documents
(`application/problem+json`) naming the offending fields.
"""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Build the API. Kafka and MongoDB clients are opened by the lifespan and closed after it.

    :raises ValueError: no way to verify tokens is configured, or the secret keys are unusable.
    """
    settings = settings or ApiSettings()
    verifier = TokenVerifier(settings)  # fail at start, not at the first request
    keyring = settings.secret_keyring()  # likewise for unusable secret keys
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_url,
            tz_aware=True,
            serverSelectionTimeoutMS=settings.mongo_timeout_ms,
            connectTimeoutMS=settings.mongo_timeout_ms,
            socketTimeoutMS=max(10_000, settings.mongo_timeout_ms),
            appname="scheduler-api",
            **mongo_options(settings),
        )
        bus = CommandBus(settings)
        await bus.start()  # Kafka may be down: the API still starts, commands answer 503
        views = Views(mongo[settings.mongo_database], cache_seconds=settings.views_cache_seconds)
        idempotency = IdempotencyKeys(views.db, settings.idempotency_key_ttl_seconds)
        state = ApiState(
            settings, verifier, bus, views, metrics, mongo, idempotency, Quotas(views, settings), keyring=keyring
        )
        app.state.api = state
        try:
            yield
        finally:
            state.closing.set()
            await bus.close()
            await mongo.close()

    app = FastAPI(
        title="kafka-task-scheduler",
        version="1.0.0",
        summary="Event-sourced task scheduler: commands in, views out.",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "tasks", "description": "Task commands and queries."},
            {"name": "executions", "description": "Executions of tasks."},
            {"name": "reports", "description": "Execution reports over a time range (JSON or CSV)."},
            {"name": "calendars", "description": "Calendars of excluded days and windows that tasks reference."},
            {"name": "stats", "description": "Tenant statistics."},
            {"name": "events", "description": "Live events."},
            {"name": "notifications", "description": "Notification rules and deliveries."},
            {"name": "operations", "description": "Health, readiness and metrics."},
        ],
    )
    errors.install(app, settings.retry_after_seconds)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        InFlightLimitMiddleware,
        limit=settings.max_requests_in_progress,
        retry_after=settings.retry_after_seconds,
        on_shed=metrics.shed.inc,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # counts 413s and 503s too
    app.add_middleware(CorrelationMiddleware)  # outermost: every answer carries X-Request-Id
    for router in (
        tasks.router,
        occurrences.router,
        backfills.router,
        calendars.router,
        executions.router,
        reports.router,
        stats.router,
        events.router,
        cloudevents.router,
        notifications.rules_router,
        notifications.deliveries_router,
        health.router,
        ui.router,
    ):
        app.include_router(router)
    app.include_router(health.metrics_router(settings))
    return app
