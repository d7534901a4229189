"""The application state and the ``Annotated`` dependencies routes declare."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pymongo import AsyncMongoClient

from api.auth import Principal, Role, TokenVerifier
from api.bus import CommandBus
from api.errors import Unauthorized
from api.idempotency import IdempotencyKeys
from api.metrics import Metrics
from api.queries import Views
from api.quotas import Quotas
from api.settings import ApiSettings
from schemas.secrets import Keyring


@dataclass
class ApiState:
    """Everything a request needs, created by the application's lifespan."""

    settings: ApiSettings
    verifier: TokenVerifier
    bus: CommandBus
    views: Views
    metrics: Metrics
    mongo: AsyncMongoClient[dict[str, Any]]
    idempotency: IdempotencyKeys
    quotas: Quotas
    keyring: Keyring | None = None
    """Keys that encrypt sensitive fields of commands; None when the deployment has none."""
    open_streams: int = 0
    closing: asyncio.Event = field(default_factory=asyncio.Event)


# The dependencies are coroutines although they do no I/O: FastAPI runs a plain function
# dependency in its thread pool, a hand-over to a thread and back for each of them on every
# request: three per request, which took a create from 6.8 to 8 ms of the API's CPU at 50
# creates a second (one run each).


async def get_state(request: Request) -> ApiState:
    """The application's state."""
    state: ApiState = request.app.state.api
    return state


State = Annotated[ApiState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="A JWT with `sub`, `tenant` and `roles` claims.")


async def current_principal(
    state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller, from a valid bearer token; 401 otherwise."""
    if credentials is None:
        raise Unauthorized()
    return state.verifier.verify(credentials.credentials)


def requires(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency returning the caller if it has ``role`` (or a higher one); 403 otherwise."""

    async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        principal.require(role)
        return principal

    return check


Viewer = Annotated[Principal, Depends(requires(Role.VIEWER))]
Operator = Annotated[Principal, Depends(requires(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(requires(Role.ADMIN))]

# Parameters every command route takes.
Wait = Annotated[
    float | None,
    Query(
        ge=0,
        le=30,
        description="Wait up to this many seconds for the outcome: 200 once the views show it, "
        "a 404/409/422 problem if the task processor rejected the command, or 202 if the time ran out.",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Retrying with the same key yields the same ids, and the command is applied once.",
    ),
]
