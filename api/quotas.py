"""Per-tenant quotas: the tasks a tenant may have, and the runs it may trigger a minute.

Shared by every API process through MongoDB, written to what FerretDB does correctly under
concurrency: inserts keyed by ``_id`` (atomic) and counts. Its ``$inc`` is not atomic (60
concurrent upserting increments of one counter left it at 5), so no counter is ever read,
modified and written: each use is a document of its own, inserted first and then counted with
every other one visible ("reserve, then count"). Of two racing requests the one inserted last
sees the other, so a quota is never exceeded. Racing requests may each see the others and all
be over the limit: each then withdraws, and one whose rank (by time and id) would fit retries
after a random pause of a few tens of milliseconds, so a burst is not refused as a whole.

Tasks are counted from the statistics view (not deleted) plus the creates accepted in the last
``quota_pending_seconds`` that the views do not count yet: the views lag the command by the
projector's delay, and without the pending ones a burst of creates would all see the old
count. The live projector deletes a create's reservation once it has written the task's
creation and statistics (:class:`projections.store.ViewStore`), so the reservations left are
about as many as the projector's lag, and a create reads them with one query. Only when that
count is over the quota are reservations the tasks view already shows looked up one by one and
dropped (left by a projector that does not retire them, or in the moment between its writes).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from api.errors import TooManyRequests
from api.queries import Views
from api.settings import ApiSettings
from projections.read import PENDING_CREATES_COLLECTION
from schemas.commands import CommandBase, CreateTask, TriggerTask

CREATES = PENDING_CREATES_COLLECTION
"""Creates accepted by the API, by internal task id: pending until the projector retires them."""
TRIGGERS = "api_quota_triggers"
"""Triggers accepted by the API, by command id, with their minute."""

Refund = Callable[[], Awaitable[None]]
"""Gives back what :meth:`Quotas.admit` took (for a command Kafka did not accept)."""


async def _nothing() -> None:
    return None


class Quotas:
    """The quotas of one deployment, checked against its views' database."""

    ATTEMPTS = 6
    """Tries of a request in a burst at the limit before it is refused (about 0.5 s at most)."""

    def __init__(self, views: Views, settings: ApiSettings) -> None:
        self._views = views
        self._settings = settings
        self._pending = timedelta(seconds=settings.quota_pending_seconds)
        self._swept_at = 0.0

    async def admit(self, command: CommandBase) -> Refund:
        """Take what ``command`` uses of its tenant's quotas; a refund for when it is not accepted.

        A create takes a task and a trigger takes a run of the current minute; the same command
        again (a retry with the same ``Idempotency-Key``) is not counted twice.

        :raises TooManyRequests: the tenant is at its quota.
        """
        if isinstance(command, CreateTask):
            return await self._create(command)
        if isinstance(command, TriggerTask):
            return await self._trigger(command)
        return _nothing

    async def _create(self, command: CreateTask) -> Refund:
        limit, _ = self._settings.quota(command.tenant)
        await self._sweep(command.at)
        reservation = {"_id": command.task_id, "tenant": command.tenant, "at": command.at}

        async def used() -> tuple[int, int]:
            return await self._tasks_in_use(command.tenant, command.task_id, command.at, limit)

        refund = await self._claim(self._views.db[CREATES], reservation, used, limit)
        if refund is None:
            raise TooManyRequests(
                f"the tenant has reached its quota of {limit} tasks; delete tasks to create others",
                retry_after=self._settings.retry_after_seconds,
            )
        return refund

    async def _trigger(self, command: TriggerTask) -> Refund:
        _, limit = self._settings.quota(command.tenant)
        minute = int(command.at.timestamp() // 60)
        await self._sweep(command.at)
        triggers = self._views.db[TRIGGERS]
        use = {"_id": command.command_id, "tenant": command.tenant, "minute": minute, "at": command.at}

        async def used() -> tuple[int, int]:
            this_minute = triggers.find({"tenant": command.tenant, "minute": minute}, {"_id": 1, "at": 1})
            ranks = {doc["_id"]: (doc["at"], doc["_id"]) async for doc in this_minute}
            return len(ranks), _ahead(ranks, command.command_id)

        refund = await self._claim(triggers, use, used, limit)
        if refund is None:
            raise TooManyRequests(
                f"the tenant has reached its quota of {limit} triggered runs a minute",
                retry_after=60 - int(command.at.timestamp()) % 60,
            )
        return refund

    async def _claim(
        self,
        collection: AsyncCollection[dict[str, Any]],
        use: dict[str, Any],
        used: Callable[[], Awaitable[tuple[int, int]]],
        limit: int,
    ) -> Refund | None:
        """Insert ``use`` and keep it if the uses then counted fit in ``limit``; None if they never do.

        ``used`` gives (every use visible, those ranked up to this one).
        """

        async def refund() -> None:
            await collection.delete_one({"_id": use["_id"]})

        for attempt in range(self.ATTEMPTS):
            try:
                await collection.insert_one(use)
            except DuplicateKeyError:
                return _nothing  # the same command again (a retry): counted when first made
            try:
                everyone, ahead = await used()
            except BaseException:
                await refund()
                raise
            if everyone <= limit:
                return refund
            await refund()
            if ahead > limit or attempt == self.ATTEMPTS - 1:
                return None
            # Racing requests saw each other; a random pause lets some of them through.
            await asyncio.sleep(random.uniform(0.01, 0.05) * (attempt + 1))  # nosec B311  # a pause, not a secret
        return None

    async def _tasks_in_use(self, tenant: str, mine: str, now: datetime, limit: int) -> tuple[int, int]:
        """The tenant's tasks (not deleted) in the views plus pending creates: all, and those up to ``mine``.

        Read by ``_id`` where it can be (FerretDB scans a collection for any other filter, ``$in``
        included): the statistics view's documents of the tenant rather than its tasks. The
        pending creates are one query over the reservations, which the projector keeps about as
        short as its lag. Over ``limit``, a reservation of a create the tasks view already shows
        (each looked up by ``_id``) is dropped and not counted.
        """
        creates = self._views.db[CREATES]
        recent = creates.find({"tenant": tenant, "at": {"$gte": now - self._pending}}, {"_id": 1, "at": 1})
        pending = {doc["_id"]: (doc["at"], doc["_id"]) async for doc in recent}
        # Read after the reservations: the projector retires a reservation only once the batch's
        # statistics are written, so a create is counted by one or the other, or for a moment
        # by both (which errs on the safe side), never by neither.
        live = await self._views.live_tasks(tenant, self._settings.partitions)
        if live + len(pending) > limit:
            others = [task_id for task_id in pending if task_id != mine]
            for task_id in await self._views.shown(others) if others else []:
                await creates.delete_one({"_id": task_id})
                del pending[task_id]
            # Again, after the tasks view: a task it showed has its statistics written.
            live = await self._views.live_tasks(tenant, self._settings.partitions)
        return live + len(pending), live + _ahead(pending, mine)

    async def _sweep(self, now: datetime) -> None:
        """Forget creates past their pending time and triggers of past minutes (once a minute per process)."""
        if time.monotonic() - self._swept_at < 60:
            return
        self._swept_at = time.monotonic()
        db = self._views.db
        await db[CREATES].delete_many({"at": {"$lt": now - self._pending}})
        await db[TRIGGERS].delete_many({"at": {"$lt": now - timedelta(minutes=2)}})


def _ahead(ranks: dict[str, tuple[datetime, str]], mine: str) -> int:
    """How many of ``ranks`` come before ``mine``, or are it (all of them if it is not there)."""
    position = ranks.get(mine)
    return sum(1 for rank in ranks.values() if position is None or rank <= position)
