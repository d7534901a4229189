"""The API's reads of the views, against the real server: by ``_id`` alone, tenant checked."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient, monitoring

from api.queries import Views
from tests.conftest import Infra, Names


class Finds(monitoring.CommandListener):
    """The filters of the ``find`` commands sent."""

    def __init__(self) -> None:
        self.filters: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.filters.append(dict(event.command.get("filter", {})))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_task_and_an_execution_are_read_by_id_alone_and_only_for_their_tenant(
    infra: Infra, names: Names
) -> None:
    """FerretDB uses an index only for a bare ``{_id}`` filter: ``{_id, tenant}`` read the
    whole view on every GET. The tenant is checked on the document instead."""
    finds = Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, event_listeners=[finds])
    try:
        db = client[names.database]
        await db["tasks"].insert_one({"_id": "acme/t1", "tenant": "acme", "name": "t1"})
        await db["executions"].insert_one({"_id": "x1", "tenant": "acme", "task_id": "acme/t1"})
        views = Views(db)
        await views.names()
        finds.filters.clear()
        task = await views.task("acme", "t1")
        execution = await views.execution("acme", "x1")
        assert task is not None and task["name"] == "t1"
        assert execution is not None and execution["task_id"] == "acme/t1"
        assert finds.filters == [{"_id": "acme/t1"}, {"_id": "x1"}]
        assert await views.execution("globex", "x1") is None, "another tenant's execution is not found"
        assert await views.task("globex", "t1") is None
    finally:
        await client.drop_database(names.database)
        await client.close()
