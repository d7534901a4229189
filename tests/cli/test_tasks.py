"""``scheduler tasks`` and ``scheduler executions`` against the real API, worker and projector."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.cli.conftest import Cli, write

TASK_YAML = """\
# A task definition as a person writes it.
name: nightly report
schedule:
  kind: interval
  every_seconds: 3600
work:
  kind: handler
  name: noop
tags: [reports, cli]
"""


def _created(cli: Cli, path: str) -> str:
    body = cli.json("tasks", "create", path)
    assert body["status"] == "applied", body
    return str(body["task_id"])


def test_create_list_get_next_from_yaml(cli: Cli, tmp_path: Path) -> None:
    task_id = _created(cli, write(tmp_path, "task.yaml", TASK_YAML))

    listed = cli.ok("tasks", "list")
    assert "nightly report" in listed.stdout and task_id in listed.stdout
    assert "every 3600s" in listed.stdout and "reports,cli" in listed.stdout, listed.stdout
    assert "1 task" in listed.stdout
    as_json = cli.json("tasks", "list", "--tag", "reports")
    assert [t["id"] for t in as_json["items"]] == [task_id]  # type: ignore[index]
    assert cli.json("tasks", "list", "--tag", "other")["items"] == []

    shown = cli.ok("tasks", "get", task_id).stdout
    assert "noop" in shown and "active" in shown
    assert cli.json("tasks", "get", task_id)["definition"]["schedule"]["every_seconds"] == 3600  # type: ignore[index]

    preview = cli.json("tasks", "next", task_id, "-n", "3")
    slots = [f["slot"] for f in preview["fire_times"]]  # type: ignore[attr-defined]
    assert len(slots) == 3 and slots == sorted(slots)
    assert "SLOT (UTC)" in cli.ok("tasks", "next", task_id, "-n", "2").stdout


def test_create_from_json_on_stdin(cli: Cli) -> None:
    definition = {"name": "from stdin", "work": {"kind": "handler", "name": "noop"}}
    result = cli.ok("tasks", "create", "-", input=json.dumps(definition))
    assert "created task" in result.stdout and "active" in result.stdout


def test_pause_resume_update_trigger_delete(cli: Cli, tmp_path: Path) -> None:
    task_id = _created(cli, write(tmp_path, "task.yaml", TASK_YAML))

    paused = cli.ok("tasks", "pause", task_id, "--note", "maintenance").stdout
    # A paused task fires nothing: no "next run" is shown for it.
    assert paused == f"paused task {task_id}: paused, revision 2\n"
    assert cli.json("tasks", "get", task_id)["paused_note"] == "maintenance"
    assert "maintenance" in cli.ok("tasks", "get", task_id).stdout
    assert "│ -" in cli.ok("tasks", "list", "--status", "paused").stdout
    resumed = cli.json("tasks", "resume", task_id)
    assert resumed["task"]["status"] == "active"  # type: ignore[index]
    revision = int(resumed["task"]["revision"])  # type: ignore[index]

    changed = write(tmp_path, "changed.yaml", TASK_YAML.replace("every_seconds: 3600", "every_seconds: 7200"))
    stale = cli.run("tasks", "update", task_id, changed, "--if-match", str(revision - 1))
    assert stale.exit_code == 4, stale.output  # conflict
    assert "revision" in stale.stderr and stale.stderr.count("\n") == 1
    updated = cli.json("tasks", "update", task_id, changed, "--if-match", str(revision))
    assert updated["task"]["definition"]["schedule"]["every_seconds"] == 7200  # type: ignore[index]

    triggered = cli.json("tasks", "trigger", task_id, "--param", "dry_run=true", "--trigger-id", "t-1")
    execution_id = str(triggered["execution_id"])
    execution = _finished(cli, execution_id)
    assert execution["status"] == "succeeded" and execution["params"] == {"dry_run": True}
    listed = cli.json("executions", "list", task_id)
    assert execution_id in [e["id"] for e in listed["items"]]  # type: ignore[attr-defined]
    table = cli.ok("executions", "list", task_id).stdout
    assert execution_id in table and "succeeded" in table
    shown = cli.ok("executions", "get", execution_id).stdout
    assert "timeline" in shown and "succeeded" in shown

    assert "deleted task" in cli.ok("tasks", "delete", task_id).stdout
    gone = cli.run("tasks", "get", task_id)
    assert gone.exit_code == 3, gone.output  # not found
    assert cli.json("tasks", "get", task_id, "--include-deleted")["status"] == "deleted"


def _finished(cli: Cli, execution_id: str, within: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        result = cli.run("executions", "get", execution_id, "--json")
        if result.exit_code == 0:
            body: dict[str, Any] = json.loads(result.stdout)
            if body["status"] in ("succeeded", "failed", "timed_out", "cancelled"):
                return body
        assert time.monotonic() < deadline, result.output
        time.sleep(0.3)


def test_cancel_an_execution_in_flight(cli: Cli, tmp_path: Path) -> None:
    slow = write(tmp_path, "slow.json", json.dumps({"name": "slow", "work": {"kind": "handler", "name": "sleep"}}))
    task_id = _created(cli, slow)
    execution_id = str(cli.json("tasks", "trigger", task_id, "--param", "seconds=30")["execution_id"])
    cancelled = cli.ok("executions", "cancel", execution_id, "--reason", "wrong parameters")
    assert f"execution {execution_id}" in cancelled.stdout
    assert _finished(cli, execution_id)["status"] == "cancelled"
    missing = cli.run("executions", "cancel", "no-such-execution")
    assert missing.exit_code == 3, missing.output


def test_errors_are_one_line_with_a_meaningful_exit_code(cli: Cli, tmp_path: Path) -> None:
    bad_cron = write(
        tmp_path,
        "bad.yaml",
        TASK_YAML.replace("kind: interval\n  every_seconds: 3600", "kind: cron\n  expression: '61 * * * *'"),
    )
    invalid = cli.run("tasks", "create", bad_cron)
    assert invalid.exit_code == 1, invalid.output
    assert invalid.stderr.startswith("error: ") and invalid.stderr.count("\n") == 1
    assert "schedule.expression" in invalid.stderr and "0-59" in invalid.stderr
    assert invalid.stdout == ""

    broken = cli.run("tasks", "create", write(tmp_path, "broken.yaml", "name: [unclosed\n"))
    assert broken.exit_code == 2 and "invalid YAML at line" in broken.stderr, broken.output
    missing_file = cli.run("tasks", "create", str(tmp_path / "absent.yaml"))
    assert missing_file.exit_code == 2, missing_file.output
    not_a_mapping = cli.run("tasks", "create", write(tmp_path, "list.json", "[1, 2]"))
    assert not_a_mapping.exit_code == 2 and "mapping" in not_a_mapping.stderr

    assert cli.run("tasks", "get", "no-such-task").exit_code == 3
    assert cli.run("tasks", "pause", "no-such-task").exit_code == 3
    assert cli.run("tasks", "list", "--status", "sleepy").exit_code == 2  # usage, caught by click

    no_token = cli.run("tasks", "list", SCHED_API_TOKEN=None)
    assert no_token.exit_code == 2 and "SCHED_API_TOKEN" in no_token.stderr
    bad_token = cli.run("tasks", "list", "--token", "not-a-jwt")
    assert bad_token.exit_code == 6 and "HTTP 401" in bad_token.stderr, bad_token.output
    viewer = cli.ok("token", "--tenant", cli.tenant, "--role", "viewer").stdout.strip()
    forbidden = cli.run("tasks", "create", write(tmp_path, "t.yaml", TASK_YAML), "--token", viewer)
    assert forbidden.exit_code == 6 and "admin role" in forbidden.stderr, forbidden.output
    assert cli.run("tasks", "list", "--token", viewer).exit_code == 0

    from tests.api.conftest import free_port

    down = cli.run("tasks", "list", "--api-url", f"http://127.0.0.1:{free_port()}")
    assert down.exit_code == 5 and "cannot reach the API" in down.stderr, down.output


def test_tenants_see_only_their_tasks(cli: Cli, tmp_path: Path) -> None:
    task_id = _created(cli, write(tmp_path, "task.yaml", TASK_YAML))
    other = cli.ok("token", "--tenant", cli.tenant + "x").stdout.strip()
    assert cli.run("tasks", "get", task_id, "--token", other).exit_code == 3
    assert task_id not in cli.ok("tasks", "list", "--token", other).stdout


def test_list_follows_pages_up_to_the_limit(cli: Cli, tmp_path: Path) -> None:
    for index in range(3):
        definition = {"name": f"paged {index}", "work": {"kind": "handler", "name": "noop"}}
        _created(cli, write(tmp_path, f"p{index}.json", json.dumps(definition)))
    two = cli.ok("tasks", "list", "--limit", "2", "--sort", "name")
    assert "paged 0" in two.stdout and "paged 1" in two.stdout and "paged 2" not in two.stdout
    assert "2 tasks (more: raise --limit)" in two.stdout
    assert len(cli.json("tasks", "list", "--limit", "3")["items"]) == 3  # type: ignore[arg-type]
