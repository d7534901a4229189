"""``make run``: the local stack, a worker, and a sample schedule visibly firing.

Starts Kafka and FerretDB (``deploy/stack.py``) unless ``SCHED_KAFKA_BOOTSTRAP`` is set,
starts one worker process, creates a sample task that fires every 5 seconds, and prints
every outcome as it arrives on the public ``outcomes`` topic. Ctrl-C stops the worker; the
stack keeps running (``make stack-down`` stops it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import click
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.commands import CreateTask, DeleteTask
from schemas.envelope import command_envelope, decode_event, encode
from schemas.events import ExecutionCompleted
from schemas.specs import HandlerWork, IntervalSchedule, TaskDefinition
from streams.admin import ensure_topics
from streams.settings import Settings, topic_name

REPO = Path(__file__).resolve().parent.parent
WORKER_LOG = REPO / ".stack" / "logs" / "worker.log"


def _say(message: str) -> None:
    click.echo(f"{datetime.now(UTC):%H:%M:%S} {message}")


async def _watch(settings: Settings, task_id: str, seconds: float | None, worker: subprocess.Popen[bytes]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        topic_name(settings, "outcomes"), bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="latest", group_id=None,
    )  # fmt: skip
    await producer.start()
    await consumer.start()
    await consumer.seek_to_end()
    now = datetime.now(UTC)
    create = CreateTask(
        command_id=str(uuid.uuid4()), task_id=task_id, tenant="demo", actor="make-run", at=now,
        definition=TaskDefinition(
            name="sample heartbeat", schedule=IntervalSchedule(every_seconds=5.0),
            work=HandlerWork(name="echo", params={"hello": "world"}),
        ),
    )  # fmt: skip
    await producer.send_and_wait(
        topic_name(settings, "commands"),
        key=task_id.encode(),
        value=encode(command_envelope(create, "make-run")),
    )
    _say(f"created task {task_id}: every 5 s, handler 'echo'; waiting for outcomes (Ctrl-C to stop)")
    seen = 0
    loop = asyncio.get_running_loop()
    deadline = None if seconds is None else loop.time() + seconds
    try:
        while deadline is None or loop.time() < deadline:
            if worker.poll() is not None:
                raise click.ClickException(f"the worker exited (code {worker.returncode}); see {WORKER_LOG}")
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    event = decode_event(record.value or b"")
                    if isinstance(event, ExecutionCompleted) and event.task_id == task_id:
                        seen += 1
                        late = (
                            (event.started_at - event.scheduled_for).total_seconds() * 1000 if event.started_at else 0
                        )
                        _say(
                            f"{event.status}: slot {event.scheduled_for:%H:%M:%S}, started {late:.0f} ms after it, "
                            f"took {event.duration_ms or 0:.0f} ms, execution {event.execution_id[:8]}"
                        )
    finally:
        # Leave nothing firing behind: the next run creates its own sample task.
        delete = DeleteTask(
            command_id=str(uuid.uuid4()),
            task_id=task_id,
            tenant="demo",
            actor="make-run",
            at=datetime.now(UTC),
        )
        await producer.send_and_wait(
            topic_name(settings, "commands"),
            key=task_id.encode(),
            value=encode(command_envelope(delete, "make-run")),
        )
        await consumer.stop()
        await producer.stop()
    return seen


@click.command()
@click.option("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
@click.option("--prefix", default="demo.", help="topic prefix of this demo deployment")
def main(seconds: float | None, prefix: str) -> None:
    """Run the stack, a worker and a sample schedule, printing its outcomes."""
    if not os.environ.get("SCHED_KAFKA_BOOTSTRAP"):
        from deploy import stack

        cfg = stack.StackConfig.from_env()
        _say("starting the local stack (the first time fetches Kafka and builds FerretDB: a few minutes)")
        try:
            stack.up(cfg)
        except stack.StackError as exc:
            click.echo(f"stack: error: {exc}", err=True)
            sys.exit(1)
        os.environ["SCHED_KAFKA_BOOTSTRAP"] = cfg.bootstrap
        os.environ["SCHED_MONGO_URL"] = cfg.mongo_url
        _say(f"stack up: kafka {cfg.bootstrap}, mongo {cfg.mongo_url}")
    os.environ["SCHED_TOPIC_PREFIX"] = prefix
    os.environ.setdefault("SCHED_DATA_DIR", str(REPO / ".stack" / "worker" / prefix.strip(".")))
    settings = Settings()
    asyncio.run(ensure_topics(settings))

    log = WORKER_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--worker-id", "demo-worker"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    _say(f"worker started (pid {worker.pid}, log {log})")
    task_id = f"sample-{uuid.uuid4().hex[:8]}"
    seen = 0
    try:
        seen = asyncio.run(_watch(settings, task_id, seconds, worker))
    except KeyboardInterrupt:
        pass
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        _say(f"worker stopped after {seen} outcomes; the stack keeps running (make stack-down stops it)")
    if seconds is not None and seen == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
