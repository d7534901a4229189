"""What readers (the API) need: the active collection names of the views, and tenant statistics.

A replay rebuilds the views into fresh collections and then switches to them by writing the
``view_aliases`` document; readers resolve the names with :func:`active_collections` (one small
``find_one``) instead of hard-coding them. FerretDB cannot ``renameCollection`` with
``dropTarget``, so the switch is this alias document rather than a rename.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

ALIASES_COLLECTION = "view_aliases"
"""Collection holding the one ``{_id: "active"}`` document naming the live view collections."""
ALIASES_ID = "active"
BASE_GENERATION = "base"
"""Generation of the views before any replay: the default collection names."""
PENDING_CREATES_COLLECTION = "api_quota_creates"
"""The API's reservations of the creates it accepted (see :mod:`api.quotas`), by internal task
id: each counts against its tenant's task quota until the live projector, having written the
task's creation (and its statistics) to the views, retires it."""


@dataclass(frozen=True)
class CollectionNames:
    """Names of the view collections."""

    tasks: str = "tasks"
    executions: str = "executions"
    audit: str = "audit"
    stats: str = "stats"
    occurrences: str = "occurrences"
    """The facts of the occurrence log (see :mod:`projections.occurrences`)."""

    def with_suffix(self, suffix: str) -> CollectionNames:
        """The same names with ``suffix`` appended (fresh collections for a replay)."""
        return CollectionNames(*(f"{name}{suffix}" for name in asdict(self).values()))

    def as_dict(self) -> dict[str, str]:
        """The names by view."""
        return asdict(self)


@dataclass(frozen=True)
class ActiveViews:
    """The alias document: which collections are live, since when, and from which replay."""

    collections: CollectionNames
    generation: str
    """``base``, or the id of the replay that built the collections."""
    end_offsets: dict[int, int]
    """Per partition, the offset the replay read up to (empty for ``base``)."""
    switched_at: datetime | None


async def active_views(db: AsyncDatabase[Any], default: CollectionNames | None = None) -> ActiveViews:
    """The live view collections; ``default`` (or the plain names) until a replay switched them."""
    doc = await db[ALIASES_COLLECTION].find_one({"_id": ALIASES_ID})
    if doc is None:
        return ActiveViews(default or CollectionNames(), BASE_GENERATION, {}, None)
    return ActiveViews(
        collections=CollectionNames(**doc["collections"]),
        generation=doc["generation"],
        end_offsets={int(p): int(o) for p, o in doc.get("end_offsets", {}).items()},
        switched_at=doc.get("switched_at"),
    )


async def active_collections(db: AsyncDatabase[Any], default: CollectionNames | None = None) -> CollectionNames:
    """The names of the live view collections (see :func:`active_views`)."""
    return (await active_views(db, default)).collections


async def switch_collections(
    db: AsyncDatabase[Any], collections: CollectionNames, generation: str, end_offsets: Mapping[int, int]
) -> None:
    """Make ``collections`` the live views (written by a replay once they are built)."""
    previous = await db[ALIASES_COLLECTION].find_one({"_id": ALIASES_ID})
    doc = {
        "collections": collections.as_dict(),
        "generation": generation,
        "end_offsets": {str(p): o for p, o in end_offsets.items()},
        "switched_at": datetime.now(UTC),
        "previous": None if previous is None else previous["collections"],
    }
    await db[ALIASES_COLLECTION].replace_one({"_id": ALIASES_ID}, doc, upsert=True)


async def tenant_stats(
    db: AsyncDatabase[Any], tenant: str, collections: CollectionNames | None = None
) -> dict[str, Any]:
    """A tenant's statistics: the sum of its per-partition ``stats`` documents.

    Returns ``{"executions": {...}, "by_type": {kind: {"executions": {...}, "duration":
    {"buckets": {...}, "sum_ms", "count"}}}, "tasks": {status: n}, "tasks_by_type": {kind: n}}``
    with every counter summed; missing counters are absent (read them as 0).
    """
    names = collections or await active_collections(db)
    total: dict[str, Any] = {}
    projection = {"_id": 0, "tenant": 0, "partition": 0, "offset": 0}
    async for doc in db[names.stats].find({"tenant": tenant}, projection):
        _add_into(total, doc)
    return total


def _add_into(total: dict[str, Any], doc: Mapping[str, Any]) -> None:
    for key, value in doc.items():
        if isinstance(value, Mapping):
            _add_into(total.setdefault(key, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
