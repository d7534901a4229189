"""What an ``Idempotency-Key`` was first used for, shared by every API process through MongoDB.

The ids of a keyed command derive from (tenant, action, target, key) (see
:func:`api.commands.command_id_for`), so a retry is the same command. A key reused with a
*different* request would silently get the first request's result; the IETF Idempotency-Key
draft (draft-ietf-httpapi-idempotency-key-header, section 2.7) answers it with 422 instead. So
each keyed command leaves a fingerprint (SHA-256 of the canonical JSON of what the client
asked), stored under the command id: inserting is atomic on ``_id`` on MongoDB and FerretDB
alike, and a duplicate is compared. FerretDB has no TTL index: a record carries its time,
an expired one is replaced, and each process sweeps old ones now and then.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from api.errors import FieldError, Unprocessable
from schemas.commands import CommandBase

COLLECTION = "api_idempotency_keys"
"""Collection of the fingerprints, in the views' database (not a view: a replay leaves it alone)."""

_NOT_THE_REQUEST = frozenset({"command_id", "at", "actor"})
"""Fields of a command that are not what the client asked (ids, time, who): left out of the fingerprint."""


class IdempotencyKeyReused(Unprocessable):
    """The ``Idempotency-Key`` was already used, within its lifetime, for a different request."""

    slug, title = "idempotency-key-reused", "Idempotency-Key already used for another request"


def fingerprint(command: CommandBase) -> str:
    """SHA-256 of the canonical JSON (sorted keys, defaults filled in) of what ``command`` asks."""
    asked = command.model_dump(mode="json", exclude=set(_NOT_THE_REQUEST))
    return hashlib.sha256(orjson.dumps(asked, option=orjson.OPT_SORT_KEYS)).hexdigest()


class IdempotencyKeys:
    """The fingerprints of keyed commands in one database."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], ttl_seconds: float) -> None:
        self._collection = db[COLLECTION]
        self._ttl = timedelta(seconds=ttl_seconds)
        self._swept_at = 0.0

    async def remember(self, command: CommandBase) -> None:
        """Record ``command`` (whose id derives from its ``Idempotency-Key``), or check it is the same request.

        :raises IdempotencyKeyReused: the key (for this tenant, action and target) was used,
            less than the key's lifetime ago, with a request that differs from ``command``.
        """
        record = {"_id": command.command_id, "tenant": command.tenant, "fingerprint": fingerprint(command)}
        await self._sweep(command.at)
        for _ in range(3):  # an expired record is replaced; a concurrent replacement may win
            try:
                await self._collection.insert_one({**record, "at": command.at})
                return
            except DuplicateKeyError:
                pass
            first = await self._collection.find_one({"_id": command.command_id})
            if first is None:
                continue  # swept meanwhile
            if _aware(first["at"]) < command.at - self._ttl:
                await self._collection.delete_one({"_id": command.command_id, "at": first["at"]})
                continue
            if first.get("fingerprint") == record["fingerprint"]:
                return  # the same request again: the same ids, the command applies once
            message = (
                "this key was already used for another request (a different body, target or "
                "precondition); use a new key for a new request"
            )
            raise IdempotencyKeyReused(
                f"Idempotency-Key: {message}", errors=[FieldError(field="Idempotency-Key", message=message)]
            )

    async def _sweep(self, now: datetime) -> None:
        """Delete expired records, at most once per process every tenth of the lifetime."""
        if time.monotonic() - self._swept_at < self._ttl.total_seconds() / 10:
            return
        self._swept_at = time.monotonic()
        await self._collection.delete_many({"at": {"$lt": now - self._ttl}})


def _aware(value: datetime) -> datetime:
    # The API's client reads tz-aware datetimes; a record written by a naive client is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
