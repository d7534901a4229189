"""Wire-model validation: the errors name the offending field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.commands import CreateTask, PauseTask
from schemas.specs import CronSchedule, IntervalSchedule, OverlapPolicy, TaskDefinition


def errors(model: Any, data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(e["loc"], e["msg"]) for e in info.value.errors()]


BASE = {"name": "t", "work": {"kind": "handler", "name": "h"}}


@pytest.mark.parametrize(
    ("data", "loc", "fragment"),
    [
        (
            {"schedule": {"kind": "cron", "expression": "* * *"}},
            ("schedule", "cron", "expression"),
            "5 fields",
        ),
        (
            {"schedule": {"kind": "cron", "expression": "99 * * * *"}},
            ("schedule", "cron", "expression"),
            "invalid",
        ),
        (
            {"schedule": {"kind": "cron", "expression": "0 0 30 2 *"}},
            ("schedule", "cron", "expression"),
            "never",
        ),
        (
            {"schedule": {"kind": "cron", "expression": "R * * * *"}},
            ("schedule", "cron", "expression"),
            "random",
        ),
        (
            {"schedule": {"kind": "cron", "expression": "* * * * *", "timezone": "Mars/Olympus"}},
            ("schedule", "cron", "timezone"),
            "unknown IANA",
        ),
        (
            {"schedule": {"kind": "interval", "every_seconds": 0}},
            ("schedule", "interval", "every_seconds"),
            "> 0",
        ),
        (
            {"schedule": {"kind": "interval", "every_seconds": -5}},
            ("schedule", "interval", "every_seconds"),
            "0",
        ),
        (
            {"schedule": {"kind": "once", "at": "2026-01-01T00:00:00"}},
            ("schedule", "once", "at"),
            "timezone-aware",
        ),
        ({"start_at": "2026-01-01T00:00:00"}, ("start_at",), "start_at must be timezone-aware"),
        (
            {"start_at": "2026-01-02T00:00:00Z", "end_at": "2026-01-01T00:00:00Z"},
            ("end_at",),
            "end_at must be after start_at",
        ),
        ({"retry": {"multiplier": 0.5}}, ("retry", "multiplier"), "greater than or equal to 1"),
        ({"retry": {"jitter": 2}}, ("retry", "jitter"), "less than or equal to 1"),
        ({"max_runs": 0}, ("max_runs",), "greater than or equal to 1"),
        ({"overlap": "sometimes"}, ("overlap",), "skip"),
        ({"surprise": 1}, ("surprise",), "Extra inputs"),
        ({"work": {"kind": "http", "url": "ftp://x"}}, ("work", "http", "url"), "http"),
        ({"work": {"kind": "http", "url": "http://"}}, ("work", "http", "url"), "url must name a host"),
        ({"work": {"kind": "http", "url": "http://x:99999/"}}, ("work", "http", "url"), "not a valid URL"),
        ({"work": {"kind": "http", "url": "https://u:p@x/"}}, ("work", "http", "url"), "must not hold credentials"),
        (
            {"work": {"kind": "http", "url": "https://x/", "poll": {"status_url": "http:///s"}}},
            ("work", "http", "poll", "status_url"),
            "url must name a host",
        ),
        ({"work": {"kind": "kafka", "topic": "a/b"}}, ("work", "kafka", "topic"), "legal Kafka topic name"),
        ({"work": {"kind": "kafka", "topic": ".."}}, ("work", "kafka", "topic"), "legal Kafka topic name"),
    ],
)
def test_definition_errors_name_the_field(data: dict[str, Any], loc: tuple[Any, ...], fragment: str) -> None:
    found = errors(TaskDefinition, BASE | data)
    assert any(where == loc and fragment.replace("> 0", "greater than 0") in m for where, m in found), found


def test_naive_command_time_rejected_naming_the_field() -> None:
    found = errors(
        PauseTask,
        {"command_id": "c", "task_id": "t", "tenant": "a", "actor": "u", "at": datetime(2026, 1, 1)},
    )
    assert found[0][0] == ("at",) and "at must be timezone-aware" in found[0][1]


def test_datetimes_are_normalised_to_utc() -> None:
    pause = PauseTask(command_id="c", task_id="t", tenant="a", actor="u", at="2026-01-01T05:00:00+05:00")
    assert pause.at == datetime(2026, 1, 1, tzinfo=UTC) and pause.at.tzinfo is UTC


def test_cron_is_normalised_and_documented_defaults() -> None:
    assert CronSchedule(expression="  0   9 * *  1-5 ").expression == "0 9 * * 1-5"
    definition = TaskDefinition.model_validate(BASE)
    assert definition.schedule is None
    assert definition.overlap is OverlapPolicy.SKIP
    assert definition.catch_up.mode == "run_once" and definition.misfire_grace_seconds == 30
    assert definition.retry.max_attempts == 1 and definition.timeout_seconds == 3600


def test_models_are_frozen() -> None:
    schedule = IntervalSchedule(every_seconds=60)
    with pytest.raises(ValidationError):
        schedule.every_seconds = 5  # type: ignore[misc]


def test_every_enum_member_is_documented() -> None:
    import inspect

    import schemas.specs as specs

    for enum in (specs.OverlapPolicy, specs.CatchUpMode, specs.Priority):
        source = inspect.getsource(enum)
        for member in enum:
            assert f'{member.name} = "{member.value}"\n    """' in source, (enum.__name__, member.name)


def test_create_task_accepts_http_poll_spec() -> None:
    command = CreateTask.model_validate(
        {
            "command_id": "c",
            "task_id": "t",
            "tenant": "a",
            "actor": "u",
            "at": "2026-01-01T00:00:00Z",
            "definition": {
                "name": "suite",
                "work": {
                    "kind": "http",
                    "url": "https://engine/runs",
                    "poll": {"status_url": "https://engine/runs/{job_id}", "job_id_pointer": "/run/id"},
                    "cancel": {"method": "DELETE", "url": "https://engine/runs/{job_id}"},
                },
            },
        }
    )
    assert command.definition.work.kind == "http"
