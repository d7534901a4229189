"""Names of the topics (before the deployment's prefix)."""

from __future__ import annotations

COMMANDS = "commands"
TASK_EVENTS = "task-events"
OUTCOMES = "outcomes"
TRIGGERS = "triggers"
DEAD_LETTER = "dead-letter"
PRIORITIES = ("high", "normal", "low")


def dispatch(priority: str) -> str:
    """The dispatch topic of a priority class."""
    return f"dispatch.{priority}"
