"""What the benchmark runners share: percentiles, process memory, the machine, topic waits."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from schemas.commands import CreateTask
from schemas.envelope import command_envelope, encode
from schemas.specs import HandlerWork, TaskDefinition


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far, user and system, every thread (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5), counted from the state (field 3).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def machine() -> str:
    """One line naming the machine and the versions a figure was measured with."""
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    return (
        f"{os.cpu_count()} cores, {int(mem.split()[1]) // 1024 // 1024} GiB, {platform.platform()}, "
        f"Python {platform.python_version()}, {java}, aiokafka {version('aiokafka')}, "
        f"faust-streaming {version('faust-streaming')}, APScheduler {version('apscheduler')}, "
        "Kafka 4.1.1 (KRaft, local)"
    )


async def broker_topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def wait_for_topics(bootstrap: str, topics: list[str], within: float = 120.0) -> None:
    """Wait until the worker has created ``topics`` (subscribing earlier would miss them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not set(topics) <= await broker_topics(bootstrap):
        if loop.time() > deadline:
            raise RuntimeError(f"topics {topics} did not appear within {within:.0f} s")
        await asyncio.sleep(0.5)


def stack_urls() -> tuple[str, str]:
    """Kafka bootstrap servers and MongoDB URL: ``SCHED_KAFKA_BOOTSTRAP`` / ``SCHED_MONGO_URL``,
    or the local stack's defaults."""
    return (
        os.environ.get("SCHED_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        os.environ.get("SCHED_MONGO_URL", "mongodb://127.0.0.1:27017/"),
    )


class Tabled(Protocol):
    def table(self) -> str: ...


def run_and_print(run: Callable[[str, str], Coroutine[Any, Any, Tabled]]) -> int:
    """A runner's command line: run it against the stack, print its table and how long it took."""
    bootstrap, mongo = stack_urls()
    started = time.monotonic()
    result = asyncio.run(run(bootstrap, mongo))
    print(result.table())
    print(f"(run took {time.monotonic() - started:.0f}s)")
    return 0


async def wait_worker_ready(producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, prefix: str) -> None:
    """Measure scheduling, not start-up: wait until the worker applies a probe command."""
    probe = CreateTask(
        command_id=str(uuid.uuid4()), task_id="probe", tenant="bench", actor="bench", at=datetime.now(UTC),
        definition=TaskDefinition(name="probe", schedule=None, work=HandlerWork(name="noop")),
    )  # fmt: skip
    await producer.send_and_wait(f"{prefix}.commands", key=b"probe", value=encode(command_envelope(probe, "bench")))
    for _ in range(240):
        batch = await consumer.getmany(timeout_ms=500)
        if any(r.key == b"probe" for records in batch.values() for r in records):
            return
    raise RuntimeError("the worker did not start within 120 s")
