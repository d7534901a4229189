"""Wire-model validation: the errors name the offending field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from scheduler.decider import evolve
from scheduler.schedule import next_fire
from scheduler.state import dump_state, load_state
from schemas.commands import CreateTask, PauseTask
from schemas.envelope import command_envelope, decode_command, decode_event, encode, event_envelope
from schemas.errors import InvalidCommand
from schemas.events import TaskCreated
from schemas.specs import TOLERANT, CronSchedule, IntervalSchedule, OverlapPolicy, TaskDefinition


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
        # A directory of the zone database, and a path outside it: zoneinfo raises OSError for
        # these, which escaped the validator and answered 500.
        (
            {"schedule": {"kind": "cron", "expression": "* * * * *", "timezone": "Europe"}},
            ("schedule", "cron", "timezone"),
            "unknown IANA",
        ),
        (
            {"schedule": {"kind": "cron", "expression": "* * * * *", "timezone": "__pycache__"}},
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


# ---------------------------------------------------------------------------------------------
# Cron field errors name the field and its range (issue 11, item 12)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "fragments"),
    [
        ("61 * * * *", ["minute field '61'", "minute must be 0-59"]),
        ("0 24 * * *", ["hour field '24'", "hour must be 0-23"]),
        ("0 0 32 * *", ["day-of-month field '32'", "day-of-month must be 1-31"]),
        ("0 0 0 * *", ["day-of-month field '0'", "day-of-month must be 1-31"]),
        ("0 0 * 13 *", ["month field '13'", "month must be 1-12"]),
        ("0 0 * * 8", ["day-of-week field '8'", "day-of-week must be 0-7"]),
        ("0 0 * * funday", ["day-of-week field 'funday'", "day-of-week must be 0-7"]),
        ("60 0 0 * * *", ["second field '60'", "second must be 0-59"]),
        ("0 60 0 * * *", ["minute field '60'", "minute must be 0-59"]),
        ("*/0 * * * *", ["minute field '*/0'", "step after '/' must be at least 1"]),
        ("0 1-30/0 * * *", ["hour field '1-30/0'", "step after '/' must be at least 1"]),
        ("0 1-30 * * *", ["hour field '1-30'", "hour must be 0-23"]),
        ("1,2,99 * * * *", ["minute field '1,2,99'", "minute must be 0-59"]),
    ],
)
def test_cron_field_errors_name_the_field_and_its_range(expression: str, fragments: list[str]) -> None:
    found = errors(TaskDefinition, BASE | {"schedule": {"kind": "cron", "expression": expression}})
    assert len(found) == 1 and found[0][0] == ("schedule", "cron", "expression"), found
    for fragment in fragments:
        assert fragment in found[0][1], found


@pytest.mark.parametrize(
    "expression",
    ["0 22-2 * * *", "5-1 * * * *", "0 0 * 11-2 *", "0 0 L * *", "0 0 * * 1#2", "0 0 1 jan mon", "0 0 ? * 1"],
)
def test_forms_croniter_accepted_stay_accepted(expression: str) -> None:
    assert CronSchedule(expression=expression).expression == expression


def test_or_of_an_impossible_date_and_a_weekday_is_valid() -> None:
    """``0 0 31 2 1``: both day fields restricted, so OR: every Monday of February."""
    assert CronSchedule(expression="0 0 31 2 1").expression == "0 0 31 2 1"
    # An AND with no possible day still never matches.
    for never in ("0 0 31 2 *", "0 0 30 2 *", "0 0 31 2 */2"):
        found = errors(CronSchedule, {"expression": never})
        assert "never matches" in found[0][1], found


# ---------------------------------------------------------------------------------------------
# Jitter below the shortest gap (issue 11, item 9)
# ---------------------------------------------------------------------------------------------

JITTER_CASES = [
    # (schedule, largest accepted jitter, smallest rejected jitter)
    pytest.param({"kind": "cron", "expression": "* * * * *"}, 59.999, 60, id="every-minute"),
    pytest.param({"kind": "cron", "expression": "*/15 * * * *"}, 899, 900, id="quarter-hourly"),
    pytest.param({"kind": "cron", "expression": "0,10 * * * *"}, 599, 600, id="uneven-minutes"),
    pytest.param({"kind": "cron", "expression": "0,59 0,5,23 * * *"}, 59, 60, id="hour-boundary"),
    pytest.param({"kind": "cron", "expression": "0 1,23 * * *"}, 7199, 7200, id="across-midnight"),
    pytest.param({"kind": "cron", "expression": "0 1,23 * * 1"}, 79199, 79200, id="weekly-no-next-day"),
    pytest.param({"kind": "cron", "expression": "0 9 * * *"}, 86399, 86400, id="daily"),
    pytest.param({"kind": "cron", "expression": "0 0 1,31 * *"}, 86399, 86400, id="31st-then-1st"),
    pytest.param({"kind": "cron", "expression": "*/10 * * * * *"}, 9.5, 10, id="seconds-field"),
    pytest.param({"kind": "interval", "every_seconds": 60}, 59.9, 60, id="interval"),
]


@pytest.mark.parametrize(("schedule", "accepted", "rejected"), JITTER_CASES)
def test_jitter_must_be_smaller_than_the_shortest_gap(
    schedule: dict[str, Any], accepted: float, rejected: float
) -> None:
    ok = TaskDefinition.model_validate(BASE | {"schedule": schedule, "jitter_seconds": accepted})
    assert ok.jitter_seconds == accepted
    found = errors(TaskDefinition, BASE | {"schedule": schedule, "jitter_seconds": rejected})
    assert len(found) == 1 and found[0][0] == ("jitter_seconds",), found
    assert "jitter_seconds must be smaller than" in found[0][1], found


def test_any_jitter_is_fine_for_a_one_shot_or_no_schedule() -> None:
    once = {"kind": "once", "at": "2030-01-01T00:00:00Z"}
    assert TaskDefinition.model_validate(BASE | {"schedule": once, "jitter_seconds": 86400}).jitter_seconds == 86400
    assert TaskDefinition.model_validate(BASE | {"jitter_seconds": 86400}).jitter_seconds == 86400


def test_big_jitter_from_kafka_is_an_invalid_command_naming_jitter_seconds() -> None:
    command = {
        "command_id": "c",
        "task_id": "t",
        "tenant": "a",
        "actor": "u",
        "at": "2026-01-01T00:00:00Z",
        "definition": BASE | {"schedule": {"kind": "cron", "expression": "* * * * *"}, "jitter_seconds": 150},
    }
    envelope = command_envelope(CreateTask.model_validate({**command, "definition": BASE}), "/tests")
    raw = orjson.dumps({**envelope.model_dump(mode="json"), "data": command})
    with pytest.raises(InvalidCommand) as info:
        decode_command(raw)
    assert info.value.field == "definition.jitter_seconds"
    assert "jitter_seconds must be smaller than" in info.value.reason


def test_what_was_accepted_before_still_decodes() -> None:
    """Events and stored states are read TOLERANT: a big jitter or an expression that no longer
    matches any day under the Vixie rule (it did under OR) must never make them unreadable."""
    old = BASE | {"schedule": {"kind": "cron", "expression": "0 0 31 2 */2"}, "jitter_seconds": 150}
    with pytest.raises(ValidationError):
        TaskDefinition.model_validate(old)
    definition = TaskDefinition.model_validate(old, context=TOLERANT)
    event = TaskCreated(
        event_id="e",
        task_id="t",
        tenant="a",
        sequence=1,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        causation_id="c",
        actor="u",
        definition=definition,
        revision=1,
    )
    assert decode_event(encode(event_envelope(event, "/tests", None))) == event
    state = evolve(None, event)
    assert state is not None and load_state(dump_state(state)) == state
    # Under the current rule it never fires: the task simply has no next slot.
    assert next_fire(definition.schedule, datetime(2026, 1, 1, tzinfo=UTC), anchor=event.at) is None  # type: ignore[arg-type]


def test_the_schedule_rules_are_in_the_openapi_descriptions() -> None:
    """What FastAPI shows for the schedule: the day rule, the field ranges and the DST rules."""
    schema = TaskDefinition.model_json_schema()
    cron = schema["$defs"]["CronSchedule"]
    fragments = ("Vixie", "minute", "0-59", "Daylight saving", "first occurrence", "shifted forward", "25 on")
    for fragment in (*fragments, "``dst_gap: skip``", "``dst_repeat: second``", "``dst_repeat: auto`` (default)"):
        assert fragment in cron["description"], fragment
    for field in ("dst_gap", "dst_repeat"):
        assert cron["properties"][field]["description"], field
    assert any("dst_repeat" in example for example in cron["examples"])
    assert "starts with ``*``" in cron["properties"]["expression"]["description"]
    assert "shortest gap" in schema["properties"]["jitter_seconds"]["description"]


def test_tags_are_bounded_in_number_and_length() -> None:
    # A report by tag counts every run under each tag of its task: 50,000 one-character tags
    # fit in a request and made one report hold 50,000 groups of every run's figures.
    base = {"name": "t", "work": {"kind": "handler", "name": "noop"}}
    for tags, message in (([str(i) for i in range(51)], "at most 50 tags"), (["x" * 201], "at most 200 characters")):
        with pytest.raises(ValidationError) as info:
            TaskDefinition.model_validate({**base, "tags": tags})
        assert info.value.errors()[0]["loc"] == ("tags",) and message in info.value.errors()[0]["msg"]
        # A stored definition accepted before stays readable.
        assert TaskDefinition.model_validate({**base, "tags": tags}, context=TOLERANT).tags == tags
    assert len(TaskDefinition.model_validate({**base, "tags": ["x" * 200] * 50}).tags) == 50
