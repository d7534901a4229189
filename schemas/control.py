"""Messages on the ``commands`` topic that address a partition rather than one task.

The task processor applies a partition's messages in order, and its state table is
co-partitioned with ``commands``: whatever it writes while applying a message of partition
``p`` lands on partition ``p`` of the changelog. So one message sent to partition ``p`` can
carry work for every task of ``p``:

- :class:`Tick`: "apply what is due at or before ``at``", sent by the owner's firing loop at
  most once per partition per tick. One message per partition per tick instead of one per
  task per fire; a lost tick is covered by the next one, a repeated or stale one finds
  nothing due.
- :class:`CommandBatch`: several commands for tasks of one partition (executors' outcome
  reports), applied in order as if each had come alone.

Both travel in the same CloudEvents envelope as commands, with the type prefix
:data:`CONTROL_TYPE_PREFIX`, the subject ``partition/<p>`` and tenant ``system``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from schemas._types import UtcDatetime, WireModel

CONTROL_TYPE_PREFIX = "scheduler.control."
CONTROL_TENANT = "system"
"""The envelope tenant of a control message: it belongs to the deployment, not to a tenant."""
MAX_BATCH = 1000
"""Most commands one :class:`CommandBatch` carries."""


class Tick(WireModel):
    """Apply, on one partition, everything due at or before ``at`` (the firing loop's clock)."""

    type: Literal["Tick"] = "Tick"
    tick_id: str = Field(min_length=1, max_length=200)
    """Unique per tick; the ``Wake`` of each due task derives its command id from it."""
    partition: int = Field(ge=0)
    """The partition of ``commands`` this tick was sent to, and whose tasks it wakes."""
    at: UtcDatetime
    """The decider's "now" for every task this tick wakes."""
    worker: str = Field(min_length=1, max_length=200)
    """The worker whose firing loop sent it."""


class CommandBatch(WireModel):
    """Commands for tasks of one partition, applied in order; each keeps its own id and envelope."""

    type: Literal["CommandBatch"] = "CommandBatch"
    batch_id: str = Field(min_length=1, max_length=200)
    partition: int = Field(ge=0)
    """The partition of ``commands`` every command in the batch belongs to."""
    commands: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)
    """Command envelopes, as JSON objects, each decoded exactly like a single command."""


Control = Annotated[Tick | CommandBatch, Field(discriminator="type")]
"""Any control message, discriminated by ``type``."""

CONTROL_TYPES: dict[str, type[Tick] | type[CommandBatch]] = {"Tick": Tick, "CommandBatch": CommandBatch}
"""Control classes by their ``type`` literal."""
