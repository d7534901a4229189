"""Rolling upgrades: a consumer built from today's schemas reads events of a newer producer.

``data/newer_execution_dispatched.json`` is an ``ExecutionDispatched`` as a newer version
would write it: an envelope extension attribute (``traceparent``), a new event field
(``run_group``) and new fields inside the work spec. Commands stay strict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.envelope import decode_command, decode_event
from schemas.errors import DecodeError, InvalidCommand
from schemas.events import ExecutionDispatched
from schemas.specs import HttpWork

NEWER = Path(__file__).parent / "data" / "newer_execution_dispatched.json"


def _newer() -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(NEWER.read_bytes())
    return doc


def test_an_event_with_fields_this_version_does_not_know_is_read() -> None:
    event = decode_event(NEWER.read_bytes())
    assert isinstance(event, ExecutionDispatched)
    assert (event.task_id, event.sequence, event.execution_id, str(event.priority)) == ("acme/nightly", 7, "x1", "high")
    assert isinstance(event.work, HttpWork)
    assert event.work.url == "https://engine.example/runs" and event.work.headers == {"X-Team": "qa"}
    assert event.params == {"suite": "smoke"}


def test_an_event_that_is_wrong_and_not_only_newer_is_still_refused() -> None:
    doc = _newer()
    doc["data"]["attempt"] = 0  # a known field with an invalid value
    with pytest.raises(DecodeError) as err:
        decode_event(orjson.dumps(doc))
    assert err.value.field == "data.attempt"
    doc = _newer()
    del doc["data"]["execution_id"]  # a field this version needs
    with pytest.raises(DecodeError):
        decode_event(orjson.dumps(doc))


def test_commands_stay_strict() -> None:
    command = {
        "specversion": "1.0", "id": "c1", "source": "other-service", "type": "scheduler.command.PauseTask",
        "subject": "acme/nightly", "time": "2026-11-29T12:00:00Z", "tenant": "acme", "actor": "ops",
        "data": {"command_id": "c1", "task_id": "acme/nightly", "tenant": "acme", "actor": "ops",
                 "at": "2026-11-29T12:00:00Z", "note": "x", "pause_until": "tomorrow"},
    }  # fmt: skip
    with pytest.raises(InvalidCommand) as err:
        decode_command(orjson.dumps(command))
    assert err.value.field == "pause_until"
    command["traceparent"] = "00-abc"
    del command["data"]["pause_until"]  # type: ignore[attr-defined]
    with pytest.raises(DecodeError):
        decode_command(orjson.dumps(command))
