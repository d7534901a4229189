"""``scheduler calendars ...``: a tenant's calendars through the REST API (README, "Calendars").

Like ``scheduler tasks``, every command sends the token to the API, so roles and tenancy
apply: viewers list and show, admins put and delete. ``put`` and ``delete`` wait (``--wait``)
until the ``calendars`` view shows the change, so a refusal that only the view can reveal (two
changes racing to one revision) is an error with its exit code rather than a silent 202.
"""

from __future__ import annotations

from typing import Any

import click

from streams.cli_client import CliError, ExitCode, api_options, console, open_client, print_json, table, when
from streams.cli_tasks import WAIT

READ_ONLY = ("revision", "updated_at")
"""Fields ``show --json`` prints that a put does not take: dropped, so that output can be
edited and put back."""


@click.group()
def calendars() -> None:
    """List, show, create or replace, and delete calendars (slots they exclude do not run)."""


def _entries(calendar: dict[str, Any]) -> str:
    parts = [f"{len(calendar.get(key) or [])} {key}" for key in ("dates", "ranges", "rules") if calendar.get(key)]
    return ", ".join(parts) or "nothing"


@calendars.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True, help="most calendars shown")
@api_options
def list_calendars(limit: int, api_url: str | None, token: str | None, as_json: bool) -> None:
    """List the tenant's calendars by name (following pages up to --limit)."""
    client = open_client(api_url, token)
    items: list[dict[str, Any]] = []
    after: str | None = None
    while len(items) < limit:
        page = client.get("/v1/calendars", after=after, limit=min(500, limit - len(items)))
        items.extend(page["items"])
        after = page.get("next_after")
        if not after:
            break
    if as_json:
        print_json({"items": items, "next_after": after})
        return
    rows = [
        (c["name"], c["timezone"], _entries(c), c["revision"], when(c.get("updated_at")), c.get("description"))
        for c in items
    ]
    out = console()
    out.print(
        table(
            ("NAME", "TIME ZONE", "EXCLUDES", "REVISION", "UPDATED (UTC)", "DESCRIPTION"),
            rows,
            keep=("NAME", "UPDATED (UTC)"),
            optional=("DESCRIPTION", "REVISION"),
            width=out.width,
        )
    )
    out.print(f"{len(items)} calendar{'s' if len(items) != 1 else ''}" + (" (more: raise --limit)" if after else ""))


@calendars.command("show")
@click.argument("name")
@api_options
def show(name: str, api_url: str | None, token: str | None, as_json: bool) -> None:
    """Show one calendar: what it excludes, in its time zone."""
    client = open_client(api_url, token)
    calendar = client.get(f"/v1/calendars/{name}")
    if as_json:
        print_json(calendar)
        return
    rows: list[tuple[str, Any]] = [
        ("name", calendar["name"]),
        ("time zone", calendar["timezone"]),
        ("revision", calendar["revision"]),
        ("updated", when(calendar.get("updated_at"))),
        ("description", calendar.get("description")),
    ]
    rows += [("date", d) for d in calendar.get("dates") or []]
    rows += [("range", f"{r['start']} to {r['end']}") for r in calendar.get("ranges") or []]
    rows += [("rule", _rule_text(r)) for r in calendar.get("rules") or []]
    console().print(table(("FIELD", "VALUE"), rows, title=f"calendar {calendar['name']}"))


def _rule_text(rule: dict[str, Any]) -> str:
    duration = rule.get("duration_seconds")
    return f"{rule['cron']} " + (f"for {duration:g} s" if duration else "(whole days)")


def _body(name: str, path: str) -> dict[str, Any]:
    from streams.cli_client import load_document

    body = load_document(path, what="a calendar (a mapping)")
    named = body.pop("name", name)
    if named != name:
        raise CliError(f"{path} names calendar {named!r}, not {name!r}", ExitCode.USAGE)
    for key in READ_ONLY:
        body.pop(key, None)
    return body


def _changed(response: Any, as_json: bool, verb: str, name: str) -> None:
    body = response.json()
    if as_json:
        print_json(body)
        return
    line = f"{verb} calendar {name}: revision {body.get('revision')}"
    if response.status_code == 202:
        line += " (accepted; the views do not show it yet)"
    click.echo(line)


@calendars.command("put")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--if-match", "revision", type=click.IntRange(1), help="apply only if the calendar is at this revision")
@WAIT
@api_options
def put(
    name: str,
    file: str,
    revision: int | None,
    wait: float,
    api_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Create calendar NAME, or replace it whole, from a YAML or JSON FILE (- reads stdin).

    FILE holds timezone, description, dates, ranges and rules (README, "Calendars"); the name,
    revision and updated_at that 'show --json' prints are ignored, so its output can be edited
    and put back.
    """
    body = _body(name, file)
    client = open_client(api_url, token)
    headers = {"If-Match": f'"{revision}"'} if revision is not None else None
    response = client.request("PUT", f"/v1/calendars/{name}", body=body, headers=headers, wait=wait)
    _changed(response, as_json, "put", name)


@calendars.command("delete")
@click.argument("name")
@WAIT
@api_options
def delete(name: str, wait: float, api_url: str | None, token: str | None, as_json: bool) -> None:
    """Delete a calendar (refused while tasks name it: the error lists them)."""
    client = open_client(api_url, token)
    response = client.request("DELETE", f"/v1/calendars/{name}", wait=wait)
    _changed(response, as_json, "deleted", name)
