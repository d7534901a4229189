"""``scheduler tasks ...`` and ``scheduler executions ...``: the REST API from a terminal.

Every command sends the token (``--token`` / ``SCHED_API_TOKEN``) to the API at ``--api-url``
(``SCHED_API_URL``); nothing here reads Kafka or the views directly, so the API's roles and
tenancy apply. Commands wait (``--wait``, 10 s by default) until the views show their outcome,
so a rejection by the task processor (a stale revision, a missing task) is an error with its
exit code rather than a silent 202; ``--wait 0`` returns once Kafka has the command.
"""

from __future__ import annotations

import json
from typing import Any

import click

from streams.cli_client import (
    CliError,
    ExitCode,
    api_options,
    console,
    open_client,
    print_json,
    table,
    when,
)

WAIT = click.option(
    "--wait",
    # The API's `?wait` takes at most 30 (api/deps.py): more was a 422 from the API.
    type=click.FloatRange(0, 30),
    default=10.0,
    show_default=True,
    help="seconds to wait for the views to show the outcome (0: return once accepted)",
)
IDEMPOTENCY = click.option("--idempotency-key", help="makes a retried command the same command")


def _schedule_text(definition: dict[str, Any]) -> str:
    schedule = definition.get("schedule") or {}
    kind = schedule.get("kind")
    if kind == "cron":
        return f"cron {schedule.get('expression')} {schedule.get('timezone', 'UTC')}"
    if kind == "interval":
        every = schedule.get("every_seconds")
        return f"every {every:g}s" if isinstance(every, int | float) else f"every {every}s"
    if kind == "once":
        return f"once {when(schedule.get('at'))}"
    return "manual"


def _result(response: Any, as_json: bool, verb: str) -> None:
    """Print the answer to a command: applied (with the task) or only accepted."""
    body = response.json()
    if as_json:
        print_json(body)
        return
    task = body.get("task") or {}
    line = f"{verb} task {body.get('task_id')}"
    if body.get("status") == "applied":
        line += f": {task.get('status', 'applied')}" if task else ": applied"
        if task.get("revision") is not None:
            line += f", revision {task['revision']}"
        if task.get("next_run") and task.get("status") == "active":
            line += f", next run {when(task['next_run'])}"
    else:
        line += " (accepted; the views do not show it yet)"
    if body.get("execution_id"):
        line += f"; execution {body['execution_id']}"
    click.echo(line)  # one plain line: scripts that skip --json can still cut it


@click.group()
def tasks() -> None:
    """Create, inspect and control tasks through the REST API."""


@tasks.command("create")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@WAIT
@IDEMPOTENCY
@api_options
def create(
    file: str, wait: float, idempotency_key: str | None, api_url: str | None, token: str | None, as_json: bool
) -> None:
    """Create a task from a YAML or JSON definition FILE (- reads stdin)."""
    from streams.cli_client import load_document

    definition = load_document(file)
    client = open_client(api_url, token)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    response = client.request("POST", "/v1/tasks", body=definition, headers=headers, wait=wait)
    _result(response, as_json, "created")


@tasks.command("list")
@click.option("--status", type=click.Choice(["active", "paused", "completed", "deleted"]), help="only this status")
@click.option(
    "--type", "work_type", type=click.Choice(["http", "kafka", "handler", "shell"]), help="only this kind of work"
)
@click.option("--tag", help="only tasks with this tag")
@click.option("--sort", type=click.Choice(["created_at", "name", "next_run"]), default="created_at", show_default=True)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="most tasks shown")
@api_options
def list_tasks(
    status: str | None,
    work_type: str | None,
    tag: str | None,
    sort: str,
    limit: int,
    api_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """List the tenant's tasks (following pages up to --limit)."""
    client = open_client(api_url, token)
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(items) < limit:
        page = client.get(
            "/v1/tasks",
            status=status,
            type=work_type,
            tag=tag,
            sort=sort,
            limit=min(200, limit - len(items)),
            cursor=cursor,
        )
        items.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    if as_json:
        print_json({"items": items, "next_cursor": cursor})
        return
    rows = [
        (
            t["id"],
            t["name"],
            t["status"],
            t["type"],
            _schedule_text(t.get("definition") or {}),
            when(t.get("next_run")) if t["status"] == "active" else "-",
            t.get("last_status"),
            (t.get("counters") or {}).get("runs", 0),
            ",".join(t.get("tags") or []) or None,
        )
        for t in items
    ]
    columns = ("ID", "NAME", "STATUS", "TYPE", "SCHEDULE", "NEXT RUN (UTC)", "LAST", "RUNS", "TAGS")
    out = console()
    narrow_first = ("TAGS", "TYPE", "LAST", "SCHEDULE", "RUNS")
    out.print(
        table(columns, rows, keep=("ID", "STATUS", "NEXT RUN (UTC)", "RUNS"), optional=narrow_first, width=out.width)
    )
    out.print(f"{len(items)} task{'s' if len(items) != 1 else ''}" + (" (more: raise --limit)" if cursor else ""))


@tasks.command("get")
@click.argument("task_id")
@click.option("--include-deleted", is_flag=True, help="also show a deleted task")
@api_options
def get(task_id: str, include_deleted: bool, api_url: str | None, token: str | None, as_json: bool) -> None:
    """Show one task."""
    client = open_client(api_url, token)
    task = client.get(f"/v1/tasks/{task_id}", include_deleted=include_deleted or None)
    if as_json:
        print_json(task)
        return
    definition = task.get("definition") or {}
    counters = task.get("counters") or {}
    rows = [
        ("id", task["id"]),
        ("name", task["name"]),
        ("status", task["status"] + (f" ({task['paused_note']})" if task.get("paused_note") else "")),
        ("revision", task.get("revision")),
        ("work", f"{task['type']}: {_work_text(definition.get('work') or {})}"),
        ("schedule", _schedule_text(definition)),
        ("next run", when(task.get("next_run")) if task["status"] == "active" else "-"),
        ("last status", task.get("last_status")),
        ("last error", task.get("last_error")),
        # Counters that are 0 say nothing a person needs; --json has them all.
        ("runs", ", ".join(f"{k} {v}" for k, v in sorted(counters.items()) if v) or None),
        ("tags", ", ".join(task.get("tags") or []) or None),
        ("created", f"{when(task.get('created_at'))} by {task.get('created_by') or '?'}"),
    ]
    if task.get("backfill"):
        rows.append(("backfill", f"{task['backfill']['id']}: {_backfill_text(task['backfill'])}"))
    rejection = task.get("last_rejection")
    if rejection:
        rows.append(("last rejection", f"{rejection.get('command_type')}: {rejection.get('reason')}"))
    console().print(table(("FIELD", "VALUE"), rows, title=f"task {task['id']}"))


def _work_text(work: dict[str, Any]) -> str:
    kind = work.get("kind")
    if kind == "http":
        return f"{work.get('method', 'POST')} {work.get('url')}"
    if kind == "kafka":
        return f"topic {work.get('topic')}"
    if kind == "handler":
        return str(work.get("name"))
    if kind == "shell":
        return " ".join(str(a) for a in work.get("argv") or [])
    return json.dumps(work)


@tasks.command("update")
@click.argument("task_id")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--if-match", "revision", type=click.IntRange(1), help="apply only if the task is at this revision")
@WAIT
@IDEMPOTENCY
@api_options
def update(
    task_id: str,
    file: str,
    revision: int | None,
    wait: float,
    idempotency_key: str | None,
    api_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Replace a task's definition with FILE (YAML or JSON; - reads stdin)."""
    from streams.cli_client import load_document

    definition = load_document(file)
    client = open_client(api_url, token)
    headers: dict[str, str] = {}
    if revision is not None:
        headers["If-Match"] = f'"{revision}"'
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    response = client.request("PUT", f"/v1/tasks/{task_id}", body=definition, headers=headers, wait=wait)
    _result(response, as_json, "updated")


def _command(
    verb: str,
    path: str,
    body: dict[str, Any] | None,
    wait: float,
    key: str | None,
    api_url: str | None,
    token: str | None,
) -> Any:
    client = open_client(api_url, token)
    headers = {"Idempotency-Key": key} if key else None
    method = "DELETE" if verb == "delete" else "POST"
    return client.request(method, path, body=body, headers=headers, wait=wait)


@tasks.command("pause")
@click.argument("task_id")
@click.option("--note", help="why (shown on the task)")
@WAIT
@IDEMPOTENCY
@api_options
def pause(
    task_id: str,
    note: str | None,
    wait: float,
    idempotency_key: str | None,
    api_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Stop firing a task's scheduled slots (runs in flight continue)."""
    body = {"note": note} if note else None
    response = _command("pause", f"/v1/tasks/{task_id}/pause", body, wait, idempotency_key, api_url, token)
    _result(response, as_json, "paused")


@tasks.command("resume")
@click.argument("task_id")
@WAIT
@IDEMPOTENCY
@api_options
def resume(
    task_id: str, wait: float, idempotency_key: str | None, api_url: str | None, token: str | None, as_json: bool
) -> None:
    """Resume a paused task (missed slots go through its catch-up policy)."""
    response = _command("resume", f"/v1/tasks/{task_id}/resume", None, wait, idempotency_key, api_url, token)
    _result(response, as_json, "resumed")


@tasks.command("trigger")
@click.argument("task_id")
@click.option(
    "--param", "params", multiple=True, metavar="KEY=VALUE", help="a param for this run (VALUE as JSON if it parses)"
)
@click.option("--trigger-id", help="the run's idempotency key: the same trigger id never runs twice")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), help="priority of this run only")
@WAIT
@IDEMPOTENCY
@api_options
def trigger(
    task_id: str,
    params: tuple[str, ...],
    trigger_id: str | None,
    priority: str | None,
    wait: float,
    idempotency_key: str | None,
    api_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Run a task once now, whatever its schedule."""
    body: dict[str, Any] = {}
    if params:
        body["params"] = dict(_param(p) for p in params)
    if trigger_id:
        body["trigger_id"] = trigger_id
    if priority:
        body["priority"] = priority
    response = _command("trigger", f"/v1/tasks/{task_id}/trigger", body or None, wait, idempotency_key, api_url, token)
    _result(response, as_json, "triggered")


def _param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="--param")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


@tasks.command("delete")
@click.argument("task_id")
@WAIT
@IDEMPOTENCY
@api_options
def delete(
    task_id: str, wait: float, idempotency_key: str | None, api_url: str | None, token: str | None, as_json: bool
) -> None:
    """Delete a task (executions in flight are cancelled)."""
    response = _command("delete", f"/v1/tasks/{task_id}", None, wait, idempotency_key, api_url, token)
    _result(response, as_json, "deleted")


@tasks.command("next")
@click.argument("task_id")
@click.option("-n", "count", type=click.IntRange(1, 100), default=10, show_default=True, help="how many")
@api_options
def next_fire_times(task_id: str, count: int, api_url: str | None, token: str | None, as_json: bool) -> None:
    """Preview a task's next fire times, exactly as the worker will fire them."""
    client = open_client(api_url, token)
    body = client.get(f"/v1/tasks/{task_id}/next-fire-times", n=count)
    if as_json:
        print_json(body)
        return
    rows = [(i + 1, when(f["slot"]), when(f["fire_at"])) for i, f in enumerate(body["fire_times"])]
    out = console()
    if not rows:
        out.print(f"task {task_id} ({body['status']}) has no upcoming fire times")
        return
    out.print(
        table(
            ("#", "SLOT (UTC)", "FIRES AT (UTC)"),
            rows,
            title=f"task {task_id} ({body['status']})",
            keep=("SLOT (UTC)", "FIRES AT (UTC)"),
        )
    )


def _backfill_result(response: Any, as_json: bool, verb: str) -> None:
    """Print the answer to a backfill command: its id, and its progress once applied."""
    body = response.json()
    if as_json:
        print_json(body)
        return
    line = f"{verb} backfill {body.get('backfill_id')} of task {body.get('task_id')}"
    backfill = (body.get("task") or {}).get("backfill") or {}
    if body.get("status") != "applied":
        line += " (accepted; the views do not show it yet)"
    elif backfill.get("id") == body.get("backfill_id"):
        line += f": {_backfill_text(backfill)}"
    click.echo(line)


def _backfill_text(backfill: dict[str, Any]) -> str:
    done = sum(int(backfill.get(k) or 0) for k in ("succeeded", "failed", "timed_out", "cancelled"))
    text = f"{backfill.get('status')}, {when(backfill.get('from'))} to {when(backfill.get('to'))}"
    return text + f", {done} of {backfill.get('slots')} slots done ({backfill.get('dispatched', 0)} dispatched)"


@tasks.command("backfill")
@click.argument("task_id")
@click.option("--from", "start", required=True, help="first instant, RFC 3339 with an offset (inclusive)")
@click.option("--to", "end", required=True, help="end, RFC 3339 with an offset (exclusive; not in the future)")
@click.option(
    "--max-concurrency",
    type=click.IntRange(1, 100),
    help="most backfill runs at once, under the allow_all overlap policy (API default: 1)",
)
@WAIT
@IDEMPOTENCY
@api_options
def backfill(
    task_id: str,
    start: str,
    end: str,
    max_concurrency: int | None,
    wait: float,
    idempotency_key: str | None,
    api_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Run a task once for every slot of its schedule in [--from, --to), as if it had been up then."""
    # The range is checked by the API (and the task processor), which names the field at fault.
    body: dict[str, Any] = {"from": start, "to": end}
    if max_concurrency is not None:
        body["max_concurrency"] = max_concurrency
    response = _command("backfill", f"/v1/tasks/{task_id}/backfills", body, wait, idempotency_key, api_url, token)
    _backfill_result(response, as_json, "started")


@tasks.command("backfill-cancel")
@click.argument("task_id")
@click.argument("backfill_id")
@WAIT
@IDEMPOTENCY
@api_options
def backfill_cancel(
    task_id: str,
    backfill_id: str,
    wait: float,
    idempotency_key: str | None,
    api_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Cancel a task's running backfill: pending slots are dropped, its runs in flight cancelled."""
    path = f"/v1/tasks/{task_id}/backfills/{backfill_id}"
    response = _command("delete", path, None, wait, idempotency_key, api_url, token)
    _backfill_result(response, as_json, "cancelled")


# ---------------------------------------------------------------------------------------------
# executions
# ---------------------------------------------------------------------------------------------


@click.group()
def executions() -> None:
    """Inspect and cancel executions through the REST API."""


_EXECUTION_STATUSES = [
    "buffered", "scheduled", "running", "retrying", "succeeded", "failed", "timed_out", "cancelled", "skipped",
]  # fmt: skip


@executions.command("list")
@click.argument("task_id")
@click.option("--status", type=click.Choice(_EXECUTION_STATUSES), help="only this status")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="most executions shown")
@api_options
def list_executions(
    task_id: str, status: str | None, limit: int, api_url: str | None, token: str | None, as_json: bool
) -> None:
    """List a task's executions, newest first."""
    client = open_client(api_url, token)
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(items) < limit:
        page = client.get(
            f"/v1/tasks/{task_id}/executions", status=status, limit=min(200, limit - len(items)), cursor=cursor
        )
        items.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    if as_json:
        print_json({"items": items, "next_cursor": cursor})
        return
    rows = [
        (
            e["id"],
            e["status"],
            e.get("reason"),
            when(e.get("scheduled_for")),
            e.get("attempts"),
            e.get("duration_ms"),
            e.get("error"),
        )
        for e in items
    ]
    out = console()
    out.print(
        table(
            ("ID", "STATUS", "REASON", "SCHEDULED (UTC)", "ATTEMPTS", "MS", "ERROR"),
            rows,
            keep=("ID", "STATUS", "SCHEDULED (UTC)"),
            optional=("MS", "ATTEMPTS", "REASON"),
            width=out.width,
        )
    )
    out.print(f"{len(items)} execution{'s' if len(items) != 1 else ''}" + (" (more: raise --limit)" if cursor else ""))


@executions.command("get")
@click.argument("execution_id")
@api_options
def get_execution(execution_id: str, api_url: str | None, token: str | None, as_json: bool) -> None:
    """Show one execution and its status timeline."""
    client = open_client(api_url, token)
    execution = client.get(f"/v1/executions/{execution_id}")
    if as_json:
        print_json(execution)
        return
    out = console()
    rows = [
        ("id", execution["id"]),
        ("task", execution["task_id"]),
        ("status", execution["status"]),
        ("reason", execution.get("reason")),
        ("scheduled for", when(execution.get("scheduled_for"))),
        ("attempts", execution.get("attempts")),
        ("duration ms", execution.get("duration_ms")),
        ("worker", execution.get("worker")),
        ("error", execution.get("error")),
        ("result", json.dumps(execution["result"]) if execution.get("result") is not None else None),
    ]
    out.print(table(("FIELD", "VALUE"), rows, title=f"execution {execution['id']}"))
    timeline = [
        (entry["status"], when(entry.get("at")), entry.get("attempt"), entry.get("worker"), entry.get("error"))
        for entry in execution.get("timeline") or []
    ]
    if timeline:
        out.print(
            table(("STATUS", "AT (UTC)", "ATTEMPT", "WORKER", "ERROR"), timeline, title="timeline", keep=("AT (UTC)",))
        )


@executions.command("cancel")
@click.argument("execution_id")
@click.option("--reason", help="why (recorded on the execution)")
@WAIT
@IDEMPOTENCY
@api_options
def cancel(
    execution_id: str,
    reason: str | None,
    wait: float,
    idempotency_key: str | None,
    api_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Cancel an execution in flight, waiting for a retry, or buffered."""
    body = {"reason": reason} if reason else None
    response = _command("cancel", f"/v1/executions/{execution_id}/cancel", body, wait, idempotency_key, api_url, token)
    _result(response, as_json, "cancelled execution of")


__all__ = ["CliError", "ExitCode", "executions", "tasks"]
