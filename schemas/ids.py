"""Deterministic identifiers.

Ids are uuid5 values derived from stable inputs so that every path (redelivery, replay, a
worker taking over a partition) computes the same id for the same thing. Executors pass the
execution id on (for HTTP as an ``Idempotency-Key`` header).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

NAMESPACE = uuid.UUID("6f1c5a52-3d0e-5b6c-9a57-1f2a8e4b7c10")
"""Namespace of every id derived here; changing it changes every id."""


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))``, without building a ``UUID`` on the way (a third of
    the time; three are derived per fire). A test holds it equal to the standard one."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _instant(value: datetime) -> str:
    # A fixed, zone-independent spelling: the same instant always yields the same id.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def execution_id_for_slot(task_id: str, slot: datetime) -> str:
    """Id of the execution of ``task_id`` for a scheduled slot (an aware datetime)."""
    return uuid5_text(NAMESPACE, f"slot\x1f{task_id}\x1f{_instant(slot)}")


def execution_id_for_trigger(task_id: str, trigger_id: str) -> str:
    """Id of the execution of ``task_id`` started by a manual trigger."""
    return uuid5_text(NAMESPACE, f"trigger\x1f{task_id}\x1f{trigger_id}")


def event_id(task_id: str, sequence: int) -> str:
    """Id of the event at ``sequence`` in the history of ``task_id``."""
    return uuid5_text(NAMESPACE, f"event\x1f{task_id}\x1f{sequence}")


def execution_id_for_backfill(task_id: str, backfill_id: str, slot: datetime) -> str:
    """Id of the execution of ``task_id`` for ``slot`` run by the backfill ``backfill_id``.

    Distinct from the slot's scheduled execution id: a backfill may run a slot the schedule ran
    (or missed) before, and the target must not take it for a redelivery of that run.
    """
    return uuid5_text(NAMESPACE, f"backfill\x1f{task_id}\x1f{backfill_id}\x1f{_instant(slot)}")
