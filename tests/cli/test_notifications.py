"""``scheduler notifications`` against the real API, worker, projector and a notifier process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import ApiServer, Cli, write
from tests.integration.harness import WorkerProc

RULES_YAML = """\
rules:
  - on: [failed]
    channel: {kind: email, to: [ops@example.com]}
  - on: [retries_exhausted]
    channel: {kind: webhook, url: "https://hooks.example.com/scheduler", secret: "a-webhook-secret-0123456789"}
"""


@pytest.fixture(scope="module")
def notifier(api_server: ApiServer) -> Iterator[WorkerProc]:
    """``scheduler notifier`` for the session's deployment (no SMTP server: email is dead-lettered at once)."""
    warm = api_server.stack
    env = {**warm.worker.env, "SCHED_MONGO_DATABASE": warm.database, "SCHED_NOTIFY_BACKOFF_SECONDS": "0.1"}
    proc = WorkerProc(env, warm.log_dir / "cli-notifier.log", None, ("notifier",)).start()
    try:
        yield proc
    finally:
        proc.stop()


def _deliveries(cli: Cli, execution_id: str, within: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        items: list[dict[str, Any]] = cli.json("notifications", "sent", execution_id)["items"]  # type: ignore[assignment]
        if items:
            return items
        assert time.monotonic() < deadline, "no notification recorded"
        time.sleep(0.3)


def test_set_rules_show_them_and_what_an_execution_notified(cli: Cli, tmp_path: Path, notifier: WorkerProc) -> None:
    assert "no notification rules" in cli.ok("notifications", "rules").stdout

    # set waits until the notifier applied this change (the view shows it), then says so.
    assert cli.ok("notifications", "set", write(tmp_path, "rules.yaml", RULES_YAML)).stdout == (
        "set 2 notification rules\n"
    )
    shown = cli.ok("notifications", "rules").stdout
    assert "ops@example.com" in shown and "https://hooks.example.com/scheduler" in shown, shown
    assert "a-webhook-secret" not in shown and "by cli-test" in shown, shown

    # rules --json, put back as it is: the secret shown as *** is kept, updated_* are dropped.
    printed = cli.json("notifications", "rules")
    assert printed["rules"][1]["channel"]["secret"] == "***"  # type: ignore[index]
    again = cli.run("notifications", "set", "-", "--json", input=json.dumps(printed))
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["status"] == "applied"

    # A failing run: the tenant's email rule is dead-lettered (no SMTP server) and listed.
    task = {"name": "fails", "work": {"kind": "handler", "name": "fail", "params": {"message": "disk full"}}}
    task_id = str(cli.json("tasks", "create", write(tmp_path, "task.json", json.dumps(task)))["task_id"])
    execution_id = str(cli.json("tasks", "trigger", task_id)["execution_id"])
    (delivery,) = _deliveries(cli, execution_id)
    assert (delivery["event"], delivery["scope"], delivery["channel"]) == ("failed", "tenant", "email")
    assert delivery["status"] == "dead_lettered" and delivery["target"] == "ops@example.com", delivery
    table = cli.ok("notifications", "sent", execution_id).stdout
    assert delivery["id"] in table and "dead_lettered" in table and "1 notification" in table, table

    assert cli.ok("notifications", "set", "-", input="rules: []\n").stdout == "set 0 notification rules\n"
    assert "no notification rules" in cli.ok("notifications", "rules").stdout


def test_notification_errors(cli: Cli, tmp_path: Path) -> None:
    loopback = RULES_YAML.replace("https://hooks.example.com/scheduler", "http://127.0.0.1:9/hook")
    fenced = cli.run("notifications", "set", write(tmp_path, "fenced.yaml", loopback))
    assert fenced.exit_code == 1 and "rules.1.channel.url" in fenced.stderr, fenced.output
    exploded = "rules: [{on: [exploded], channel: {kind: email, to: [a@b.c]}}]"
    unknown = cli.run("notifications", "set", "-", input=exploded)
    assert unknown.exit_code == 1 and "rules" in unknown.stderr, unknown.output
    assert cli.run("notifications", "set", "-", input="- not a mapping\n").exit_code == 2
    viewer = cli.ok("token", "--tenant", cli.tenant, "--role", "viewer").stdout.strip()
    forbidden = cli.run("notifications", "set", "-", "--token", viewer, input="rules: []\n")
    assert forbidden.exit_code == 6, forbidden.output
    assert cli.run("notifications", "sent", "no-such-execution").exit_code == 3
