"""``scheduler notifications ...``: the tenant's notification rules and an execution's
deliveries, through the REST API (README, "Notifications").

The API puts rules on the ``notification-rules`` topic and a notifier applies them to the
view ``GET /v1/notification-rules`` reads (about a second), so ``set`` waits (``--wait``)
until the view shows this very change (its ``updated_at``); without a notifier running it
says the rules are accepted but not applied yet, rather than pretending.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import click

from streams.cli_client import ApiClient, api_options, console, open_client, print_json, table, when
from streams.cli_tasks import WAIT

READ_ONLY = ("updated_by", "updated_at")
"""Fields ``rules --json`` prints that a put does not take: dropped, so that output can be
edited and set back (webhook secrets shown as ``***`` are kept as stored)."""
POLL_SECONDS = 0.2
"""How often ``set --wait`` reads the rules back."""


@click.group()
def notifications() -> None:
    """The tenant's notification rules, and what was notified about an execution."""


def _target(channel: dict[str, Any]) -> str:
    kind = channel.get("kind")
    if kind == "webhook":
        return str(channel.get("url"))
    if kind == "kafka":
        return f"topic {channel.get('topic')}"
    if kind == "email":
        return ", ".join(channel.get("to") or [])
    return str(channel)


def _print_rules(body: dict[str, Any], title: str) -> None:
    rows = [
        (i + 1, ", ".join(rule.get("on") or []), (rule.get("channel") or {}).get("kind"), _target(rule["channel"]))
        for i, rule in enumerate(body.get("rules") or [])
    ]
    out = console()
    if not rows:
        out.print("no notification rules for this tenant (tasks' own rules still apply)")
        return
    by = f" by {body['updated_by']}" if body.get("updated_by") else ""
    title += f" (updated {when(body.get('updated_at'))}{by})"
    out.print(table(("#", "ON", "CHANNEL", "TARGET"), rows, title=title))


@notifications.command("rules")
@api_options
def rules(api_url: str | None, token: str | None, as_json: bool) -> None:
    """Show the rules applied to every task of the tenant (secrets as ***)."""
    body = open_client(api_url, token).get("/v1/notification-rules")
    if as_json:
        print_json(body)
        return
    _print_rules(body, "tenant notification rules")


def _instant(value: Any) -> datetime | None:
    """A timestamp of the API as an aware datetime to the millisecond (what MongoDB keeps of
    the one the PUT answered with), or None."""
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)


def _applied(client: ApiClient, updated_at: Any, wait: float) -> dict[str, Any] | None:
    """The rules as the view shows them once it holds the change stamped ``updated_at`` (or a
    later one); None when ``wait`` seconds pass first."""
    put_at = _instant(updated_at)
    deadline = time.monotonic() + wait
    while True:
        shown: dict[str, Any] = client.get("/v1/notification-rules")
        shown_at = _instant(shown.get("updated_at"))
        if put_at is not None and shown_at is not None and shown_at >= put_at:
            return shown
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_SECONDS)


@notifications.command("set")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@WAIT
@api_options
def set_rules(file: str, wait: float, api_url: str | None, token: str | None, as_json: bool) -> None:
    """Replace the tenant's rules with FILE (YAML or JSON with 'rules: [...]'; - reads stdin).

    'rules: []' removes them all. A webhook secret given as *** keeps the stored one, so the
    output of 'rules --json' can be edited and set back.
    """
    from streams.cli_client import load_document

    body = load_document(file, what="notification rules (a mapping with 'rules')")
    for key in READ_ONLY:
        body.pop(key, None)
    client = open_client(api_url, token)
    put: dict[str, Any] = client.request("PUT", "/v1/notification-rules", body=body).json()
    shown = _applied(client, put.get("updated_at"), wait) if wait else None
    if as_json:
        print_json({**put, "status": "applied" if shown is not None else "accepted"})
        return
    count = len(put.get("rules") or [])
    line = f"set {count} notification rule{'s' if count != 1 else ''}"
    if shown is None:
        line += " (accepted; no notifier has applied them yet)" if wait else " (accepted)"
    click.echo(line)


@notifications.command("sent")
@click.argument("execution_id")
@api_options
def sent(execution_id: str, api_url: str | None, token: str | None, as_json: bool) -> None:
    """List the notifications sent (or given up on) about an execution, oldest first."""
    body = open_client(api_url, token).get(f"/v1/executions/{execution_id}/notifications")
    if as_json:
        print_json(body)
        return
    rows = [
        (
            d["id"],
            d["event"],
            d["scope"],
            d["channel"],
            d["target"],
            d["status"],
            d.get("attempts"),
            when(d.get("at")),
            d.get("last_error"),
        )
        for d in body.get("items") or []
    ]
    out = console()
    out.print(
        table(
            ("DELIVERY", "EVENT", "RULE", "CHANNEL", "TARGET", "STATUS", "ATTEMPTS", "AT (UTC)", "ERROR"),
            rows,
            keep=("DELIVERY", "STATUS", "AT (UTC)"),
            optional=("ATTEMPTS", "RULE", "ERROR"),
            width=out.width,
        )
    )
    out.print(f"{len(rows)} notification{'s' if len(rows) != 1 else ''}")
