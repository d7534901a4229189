"""The storage adapter of the views: loads the documents a batch touches, folds, writes each once.

Shared by the live :class:`~projections.projector.Projector` and :func:`~projections.replay.replay`,
so a replayed view is built by exactly the same code as the live one. The folds themselves
are pure (:mod:`projections.folds`); this module decides how they reach the server, from one
capability probe (:func:`probe`):

* every changed document is written once per batch as a whole, in unordered bulks of at most
  :data:`MAX_OPS_PER_WRITE` statements, addressed by ``_id``: *inserted* when the store knows
  none exists (it folded from no document: one it read and did not find, holds as absent, or
  an execution the batch opens beyond the high-water mark), else *replaced*. On FerretDB an
  insert costs a fraction of an upsert (a new execution with the view's indexes: 0.24 against
  0.65 ms, same run; see BENCHMARKS.md), and every fire opens one. An insert that meets a
  document after all (a batch applied again after it failed part-way, or a document the store
  did not know of) is a duplicate key: exactly those documents are read, the batch is folded
  again from them, and what that changes is written with the guarded replace below, so
  nothing is lost or applied twice;
* the guard (never apply an event twice or out of order) is the fold's own check against the
  document it folded from. On MongoDB the write also carries it atomically in the filter
  (``{_id, version: {$lt: new}}``; a document already there at that version or later makes the
  upsert a duplicate key, which is skipped). FerretDB v1 pushes down only bare ``_id`` filters
  (a guarded filter read the whole collection: 5.7 ms a write against 0.3 ms), so there the
  write is by ``_id`` alone and the guard rests on the documents the projector holds: it owns
  its partitions, keeps what it wrote for them (:class:`DocCache`), forgets them when they are
  revoked, and reads a document it does not hold by ``_id`` before folding into it.

Write order within a batch (for a crash in between): ``stats`` first, whose ``offset`` then
skips the batch when it comes again, then ``executions``, ``occurrences`` (write-once documents,
see :mod:`projections.occurrences`), ``tasks``, ``audit`` (what the API's ``?wait`` polls, so
a client that saw its command's events sees the task too), and last the API's reservations of
the creates the batch wrote (see :class:`ViewStore`).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pymongo import DeleteOne, InsertOne, ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from projections.folds import Doc, Folded, ViewDocs, execution_key, fold, opens_execution, touched
from projections.read import PENDING_CREATES_COLLECTION, CollectionNames
from schemas.events import Event, TaskCreated

DUPLICATE_KEY = 11000
MAX_OPS_PER_WRITE = 50
"""Most statements sent in one bulk write.

FerretDB v1.24 (SQLite backend) never answers an ``update`` command carrying 100 or more
statements, and the stuck command can wedge the whole server; well below that is safe."""
_PARALLEL_READS = 50
_IN_CHUNK = 1000

View = Literal["tasks", "executions", "stats"]
"""The views whose documents are folded in place (``audit`` and ``occurrences`` are write-once)."""


@dataclass(frozen=True)
class Positioned:
    """An event with where it sits in the topic."""

    event: Event
    partition: int
    offset: int


# ---------------------------------------------------------------------------------------------
# What the server can do: probed once per client
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What the view store's server does well (MongoDB: all; FerretDB v1: none of these)."""

    filters_pushed_down: bool
    """Filters beyond a bare ``_id`` (guards, ``$in``) use indexes: guards go atomically in the
    write's filter and many documents are read with one ``$in``."""
    ttl_indexes: bool
    """``expireAfterSeconds`` works (else a retention sweeper deletes old executions)."""
    server: str
    """``MongoDB <version>`` or ``FerretDB <version>``, for logs and reports."""


_PROBED: weakref.WeakKeyDictionary[Any, Capabilities] = weakref.WeakKeyDictionary()


async def probe(db: AsyncDatabase[Any]) -> Capabilities:
    """The capabilities of ``db``'s server, asked once per client (``buildInfo``).

    FerretDB says who it is in ``buildInfo`` (``ferretdbVersion``, ``ferretdbFeatures``); every
    other server is taken for MongoDB.
    """
    client = db.client
    known = _PROBED.get(client)
    if known is None:
        info = await client.admin.command("buildInfo")
        ferret = "ferretdbVersion" in info or "ferretdbFeatures" in info
        server = f"FerretDB {info.get('ferretdbVersion', '?')}" if ferret else f"MongoDB {info.get('version', '?')}"
        known = _PROBED[client] = Capabilities(filters_pushed_down=not ferret, ttl_indexes=not ferret, server=server)
    return known


# ---------------------------------------------------------------------------------------------
# The documents the projector holds
# ---------------------------------------------------------------------------------------------


class DocCache:
    """The documents of one view as last written (or read) by this process, with their partition.

    Bounded (least recently used go first: they are read again when needed). ``None`` records
    a document known not to exist.
    """

    def __init__(self, limit: int, *, track_evicted: bool = False) -> None:
        self.limit = limit
        self._docs: OrderedDict[str, tuple[int, Doc | None]] = OrderedDict()
        self.evicted: set[str] = set()
        """Keys dropped for room (kept only with ``track_evicted``: a fresh store must read them)."""
        self._track = track_evicted

    def __contains__(self, key: str) -> bool:
        return key in self._docs

    def __len__(self) -> int:
        return len(self._docs)

    def get(self, key: str) -> Doc | None:
        """The document held for ``key`` (None when absent or unknown)."""
        entry = self._docs.get(key)
        if entry is None:
            return None
        self._docs.move_to_end(key)
        return entry[1]

    def put(self, key: str, partition: int, doc: Doc | None) -> None:
        """Hold ``doc`` (as written) for ``key``."""
        self._docs[key] = (partition, doc)
        self._docs.move_to_end(key)
        while len(self._docs) > self.limit:
            evicted, _ = self._docs.popitem(last=False)
            if self._track:
                self.evicted.add(evicted)

    def forget(self, partitions: Collection[int]) -> None:
        """Drop the documents of ``partitions`` (revoked, or assigned again: another process may
        have written them meanwhile)."""
        for key in [k for k, (p, _) in self._docs.items() if p in partitions]:
            del self._docs[key]


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class ViewStore:
    """Applies batches of events to the views in ``names``.

    ``fresh`` says the collections were empty when this store started and nobody else writes
    them (a replay): a document never held is then known not to exist and is not read (one
    dropped from the cache for room is).

    ``retire_reservations`` (the live projector's store, not a replay's): once a batch has
    written the creation of tasks, their reservations in
    :data:`~projections.read.PENDING_CREATES_COLLECTION` are deleted by ``_id``, because the
    statistics the API counts tasks from now hold them. Done after the batch's ``stats`` writes,
    so a task is never counted by neither (for a moment it may be counted by both, which errs
    on the safe side of a quota).
    """

    def __init__(
        self,
        db: AsyncDatabase[Any],
        names: CollectionNames,
        capabilities: Capabilities,
        *,
        fresh: bool = False,
        cache_limit: int = 100_000,
        retire_reservations: bool = False,
    ) -> None:
        self.db = db
        self.names = names
        self.capabilities = capabilities
        self.fresh = fresh
        self.retire_reservations = retire_reservations
        self.tasks = DocCache(cache_limit, track_evicted=fresh)
        self.executions = DocCache(cache_limit, track_evicted=fresh)
        self.stats = DocCache(cache_limit, track_evicted=fresh)
        self.reads = 0
        """Documents read from the server so far (misses of the caches)."""
        self.writes = 0
        """Documents written so far."""
        self.high_water: dict[int, int | None] = {}
        """Per partition, the highest offset whose documents any process may have written to these
        collections (None: unknown). Set by the projector, which records it before it writes."""
        self.seconds = {"read": 0.0, "fold": 0.0, "write": 0.0}
        """Time spent reading documents, folding events and writing documents (where a batch goes)."""

    def forget(self, partitions: Collection[int]) -> None:
        """Drop what is held for ``partitions`` (see :meth:`DocCache.forget`)."""
        for cache in (self.tasks, self.executions, self.stats):
            cache.forget(partitions)

    async def apply(self, items: Sequence[Positioned]) -> Folded:
        """Fold ``items`` (log order per partition) into the views and write what changed.

        The held documents change only once everything is written, so a batch that failed
        part-way is folded again from the same documents and written again, harmlessly.

        :raises pymongo.errors.PyMongoError: a read or write failed; the batch is safe to apply again.
        """
        if not items:
            return Folded()
        events = [(i.event, i.partition, i.offset) for i in items]
        keys = touched(events)
        partition_of: dict[str, int] = {}
        for event, partition, _offset in events:
            partition_of[event.task_id] = partition
            key = execution_key(event)
            if key is not None:
                partition_of[key] = partition
        started = time.perf_counter()
        tasks = await self._held(self.tasks, self.names.tasks, keys.tasks)
        before = ViewDocs(
            tasks=tasks,
            executions=await self._held(
                self.executions, self.names.executions, keys.executions, self._new_executions(events, tasks)
            ),
            stats=await self._held(self.stats, self.names.stats, keys.stats),
        )
        read = time.perf_counter()
        folded = fold(before, events)
        folding = time.perf_counter()
        # What the server holds after the writes, where it differs from ``folded`` (inserts
        # that met a document: see _write).
        settled: dict[str, dict[str, Doc | None]] = {}
        settled["stats"] = await self._write("stats", folded.stats, before, events)
        settled["executions"] = await self._write("executions", folded.executions, before, events)
        # Before tasks: a task document at some version means its occurrences are there too.
        await self._insert(self.names.occurrences, folded.occurrences.inserts)
        settled["tasks"] = await self._write("tasks", folded.tasks, before, events)
        await self._insert(self.names.audit, folded.audit)
        if self.retire_reservations:
            created = sorted({event.task_id for event, _partition, _offset in events if isinstance(event, TaskCreated)})
            await _bulk(self.db[PENDING_CREATES_COLLECTION], [DeleteOne({"_id": task_id}) for task_id in created])
        self.writes += len(folded)
        written = time.perf_counter()
        self.seconds["read"] += read - started
        self.seconds["fold"] += folding - read
        self.seconds["write"] += written - folding
        # Hold what the batch touched, as it now stands on the server.
        for view, cache, new_docs, old_docs in (
            ("tasks", self.tasks, folded.tasks, before.tasks),
            ("executions", self.executions, folded.executions, before.executions),
            ("stats", self.stats, folded.stats, before.stats),
        ):
            for key in getattr(keys, view):
                partition = int(key.split("/", 1)[0]) if view == "stats" else partition_of[key]
                if key in settled[view]:
                    cache.put(key, partition, settled[view][key])
                else:
                    cache.put(key, partition, new_docs.get(key, old_docs.get(key)))
        return folded

    def _new_executions(self, events: Sequence[tuple[Event, int, int]], tasks: dict[str, Doc | None]) -> set[str]:
        """Executions that a batch opens and that cannot exist yet, so need not be read.

        An execution is opened by its dispatch (or buffering, or the missed slots) and is
        written before its task; so when that event is new to its task (the task's ``version``
        is below it) and sits beyond the partition's high-water mark (no process wrote anything
        from there yet), its document was never written. Anything else is read when not held.
        """
        new: set[str] = set()
        seen: set[str] = set()
        for event, partition, offset in events:
            key = execution_key(event)
            if key is None or key in seen:
                continue
            seen.add(key)
            high = self.high_water.get(partition)
            task = tasks.get(event.task_id)
            if (
                high is not None
                and offset > high
                and opens_execution(event)
                and task is not None
                and task.get("version", 0) < event.sequence
            ):
                new.add(key)
        return new

    async def _held(
        self, cache: DocCache, collection: str, keys: Iterable[str], absent: Collection[str] = ()
    ) -> dict[str, Doc | None]:
        """The documents for ``keys``: from the cache, else read by ``_id`` (unless fresh, or
        ``absent`` says it cannot exist)."""
        out: dict[str, Doc | None] = {}
        missing: list[str] = []
        for key in keys:
            if key in cache:
                out[key] = cache.get(key)
            elif (self.fresh and key not in cache.evicted) or key in absent:
                out[key] = None
            else:
                missing.append(key)
        if missing:
            found = await self._read(self.db[collection], sorted(missing))
            self.reads += len(missing)
            for key in missing:
                out[key] = found.get(key)
        return out

    async def _read(self, collection: AsyncCollection[Any], keys: list[str]) -> dict[str, Doc]:
        found: dict[str, Doc] = {}
        if self.capabilities.filters_pushed_down:
            for start in range(0, len(keys), _IN_CHUNK):
                async for doc in collection.find({"_id": {"$in": keys[start : start + _IN_CHUNK]}}):
                    found[doc["_id"]] = doc
            return found
        # FerretDB reads the whole collection for $in; find by _id is indexed.
        for start in range(0, len(keys), _PARALLEL_READS):
            chunk = keys[start : start + _PARALLEL_READS]
            for doc in await asyncio.gather(*(collection.find_one({"_id": k}) for k in chunk)):
                if doc is not None:
                    found[doc["_id"]] = doc
        return found

    async def _write(
        self, view: View, docs: dict[str, Doc], before: ViewDocs, events: Sequence[tuple[Event, int, int]]
    ) -> dict[str, Doc | None]:
        """Write the changed documents of ``view``: insert those folded from no document, replace
        the others (guarded, see :meth:`_replace`).

        Returns, for each insert that met a document after all, what the server now holds: the
        batch folded again from the document read back (written with the guarded replace when
        it changes it), else that document as read. Empty when every insert went in.
        """
        if not docs:
            return {}
        name = getattr(self.names, view)
        guard = "offset" if view == "stats" else "version"
        held: dict[str, Doc | None] = getattr(before, view)
        new = [doc for key, doc in sorted(docs.items()) if held.get(key) is None]
        await self._replace(name, {k: d for k, d in docs.items() if held.get(k) is not None}, guard)
        met = await _insert_new(self.db[name], new)
        if not met:
            return {}
        # Rare: a batch written again after it failed part-way (the documents are the same), or a
        # document this process did not know of. Fold the batch again from what is there; only
        # this view's documents are taken from it (the views written before it stand, as they
        # would have with an upsert from the same belief).
        found = await self._read(self.db[name], sorted(met))
        self.reads += len(met)
        again = getattr(fold(replace(before, **{view: {**held, **found}}), events), view)
        redo = {key: again[key] for key in met if key in again}
        await self._replace(name, redo, guard)
        return {key: redo.get(key, found.get(key)) for key in met}

    async def _replace(self, name: str, docs: dict[str, Doc], guard: str) -> None:
        """Write whole documents by ``_id`` (upsert); on MongoDB only over an older ``guard``."""
        if not docs:
            return
        atomic = self.capabilities.filters_pushed_down
        ops = [
            ReplaceOne({"_id": key, guard: {"$lt": doc[guard]}} if atomic else {"_id": key}, doc, upsert=True)
            for key, doc in sorted(docs.items())
        ]
        await _bulk(self.db[name], ops)

    async def _insert(self, name: str, docs: list[Doc]) -> None:
        """Insert write-once documents; one already there (same ``_id``) was written before."""
        await _bulk(self.db[name], [InsertOne(doc) for doc in docs])


async def _bulk(collection: AsyncCollection[Any], ops: Sequence[InsertOne[Any] | ReplaceOne[Any] | DeleteOne]) -> None:
    """Unordered bulks of at most :data:`MAX_OPS_PER_WRITE`; duplicate keys mean "already there".

    :raises pymongo.errors.PyMongoError: any other failure.
    """
    for start in range(0, len(ops), MAX_OPS_PER_WRITE):
        try:
            await collection.bulk_write(list(ops[start : start + MAX_OPS_PER_WRITE]), ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise


async def _insert_new(collection: AsyncCollection[Any], docs: Sequence[Doc]) -> set[str]:
    """Insert ``docs`` in unordered bulks of at most :data:`MAX_OPS_PER_WRITE`; returns the ``_id``
    of those that met a document with the same ``_id`` (the others are in).

    :raises pymongo.errors.PyMongoError: any other failure.
    """
    met: set[str] = set()
    for start in range(0, len(docs), MAX_OPS_PER_WRITE):
        chunk = docs[start : start + MAX_OPS_PER_WRITE]
        try:
            await collection.insert_many(chunk, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            met.update(chunk[e["index"]]["_id"] for e in errors)
    return met


async def apply_events(db: AsyncDatabase[Any], names: CollectionNames, items: Sequence[Positioned]) -> Folded:
    """Apply events to the views with a store that holds nothing yet (reads what it needs).

    :raises pymongo.errors.PyMongoError: as :meth:`ViewStore.apply`.
    """
    return await ViewStore(db, names, await probe(db)).apply(items)
