"""Reads of the MongoDB views, always filtered by the caller's tenant.

Internal task ids are ``<tenant>/<id>``: the id a client sees is namespaced by its tenant, so
tenants cannot collide or probe each other, and every query also filters on ``tenant``.
Lists use keyset (cursor) pagination with documents whose sort key is null coming last.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from api.errors import FieldError, Unprocessable
from api.reports import ROW_FIELDS, TaskLabel
from projections.folds import stats_id
from projections.occurrences import (
    FACT_KINDS,
    MISSED,
    RUN,
    SCHEDULE_KINDS,
    incarnation_seq,
    micros,
    missed_fact,
    run_facts,
    segments,
)
from projections.read import CollectionNames, active_collections, tenant_stats
from scheduler.occurrence_log import Facts, Segment

Doc = dict[str, Any]
PUBLIC_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
"""Shape of a public task or execution id; anything else cannot exist and is not found. Matched in
full: ``$`` would also match before a trailing newline (``"id\n"`` would be looked up)."""


def internal_task_id(tenant: str, public_id: str) -> str:
    """The task id on the wire and in the views: the client's id in the tenant's namespace."""
    return f"{tenant}/{public_id}"


def public_task_id(tenant: str, internal_id: str) -> str:
    """The id a client of ``tenant`` sees for an internal task id."""
    prefix = f"{tenant}/"
    return internal_id[len(prefix) :] if internal_id.startswith(prefix) else internal_id


@dataclass(frozen=True)
class SortSpec:
    """A sort order of a list: one field, a direction, ties broken by ``_id``; nulls come last."""

    field: str
    direction: int


TASK_SORTS: dict[str, SortSpec] = {
    "created_at": SortSpec("created_at", DESCENDING),
    "name": SortSpec("name", ASCENDING),
    "next_run": SortSpec("next_run", ASCENDING),
}
"""Sort orders of ``GET /v1/tasks``."""
EXECUTION_SORT = SortSpec("scheduled_for", DESCENDING)
"""Executions: newest first."""

TaskSort = Literal["created_at", "name", "next_run"]


# ---------------------------------------------------------------------------------------------
# Cursors: opaque to clients, a base64url JSON position
# ---------------------------------------------------------------------------------------------


def encode_cursor(kind: str, phase: int, value: Any, last_id: str | None) -> str:
    """An opaque cursor after the document with sort value ``value`` and id ``last_id``."""
    tagged = {"d": value.isoformat()} if isinstance(value, datetime) else {"v": value}
    raw = orjson.dumps({"k": kind, "p": phase, "x": tagged, "i": last_id})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1, strict=True)]
"""An integer BSON (so a query) can carry."""


def _no_int(value: Any) -> Any:
    # A float field would take an integer too large for Int64 and round it: refuse it instead.
    if isinstance(value, int):
        raise ValueError("integer out of range")
    return value


Finite = Annotated[float, BeforeValidator(_no_int), Field(allow_inf_nan=False)]
"""A finite number that was written as one (not an integer)."""


class _Moment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    d: Annotated[datetime, Field(strict=True)]
    """A datetime sort value (ISO 8601, as :func:`encode_cursor` writes it)."""


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Annotated[str, Field(max_length=1000)] | Int64 | Finite | None
    """Any other sort value: a string, a 64-bit integer, a finite number, or null."""


class _Cursor(BaseModel):
    """The position a cursor holds; anything else is not a cursor of this API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: str
    """The list (and sort) the cursor was made for."""
    p: Annotated[int, Field(strict=True, ge=0, le=1)]
    """Phase: 0 while documents with a sort value remain, 1 among the null-keyed ones."""
    x: _Moment | _Value
    """The sort value of the last document shown."""
    i: Annotated[str, Field(min_length=1, max_length=1000)] | None
    """The ``_id`` of the last document shown (None only at the start of phase 1)."""


_CURSOR = TypeAdapter(_Cursor)


def decode_cursor(cursor: str, kind: str) -> tuple[int, Any, Any]:
    """``(phase, value, last_id)`` of a cursor made for ``kind``; 422 naming ``cursor`` otherwise.

    A cursor is client input like any other: it is validated in full (types, 64-bit integers,
    finite numbers), since a value the query cannot encode would otherwise fail at the database.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = _CURSOR.validate_json(raw)
        if position.k != kind:
            raise ValueError("cursor made for another list")
        if position.i is None and position.p != 1:
            raise ValueError("bad cursor position")
        value = position.x.d if isinstance(position.x, _Moment) else position.x.v
        return position.p, value, position.i
    except (ValueError, binascii.Error):  # pydantic's ValidationError is a ValueError
        raise Unprocessable(
            "cursor: not a cursor returned by this list",
            errors=[FieldError(field="cursor", message="not a cursor returned by this list (with this sort)")],
        ) from None


def _after(spec: SortSpec, phase: int, value: Any, last_id: Any) -> Doc:
    """The keyset condition "strictly after (value, last_id)" in ``spec`` order."""
    op = "$gt" if spec.direction == ASCENDING else "$lt"
    if phase == 1:
        return {spec.field: None, "_id": {op: last_id}}
    return {"$or": [{spec.field: {op: value}}, {spec.field: value, "_id": {op: last_id}}]}


def _owned_by(tenant: str, doc: Doc | None) -> Doc | None:
    """``doc`` if it is the tenant's, else None.

    Documents are looked up by ``_id`` alone and the tenant checked here: FerretDB uses its
    index only for a bare ``{_id: ...}`` filter, and ``{_id, tenant}`` read the whole view on
    every GET (seconds under load).
    """
    return doc if doc is not None and doc.get("tenant") == tenant else None


class Views:
    """The view collections of one database, read for one tenant at a time."""

    def __init__(self, db: AsyncDatabase[Doc], cache_seconds: float = 1.0) -> None:
        self.db = db
        self._cache_seconds = cache_seconds
        self._names: CollectionNames | None = None
        self._names_at = 0.0

    async def names(self) -> CollectionNames:
        """The live collection names (switched by a replay), cached briefly."""
        now = time.monotonic()
        if self._names is None or now - self._names_at > self._cache_seconds:
            self._names = await active_collections(self.db)
            self._names_at = now
        return self._names

    async def ping(self) -> None:
        """Raise a pymongo error unless the server answers."""
        await self.db.command("ping")

    # -- tasks -------------------------------------------------------------------------------

    async def task(self, tenant: str, public_id: str) -> Doc | None:
        """The task document, or None (also for malformed ids and other tenants' tasks)."""
        if not PUBLIC_ID.fullmatch(public_id):
            return None
        names = await self.names()
        return _owned_by(tenant, await self.db[names.tasks].find_one({"_id": internal_task_id(tenant, public_id)}))

    async def tasks(
        self,
        tenant: str,
        *,
        status: str | None,
        work_type: str | None,
        tag: str | None,
        sort: str,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[Doc], str | None]:
        """A page of the tenant's tasks and the cursor of the next page."""
        query: Doc = {"tenant": tenant}
        query["status"] = status if status is not None else {"$ne": "deleted"}
        if work_type is not None:
            query["type"] = work_type
        if tag is not None:
            query["tags"] = tag
        names = await self.names()
        return await self._page(names.tasks, "tasks:" + sort, TASK_SORTS[sort], query, limit, cursor)

    # -- executions --------------------------------------------------------------------------

    async def execution(self, tenant: str, execution_id: str) -> Doc | None:
        """The execution document of the tenant, or None."""
        if not PUBLIC_ID.fullmatch(execution_id):
            return None
        names = await self.names()
        return _owned_by(tenant, await self.db[names.executions].find_one({"_id": execution_id}))

    async def executions(
        self, tenant: str, internal_id: str, *, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Doc], str | None]:
        """A page of a task's executions, newest first."""
        query: Doc = {"tenant": tenant, "task_id": internal_id}
        if status is not None:
            query["status"] = status
        names = await self.names()
        return await self._page(names.executions, "executions", EXECUTION_SORT, query, limit, cursor)

    async def scheduled_runs(self, tenant: str, task: Doc) -> int:
        """Executions of the task's schedule so far (what ``max_runs`` counts), as its view holds them.

        The tasks view counts them (``counters.scheduled_runs``): counting executions would go
        wrong once retention deletes old ones. A document projected before the counter existed
        (until a replay rebuilds the views) falls back to counting the executions still kept.
        """
        runs = (task.get("counters") or {}).get("scheduled_runs")
        if isinstance(runs, int):
            return runs
        query: Doc = {"tenant": tenant, "task_id": task["_id"], "reason": {"$in": ["schedule", "buffered"]}}
        if task.get("created_at") is not None:
            query["scheduled_for"] = {"$gte": task["created_at"]}
        names = await self.names()
        return await self.db[names.executions].count_documents(query)

    # -- the occurrence log ------------------------------------------------------------------

    async def occurrence_segments(self, tenant: str, task: Doc) -> tuple[list[Segment], int]:
        """The segments of the task's occurrence log (see :func:`projections.occurrences.segments`)
        and the sequence its current incarnation began at."""
        names = await self.names()
        query = {"task_id": task["_id"], "kind": {"$in": list(SCHEDULE_KINDS)}, "tenant": tenant}
        docs = [d async for d in self.db[names.occurrences].find(query)]
        return segments(docs, task), incarnation_seq(docs)

    async def occurrence_facts(self, tenant: str, internal_id: str, *, since_seq: int, slots: list[datetime]) -> Facts:
        """What the task's events recorded of ``slots`` (a page of its log): its runs and missed
        ranges touching them, from the incarnation that began at ``since_seq``."""
        if not slots:
            return Facts()
        names = await self.names()
        query = {
            "task_id": internal_id,
            "kind": {"$in": list(FACT_KINDS)},
            "slot_us": {"$lte": micros(max(slots))},
            "last_slot_us": {"$gte": micros(min(slots))},
            "seq": {"$gte": since_seq},
            "tenant": tenant,
        }
        docs = [d async for d in self.db[names.occurrences].find(query)]
        return Facts.of(
            run_facts(d for d in docs if d.get("kind") == RUN),
            (missed_fact(d) for d in docs if d.get("kind") == MISSED),
        )

    # -- audit and stats ---------------------------------------------------------------------

    async def live_tasks(self, tenant: str, partitions: int) -> int:
        """The tenant's tasks that are not deleted, from its statistics documents.

        One document per partition of ``task-events`` (``partitions`` of them), each read by
        ``_id``: the one lookup FerretDB answers without scanning the collection.
        """
        stats = self.db[(await self.names()).stats]
        found = await asyncio.gather(
            *(stats.find_one({"_id": stats_id(tenant, p)}, {"tasks": 1}) for p in range(partitions))
        )
        by_status = [doc.get("tasks") or {} for doc in found if doc is not None]
        return max(0, sum(int(n) for counts in by_status for status, n in counts.items() if status != "deleted"))

    async def shown(self, internal_ids: list[str]) -> list[str]:
        """Those of ``internal_ids`` the tasks view holds (in any status), each looked up by ``_id``."""
        tasks = self.db[(await self.names()).tasks]
        found = await asyncio.gather(*(tasks.find_one({"_id": task_id}, {"_id": 1}) for task_id in internal_ids))
        return [task_id for task_id, doc in zip(internal_ids, found, strict=True) if doc is not None]

    async def caused_by(self, tenant: str, internal_id: str, command_id: str) -> list[Doc]:
        """The audit documents of the events a command caused, in task order."""
        names = await self.names()
        query = {"task_id": internal_id, "tenant": tenant, "causation_id": command_id}
        docs = [d async for d in self.db[names.audit].find(query)]
        return sorted(docs, key=lambda d: d.get("sequence", 0))

    async def wait_for_command(
        self, tenant: str, internal_id: str, command_id: str, *, within: float, poll: float
    ) -> list[Doc]:
        """Poll the audit view until the command's events show; empty when ``within`` seconds pass first."""
        deadline = time.monotonic() + within
        while True:
            docs = await self.caused_by(tenant, internal_id, command_id)
            if docs:
                # One command's events can straddle two projector batches: look once more.
                await asyncio.sleep(poll)
                return await self.caused_by(tenant, internal_id, command_id)
            if time.monotonic() + poll > deadline:
                return []
            await asyncio.sleep(poll)

    async def task_events(
        self, tenant: str, internal_id: str, *, limit: int, before: int | None
    ) -> tuple[list[Doc], int | None]:
        """A page of a task's events (its audit documents), newest first, and the ``before`` of the
        next page (the smallest sequence shown) or None on the last page."""
        query: Doc = {"tenant": tenant, "task_id": internal_id}
        if before is not None:
            query["sequence"] = {"$lt": before}
        names = await self.names()
        found = self.db[names.audit].find(query).sort([("sequence", DESCENDING)]).limit(limit + 1)
        docs = [d async for d in found]
        if len(docs) > limit:
            return docs[:limit], int(docs[limit - 1]["sequence"])
        return docs, None

    async def stats(self, tenant: str) -> dict[str, Any]:
        """The tenant's summed statistics."""
        return await tenant_stats(self.db, tenant, await self.names())

    # -- reports -----------------------------------------------------------------------------

    async def report_rows(
        self, tenant: str, start: datetime, end: datetime, *, task_ids: list[str] | None, batch_size: int = 1000
    ) -> AsyncIterator[Doc]:
        """The tenant's executions scheduled in ``[start, end)``, reduced to :data:`api.reports.ROW_FIELDS`.

        ``task_ids`` (internal ids) narrows them to those tasks. Unsorted: a report needs every
        document once, in any order, and a sort would make the server hold the range. MongoDB
        serves the range from the ``(tenant, scheduled_for)`` index; FerretDB v1 reads the
        collection (it pushes down only bare ``_id`` filters).
        """
        query: Doc = {"tenant": tenant, "scheduled_for": {"$gte": start, "$lt": end}}
        if task_ids is not None:
            query["task_id"] = task_ids[0] if len(task_ids) == 1 else {"$in": task_ids}
        projection = {"_id": 0, **dict.fromkeys(ROW_FIELDS, 1)}
        names = await self.names()
        async for doc in self.db[names.executions].find(query, projection, batch_size=batch_size):
            yield doc

    async def task_labels(self, tenant: str) -> dict[str, TaskLabel]:
        """Public id, name and tags of every task of the tenant the tasks view holds (deleted
        ones too: their executions stay), by internal id."""
        names = await self.names()
        found = self.db[names.tasks].find({"tenant": tenant}, {"name": 1, "tags": 1, "tenant": 1})
        return {doc["_id"]: _label(tenant, doc) async for doc in found if doc.get("tenant") == tenant}

    async def task_label(self, tenant: str, public_id: str) -> TaskLabel | None:
        """The label of one task of the tenant, or None (read by ``_id`` alone)."""
        doc = await self.task(tenant, public_id)
        return None if doc is None else _label(tenant, doc)

    # -- pagination --------------------------------------------------------------------------

    async def _page(
        self, collection: str, kind: str, spec: SortSpec, query: Mapping[str, Any], limit: int, cursor: str | None
    ) -> tuple[list[Doc], str | None]:
        phase, value, last_id = (0, None, None) if cursor is None else decode_cursor(cursor, kind)
        coll = self.db[collection]
        docs: list[Doc] = []
        if phase == 0:
            cond: Doc = {spec.field: {"$ne": None}}
            if last_id is not None:
                cond = {"$and": [cond, _after(spec, 0, value, last_id)]}
            found = coll.find({"$and": [dict(query), cond]}).sort(
                [(spec.field, spec.direction), ("_id", spec.direction)]
            )
            docs = [d async for d in found.limit(limit + 1)]
            if len(docs) > limit:
                last = docs[limit - 1]
                return docs[:limit], encode_cursor(kind, 0, last.get(spec.field), last["_id"])
            last_id = None
        nulls: Doc = {spec.field: None}
        if phase == 1 and last_id is not None:
            nulls = _after(spec, 1, None, last_id)
        remaining = limit - len(docs)
        found = coll.find({"$and": [dict(query), nulls]}).sort([("_id", spec.direction)])
        more = [d async for d in found.limit(remaining + 1)]
        taken = more[:remaining]
        docs += taken
        if len(more) > remaining:
            # No null-keyed document shown yet: the next page starts at the first of them.
            return docs, encode_cursor(kind, 1, None, taken[-1]["_id"] if taken else None)
        return docs, None


def _label(tenant: str, doc: Doc) -> TaskLabel:
    tags = doc.get("tags")
    name = doc.get("name")
    return TaskLabel(
        public_task_id(tenant, str(doc["_id"])),
        name if isinstance(name, str) else None,
        tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
    )
