"""``scheduler calendars`` and ``scheduler tasks backfill`` against the real API, worker and projector."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.cli.conftest import Cli, write

HOLIDAYS_YAML = """\
# A calendar as a person writes it (YAML dates and times unquoted).
timezone: Europe/Paris
description: public holidays
dates: [2026-12-25, 2027-01-01]
ranges:
  - {start: 2026-12-24T12:00:00, end: 2026-12-24T18:00:00}
rules:
  - {cron: "0 2 * * sun", duration_seconds: 7200}
"""


def test_put_list_show_update_and_delete_a_calendar(cli: Cli, tmp_path: Path) -> None:
    put = cli.ok("calendars", "put", "holidays", write(tmp_path, "cal.yaml", HOLIDAYS_YAML))
    assert put.stdout == "put calendar holidays: revision 1\n"

    listed = cli.ok("calendars", "list").stdout
    assert "holidays" in listed and "Europe/Paris" in listed and "2 dates, 1 ranges, 1 rules" in listed, listed
    assert "1 calendar" in listed
    shown = cli.ok("calendars", "show", "holidays").stdout
    assert "2026-12-25" in shown and "2026-12-24T12:00:00 to 2026-12-24T18:00:00" in shown, shown
    assert "0 2 * * 0 for 7200 s" in shown or "0 2 * * sun for 7200 s" in shown, shown

    # show --json, edited, put back through stdin: the read-only fields it carries are dropped.
    calendar: dict[str, Any] = cli.json("calendars", "show", "holidays")
    assert calendar["revision"] == 1
    calendar["dates"] = [*calendar["dates"], "2027-05-01"]
    updated = cli.run("calendars", "put", "holidays", "-", "--if-match", "1", "--json", input=json.dumps(calendar))
    assert updated.exit_code == 0, updated.output
    assert json.loads(updated.stdout)["revision"] == 2
    assert "2027-05-01" in cli.json("calendars", "show", "holidays")["dates"]  # type: ignore[operator]

    stale = cli.run("calendars", "put", "holidays", "-", "--if-match", "1", input=json.dumps(calendar))
    assert stale.exit_code == 4 and "revision" in stale.stderr, stale.output  # conflict

    # A task that skips the calendar holds it: deleting it is a conflict naming the task.
    task = {
        "name": "skips holidays",
        "schedule": {"kind": "cron", "expression": "0 6 * * *", "timezone": "Europe/Paris"},
        "calendars": ["holidays"],
        "work": {"kind": "handler", "name": "noop"},
    }
    task_id = str(cli.json("tasks", "create", write(tmp_path, "task.json", json.dumps(task)))["task_id"])
    held = cli.run("calendars", "delete", "holidays")
    assert held.exit_code == 4 and task_id in held.stderr, held.output
    cli.ok("tasks", "delete", task_id)
    assert cli.ok("calendars", "delete", "holidays").stdout == "deleted calendar holidays: revision 3\n"
    assert cli.run("calendars", "show", "holidays").exit_code == 3  # not found
    assert "0 calendars" in cli.ok("calendars", "list").stdout


def test_calendar_errors_are_one_line_with_a_meaningful_exit_code(cli: Cli, tmp_path: Path) -> None:
    bad_zone = cli.run("calendars", "put", "x", write(tmp_path, "bad.yaml", "timezone: Mars/Olympus\n"))
    assert bad_zone.exit_code == 1 and "timezone" in bad_zone.stderr, bad_zone.output
    assert bad_zone.stderr.startswith("error: ") and bad_zone.stderr.count("\n") == 1

    other = cli.run("calendars", "put", "x", write(tmp_path, "other.yaml", "name: y\ntimezone: UTC\n"))
    assert other.exit_code == 2 and "names calendar 'y'" in other.stderr, other.output
    not_a_mapping = cli.run("calendars", "put", "x", write(tmp_path, "list.json", "[1]"))
    assert not_a_mapping.exit_code == 2 and "expected a calendar" in not_a_mapping.stderr, not_a_mapping.output
    bad_name = cli.run("calendars", "put", "Not A Name", write(tmp_path, "ok.yaml", "timezone: UTC\n"))
    assert bad_name.exit_code == 1 and "name" in bad_name.stderr, bad_name.output

    viewer = cli.ok("token", "--tenant", cli.tenant, "--role", "viewer").stdout.strip()
    forbidden = cli.run("calendars", "put", "x", write(tmp_path, "v.yaml", "timezone: UTC\n"), "--token", viewer)
    assert forbidden.exit_code == 6 and "admin role" in forbidden.stderr, forbidden.output
    assert cli.run("calendars", "list", "--token", viewer).exit_code == 0
    assert cli.run("calendars", "delete", "never-was").exit_code == 3


def _minute_ago(minutes: int) -> str:
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes)
    return start.isoformat()


def _task(cli: Cli, tmp_path: Path, work: dict[str, Any], overlap: str = "allow_all") -> str:
    definition = {
        "name": "backfilled",
        "schedule": {"kind": "interval", "every_seconds": 60, "anchor": "2026-01-01T00:00:00Z"},
        "work": work,
        "overlap": overlap,
    }
    return str(cli.json("tasks", "create", write(tmp_path, "bf.json", json.dumps(definition)))["task_id"])


def _backfill(cli: Cli, task_id: str, within: float = 30) -> dict[str, Any]:
    """The task's backfill once it ended."""
    deadline = time.monotonic() + within
    while True:
        backfill: dict[str, Any] = cli.json("tasks", "get", task_id)["backfill"]  # type: ignore[assignment]
        if backfill["status"] != "running":
            return backfill
        assert time.monotonic() < deadline, backfill
        time.sleep(0.3)


def test_backfill_runs_the_slots_of_a_past_range(cli: Cli, tmp_path: Path) -> None:
    task_id = _task(cli, tmp_path, {"kind": "handler", "name": "noop"})
    start, end = _minute_ago(10), _minute_ago(7)
    started = cli.ok("tasks", "backfill", task_id, "--from", start, "--to", end, "--max-concurrency", "2")
    line = started.stdout
    # Three no-op runs may all have ended by the time the command answers.
    assert line.startswith("started backfill ") and re.search(f"of task {task_id}: (running|completed), ", line), line
    assert "of 3 slots done" in line, line
    backfill_id = line.split()[2]
    ended = _backfill(cli, task_id)
    assert ended["id"] == backfill_id and ended["status"] == "completed" and ended["succeeded"] == 3, ended
    assert f"{backfill_id}: completed, " in cli.ok("tasks", "get", task_id).stdout
    runs: list[dict[str, Any]] = cli.json("executions", "list", task_id)["items"]  # type: ignore[assignment]
    assert sum(1 for e in runs if e["reason"] == "backfill") == 3

    # The range is the API's to check: a future end is a 422 naming `to`; a finished backfill
    # cannot be cancelled (409); a task that does not exist is a 404.
    future = cli.run("tasks", "backfill", task_id, "--from", start, "--to", "2999-01-01T00:00:00Z")
    assert future.exit_code == 1 and "to" in future.stderr, future.output
    unparsable = cli.run("tasks", "backfill", task_id, "--from", "yesterday", "--to", end)
    assert unparsable.exit_code == 1 and "from" in unparsable.stderr, unparsable.output
    assert cli.run("tasks", "backfill-cancel", task_id, backfill_id).exit_code == 4
    assert cli.run("tasks", "backfill", "no-such-task", "--from", start, "--to", end).exit_code == 3
    assert cli.run("tasks", "backfill", task_id, "--to", end).exit_code == 2  # --from is required


def test_backfill_cancel_stops_a_running_backfill(cli: Cli, tmp_path: Path) -> None:
    # One at a time (overlap "skip"), each run sleeping 30 s: the backfill is running when cancelled.
    task_id = _task(cli, tmp_path, {"kind": "handler", "name": "sleep", "params": {"seconds": 30}}, overlap="skip")
    started = cli.json("tasks", "backfill", task_id, "--from", _minute_ago(10), "--to", _minute_ago(5))
    backfill_id = str(started["backfill_id"])
    cancelled = cli.ok("tasks", "backfill-cancel", task_id, backfill_id).stdout
    assert cancelled.startswith(f"cancelled backfill {backfill_id} of task {task_id}: cancelled"), cancelled
    ended = _backfill(cli, task_id)
    assert ended["status"] == "cancelled" and ended["succeeded"] == 0, ended
