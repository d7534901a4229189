"""The task processor's state store: each task's state in the Faust table, with a decoded cache.

What the table keeps per task (:class:`Stored`, encoded with orjson, schema version
:data:`STORED_VERSION`): the state, the events of the last command that changed it (sent
again after recovery, see ``streams.app``), when it was applied, and a denormalised index
entry (task, tenant, next wakeup, partition) so the due-index rebuild validates no state.
"""

from __future__ import annotations

import fcntl
import functools
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from pydantic import BaseModel, TypeAdapter

from scheduler import TaskState, next_wakeup
from schemas.events import Event
from schemas.specs import TOLERANT

STORED_VERSION = 2
"""Version of the stored document. 1 (no ``v``): no partition in the index entry, or no
index entry at all (the oldest); 2: ``index`` is ``[task, tenant, wakeup, partition]``."""

_EVENTS = TypeAdapter(list[Event])


@functools.lru_cache(maxsize=1 << 16)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as the Java client).

    Cached: the same task ids come back every period, and murmur2 in Python costs 2 us a key."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass
class Stored:
    """What the table keeps per task: the state, the last command's events, when, and where."""

    state: TaskState
    last_events: list[Event]
    applied_at: float
    partition: int
    events_json: list[dict[str, Any]] | None = None
    """``last_events`` as ``model_dump(mode="json")`` gives them, when the caller has them."""

    def dump(self) -> bytes:
        wakeup = next_wakeup(self.state)
        return orjson.dumps(
            {
                "v": STORED_VERSION,
                "state": self.state.model_dump(mode="json"),
                "last_events": (
                    [e.model_dump(mode="json") for e in self.last_events]
                    if self.events_json is None
                    else self.events_json
                ),
                "applied_at": self.applied_at,
                # Denormalised for the due-index rebuild, which then validates no state.
                "index": [
                    self.state.task_id,
                    self.state.tenant,
                    wakeup.isoformat() if wakeup else None,
                    self.partition,
                ],
            }
        )

    @classmethod
    def from_doc(cls, doc: dict[str, Any], partition: int) -> Stored:
        """Decode a stored document; ``partition`` is used when the document does not say."""
        stored_partition = IndexEntry.read(doc).partition
        return cls(
            TaskState.model_validate(doc["state"], context=TOLERANT),
            _EVENTS.validate_python(doc["last_events"], context=TOLERANT),
            doc["applied_at"],
            partition if stored_partition is None else stored_partition,
        )


@dataclass(frozen=True)
class IndexEntry:
    """What the due-index needs of a stored task, read without validating its state."""

    task_id: str
    tenant: str
    wakeup: datetime | None
    applied_at: float
    partition: int | None
    """None for a version-1 document, which did not record it."""

    @classmethod
    def read(cls, doc: dict[str, Any]) -> IndexEntry:
        """The entry of a stored document."""
        if doc.get("v", 1) >= 2:
            task_id, tenant, wakeup, stored_partition = doc["index"]
            when = datetime.fromisoformat(wakeup) if wakeup is not None else None
            return cls(task_id, tenant, when, doc["applied_at"], stored_partition)
        if "index" in doc:
            task_id, tenant, wakeup = doc["index"]
            when = datetime.fromisoformat(wakeup) if wakeup is not None else None
            return cls(task_id, tenant, when, doc["applied_at"], None)
        state = TaskState.model_validate(doc["state"], context=TOLERANT)
        return cls(state.task_id, state.tenant, next_wakeup(state), doc["applied_at"], None)


_ALL_FIELDS: dict[type[BaseModel], set[str]] = {}
"""Per model class, the one fields-set shared by its cached instances that have every field set."""


def share_field_sets(model: BaseModel) -> None:
    """Let ``model`` and the models inside it share one fields-set per class (in place).

    Pydantic gives every instance its own set of the names of the fields it was given: for a
    decoded state (seven models, every field given) those sets were 7 KB of its 11 KB, so most
    of the state cache. A model with every field set gets the set its class shares instead,
    equal to its own, so nothing reads differently. Nothing can change a shared set: the models
    are frozen (pydantic checks that before it records an assignment), adding a field name to a
    set of every field is a no-op, and ``model_copy`` copies the set before it updates it.
    """
    cls = type(model)
    fields = model.__pydantic_fields_set__
    shared = _ALL_FIELDS.get(cls)
    if fields is shared:
        return  # shared before, and so was everything inside it (frozen: the same objects)
    if len(fields) == len(cls.__pydantic_fields__) and cls.model_config.get("extra") != "allow":
        if shared is None:
            _ALL_FIELDS[cls] = fields
        else:
            object.__setattr__(model, "__pydantic_fields_set__", shared)
    for value in model.__dict__.values():
        if type(value) not in _LEAVES:
            _share_within(value)


_LEAVES = frozenset({str, int, float, bool, type(None), datetime})
"""Types of field values with no model inside. Checked first: ``isinstance`` against
``BaseModel`` (an ABC) is slow for the many plain values a state holds."""


def _share_within(value: object) -> None:
    if isinstance(value, dict):
        for item in value.values():
            if type(item) not in _LEAVES:
                _share_within(item)
    elif isinstance(value, list | tuple):
        if value and type(value[0]) not in _LEAVES:
            # Only containers of models or containers: the 64 recent command ids are strings.
            for item in value:
                _share_within(item)
    elif isinstance(value, BaseModel):
        share_field_sets(value)


class StateStore:
    """Load and save task states in the table, keeping recently used ones decoded.

    Decoding the stored JSON on every command cost more than deciding, so decoded states of
    recently touched tasks stay in a bounded LRU; the table stays the source of truth. The
    cache is cleared whenever partitions move. Cached states share their models' fields-sets
    (:func:`share_field_sets`): about 4 KB a state instead of 11 (a new task's).
    """

    def __init__(self, table: MutableMapping[bytes, bytes], partitions: int, cache_size: int) -> None:
        self.table = table
        self.partitions = partitions
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, TaskState] = OrderedDict()

    def load(self, key: bytes) -> TaskState | None:
        """The task's state, or None if it has none."""
        state = self._cache.get(key)
        if state is not None:
            self._cache.move_to_end(key)
            return state
        raw = self.table.get(key)
        if raw is None:
            return None
        # The state alone: validating the last events too doubled the cost of a cache miss.
        # TOLERANT: a state accepted under older rules is read, never refused.
        state = TaskState.model_validate(orjson.loads(raw)["state"], context=TOLERANT)
        self._remember(key, state)
        return state

    def save(
        self,
        key: bytes,
        state: TaskState | None,
        events: list[Event],
        partition: int,
        events_json: list[dict[str, Any]] | None = None,
    ) -> None:
        """Store the state a command led to (None deletes it) with the events that led there
        (``events_json``: the same, dumped, when the caller has them)."""
        if state is None:
            self.table.pop(key, None)
            self._cache.pop(key, None)
            return
        self.table[key] = Stored(state, events, time.time(), partition, events_json).dump()
        self._remember(key, state)

    def entries(self) -> Iterator[tuple[bytes, dict[str, Any], IndexEntry, int]]:
        """Every stored task of the active partitions: key, document, index entry and partition."""
        for key, raw in self.table.items():
            doc = orjson.loads(raw)
            entry = IndexEntry.read(doc)
            partition = entry.partition if entry.partition is not None else partition_for(key, self.partitions)
            yield key, doc, entry, partition

    def clear_cache(self) -> None:
        self._cache.clear()

    def _remember(self, key: bytes, state: TaskState) -> None:
        share_field_sets(state)
        self._cache[key] = state
        self._cache.move_to_end(key)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


class DataDirInUse(RuntimeError):
    """Another worker holds this state directory."""


def claim_data_dir(path: Path) -> int:
    """Lock ``path`` for this process (the lock lasts as long as the returned descriptor is open).

    Two workers on one state directory wait on each other's RocksDB locks whenever a partition
    moves between them, stall for seconds and can crash; each worker needs its own.

    :raises DataDirInUse: another process holds it, naming that process.
    """
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / "worker.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(
            f"the state directory {path} is in use by another worker (pid {holder}); "
            "give each worker its own SCHED_DATA_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd
