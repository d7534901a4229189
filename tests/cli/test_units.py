"""The CLI's thin parts without a stack: tables, problem lines, exit codes, files, tail filters."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from schemas.events import ExecutionCompleted, TaskPaused
from streams.cli_client import CliError, ExitCode, exit_code_for, load_document, problem_message, table
from streams.cli_tail import TailFilter

TASK_ID = "7ad4517c-5d33-47ec-9159-d2074e709344"


def _render(width: int) -> str:
    rows = [(TASK_ID, "nightly report", "active", "handler", "cron 30 6 * * 1-5 Europe/London", "2026-11-30 06:30:00")]
    columns = ("ID", "NAME", "STATUS", "TYPE", "SCHEDULE", "NEXT RUN (UTC)")
    out = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    narrow_first = ("TYPE", "SCHEDULE", "STATUS")
    out.print(table(columns, rows, keep=("ID", "STATUS", "NEXT RUN (UTC)"), optional=narrow_first, width=width))
    return out.export_text()


def test_a_narrow_terminal_drops_columns_rather_than_cutting_ids_and_times() -> None:
    wide = _render(200)
    assert TASK_ID in wide and "Europe/London" in wide and "handler" in wide
    narrow = _render(90)  # was "7ad4517c-…" and "2026-11-…" before columns were dropped
    assert TASK_ID in narrow and "2026-11-30 06:30:00" in narrow and "…" not in narrow
    assert "TYPE" not in narrow and "SCHEDULE" not in narrow
    # At 80 columns the name was squeezed to nothing, then the table was wider than the terminal.
    tight = _render(80)
    assert TASK_ID in tight and "2026-11-30 06:30:00" in tight and "night" in tight
    assert max(len(line) for line in tight.splitlines()) <= 80


def test_a_problem_is_one_line_naming_fields() -> None:
    problem = {
        "type": "/problems/validation",
        "title": "Request validation failed",
        "status": 422,
        "detail": "bad input\nover lines",
        "errors": [{"field": "definition.schedule.expression", "message": "minute must be 0-59"}],
    }
    response = httpx.Response(422, json=problem)
    line = problem_message(response)
    assert line.endswith("(fields: definition.schedule.expression) [HTTP 422]")
    assert problem_message(
        httpx.Response(503, json={"detail": "Kafka is unreachable"}, headers={"Retry-After": "2"})
    ) == ("Kafka is unreachable; retry after 2 s [HTTP 503]")
    assert problem_message(httpx.Response(502, text="<html>bad gateway</html>")) == "HTTP 502: <html>bad gateway</html>"


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 1), (401, 6), (403, 6), (404, 3), (409, 4), (413, 1), (422, 1), (500, 1), (502, 5), (503, 5)],
)
def test_exit_codes_by_status(status: int, code: int) -> None:
    assert exit_code_for(status) == code


def test_yaml_timestamps_become_iso_strings_and_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "once.yaml"
    path.write_text("name: once\nschedule: {kind: once, at: 2026-12-01T10:00:00Z}\nwork: {kind: handler, name: noop}\n")
    assert load_document(str(path))["schedule"]["at"] == "2026-12-01T10:00:00+00:00"
    path.write_text("name: a\n  bad: indent\n")
    with pytest.raises(CliError) as caught:
        load_document(str(path))
    assert caught.value.exit_code == ExitCode.USAGE and "line 2" in caught.value.message


def test_yaml_reads_on_as_a_key_and_only_true_and_false_as_booleans(tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML's default) read a notification rule's ``on:`` as ``True`` and ``no`` as
    ``False``: the README's own example of rules was refused by the API (``on`` missing)."""
    path = tmp_path / "task.yaml"
    path.write_text(
        "name: nightly\n"
        "notifications:\n"
        "  - on: [failed, retries_exhausted]\n"
        "    channel: {kind: email, to: [ops@acme.example]}\n"
        "tags: [yes, no, off, On]\n"
        "flags: [true, false, True, FALSE]\n"
    )
    document = load_document(str(path))
    assert document["notifications"] == [
        {"on": ["failed", "retries_exhausted"], "channel": {"kind": "email", "to": ["ops@acme.example"]}}
    ]
    assert document["tags"] == ["yes", "no", "off", "On"]
    assert document["flags"] == [True, False, True, False]


def _completed(task_id: str, status: str) -> ExecutionCompleted:
    at = datetime(2026, 11, 29, tzinfo=UTC)
    return ExecutionCompleted(
        event_id="e1", task_id=task_id, tenant=task_id.split("/")[0], sequence=3, at=at, causation_id="c",
        actor="a", execution_id="x1", status=status, attempts=1, finished_at=at,
    )  # type: ignore[arg-type]  # fmt: skip


def test_tail_filter() -> None:
    done = _completed("acme/t1", "succeeded")
    assert TailFilter(task="t1").matches(done, None) and TailFilter(task="acme/t1").matches(done, None)
    assert not TailFilter(task="t").matches(done, None)  # the whole id, not a suffix of it
    assert not TailFilter(tenant="other").matches(done, None)
    assert TailFilter(status="succeeded").matches(done, None)
    assert not TailFilter(status="failed").matches(done, None)
    paused = TaskPaused(
        event_id="e2", task_id="acme/t1", tenant="acme", sequence=4, at=done.at, causation_id="c", actor="a", revision=2
    )
    assert not TailFilter(status="succeeded").matches(paused, None)  # a status filter shows outcomes only
    assert TailFilter(tag="red").matches(done, ["red", "x"]) and not TailFilter(tag="red").matches(done, ["blue"])
    assert TailFilter(types=frozenset({"TaskPaused"})).matches(paused, None)
    assert not TailFilter(types=frozenset({"TaskPaused"})).matches(done, None)


def test_replay_drives_the_bar_through_the_replay_progress_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """``projections.replay.replay`` gains ``on_progress`` (ReplayProgress: events_read, events_total)
    in a parallel change; the CLI passes its callback when the function has one."""
    import asyncio
    from dataclasses import dataclass
    from types import SimpleNamespace
    from typing import Any

    import projections.replay
    import streams.cli_ops as ops
    from projections.read import CollectionNames

    @dataclass
    class Progress:
        events_read: int
        events_total: int

    seen: list[Any] = []

    async def fake_replay(*args: Any, on_progress: Any = None, progress_interval: float = 2.0, **kw: Any) -> Any:
        seen.append((on_progress, progress_interval))
        on_progress(Progress(40, 120))
        return SimpleNamespace(events_applied=120, seconds=1.0, generation="g", undecodable=0,
                               collections=CollectionNames(), previous=CollectionNames(), switched=True)  # fmt: skip

    async def total(bootstrap: str, topic: str) -> int:
        return 100

    monkeypatch.setattr(projections.replay, "replay", fake_replay)
    monkeypatch.setattr(ops, "_total_events", total)
    settings = SimpleNamespace(mongo_url="mongodb://127.0.0.1:1/", kafka_bootstrap="x", events_topic="t",
                               mongo_database="d", retention_days=1.0)  # fmt: skip
    report = asyncio.run(ops._replay(settings, switch=True, drop_old=False, show=False))
    assert report.events_applied == 120
    assert seen and callable(seen[0][0]) and seen[0][1] == 0.5
    assert ops._count((Progress(40, 120),), {}) == (40, 120)


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (["worker"], ["--worker-id", "--no-executor", "--data-dir"]),
        (["executor"], ["--worker-id"]),
        (["projector"], []),
        (["triggers"], []),
        (["notifier"], []),
        (["calendars", "put"], ["--if-match", "--wait", "--json"]),
        (["tasks", "backfill"], ["--from", "--to", "--max-concurrency", "--wait", "--idempotency-key"]),
        (["tasks", "backfill-cancel"], ["--wait", "--idempotency-key"]),
        (["notifications", "set"], ["--wait", "--json"]),
        (["api"], []),
        (["topics"], []),
        (["secrets", "encrypt"], ["--tenant", "--task-id", "--pointer", "--json"]),
        (["stack", "up"], ["--timeout"]),
        (["demo"], ["--seconds", "--prefix"]),
    ],
)
def test_the_process_commands_keep_their_options(command: list[str], options: list[str]) -> None:
    """Tests, ``make run`` and operators start these with these options: the one group keeps them."""
    from click.testing import CliRunner

    from streams.cli import main

    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert all(option in result.output for option in options), result.output


def test_bad_configuration_is_a_usage_error_without_a_traceback_or_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from streams.cli import main

    runner = CliRunner()
    for url in ("localhost:8000", "http://[::zz"):
        result = runner.invoke(main, ["tasks", "list", "--token", "t", "--api-url", url])
        assert result.exit_code == 2 and result.stderr.startswith("error: invalid API URL"), result.output
    env = {"SCHED_API_TOKEN": "t", "SCHED_API_TIMEOUT_SECONDS": "soon"}
    result = runner.invoke(main, ["tasks", "list"], env=env)
    assert result.exit_code == 2 and "SCHED_API_TIMEOUT_SECONDS" in result.stderr, result.output
    result = runner.invoke(main, ["token", "--tenant", "a"], env={"SCHED_JWT_HS256_SECRET": "a-short-secret"})
    assert result.exit_code == 2 and "32 bytes" in result.stderr and "a-short-secret" not in result.output


def test_wait_is_bounded_as_the_api_bounds_it() -> None:
    """``--wait`` took up to 300 s while the API's ``?wait`` takes at most 30: a longer wait was
    sent and answered 422. Now click refuses it (usage) before anything is sent."""
    from click.testing import CliRunner

    from api.deps import Wait
    from streams.cli import main

    (query,) = Wait.__metadata__
    limit = next(m.le for m in query.metadata if hasattr(m, "le"))
    runner = CliRunner()
    for command in (["tasks", "pause", "t"], ["calendars", "delete", "c"], ["notifications", "set", "-"]):
        refused = runner.invoke(
            main, [*command, "--wait", str(limit + 1), "--token", "t", "--api-url", "http://127.0.0.1:9"]
        )
        assert refused.exit_code == 2 and "--wait" in refused.output, refused.output
    help_text = runner.invoke(main, ["tasks", "create", "--help"]).output
    assert f"0<=x<={limit}" in help_text.replace(".0", ""), help_text
