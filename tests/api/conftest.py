"""Fixtures of the API tests: one worker and one projector per session, an app per test.

The worker (``streams.cli worker``) and the projector (``projections.run``) run as separate
processes against the real broker and FerretDB, under a topic prefix and database of this
session. Each test builds its own app (its own Kafka producer and Mongo client) and uses its
own tenants, so tests never see each other's tasks.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from jwt.algorithms import RSAAlgorithm
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from api.app import create_app
from api.settings import ApiSettings
from schemas.secrets import new_key
from streams.admin import ensure_topics
from streams.settings import Settings
from tests.conftest import Infra
from tests.integration.harness import REPO, WorkerProc, stop_group, worker_env

SECRET = "test-secret-with-at-least-32-bytes-of-entropy!"
AUDIENCE = "scheduler-api"
ISSUER = "https://issuer.test"
KID = "test-key-1"
SECRET_KEYS = {"test-secrets-1": new_key()}
"""Keys for sensitive task fields, shared by the session's worker (executor) and every API."""
STARTUP = 90.0
"""A cold worker joins its group and creates its changelog in ~5-15 s; the projector likewise."""


@dataclass(frozen=True)
class Keys:
    """RSA keys of the session: ``private`` is in the JWKS (as ``KID``); ``stranger`` is not."""

    private: rsa.RSAPrivateKey
    stranger: rsa.RSAPrivateKey
    jwks_file: Path
    public_pem: bytes


@dataclass(frozen=True)
class Stack:
    """The session's worker and projector, and the names they use."""

    infra: Infra
    prefix: str
    """Topic prefix, including its trailing dot."""
    database: str
    worker: WorkerProc
    projector: subprocess.Popen[bytes]
    log_dir: Path


def token(
    tenant: str,
    roles: list[str] | None = None,
    *,
    sub: str = "alice",
    key: Any = SECRET,
    alg: str = "HS256",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A signed token; claims default to a valid one (audience, issuer, an hour to live)."""
    body: dict[str, Any] = {
        "sub": sub,
        "tenant": tenant,
        "roles": ["admin"] if roles is None else roles,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": datetime.now(UTC),
        "exp": datetime.now(UTC) + timedelta(hours=1),
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers=headers)


def auth(tenant: str, roles: list[str] | None = None, **kw: Any) -> dict[str, str]:
    """``Authorization`` header for a token of ``tenant`` with ``roles``."""
    return {"Authorization": f"Bearer {token(tenant, roles, **kw)}"}


def new_tenant() -> str:
    """A tenant of one test."""
    return f"ten-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """RSA keys and a JWKS file holding the public half of ``private``."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=KID, alg="RS256", use="sig")
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return Keys(private, stranger, path, pem)


def _projector_env(infra: Infra, prefix: str, database: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    env.update(
        SCHED_KAFKA_BOOTSTRAP=infra.bootstrap,
        SCHED_MONGO_URL=infra.mongo_url,
        SCHED_MONGO_DATABASE=database,
        SCHED_TOPIC_PREFIX=prefix,
        SCHED_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A worker and a projector process for the session, under a fresh prefix and database."""
    name = f"api{uuid.uuid4().hex[:10]}"
    prefix = f"{name}."
    tmp = tmp_path_factory.mktemp("api-stack")
    asyncio.run(ensure_topics(Settings(kafka_bootstrap=infra.bootstrap, topic_prefix=prefix, partitions=4)))
    # The widest Kafka allow-list an operator could set: the tests prove the deployment's own
    # topics stay refused whatever is allowed.
    env = worker_env(
        infra.bootstrap, infra.mongo_url, name, tmp / "data",
        SCHED_KAFKA_WORK_TOPICS='["**"]', SCHED_SECRET_KEYS=json.dumps(SECRET_KEYS),
    )  # fmt: skip
    worker = WorkerProc(env, tmp / "worker.log", "api-w1")
    worker.start()
    log = (tmp / "projector.log").open("ab")
    projector = subprocess.Popen(
        [sys.executable, "-m", "projections.run"],
        env=_projector_env(infra, prefix, name), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    stack = Stack(infra, prefix, name, worker, projector, tmp)
    try:
        yield stack
    finally:
        worker.stop()
        stop_group(projector)
        log.close()
        # Bounded: a wedged server must not hang the session's teardown.
        with MongoClient(infra.mongo_url, serverSelectionTimeoutMS=5000, socketTimeoutMS=30_000) as client:
            try:
                client.drop_database(name)
            except PyMongoError as exc:
                print(f"could not drop the test database {name}: {exc!r}")


def settings_for(stack: Stack, keys: Keys, **overrides: Any) -> ApiSettings:
    """API settings of the session's deployment (HS256 and an RS256 JWKS, audience and issuer)."""
    values: dict[str, Any] = {
        "kafka_bootstrap": stack.infra.bootstrap,
        "mongo_url": stack.infra.mongo_url,
        "mongo_database": stack.database,
        "topic_prefix": stack.prefix,
        "partitions": 4,
        "jwt_hs256_secret": SECRET,
        "jwt_jwks_file": keys.jwks_file,
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
        "kafka_send_timeout_seconds": 3.0,
        "kafka_connect_timeout_seconds": 3.0,
        "retry_after_seconds": 2,
        # Tests name HTTP targets on this machine (the default fences loopback off).
        "http_allow_networks": ["127.0.0.0/8", "::1/128"],
        "kafka_work_topics": ["**"],  # as the session's worker (see ``stack``)
        "secret_keys": SECRET_KEYS,
    }
    values.update(overrides)
    return ApiSettings(**values)


class Running:
    """An app with its lifespan entered, and an HTTP client on it (in-process ASGI)."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.http = client


async def _running(settings: ApiSettings) -> AsyncIterator[Running]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        # raise_app_exceptions=False: a 500 must surface as a response the tests can see.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test", timeout=60) as client:
            yield Running(app, client)


@pytest.fixture(scope="session")
def warm(stack: Stack, keys: Keys) -> Stack:
    """The stack once the worker applies commands and the projector writes the views."""

    async def probe() -> None:
        tenant = new_tenant()
        deadline = time.monotonic() + STARTUP
        async for running in _running(settings_for(stack, keys)):
            body = {"name": "probe", "work": {"kind": "handler", "name": "noop"}}
            headers = {**auth(tenant), "Idempotency-Key": "warm-up"}
            while True:
                r = await running.http.post("/v1/tasks?wait=10", json=body, headers=headers)
                if r.status_code == 200:
                    return
                if time.monotonic() > deadline or not stack.worker.alive() or stack.projector.poll() is not None:
                    logs = stack.worker.tail() + "\n---\n" + (stack.log_dir / "projector.log").read_text()[-3000:]
                    raise AssertionError(f"the stack did not start: {r.status_code} {r.text}\n{logs}")

    asyncio.run(probe())
    return stack


@pytest.fixture
async def api(warm: Stack, keys: Keys) -> AsyncIterator[Running]:
    """The API of the warm session stack, in-process."""
    async for running in _running(settings_for(warm, keys)):
        yield running


@pytest.fixture
async def cold_api(stack: Stack, keys: Keys) -> AsyncIterator[Running]:
    """The API without waiting for the worker (for tests that never reach the task processor)."""
    async for running in _running(settings_for(stack, keys)):
        yield running


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
