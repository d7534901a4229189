"""Per-tenant quotas: the tasks a tenant may have, and the runs it may trigger a minute.

Shared by every API process through MongoDB, written to what FerretDB does correctly under
concurrency: inserts keyed by ``_id`` (atomic) and counts. Its ``$inc`` is not atomic (60
concurrent upserting increments of one counter left it at 5), so no counter is ever read,
modified and written: each use is a document of its own, inserted first and counted after
("reserve, then count"). Two requests racing for the last unit each count the other and are
both refused; a burst at the limit may be refused slightly early, it never gets past it.

Tasks are counted from the tasks view (not deleted) plus the creates accepted in the last
``quota_pending_seconds`` that the view does not show yet: the view lags the command by the
projector's delay, and without the pending ones a burst of creates would all see the old count.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from api.errors import TooManyRequests
from api.settings import ApiSettings
from api.views import Views
from schemas.commands import CommandBase, CreateTask, TriggerTask

CREATES = "api_quota_creates"
"""Creates accepted by the API, by internal task id: pending until the tasks view shows them."""
TRIGGERS = "api_quota_triggers"
"""Triggers accepted by the API, by command id, with their minute."""

Refund = Callable[[], Awaitable[None]]
"""Gives back what :meth:`Quotas.admit` took (for a command Kafka did not accept)."""


async def _nothing() -> None:
    return None


class Quotas:
    """The quotas of one deployment, checked against its views' database."""

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
        creates = self._views.db[CREATES]
        await self._sweep(command.at)
        try:
            await creates.insert_one({"_id": command.task_id, "tenant": command.tenant, "at": command.at})
        except DuplicateKeyError:
            return _nothing  # a retried create: counted when first made

        async def refund() -> None:
            await creates.delete_one({"_id": command.task_id})

        try:
            used = await self._tasks_in_use(command.tenant, command.at)
        except BaseException:
            await refund()
            raise
        if used > limit:
            await refund()
            raise TooManyRequests(
                f"the tenant has reached its quota of {limit} tasks; delete tasks to create others",
                retry_after=self._settings.retry_after_seconds,
            )
        return refund

    async def _tasks_in_use(self, tenant: str, now: datetime) -> int:
        """Tasks of the view (not deleted), plus recent creates the view does not show yet."""
        tasks = self._views.db[(await self._views.names()).tasks]
        live = await tasks.count_documents({"tenant": tenant, "status": {"$ne": "deleted"}})
        recent = self._views.db[CREATES].find({"tenant": tenant, "at": {"$gte": now - self._pending}}, {"_id": 1})
        pending = [doc["_id"] async for doc in recent]
        shown = await tasks.count_documents({"_id": {"$in": pending}, "tenant": tenant}) if pending else 0
        return live + len(pending) - shown

    async def _trigger(self, command: TriggerTask) -> Refund:
        _, limit = self._settings.quota(command.tenant)
        triggers = self._views.db[TRIGGERS]
        minute = int(command.at.timestamp() // 60)
        await self._sweep(command.at)
        try:
            doc: dict[str, Any] = {"_id": command.command_id, "tenant": command.tenant, "minute": minute}
            await triggers.insert_one({**doc, "at": command.at})
        except DuplicateKeyError:
            return _nothing  # a retried trigger: counted when first made

        async def refund() -> None:
            await triggers.delete_one({"_id": command.command_id})

        try:
            used = await triggers.count_documents({"tenant": command.tenant, "minute": minute})
        except BaseException:
            await refund()
            raise
        if used > limit:
            await refund()
            raise TooManyRequests(
                f"the tenant has reached its quota of {limit} triggered runs a minute",
                retry_after=60 - int(command.at.timestamp()) % 60,
            )
        return refund

    async def _sweep(self, now: datetime) -> None:
        """Forget creates past their pending time and triggers of past minutes (once a minute per process)."""
        if time.monotonic() - self._swept_at < 60:
            return
        self._swept_at = time.monotonic()
        db = self._views.db
        await db[CREATES].delete_many({"at": {"$lt": now - self._pending}})
        await db[TRIGGERS].delete_many({"at": {"$lt": now - timedelta(minutes=2)}})
