"""Applying events to the views: the thin I/O shell around :mod:`projections.views`.

Used by the live :class:`~projections.projector.Projector` and by :func:`~projections.replay.replay`
alike, so a replayed view is built by exactly the same code as the live one.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from projections.read import CollectionNames
from projections.views import Doc, TaskFacts, ViewOps, WriteOp, project
from schemas.events import Event

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
_IN_CHUNK = 1000
_PARALLEL_READS = 50
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
    on_server = await guards_on_server(db)
    task_ids = {item.event.task_id for item in items}
    read = load_facts if on_server else load_facts_by_id
    facts = await read(db[names.tasks], task_ids)
    ops = project(((i.event, i.partition, i.offset) for i in items), facts)
    write = write_ops if on_server else write_ops_guarded_here
    await write(db[names.stats], ops.stats)
    await write(db[names.tasks], ops.tasks)
    await write(db[names.executions], ops.executions)
    await write(db[names.audit], ops.audit)
    return ops


_GUARDS_ON_SERVER: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


async def guards_on_server(db: AsyncDatabase[Any]) -> bool:
    """Whether guarded writes go to the server as they are (MongoDB) or are checked here (FerretDB).

    FerretDB v1 looks a document up by index only when a filter is exactly ``{_id: ...}``; the
    guard of a guarded update (``{_id: ..., version: {$lt: n}}``) made it read and match every
    document of the collection, so each write grew slower with the view. On FerretDB the
    projector reads the document by ``_id``, checks the guard itself and updates by ``_id``.
    That is as safe while one projector owns each partition (the consumer group ensures it);
    during a rebalance, two projectors applying the same event at the same instant could both
    pass the check. MongoDB keeps the atomic guard in the filter.
    """
    client = db.client
    known = _GUARDS_ON_SERVER.get(client)
    if known is None:
        info = await client.admin.command("buildInfo")
        known = _GUARDS_ON_SERVER[client] = "ferretdbVersion" not in info
    return known


_FACTS = {"tenant": 1, "status": 1, "type": 1, "version": 1, "secrets": 1}
"""The fields of a ``tasks`` document that make its :class:`TaskFacts`."""


def _facts(docs: Iterable[Doc | None]) -> dict[str, TaskFacts]:
    return {
        doc["_id"]: TaskFacts(
            doc["tenant"],
            doc["status"],
            doc["type"],
            doc["version"],
            tuple((s["field"], s["id"]) for s in doc.get("secrets") or ()),
        )
        for doc in docs
        if doc is not None and "status" in doc
    }


async def load_facts(tasks: AsyncCollection[Any], task_ids: Iterable[str]) -> dict[str, TaskFacts]:
    """The facts of tasks as the ``tasks`` view holds them now."""
    ids = sorted(task_ids)
    facts: dict[str, TaskFacts] = {}
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        facts |= _facts(await tasks.find({"_id": {"$in": chunk}}, _FACTS).to_list())
    return facts


async def load_facts_by_id(tasks: AsyncCollection[Any], task_ids: Iterable[str]) -> dict[str, TaskFacts]:
    """:func:`load_facts` with one ``find_one`` by ``_id`` per task (indexed on FerretDB, where
    ``$in`` reads the whole collection)."""
    ids = sorted(task_ids)
    facts: dict[str, TaskFacts] = {}
    for start in range(0, len(ids), _PARALLEL_READS):
        chunk = ids[start : start + _PARALLEL_READS]
        facts |= _facts(await asyncio.gather(*(tasks.find_one({"_id": i}, _FACTS) for i in chunk)))
    return facts


def _guard(op: WriteOp) -> tuple[Any, Doc] | None:
    """The ``_id`` and the further conditions of a guarded update; None for any other write."""
    if not isinstance(op, UpdateOne):
        return None
    flt = dict(op._filter)  # pymongo keeps the parts of an operation private
    if set(flt) == {"_id"}:
        return None
    if op._upsert:
        raise ValueError(f"a guarded upsert cannot be checked client-side: {flt}")
    return flt["_id"], {k: v for k, v in flt.items() if k != "_id"}


def guard_matches(doc: Doc, conditions: Doc) -> bool:
    """Whether ``doc`` matches the guard ``conditions`` as MongoDB would: ``{field: {"$lt": v}}``
    (a missing field never matches) or ``{field: value}`` (None also matches a missing field)."""
    for name, condition in conditions.items():
        if isinstance(condition, dict):
            if set(condition) != {"$lt"}:
                raise ValueError(f"unsupported guard on {name!r}: {condition}")
            if name not in doc or doc[name] is None or not doc[name] < condition["$lt"]:
                return False
        elif doc.get(name) != condition:
            return False
    return True


async def write_ops_guarded_here(collection: AsyncCollection[Any], ops: list[WriteOp]) -> None:
    """:func:`write_ops`, with each guarded update checked here and then written by ``_id`` alone
    (see :func:`guards_on_server`). Order is kept: the writes before a guarded one are sent first.
    (Running the writes of different documents concurrently gained nothing: FerretDB on SQLite
    writes one at a time.)

    :raises pymongo.errors.PyMongoError: any failure but a duplicate insert.
    """
    pending: list[WriteOp] = []
    for op in ops:
        guard = _guard(op)
        if guard is None:
            pending.append(op)
            continue
        await write_ops(collection, pending)
        pending = []
        _id, conditions = guard
        doc = await collection.find_one({"_id": _id}, dict.fromkeys(conditions, 1))
        if doc is not None and guard_matches(doc, conditions):
            await collection.update_one({"_id": _id}, op._doc)
    await write_ops(collection, pending)


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
