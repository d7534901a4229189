"""The one command-line tool, ``scheduler``: one click group for everything.

- Processes: ``worker``, ``executor``, ``triggers``, ``projector``, ``notifier``, ``api``, ``topics``, ``secrets``.
- The REST API from a terminal: ``tasks`` and ``executions`` (``streams/cli_tasks.py``),
  ``calendars`` (``streams/cli_calendars.py``), ``notifications`` (``streams/cli_notifications.py``).
- Straight to Kafka and the views, where the API is not involved: ``tail``
  (``streams/cli_tail.py``) and ``replay`` (``streams/cli_ops.py``).
- Development: ``stack`` (``deploy/stack.py``), ``token``, ``demo`` (``streams/demo.py``).

Configuration comes from ``SCHED_*`` environment variables (see ``streams.settings``);
flags override the most common ones. Exit codes are listed in ``streams/cli_client.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys

import click

from streams.settings import Settings


def _settings(**overrides: object) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**values)  # type: ignore[arg-type]


def _load_handlers(settings: Settings) -> None:
    for module in settings.handler_modules:
        importlib.import_module(module)


EXIT_CODES = """\b
Exit codes: 0 ok, 1 the API refused the request, 2 usage or configuration,
3 not found, 4 conflict, 5 unavailable (API, Kafka or views), 6 not authorised.
"""


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Event-sourced task scheduler on Kafka."""


@main.command()
@click.option("--worker-id", help="name of this worker in execution records")
@click.option("--no-executor", is_flag=True, help="do not run the executor service in this process")
@click.option("--data-dir", help="where the worker keeps its state store")
def worker(worker_id: str | None, no_executor: bool, data_dir: str | None) -> None:
    """Run a worker: the task processor, its firing loop and (by default) an executor."""
    from faust import Worker

    from streams import runtime
    from streams.admin import ensure_topics
    from streams.app import TaskProcessor
    from streams.logs import configure as configure_logs
    from streams.metrics import serve as serve_metrics

    settings = _settings(worker_id=worker_id, data_dir=data_dir, executor_enabled=False if no_executor else None)
    _load_handlers(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(ensure_topics(settings))
    runtime.install(settings.gc_thresholds, settings.switch_interval_seconds)
    processor = TaskProcessor(settings)
    serve_metrics(settings)
    level = settings.log_level.lower()

    class _Worker(Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            # Faust has set up its own logging by now: replace it with ours (streams/logs.py).
            configure_logs(settings)

    _Worker(processor.app, loglevel={"warning": "warn"}.get(level, level), quiet=True).execute_from_commandline()


@main.command()
@click.option("--worker-id", help="name of this executor in execution records")
def executor(worker_id: str | None) -> None:
    """Run an executor only: consume the dispatch topics and run the work."""
    from streams import runtime
    from streams.admin import ensure_topics
    from streams.executor import Executor
    from streams.logs import configure as configure_logs
    from streams.metrics import serve as serve_metrics

    settings = _settings(worker_id=worker_id)
    _load_handlers(settings)
    configure_logs(settings)

    serve_metrics(settings)
    runtime.install(settings.gc_thresholds, settings.switch_interval_seconds)

    async def run() -> None:
        await ensure_topics(settings)
        runtime.freeze()  # started: what is alive now lives long (see streams/runtime.py)
        await Executor(settings).run()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        sys.exit(0)


@main.command()
def triggers() -> None:
    """Run the trigger router: CloudEvents on the triggers topic start the tasks whose rules match."""
    from streams.admin import ensure_topics
    from streams.logs import configure as configure_logs
    from streams.metrics import serve as serve_metrics
    from streams.triggers import TriggerRouter

    settings = _settings()
    configure_logs(settings)
    serve_metrics(settings)

    async def run() -> None:
        await ensure_topics(settings)
        # SIGTERM stops it as Ctrl-C does: the consumer leaves its group at once, so another
        # router takes its partitions without waiting for the session timeout.
        routing = asyncio.current_task()
        assert routing is not None  # nosec B101  # inside asyncio.run
        for stop in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(stop, routing.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await TriggerRouter(settings).run()

    asyncio.run(run())


@main.command()
def projector() -> None:
    """Run the projector: apply task-events to the MongoDB views (indexes, retention)."""
    from projections.run import main as run_projector

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_projector())


@main.command()
def notifier() -> None:
    """Run a notifier: tell webhooks, Kafka topics and mailboxes about outcomes (streams/notifier.py)."""
    from streams.logs import configure as configure_logs
    from streams.metrics import serve as serve_metrics
    from streams.notifier import NotifierSettings
    from streams.notifier import main as run_notifier

    settings = NotifierSettings()
    configure_logs(settings)
    serve_metrics(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_notifier(settings))


@main.command()
def api() -> None:
    """Serve the REST API (uvicorn; SCHED_API_HOST, SCHED_API_PORT)."""
    from api.__main__ import main as run_api

    run_api()


@main.command()
def topics() -> None:
    """Create the deployment's topics (idempotent)."""
    from streams.admin import ensure_topics

    created = asyncio.run(ensure_topics(_settings()))
    click.echo(f"created {len(created)} topics" + (f": {', '.join(created)}" if created else ""))


@main.group()
def secrets() -> None:
    """Keys and encrypted values for sensitive task fields (see schemas/secrets.py)."""


@secrets.command("new-key")
def secrets_new_key() -> None:
    """Print a new random key (base64 of 32 bytes) for SCHED_SECRET_KEYS."""
    from schemas.secrets import new_key

    click.echo(new_key())


@secrets.command("encrypt")
@click.option("--tenant", required=True, help="the task's tenant")
@click.option("--task-id", required=True, help="the task's id on the wire, <tenant>/<id>")
@click.option("--pointer", required=True, help="where the value goes, e.g. /work/headers/Authorization")
@click.option("--json", "as_json", is_flag=True, help="stdin is a JSON value rather than a string")
def secrets_encrypt(tenant: str, task_id: str, pointer: str, as_json: bool) -> None:
    """Encrypt stdin with the active key, for a command produced straight to Kafka."""
    import json

    from schemas.secrets import NO_KEY

    keyring = _settings().secret_keyring()
    if keyring is None:
        raise click.ClickException(NO_KEY)
    text = sys.stdin.read()
    value = json.loads(text) if as_json else text
    click.echo(keyring.encrypt(value, tenant=tenant, task_id=task_id, pointer=pointer))


def _register() -> None:
    # Imported here, not at the top: each module is small and imports what its commands need lazily.
    from deploy.stack import cli as stack
    from streams.cli_calendars import calendars
    from streams.cli_notifications import notifications
    from streams.cli_ops import replay, token
    from streams.cli_tail import tail
    from streams.cli_tasks import executions, tasks
    from streams.demo import main as demo

    main.add_command(tasks)
    main.add_command(executions)
    main.add_command(calendars)
    main.add_command(notifications)
    main.add_command(tail)
    main.add_command(replay)
    main.add_command(stack, "stack")
    main.add_command(token)
    main.add_command(demo, "demo")


_register()

if __name__ == "__main__":
    main()
