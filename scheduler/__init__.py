"""The pure core of the scheduler (the Decider pattern).

No clock, no I/O, no asyncio: time comes in on commands. The stream shell loads a task's
state, calls :func:`decision` (the events and the state they lead to), stores the new state and
publishes the events; :func:`next_wakeup` keys its due-index.
"""

from scheduler.decider import (
    MAX_SLOTS_PER_DECISION,
    Decision,
    decide,
    decision,
    evolve,
    initial_state,
    reject_invalid,
    rejection,
)
from scheduler.schedule import fire_times, next_fire, next_slot
from scheduler.state import TaskState, dump_state, load_state, next_wakeup

__all__ = [
    "MAX_SLOTS_PER_DECISION",
    "Decision",
    "TaskState",
    "decide",
    "decision",
    "dump_state",
    "evolve",
    "fire_times",
    "initial_state",
    "load_state",
    "next_fire",
    "next_slot",
    "next_wakeup",
    "reject_invalid",
    "rejection",
]
