"""Executor shells: weighted priority queues, the commit tracker, secrets (no broker needed)."""

from __future__ import annotations

import asyncio
import io
import logging
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from schemas.envelope import encode, event_envelope
from schemas.events import ExecutionDispatched
from schemas.secrets import new_key, seal_definition, seal_params
from schemas.specs import Priority, TaskDefinition
from streams import metrics
from streams.executor import (
    METADATA_LIMIT,
    Executor,
    OffsetTracker,
    WeightedQueues,
    decode_in_flight,
    encode_in_flight,
)
from streams.logs import configure as configure_logs
from streams.runners import RunResult
from streams.settings import Settings


def test_weighted_queues_share_slots_6_3_1_without_starving_low() -> None:
    queues = WeightedQueues((6, 3, 1))
    for i in range(1000):
        for p in ("high", "normal", "low"):
            queues.push(p, (p, i))  # type: ignore[arg-type]
    served: Counter[str] = Counter()
    for _ in range(1000):
        record: Any = queues.pop()
        served[record[0]] += 1
    assert served == {"high": 600, "normal": 300, "low": 100}


def test_an_idle_class_gives_its_share_to_the_others() -> None:
    queues = WeightedQueues((6, 3, 1))
    for i in range(10):
        queues.push("low", ("low", i))  # type: ignore[arg-type]
    assert [queues.pop() for _ in range(10)] == [("low", i) for i in range(10)]
    assert queues.pop() is None


def test_commits_never_pass_unfinished_work() -> None:
    tp = TopicPartition("dispatch.normal", 0)
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.started(tp, offset)
    tracker.finished(tp, 11)
    tracker.finished(tp, 12)
    assert tracker.committable()[tp].offset == 10  # 10 still runs: a crash must redeliver it
    tracker.finished(tp, 10)
    assert tracker.committable() == {tp: OffsetAndMetadata(13, "")}


def test_a_successor_skips_what_finished_behind_the_oldest_unfinished_dispatch() -> None:
    tp = TopicPartition("dispatch.normal", 0)
    before = OffsetTracker()
    for offset in range(100, 2100):
        before.started(tp, offset)
    still_running = {100, 101, 555, 2099}
    for offset in range(100, 2100):
        if offset not in still_running:
            before.finished(tp, offset)
    [(committed_tp, committed)] = before.committable().items()
    assert committed_tp == tp and committed.offset == 100 and len(committed.metadata) <= METADATA_LIMIT

    after = OffsetTracker()
    after.resume(tp, committed)
    rerun = [offset for offset in range(100, 2200) if not after.finished_before(tp, offset)]
    # Only what was in flight at the crash, and what the last owner never fetched, runs again.
    assert rerun == [100, 101, 555, *range(2099, 2200)]


def test_metadata_that_does_not_fit_covers_less_and_never_skips_unfinished_work() -> None:
    tp = TopicPartition("dispatch.normal", 0)
    before = OffsetTracker()
    rng = random.Random(7)
    running = set(rng.sample(range(1, 400_000), 20_000)) | {0}
    for offset in range(0, 400_000):
        before.started(tp, offset)
        if offset not in running:
            before.finished(tp, offset)
    committed = before.committable()[tp]
    assert committed.offset == 0 and 0 < len(committed.metadata) <= METADATA_LIMIT
    after = OffsetTracker()
    after.resume(tp, committed)
    skipped = {offset for offset in range(400_000) if after.finished_before(tp, offset)}
    assert skipped and not skipped & running


def test_missing_or_foreign_metadata_skips_nothing() -> None:
    tp = TopicPartition("dispatch.normal", 0)
    for metadata in ("", "v1:x:y", "v1:20:!!!", "v9:20:eJwDAAAAAAE=", "v1:100000:eJwDAAAAAAE="):
        tracker = OffsetTracker()
        tracker.resume(tp, OffsetAndMetadata(10, metadata))
        assert not any(tracker.finished_before(tp, offset) for offset in range(0, 200)), metadata
    assert decode_in_flight(10, encode_in_flight(10, 12, {10})) is not None


class _EchoRunners:
    """A fake of the runners: records what it was given and echoes the headers back."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def run(self, work: Any, attempt: Any, budget: float) -> RunResult:
        self.seen.append((work, attempt))
        headers = getattr(work, "headers", {})
        return RunResult("failed", {"echo": headers, "params": attempt.params}, f"HTTP 500; sent {headers}")


def _dispatched(definition: TaskDefinition, params: dict[str, Any]) -> ExecutionDispatched:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return ExecutionDispatched(
        event_id="e", task_id="acme/t1", tenant="acme", sequence=2, at=t0, causation_id="c", actor="a",
        execution_id="x", attempt=1, reason="manual", priority=Priority.NORMAL, work=definition.work,
        params=params, scheduled_for=t0, deadline=t0 + timedelta(hours=1),
    )  # fmt: skip


async def test_the_executor_runs_work_with_secrets_opened_and_reports_none_of_them() -> None:
    keys = {"k": new_key()}
    executor = Executor(Settings(secret_keys=keys))
    ring = Settings(secret_keys=keys).secret_keyring()
    plain = TaskDefinition.model_validate(
        {"name": "t", "work": {"kind": "http", "url": "https://x.test/", "headers": {"Authorization": "Bearer s3cr3t"}}}
    )
    sealed = seal_definition(plain, keyring=ring, tenant="acme", task_id="acme/t1")
    params = seal_params({"p": "param-s3cr3t"}, ["/p"], keyring=ring, tenant="acme", task_id="acme/t1")
    runners = _EchoRunners()
    result = await executor._run(_dispatched(sealed, params), runners, 10.0)  # type: ignore[arg-type]
    work, attempt = runners.seen[0]
    assert work.headers == {"Authorization": "Bearer s3cr3t"} and attempt.params == {"p": "param-s3cr3t"}
    assert "s3cr3t" not in str(result.result) + str(result.error)
    assert result.result == {"echo": {"Authorization": "***"}, "params": {"p": "***"}}

    # Work it cannot open fails with the reason, and is never run.
    other_tenant = seal_definition(plain, keyring=ring, tenant="evil", task_id="evil/t1")
    result = await executor._run(_dispatched(other_tenant, {}), runners, 10.0)  # type: ignore[arg-type]
    assert result.status == "failed" and "another tenant" in str(result.error)
    result = await executor._run(_dispatched(plain, {}), runners, 10.0)  # type: ignore[arg-type]
    assert result.status == "failed" and "sent in clear" in str(result.error)
    assert len(runners.seen) == 1


class _Batcher:
    """A fake of the report batcher: keeps each report with its correlation id."""

    def __init__(self) -> None:
        self.reports: list[tuple[Any, str | None]] = []

    async def add(self, command: Any, correlation_id: str | None = None) -> asyncio.Future[None]:
        self.reports.append((command, correlation_id))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _LoggingRunners:
    async def run(self, work: Any, attempt: Any, budget: float) -> RunResult:
        logging.getLogger("streams.runners").warning("target slow")
        return RunResult("succeeded", {"ok": True})


async def test_reports_and_logs_of_an_attempt_carry_its_ids_and_correlation() -> None:
    executor = Executor(Settings(executor_started_report_after_seconds=5))
    batcher = _Batcher()
    executor._batcher = batcher  # type: ignore[assignment]
    definition = TaskDefinition.model_validate({"name": "t", "work": {"kind": "handler", "name": "noop"}})
    event = _dispatched(definition, {})
    value = encode(event_envelope(event, source="tests", correlation_id="req-7"))
    record = ConsumerRecord("dispatch.normal", 0, 0, 0, 0, b"acme/t1", value, None, len(value), len(value), [])
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    succeeded = metrics.OUTCOMES.labels(status="succeeded")._value.get()
    try:
        configure_logs(Settings(log_format="json"), out)
        # As the dispatch loop does: each attempt in its own task (so its bound ids stay there).
        await asyncio.create_task(executor._execute_record(record, None, _LoggingRunners()))  # type: ignore[arg-type]
    finally:
        root.handlers, root.level = handlers, level
    ((outcome, correlation),) = batcher.reports
    assert outcome.status == "succeeded" and correlation == "req-7"
    logged = orjson.loads(out.getvalue().splitlines()[-1])
    assert (logged["event"], logged["task_id"], logged["execution_id"], logged["correlation_id"]) == (
        "target slow", "acme/t1", "x", "req-7",
    )  # fmt: skip
    assert metrics.OUTCOMES.labels(status="succeeded")._value.get() == succeeded + 1
    assert metrics.IN_FLIGHT._value.get() == 0
