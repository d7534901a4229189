"""``scheduler token`` and ``scheduler replay``: a development token, and rebuilding the views.

``token`` signs an HS256 JWT with the API's own settings (``SCHED_JWT_HS256_SECRET``, and
``SCHED_JWT_AUDIENCE`` / ``SCHED_JWT_ISSUER`` when set), so the API accepts it; without a
secret it refuses (exit 2). It prints the token only, never the secret.

``replay`` wraps :func:`projections.replay.replay` with a progress bar whose total is the
number of events in ``task-events`` when the replay starts.
"""

from __future__ import annotations

import asyncio
import getpass
import inspect
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from streams.cli_client import CliError, ExitCode, load_settings, print_json


@click.command()
@click.option("--tenant", required=True, help="the tenant the token acts for")
@click.option(
    "--role",
    type=click.Choice(["viewer", "operator", "admin"]),
    default="admin",
    show_default=True,
    help="viewer reads; operator also triggers, pauses, resumes and cancels; admin also creates, updates and deletes",
)
@click.option("--sub", help="the actor recorded on every command (default: your user name)")
@click.option(
    "--ttl", type=click.FloatRange(1, 30 * 86400), default=8 * 3600, show_default=True, help="seconds it stays valid"
)
def token(tenant: str, role: str, sub: str | None, ttl: float) -> None:
    """Mint a development API token (HS256, signed with SCHED_JWT_HS256_SECRET); prints the token only."""
    import jwt

    from api.auth import TENANT_PATTERN
    from api.settings import ApiSettings

    if not TENANT_PATTERN.fullmatch(tenant):
        raise click.BadParameter(f"must match {TENANT_PATTERN.pattern}", param_hint="--tenant")
    settings = load_settings(ApiSettings)
    if settings.jwt_hs256_secret is None:
        raise CliError("SCHED_JWT_HS256_SECRET is not set: no development token can be signed", ExitCode.USAGE)
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": sub or _user(),
        "tenant": tenant,
        "roles": [role],
        "iat": now,
        "exp": now + timedelta(seconds=ttl),
    }
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    click.echo(jwt.encode(claims, settings.jwt_hs256_secret.get_secret_value(), algorithm="HS256"))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


@click.command()
@click.option("--no-switch", is_flag=True, help="build the new collections but keep readers on the old ones")
@click.option("--drop-old", is_flag=True, help="drop the previous collections after switching")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON (no progress bar)")
def replay(no_switch: bool, drop_old: bool, as_json: bool) -> None:
    """Rebuild every view from task-events into fresh collections, then switch readers to them."""
    from projections.settings import ProjectionSettings

    settings = load_settings(ProjectionSettings)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    report = asyncio.run(_replay(settings, switch=not no_switch, drop_old=drop_old, show=not as_json))
    summary = {
        "generation": report.generation,
        "events_applied": report.events_applied,
        "undecodable": report.undecodable,
        "seconds": round(report.seconds, 3),
        "events_per_second": round(report.events_applied / report.seconds, 1) if report.seconds else None,
        "collections": report.collections.as_dict(),
        "previous": report.previous.as_dict(),
        "switched": report.switched,
    }
    if as_json:
        print_json(summary)
        return
    click.echo(
        f"replayed {report.events_applied} events in {report.seconds:.1f}s "
        f"({summary['events_per_second']} events/s, {report.undecodable} undecodable skipped); "
        + (
            f"generation {report.generation} is live"
            if report.switched
            else f"generation {report.generation} built, not switched"
        )
    )


async def _total_events(bootstrap: str, topic: str) -> int:
    """Messages in ``topic`` now (end minus start offsets): the progress bar's total."""
    from aiokafka import AIOKafkaConsumer

    from streams.cli_tail import existing_partitions

    tps = await existing_partitions(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
    finally:
        await consumer.stop()
    return sum(ends[tp] - starts[tp] for tp in tps)


async def _replay(settings: Any, *, switch: bool, drop_old: bool, show: bool) -> Any:
    """Run the replay, with a progress bar when ``show``.

    The bar's total is the number of messages in the topic now; ``projections.replay.replay``
    reports how many it has read through its ``on_progress`` callback when it has one.
    """
    from aiokafka.errors import KafkaError
    from pymongo import AsyncMongoClient
    from pymongo.errors import PyMongoError
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from projections.replay import ReplayError
    from projections.replay import replay as run_replay

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_url, tz_aware=True, serverSelectionTimeoutMS=5000
    )
    try:
        total = await _total_events(settings.kafka_bootstrap, settings.events_topic)
        progress = Progress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            disable=not show,
            transient=False,
        )
        bar = progress.add_task("replay", total=total, rate="")
        started = time.monotonic()

        def on_progress(*args: Any, **kwargs: Any) -> None:
            done, known_total = _count(args, kwargs)
            if done is not None:
                elapsed = max(time.monotonic() - started, 1e-6)
                progress.update(bar, total=known_total or total, completed=done, rate=f"{done / elapsed:,.0f} events/s")

        # The hook of projections.replay (``on_progress``, called with a ReplayProgress every
        # ``progress_interval`` seconds) is new; a replay without it still runs, the bar then
        # fills when it ends.
        kwargs: dict[str, Any] = {}
        parameters = inspect.signature(run_replay).parameters
        if "on_progress" in parameters:
            kwargs["on_progress"] = on_progress
            if "progress_interval" in parameters:
                kwargs["progress_interval"] = 0.5
        with progress:
            report = await run_replay(
                settings.kafka_bootstrap,
                settings.events_topic,
                client[settings.mongo_database],
                switch=switch,
                drop_old=drop_old,
                retention=timedelta(days=settings.retention_days),
                **kwargs,
            )
            final = progress.tasks[0].total or total
            rate = f"{report.events_applied / max(report.seconds, 1e-6):,.0f} events/s"
            progress.update(bar, completed=final, rate=rate)
        return report
    except ReplayError as exc:
        raise CliError(f"replay failed: {exc}", ExitCode.API_ERROR) from None
    except KafkaError as exc:
        raise CliError(f"Kafka at {settings.kafka_bootstrap} is unreachable: {exc}", ExitCode.UNAVAILABLE) from None
    except PyMongoError as exc:
        raise CliError(f"the views at {settings.mongo_url} are unreachable: {exc}", ExitCode.UNAVAILABLE) from None
    finally:
        await client.close()


def _count(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int | None, int | None]:
    """``(events read so far, events in all)`` from what a progress callback was given."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        read = getattr(value, "events_read", None)
        if isinstance(read, int):
            total = getattr(value, "events_total", None)
            return read, total if isinstance(total, int) else None
    return None, None
