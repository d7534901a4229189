"""Where the task processor's output goes: events to their topics, bad input to dead-letter.

Every event goes to ``task-events``; ``ExecutionDispatched`` also to ``dispatch.<priority>``,
``ExecutionCompleted`` also to ``outcomes``, and a cancelled one that had been dispatched also to
every ``dispatch.<priority>`` topic, where it tells the executor running (or holding) the attempt
to stop it (see ``streams.executor``). Messages are sent straight through the app's
producer (see ``streams.app`` for why), keyed by task id.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.envelope import encode, event_envelope
from schemas.events import Event, ExecutionCompleted, ExecutionDispatched, TaskCreated, TaskDeleted, TaskUpdated
from schemas.topics import PRIORITIES
from schemas.triggers import TaskRules
from streams import metrics
from streams.deadletter import dead_letter_value
from streams.settings import Settings

log = logging.getLogger(__name__)

Send = Callable[[str, bytes | None, bytes | None, int | None], Awaitable[Any]]
"""``send(topic, key, value, partition)``: hand one message to the producer (value None: a tombstone)."""


@dataclass
class PublisherStats:
    events: int = 0
    rejected: int = 0
    dead_letters: int = 0


class Publisher:
    """Sends events and dead letters for one deployment."""

    def __init__(self, settings: Settings, send: Send, source: str) -> None:
        self._send = send
        self.source = source
        self.stats = PublisherStats()
        names = settings.topics
        self.events_topic = names.task_events
        self.outcomes_topic = names.outcomes
        self.dead_letter_topic = names.dead_letter
        self.trigger_rules_topic = names.trigger_rules
        self.dispatch_topics = {p: names.dispatch(p) for p in PRIORITIES}

    async def events(
        self,
        key: bytes,
        events: Sequence[Event],
        correlation_id: str | None = None,
        partition: int | None = None,
        events_json: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Send a task's events, each to every topic it belongs on, with the correlation id of
        what caused them (the command's, or the tick's id for scheduled wakes).

        ``partition``: the task's partition, when the caller knows it (the one it was applied
        in). Every topic written here has as many partitions as ``commands``, so it is the one
        the key would hash to, without hashing it again for each message. ``events_json``: the
        events dumped, when the caller has them."""
        for i, e in enumerate(events):
            self.stats.events += 1
            metrics.EVENTS.inc()
            data = None if events_json is None else events_json[i]
            value = encode(event_envelope(e, source=self.source, correlation_id=correlation_id, data=data))
            await self._send(self.events_topic, key, value, partition)
            if isinstance(e, ExecutionDispatched):
                if e.attempt == 1:
                    # Slot to dispatch, by the wall clock at publish: what a scheduled run waited.
                    late = metrics.lateness(e.slot, datetime.now(UTC))
                    if late is not None:
                        metrics.DISPATCH_LATENESS.observe(late)
                await self._send(self.dispatch_topics[str(e.priority)], key, value, partition)
            elif isinstance(e, ExecutionCompleted):
                await self._send(self.outcomes_topic, key, value, partition)
                if e.status == "cancelled" and e.attempts > 0:
                    # Same key, so the same partition the dispatch went to. Every priority's
                    # topic, because the event does not say which one the attempt went on (the
                    # task's priority may have changed since); cancellations are rare.
                    for topic in self.dispatch_topics.values():
                        await self._send(topic, key, value, partition)
            elif e.type == "CommandRejected":
                self.stats.rejected += 1
            elif isinstance(e, TaskCreated | TaskUpdated | TaskDeleted):
                await self._trigger_rules(key, e)

    async def _trigger_rules(self, key: bytes, e: TaskCreated | TaskUpdated | TaskDeleted) -> None:
        """Publish the task's trigger rules for the trigger router (``streams.triggers``): the
        rules, or a tombstone once it has none; a task created without rules has nothing to say."""
        rules = [] if isinstance(e, TaskDeleted) else e.definition.triggers
        if not rules and isinstance(e, TaskCreated):
            return
        value = None
        if rules:
            value = TaskRules(task_id=e.task_id, tenant=e.tenant, sequence=e.sequence, rules=rules).model_dump_json()
        await self._send(self.trigger_rules_topic, key, None if value is None else value.encode(), None)

    async def dead_letter(
        self, *, topic: str, partition: int, offset: int, key: bytes | None, payload: bytes, error: Exception
    ) -> None:
        """Send input that could not be decoded or applied to ``dead-letter``, with the reason."""
        self.stats.dead_letters += 1
        log.warning("dead-letter: %s[%d]@%d: %s", topic, partition, offset, error)
        value = dead_letter_value(topic=topic, partition=partition, offset=offset, payload=payload, error=error)
        await self._send(self.dead_letter_topic, key, value, None)
