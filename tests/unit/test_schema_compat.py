"""The published JSON Schemas are current, and changes to them stay backward compatible."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from schemas.compat import breaking_changes
from schemas.export import SCHEMA_DIR, generate, render

GENERATED = generate()


def published(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    return result


def test_published_files_are_current() -> None:
    """Fails when a model changed without ``python -m schemas.export`` being run."""
    stale = [
        name
        for name, schema in GENERATED.items()
        if not (SCHEMA_DIR / f"{name}.json").exists() or (SCHEMA_DIR / f"{name}.json").read_text() != render(schema)
    ]
    assert stale == [], f"run `python -m schemas.export`; stale: {stale}"


def test_no_published_schema_disappeared() -> None:
    files = {p.stem for p in SCHEMA_DIR.glob("*.json")}
    assert files - set(GENERATED) == set(), "a published schema was removed"
    assert {"Envelope", "CreateTask", "ExecutionCompleted", "CommandRejected"} <= files


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_current_models_are_compatible_with_published(name: str) -> None:
    path = SCHEMA_DIR / f"{name}.json"
    if not path.exists():
        pytest.skip("new schema")
    assert breaking_changes(published(name), GENERATED[name]) == []


# -- the checker itself ------------------------------------------------------------------------


def mutated(name: str, change: Any) -> dict[str, Any]:
    schema = copy.deepcopy(GENERATED[name])
    change(schema)
    return schema


def test_checker_accepts_an_additive_optional_property() -> None:
    def add(schema: dict[str, Any]) -> None:
        schema["properties"]["shiny"] = {"type": "string", "default": "x"}

    assert breaking_changes(GENERATED["ExecutionCompleted"], mutated("ExecutionCompleted", add)) == []


def test_checker_accepts_a_new_enum_value() -> None:
    def add(schema: dict[str, Any]) -> None:
        schema["$defs"]["Priority"]["enum"].append("urgent")

    assert breaking_changes(GENERATED["TriggerTask"], mutated("TriggerTask", add)) == []


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        pytest.param(
            "ExecutionCompleted",
            lambda s: s["properties"].pop("duration_ms"),
            "property removed",
            id="removed-property",
        ),
        pytest.param(
            "ExecutionCompleted",
            lambda s: s["required"].append("result"),
            "newly required",
            id="new-required",
        ),
        pytest.param(
            "ExecutionCompleted",
            lambda s: s["properties"]["attempts"].update(type="string"),
            "type changed",
            id="changed-type",
        ),
        pytest.param(
            "TriggerTask",
            lambda s: s["$defs"]["Priority"]["enum"].remove("low"),
            "enum values removed",
            id="removed-enum-value",
        ),
        pytest.param(
            "SlotsMissed",
            lambda s: s["properties"]["reason"]["enum"].remove("overlap"),
            "enum values removed",
            id="removed-literal-value",
        ),
        pytest.param(
            "CreateTask",
            lambda s: s["$defs"]["CronSchedule"]["properties"].pop("timezone"),
            "property removed",
            id="removed-nested-through-union",
        ),
        pytest.param(
            "CreateTask",
            lambda s: s["$defs"]["TaskDefinition"]["properties"]["work"]["oneOf"].pop(),
            "union branch",
            id="removed-union-branch",
        ),
    ],
)
def test_checker_flags_incompatible_changes(name: str, change: Any, expected: str) -> None:
    problems = breaking_changes(GENERATED[name], mutated(name, change))
    assert any(expected in p for p in problems), problems
