"""The task processor publishes each task's trigger rules for the trigger router: the rules on a
create or update that has some, a tombstone on an update without any or a delete, nothing for a
create without rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.events import Event, TaskCreated, TaskDeleted, TaskUpdated
from schemas.specs import HandlerWork, TaskDefinition
from schemas.triggers import TaskRules, TriggerRule
from streams.publisher import Publisher
from streams.settings import Settings

AT = datetime(2026, 11, 29, tzinfo=UTC)
RULES = [TriggerRule.model_validate({"type": "build.done"})]
WITH = TaskDefinition(name="t", work=HandlerWork(name="noop"), triggers=RULES)
WITHOUT = TaskDefinition(name="t", work=HandlerWork(name="noop"))
COMMON = {"event_id": "e", "task_id": "acme/t", "tenant": "acme", "at": AT, "causation_id": "c", "actor": "a"}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (TaskCreated(**COMMON, sequence=1, definition=WITH, revision=1), RULES),
        (TaskCreated(**COMMON, sequence=1, definition=WITHOUT, revision=1), "nothing"),
        (TaskUpdated(**COMMON, sequence=2, definition=WITH, revision=2), RULES),
        (TaskUpdated(**COMMON, sequence=2, definition=WITHOUT, revision=2), None),
        (TaskDeleted(**COMMON, sequence=3), None),
    ],
)
async def test_rules_are_published_keyed_by_task(event: Event, expected: object) -> None:
    sent: list[tuple[str, bytes | None, bytes | None]] = []

    async def send(topic: str, key: bytes | None, value: bytes | None, partition: int | None) -> None:
        sent.append((topic, key, value))

    await Publisher(Settings(topic_prefix="p."), send, "tests").events(b"acme/t", [event])
    published = [(key, value) for topic, key, value in sent if topic == "p.trigger-rules"]
    if expected == "nothing":
        assert published == []
        return
    ((key, value),) = published
    assert key == b"acme/t"
    if expected is None:
        assert value is None  # a tombstone: compaction forgets the task
    else:
        rules = TaskRules.model_validate_json(value or b"")
        assert (rules.task_id, rules.tenant, rules.sequence, rules.rules) == (
            "acme/t",
            "acme",
            event.sequence,
            expected,
        )
