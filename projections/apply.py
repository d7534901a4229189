"""Applying events to the views: the thin I/O shell around :mod:`projections.views`.

Used by the live :class:`~projections.projector.Projector` and by :func:`~projections.replay.replay`
alike, so a replayed view is built by exactly the same code as the live one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from projections.read import CollectionNames
from projections.views import TaskFacts, ViewOps, WriteOp, project
from schemas.events import Event

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
_IN_CHUNK = 1000
MAX_OPS_PER_WRITE = 50
"""Most operations sent in one ``bulk_write``.

FerretDB v1.24 (SQLite backend) never answers an ``update`` command carrying 100 or more
statements, and the stuck command can wedge the whole server; well below that is safe."""


@dataclass(frozen=True)
class Positioned:
    """An event with where it sits in the topic."""

    event: Event
    partition: int
    offset: int


async def apply_events(db: AsyncDatabase[Any], names: CollectionNames, items: Sequence[Positioned]) -> ViewOps:
    """Apply events (in log order per partition) to every view; returns the operations written.

    Order matters for correctness after a crash: ``stats`` are written first, because their
    task transitions are computed from the ``tasks`` view (see :func:`load_facts`). If a crash
    lands between the two, the redelivered events find ``tasks`` not yet moved on, and the
    ``stats`` guard skips what was already counted.

    :raises pymongo.errors.PyMongoError: a write failed; everything is safe to apply again.
    """
    if not items:
        return ViewOps()
    facts = await load_facts(db[names.tasks], {item.event.task_id for item in items})
    ops = project(((i.event, i.partition, i.offset) for i in items), facts)
    await write_ops(db[names.stats], ops.stats)
    await write_ops(db[names.tasks], ops.tasks)
    await write_ops(db[names.executions], ops.executions)
    await write_ops(db[names.audit], ops.audit)
    return ops


async def load_facts(tasks: AsyncCollection[Any], task_ids: Iterable[str]) -> dict[str, TaskFacts]:
    """The facts of tasks as the ``tasks`` view holds them now."""
    ids = sorted(task_ids)
    facts: dict[str, TaskFacts] = {}
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        cursor = tasks.find({"_id": {"$in": chunk}}, {"tenant": 1, "status": 1, "type": 1, "version": 1})
        async for doc in cursor:
            if "status" in doc:
                facts[doc["_id"]] = TaskFacts(doc["tenant"], doc["status"], doc["type"], doc["version"])
    return facts


async def write_ops(collection: AsyncCollection[Any], ops: list[WriteOp]) -> None:
    """Write operations in order; an insert hitting a duplicate key is already applied and skipped.

    :raises pymongo.errors.PyMongoError: any other failure.
    """
    start = 0
    while start < len(ops):
        chunk = ops[start : start + MAX_OPS_PER_WRITE]
        try:
            await collection.bulk_write(chunk, ordered=True)
            start += len(chunk)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if not errors or errors[0].get("code") != DUPLICATE_KEY:
                raise
            # An ordered bulk stops at the first error: carry on after it.
            start += int(errors[0]["index"]) + 1
