"""Retention of finished executions: a TTL index on MongoDB, a sweeper where TTL does not work.

FerretDB v1.24 rejects ``expireAfterSeconds`` (``NotImplemented``); where the capability probe
(:func:`projections.store.probe`) says TTL indexes do not work, a :class:`RetentionSweeper`
deletes old executions periodically instead.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, PyMongoError

from projections.read import CollectionNames, active_collections
from projections.store import probe

log = logging.getLogger(__name__)

DEFAULT_RETENTION = timedelta(days=90)
"""How long finished executions are kept by default."""
TTL_INDEX_NAME = "finished_at_ttl"
_NOT_IMPLEMENTED = 238
_INDEX_OPTIONS_CONFLICT = (85, 86)


async def setup_retention(
    db: AsyncDatabase[Any],
    collections: CollectionNames,
    retention: timedelta = DEFAULT_RETENTION,
    *,
    sweep_interval: float = 3600.0,
) -> RetentionSweeper | None:
    """Expire executions finished longer than ``retention`` ago.

    On a server with working TTL indexes, creates one on ``executions.finished_at`` and returns
    None. Otherwise returns a sweeper to run (its ``run()`` loop) alongside the projector.
    """
    sweeper = RetentionSweeper(db, retention, interval=sweep_interval, default=collections)
    if not (await probe(db)).ttl_indexes:
        return sweeper
    seconds = int(retention.total_seconds())
    executions = db[collections.executions]
    try:
        await executions.create_index("finished_at", name=TTL_INDEX_NAME, expireAfterSeconds=seconds)
    except OperationFailure as exc:
        if exc.code == _NOT_IMPLEMENTED:
            return sweeper
        if exc.code not in _INDEX_OPTIONS_CONFLICT:
            raise
        # The retention changed since the index was made.
        await db.command(
            "collMod", collections.executions, index={"name": TTL_INDEX_NAME, "expireAfterSeconds": seconds}
        )
    return None


class RetentionSweeper:
    """Deletes executions whose ``finished_at`` is older than the retention, every ``interval``.

    It resolves the live collection names on every sweep, so it follows a replay's switch.
    """

    def __init__(
        self,
        db: AsyncDatabase[Any],
        retention: timedelta = DEFAULT_RETENTION,
        *,
        interval: float = 3600.0,
        default: CollectionNames | None = None,
    ) -> None:
        self.db = db
        self.retention = retention
        self.interval = interval
        self.default = default

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete the expired executions once; returns how many were deleted."""
        cutoff = (now or datetime.now(UTC)) - self.retention
        names = await active_collections(self.db, self.default)
        # Unfinished executions have finished_at None, which $lt on a date never matches.
        result = await self.db[names.executions].delete_many({"finished_at": {"$lt": cutoff}})
        return result.deleted_count

    async def run(self) -> None:
        """Sweep forever, every ``interval`` seconds (cancel the task to stop)."""
        while True:
            try:
                deleted = await self.sweep()
            except PyMongoError as exc:
                # The next sweep catches up; retention is not worth stopping the process for.
                log.warning("retention sweep failed: %s", exc)
            else:
                if deleted:
                    log.info("retention: deleted %d executions finished before the cutoff", deleted)
            await asyncio.sleep(self.interval)
