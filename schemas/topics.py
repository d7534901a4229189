"""The deployment's topic names: part of the wire contract, defined once.

Every process (worker, executors, projector, API, CLI) and every outside service names a
deployment's topics through :class:`Topics`: the name of each, after the deployment's
prefix (``SCHED_TOPIC_PREFIX``).
"""

from __future__ import annotations

from dataclasses import dataclass

COMMANDS = "commands"
TASK_EVENTS = "task-events"
OUTCOMES = "outcomes"
TRIGGERS = "triggers"
TRIGGER_RULES = "trigger-rules"
DEAD_LETTER = "dead-letter"
CALENDARS = "calendars"
NOTIFICATION_RULES = "notification-rules"
PRIORITIES = ("high", "normal", "low")
"""The dispatch priority classes, each with its own topic."""


def dispatch(priority: str) -> str:
    """The dispatch topic of a priority class (before the prefix)."""
    return f"dispatch.{priority}"


NAMES = (
    COMMANDS,
    TASK_EVENTS,
    OUTCOMES,
    TRIGGERS,
    TRIGGER_RULES,
    DEAD_LETTER,
    CALENDARS,
    NOTIFICATION_RULES,
    *(dispatch(p) for p in PRIORITIES),
)
"""Every topic of a deployment, before the prefix."""


@dataclass(frozen=True)
class Topics:
    """The full names of one deployment's topics."""

    prefix: str = ""

    def name(self, short: str) -> str:
        """The full name of a topic (or a consumer group) of this deployment."""
        return f"{self.prefix}{short}"

    @property
    def commands(self) -> str:
        """Commands and control messages, keyed by task id; co-partitioned with the state table."""
        return self.name(COMMANDS)

    @property
    def task_events(self) -> str:
        """Every event: the source of truth, kept forever."""
        return self.name(TASK_EVENTS)

    @property
    def outcomes(self) -> str:
        """``ExecutionCompleted`` events: the public contract for "what ran and how it ended"."""
        return self.name(OUTCOMES)

    @property
    def triggers(self) -> str:
        """External events that can start tasks."""
        return self.name(TRIGGERS)

    @property
    def trigger_rules(self) -> str:
        """Each task's trigger rules, keyed by task id (compacted; a tombstone when it has none),
        published by the task processor and read in full by the trigger router."""
        return self.name(TRIGGER_RULES)

    @property
    def dead_letter(self) -> str:
        """Messages that could not be decoded or applied, with the reason."""
        return self.name(DEAD_LETTER)

    @property
    def calendars(self) -> str:
        """Calendar changes (compacted), keyed ``<tenant>/<name>``; read whole by workers and the projector."""
        return self.name(CALENDARS)

    @property
    def notification_rules(self) -> str:
        """Per-tenant notification rules, keyed by tenant; compacted (the newest per tenant counts)."""
        return self.name(NOTIFICATION_RULES)

    def dispatch(self, priority: str) -> str:
        """The dispatch topic of a priority class."""
        return self.name(dispatch(priority))

    @property
    def all(self) -> tuple[str, ...]:
        """Every topic of the deployment."""
        return tuple(self.name(n) for n in NAMES)
