"""Envelope codec: round trips, and decode failures classified for the stream shell."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from scheduler import decide, evolve, reject_invalid
from schemas.commands import (
    COMMAND_TYPES,
    BackfillTask,
    CancelBackfill,
    CancelExecution,
    CreateTask,
    DeleteTask,
    PauseTask,
    ReportExecutionOutcome,
    ReportExecutionStarted,
    ResumeTask,
    TriggerTask,
    UpdateTask,
    Wake,
)
from schemas.envelope import command_envelope, decode_command, decode_event, encode, event_envelope
from schemas.errors import DecodeError, InvalidCommand
from schemas.events import EVENT_TYPES
from schemas.ids import execution_id_for_slot
from tests.unit.unit_support import T0, TASK, at, cmd, definition

SLOT10 = execution_id_for_slot(TASK, at(10))
DEF = definition(overlap="buffer_one", retry={"max_attempts": 2, "jitter": 0}, end_at=at(45).isoformat())
STARTED = {"execution_id": SLOT10, "attempt": 1, "worker": "w", "started_at": at(10, seconds=1)}


def sample_commands() -> list[Any]:
    return [
        cmd(CreateTask, T0, definition=DEF),
        cmd(UpdateTask, at(1), definition=DEF, expected_revision=1),
        cmd(PauseTask, at(2), note="n"),
        cmd(ResumeTask, at(3)),
        cmd(Wake, at(10)),
        cmd(ReportExecutionStarted, at(10, seconds=1), **STARTED),
        cmd(
            ReportExecutionOutcome,
            at(11),
            **STARTED,
            status="failed",
            error="HTTP 500",
            result={"body": "x"},
            finished_at=at(11),
        ),
        cmd(Wake, at(20)),
        # Past the hold of the 00:40 slot (it waits for the execution in flight until 00:42).
        cmd(Wake, at(42)),
        cmd(TriggerTask, at(42), trigger_id="tr", params={"x": [1, 2]}, priority="high"),
        cmd(CancelExecution, at(41), execution_id="nope", reason="test"),
        cmd(BackfillTask, at(41), backfill_id="bf", from_=T0, to=at(25), max_concurrency=2),
        cmd(CancelBackfill, at(41), backfill_id="bf", reason="test"),
        cmd(DeleteTask, at(41)),
    ]


def sample_events() -> list[Any]:
    state = None
    events: list[Any] = []
    for command in sample_commands():
        for event in decide(command, state):
            state = evolve(state, event)
            events.append(event)
    return events


def test_samples_cover_every_type() -> None:
    assert {c.type for c in sample_commands()} == set(COMMAND_TYPES)
    assert {e.type for e in sample_events()} == set(EVENT_TYPES)


@pytest.mark.parametrize("command", sample_commands(), ids=lambda c: c.type)
def test_command_round_trip(command: Any) -> None:
    envelope = command_envelope(command, "/tests")
    raw = encode(envelope)
    assert decode_command(raw) == command
    parsed = orjson.loads(raw)
    assert parsed["specversion"] == "1.0"
    assert parsed["type"] == f"scheduler.command.{command.type}"
    assert parsed["subject"] == command.task_id and parsed["id"] == command.command_id
    assert parsed["correlationid"] == command.command_id and parsed["schemaversion"] == 1


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: f"{e.sequence}-{e.type}")
def test_event_round_trip(event: Any) -> None:
    raw = encode(event_envelope(event, "/tests/processor", correlation_id="corr-1"))
    assert decode_event(raw) == event
    parsed = orjson.loads(raw)
    assert parsed["type"] == f"scheduler.event.{event.type}"
    assert parsed["causationid"] == event.causation_id and parsed["correlationid"] == "corr-1"
    assert parsed["time"].endswith("Z")


GARBAGE = [
    pytest.param(b"", None, id="empty"),
    pytest.param(b"\xff\xfe", None, id="not-utf8"),
    pytest.param(b"[1, 2]", None, id="not-an-object"),
    pytest.param(b'{"specversion": "1.0"}', "id", id="missing-attributes"),
]


@pytest.mark.parametrize(("raw", "field"), GARBAGE)
def test_garbage_is_a_decode_error(raw: bytes, field: str | None) -> None:
    for decode in (decode_command, decode_event):
        with pytest.raises(DecodeError) as info:
            decode(raw)
        assert not isinstance(info.value, InvalidCommand)
        assert info.value.field == field


def envelope_dict(command: Any) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(encode(command_envelope(command, "/tests")))
    return result


def test_unknown_type_and_event_on_command_path_are_decode_errors() -> None:
    raw = envelope_dict(cmd(PauseTask, at(1)))
    for bad in ("scheduler.command.Explode", "scheduler.event.TaskPaused", "com.example.other"):
        with pytest.raises(DecodeError) as info:
            decode_command(orjson.dumps(raw | {"type": bad}))
        assert not isinstance(info.value, InvalidCommand) and info.value.field == "type"


def test_bad_cron_is_an_invalid_command_naming_the_field() -> None:
    raw = envelope_dict(cmd(CreateTask, T0, definition=definition(), command_id="create-1"))
    raw["data"]["definition"]["schedule"]["expression"] = "every tuesday"
    with pytest.raises(InvalidCommand) as info:
        decode_command(orjson.dumps(raw))
    error = info.value
    assert error.field == "definition.schedule.expression"
    assert (error.task_id, error.tenant, error.command_id, error.command_type) == (
        TASK,
        "acme",
        "create-1",
        "CreateTask",
    )
    assert error.at == T0

    events = reject_invalid(error, None)
    (rejected,) = events
    assert rejected.type == "CommandRejected" and rejected.sequence == 1
    assert (rejected.field, rejected.command_id) == ("definition.schedule.expression", "create-1")
    state = evolve(None, events[0])
    assert reject_invalid(error, state) == []  # redelivery of the same bad command


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        pytest.param(lambda d: d["definition"].pop("work"), "definition.work", id="missing-field"),
        pytest.param(
            lambda d: d["definition"].update(retry={"max_attempts": 0}),
            "definition.retry.max_attempts",
            id="nested",
        ),
        pytest.param(
            lambda d: d["definition"]["work"].update(accepted_statuses=[200, 99]),
            "definition.work.accepted_statuses",
            id="through-work-union",
        ),
        pytest.param(lambda d: d.update(at="2026-01-01T00:00:00"), "at", id="naive-time"),
        pytest.param(lambda d: d.update(task_id="another"), "task_id", id="body-disagrees-with-subject"),
        pytest.param(lambda d: d.update(extra=1), "extra", id="unknown-field"),
    ],
)
def test_invalid_bodies(mutate: Any, field: str) -> None:
    raw = envelope_dict(cmd(CreateTask, T0, definition=definition()))
    mutate(raw["data"])
    with pytest.raises(InvalidCommand) as info:
        decode_command(orjson.dumps(raw))
    assert info.value.field == field


def test_invalid_event_body_is_a_plain_decode_error() -> None:
    event = sample_events()[0]
    raw: dict[str, Any] = orjson.loads(encode(event_envelope(event, "/p", None)))
    raw["data"]["sequence"] = 0
    with pytest.raises(DecodeError) as info:
        decode_event(orjson.dumps(raw))
    assert info.value.field == "data.sequence"
