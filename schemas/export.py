"""Export the published JSON Schemas: ``python -m schemas.export [--check]``.

Writes ``schemas/json/v1/<Name>.json`` for the envelope, every command and every event
(``ExecutionCompleted`` is the public outcome on the ``outcomes`` topic), the CloudEvent
other services produce to ``triggers`` (``TriggerCloudEvent``), the calendar events of the
``calendars`` topic, and the notification sent to webhooks and Kafka topics
(``Notification``). With ``--check``
nothing is written and the exit status says whether the published files are current.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from schemas.calendars import CalendarDeleted, CalendarUpserted
from schemas.commands import COMMAND_TYPES
from schemas.envelope import Envelope
from schemas.events import EVENT_TYPES
from schemas.notifications import Notification, TenantNotificationRules
from schemas.triggers import CloudEvent

SCHEMA_DIR = Path(__file__).parent / "json" / "v1"
"""Where the published schemas live."""

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def generate() -> dict[str, dict[str, Any]]:
    """Every published schema, by name, as generated from the current models."""
    models: dict[str, type[Any]] = {
        "Envelope": Envelope,
        **COMMAND_TYPES,
        **EVENT_TYPES,
        "TriggerCloudEvent": CloudEvent,  # what other services produce to `triggers` (structured mode)
        "CalendarUpserted": CalendarUpserted,
        "CalendarDeleted": CalendarDeleted,
        # What webhook receivers and consumers of a notification topic get; the rules topic's messages.
        "Notification": Notification,
        "TenantNotificationRules": TenantNotificationRules,
    }
    return {name: {"$schema": _DIALECT, **model.model_json_schema()} for name, model in sorted(models.items())}


def render(schema: dict[str, Any]) -> str:
    """The exact text of a published schema file."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schemas whose published file is missing or differs from the models."""
    return [
        name
        for name, schema in generate().items()
        if not (path := directory / f"{name}.json").exists() or path.read_text() != render(schema)
    ]


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in generate().items():
        path = directory / f"{name}.json"
        path.write_text(render(schema))
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    """Command-line entry point."""
    if "--check" in argv:
        stale = stale_files()
        for name in stale:
            print(f"stale: {name}.json", file=sys.stderr)
        return 1 if stale else 0
    for path in write():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
