"""The local stack: restarts keep data; failures are one clear line."""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient

from deploy import stack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _private_stack(tmp_path: Path) -> stack.StackConfig:
    """A second stack beside the shared one: own ports and data, shared build cache."""
    shared = stack.StackConfig.from_env()
    return stack.StackConfig(
        root=tmp_path / "stack",
        cache=shared.cache,
        kafka_port=_free_port(),
        controller_port=_free_port(),
        mongo_port=_free_port(),
    )


needs_local_tools = pytest.mark.skipif(
    not (shutil.which("java") and (shutil.which("mvn") or shutil.which("go"))),
    reason="the local stack needs Java 17, Maven and Go",
)


async def _write(cfg: stack.StackConfig) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap, transactional_id="restart-test")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send("restart", key=b"k", value=b"kept")
    finally:
        await producer.stop()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(cfg.mongo_url)
    await client["restart"]["docs"].insert_one({"_id": "d1", "value": "kept"})
    await client.close()


async def _read(cfg: stack.StackConfig) -> tuple[list[bytes], object]:
    consumer = AIOKafkaConsumer(
        "restart", bootstrap_servers=cfg.bootstrap, auto_offset_reset="earliest",
        group_id="restart-reader", isolation_level="read_committed",
    )  # fmt: skip
    await consumer.start()
    values: list[bytes] = []
    try:
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=500)
            values += [m.value for msgs in batch.values() for m in msgs if m.value is not None]
            if values:
                break
    finally:
        await consumer.stop()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(cfg.mongo_url)
    doc = await client["restart"]["docs"].find_one({"_id": "d1"})
    await client.close()
    return values, doc


@pytest.mark.stack
@pytest.mark.slow
@needs_local_tools
def test_restart_keeps_data(tmp_path: Path) -> None:
    cfg = _private_stack(tmp_path)
    try:
        stack.up(cfg)
        asyncio.run(_write(cfg))
        stack.down(cfg)
        assert stack.status(cfg) == {"kafka": None, "ferretdb": None}
        stack.up(cfg)  # second start: cached build, existing storage, no reformat
        values, doc = asyncio.run(_read(cfg))
    finally:
        stack.down(cfg)
    assert values == [b"kept"]
    assert doc == {"_id": "d1", "value": "kept"}


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    cfg = _private_stack(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", cfg.mongo_port))
        busy.listen()
        with pytest.raises(stack.StackError) as err:
            stack.up(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert f"port {cfg.mongo_port}" in message and "SCHED_MONGO_PORT" in message


def test_missing_java_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _private_stack(tmp_path)
    # No java on PATH and no cached jars' JVM to fall back on.
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(stack.StackError) as err:
        stack.up(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "java not found" in message and "Java 17" in message


def test_missing_go_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _private_stack(tmp_path)
    cfg = stack.StackConfig(cfg.root, tmp_path / "empty-cache", cfg.kafka_port, cfg.controller_port, cfg.mongo_port)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(stack.StackError, match="go not found on PATH: install Go"):
        stack.ferretdb_binary(cfg)


def test_bad_port_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHED_KAFKA_PORT", "ninety")
    with pytest.raises(stack.StackError, match="SCHED_KAFKA_PORT='ninety' is not a port number"):
        stack.StackConfig.from_env()


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # A UUID whose first byte is 0xF8 encodes to base64url starting with "-": the storage tool
    # would read the id as an option and `make run` would fail on a fresh machine.
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))
    plain = uuid.UUID(bytes=b"\x10" + bytes(15))
    draws = iter([dashed, dashed, plain])
    monkeypatch.setattr(stack.uuid, "uuid4", lambda: next(draws))
    cluster_id = stack._kafka_cluster_id()
    assert not cluster_id.startswith("-")
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cluster_id) == 22
