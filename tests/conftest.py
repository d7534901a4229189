"""Shared fixtures: a real Kafka broker and a real MongoDB wire-protocol server.

Where they come from, in order:
1. ``SCHED_KAFKA_BOOTSTRAP`` and ``SCHED_MONGO_URL`` are set: use those (CI starts the
   local stack once and sets them).
2. A Docker engine answers: testcontainers starts Kafka (KRaft) and MongoDB.
3. Otherwise: the local stack from ``deploy/stack.py`` (Kafka from the Maven Central jars,
   FerretDB built with Go), started here and stopped at the end if this session started it
   (``SCHED_KEEP_STACK=1`` leaves it running for the next run).

Each test gets its own names (``names`` fixture): a topic prefix and a database name, so
tests never see each other's data, even on a long-lived stack.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase


@dataclass(frozen=True)
class Infra:
    """Addresses of the real services the tests talk to."""

    bootstrap: str
    mongo_url: str
    origin: str  # "env", "testcontainers" or "local-stack"


@dataclass(frozen=True)
class Names:
    """Per-test isolated names."""

    prefix: str

    def topic(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    @property
    def database(self) -> str:
        return self.prefix.replace(".", "_")


def _docker_answers() -> bool:
    if os.environ.get("SCHED_NO_DOCKER"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    """Kafka and MongoDB for the whole session (see the module docstring)."""
    bootstrap = os.environ.get("SCHED_KAFKA_BOOTSTRAP")
    mongo_url = os.environ.get("SCHED_MONGO_URL")
    if bootstrap and mongo_url:
        yield Infra(bootstrap, mongo_url, "env")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.mongodb import MongoDbContainer

        with KafkaContainer().with_kraft() as kafka, MongoDbContainer("mongo:7") as mongo:
            yield Infra(kafka.get_bootstrap_server(), mongo.get_connection_url(), "testcontainers")
        return

    from deploy import stack

    cfg = stack.StackConfig.from_env()
    was_running = all(pid is not None for pid in stack.status(cfg).values())
    try:
        stack.up(cfg)
    except stack.StackError as exc:
        pytest.exit(f"local stack: {exc}", returncode=3)
    try:
        yield Infra(cfg.bootstrap, cfg.mongo_url, "local-stack")
    finally:
        if not was_running and not os.environ.get("SCHED_KEEP_STACK"):
            stack.down(cfg)


@pytest.fixture
def names() -> Names:
    """A unique prefix for this test's topics, groups and database."""
    return Names(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def mongo_client(infra: Infra) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, serverSelectionTimeoutMS=5000)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def mongo_db(
    mongo_client: AsyncMongoClient[dict[str, Any]], names: Names
) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    """A fresh database for this test, dropped afterwards."""
    db = mongo_client[names.database]
    try:
        yield db
    finally:
        await mongo_client.drop_database(names.database)
