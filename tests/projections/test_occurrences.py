"""The ``occurrences`` view through the real store and FerretDB: documents written by the
projector's own code, read back as the API reads them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from api.queries import Views
from projections.occurrences import SCHEDULE_KINDS, instant, missed_fact, run_facts, segments
from projections.read import CollectionNames
from projections.store import Positioned, ViewStore, probe
from scheduler import decision
from scheduler.occurrence_log import Facts, build, window
from scheduler.state import TaskState
from schemas.commands import Command, CreateTask, DeleteTask, ReportExecutionOutcome, UpdateTask, Wake
from schemas.events import Event
from tests.unit.unit_support import T0, cmd, definition

Db = AsyncDatabase[dict[str, Any]]
NAMES = CollectionNames()


async def test_slots_to_the_microsecond_stay_in_their_segment_across_batches(mongo_db: Db) -> None:
    """An interval anchored at its creation instant has slots to the microsecond, and BSON dates
    keep milliseconds: a segment closed by an update must end at the exact last slot handled
    (``tasks.last_slot_us``), not at its rounded date, or that slot drops out of the log."""
    created_at = T0 + timedelta(seconds=0.123456)
    every_minute = definition(schedule={"kind": "interval", "every_seconds": 60})
    state: TaskState | None = None
    events: list[Event] = []

    def apply(command: Command) -> None:
        nonlocal state
        decided = decision(command, state)
        events.extend(decided.events)
        state = decided.state

    apply(cmd(CreateTask, created_at, definition=every_minute))
    for _ in range(3):
        assert state is not None and state.next_fire_at is not None
        apply(cmd(Wake, state.next_fire_at))
        (execution_id,) = state.in_flight
        apply(
            cmd(
                ReportExecutionOutcome, state.last_slot, execution_id=execution_id, attempt=1, worker="w",
                status="succeeded", started_at=state.last_slot, finished_at=state.last_slot,
            )
        )  # fmt: skip
    apply(cmd(UpdateTask, T0 + timedelta(minutes=3, seconds=30), definition=definition()))

    # One event per batch, each through a store holding nothing: every task document is read
    # back from the server, with its dates rounded to milliseconds.
    for offset, event in enumerate(events):
        await ViewStore(mongo_db, NAMES, await probe(mongo_db)).apply([Positioned(event, 0, offset)])

    task = await mongo_db[NAMES.tasks].find_one({"_id": "task-1"})
    assert task is not None
    docs = [d async for d in mongo_db[NAMES.occurrences].find({"task_id": "task-1"})]
    schedule = [d for d in docs if d["kind"] in SCHEDULE_KINDS]
    facts = Facts.of(
        run_facts(d for d in docs if d["kind"] == "run"),
        (missed_fact(d) for d in docs if d["kind"] == "missed"),
    )
    page = window(segments(schedule, task), T0, T0 + timedelta(minutes=30), limit=100)
    log = build(page.slots, facts, T0 + timedelta(minutes=4))
    first_segment = [(o.slot, o.fate) for o in log if o.slot is not None and o.slot < T0 + timedelta(minutes=10)]
    assert first_segment == [(created_at + timedelta(minutes=m), "fired") for m in (1, 2, 3)]
    assert [o.fate for o in log if o.slot is not None and o.slot >= T0 + timedelta(minutes=10)][:1] == ["not_yet_due"]


def _doc(step: str, seq: int, **fields: Any) -> dict[str, Any]:
    return {"execution_id": "ex", "slot_us": 60_000_000, "step": step, "seq": seq, **fields}


RUNS = [
    (
        "dispatched, retried, succeeded: the first attempt's reason, the most attempts",
        [
            _doc("dispatched", 2, reason="schedule", attempt=1, at_us=61_000_000),
            _doc("dispatched", 5, reason="retry", attempt=2, at_us=90_000_000),
            _doc("completed", 7, status="succeeded", attempt=2),
        ],
        ("schedule", 2, "succeeded", 61),
    ),
    (
        "buffered, then dispatched when the other ended",
        [
            _doc("buffered", 3, reason="buffered", attempt=0),
            _doc("dispatched", 6, reason="buffered", attempt=1, at_us=70_000_000),
        ],
        ("buffered", 1, None, 70),
    ),
    (
        "buffered, cancelled while waiting",
        [_doc("buffered", 3, reason="buffered", attempt=0), _doc("completed", 4, status="cancelled", attempt=0)],
        ("buffered", 0, "cancelled", None),
    ),
    (
        "in any order (redelivery)",
        [
            _doc("completed", 7, status="failed", attempt=1),
            _doc("dispatched", 2, reason="schedule", attempt=1, at_us=61_000_000),
        ],
        ("schedule", 1, "failed", 61),
    ),
]


@pytest.mark.parametrize(("docs", "expected"), [r[1:] for r in RUNS], ids=[r[0] for r in RUNS])
def test_the_documents_of_an_execution_read_back_as_one_run(
    docs: list[dict[str, Any]], expected: tuple[Any, ...]
) -> None:
    (run,) = run_facts(docs)
    dispatched = None if run.dispatched_at is None else int(run.dispatched_at.timestamp())
    assert (run.reason, run.attempts, run.status, dispatched) == expected
    assert run.slot == instant(60_000_000) and run.execution_id == "ex"


async def test_the_api_reads_a_recreated_task_s_log_from_its_own_incarnation(mongo_db: Db) -> None:
    """A one-shot at one time, run, deleted and created again under the same id: the slot is the
    same, the executions are not, and the API's reads give the new incarnation's."""
    once = definition(schedule={"kind": "once", "at": (T0 + timedelta(minutes=1)).isoformat()})
    state: TaskState | None = None
    events: list[Event] = []
    for command in (
        cmd(CreateTask, T0, definition=once, task_id="acme/t"),
        cmd(Wake, T0 + timedelta(minutes=1), task_id="acme/t"),
        cmd(DeleteTask, T0 + timedelta(minutes=2), task_id="acme/t"),
        cmd(CreateTask, T0 + timedelta(minutes=3), definition=once, task_id="acme/t"),
        cmd(Wake, T0 + timedelta(minutes=3), task_id="acme/t"),
    ):
        decided = decision(command, state)
        events += decided.events
        state = decided.state
    await ViewStore(mongo_db, NAMES, await probe(mongo_db)).apply([Positioned(e, 0, i) for i, e in enumerate(events)])
    dispatched = [e for e in events if e.type == "ExecutionDispatched"]
    assert len({e.execution_id for e in dispatched}) == 2

    views = Views(mongo_db)
    task = await views.task("acme", "t")
    assert task is not None
    segs, since = await views.occurrence_segments("acme", task)
    page = window(segs, T0, T0 + timedelta(hours=1), limit=10)
    facts = await views.occurrence_facts("acme", "acme/t", since_seq=since, slots=[o.slot for _, o in page.slots])
    log = build(page.slots, facts, T0 + timedelta(minutes=3))
    assert [(o.slot, o.fate, o.execution_id) for o in log] == [
        (T0 + timedelta(minutes=1), "fired", dispatched[-1].execution_id)
    ]
