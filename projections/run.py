"""Run the projector: ``python -m projections.run`` (settings from ``SCHED_*``).

Creates the view indexes, sets up retention (a TTL index, or a sweeper on FerretDB), and
applies ``task-events`` to the views until interrupted; alongside, keeps the ``calendars`` view
from the ``calendars`` topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import timedelta
from typing import Any

from pymongo import AsyncMongoClient

from projections import metrics as projector_metrics
from projections.calendars import follow_calendars
from projections.projector import Projector, ensure_indexes
from projections.read import active_collections
from projections.retention import setup_retention
from projections.settings import ProjectionSettings
from streams.connections import kafka_options, mongo_options
from streams.logs import configure as configure_logs


async def main(settings: ProjectionSettings | None = None) -> None:
    """Run the projector (and the retention sweeper if needed) until SIGINT/SIGTERM."""
    settings = settings or ProjectionSettings()
    configure_logs(settings)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_url, tz_aware=True, **mongo_options(settings)
    )
    db = client[settings.mongo_database]
    projector = Projector(
        settings.kafka_bootstrap,
        settings.events_topic,
        settings.group_id,
        db,
        max_records=settings.projector_batch_max,
        cache_documents=settings.projector_cache_documents,
        kafka=kafka_options(settings),
    )
    sweeper_task: asyncio.Task[None] | None = None
    metrics_task = asyncio.create_task(projector_metrics.run(settings))
    calendars_task = asyncio.create_task(follow_calendars(settings, db))
    try:
        names = await active_collections(db)
        await ensure_indexes(db, names)
        sweeper = await setup_retention(
            db, names, timedelta(days=settings.retention_days), sweep_interval=settings.sweep_interval_seconds
        )
        if sweeper is not None:
            sweeper_task = asyncio.create_task(sweeper.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, projector.stop)
        await projector.run()
    finally:
        metrics_task.cancel()
        calendars_task.cancel()
        if sweeper_task is not None:
            sweeper_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper_task
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
