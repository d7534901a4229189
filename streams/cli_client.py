"""What the ``scheduler`` commands that talk to the REST API share: settings, exit codes, the
HTTP client that turns problem documents into one line on stderr, and the output (rich tables
for people, ``--json`` for scripts).

Exit codes (documented in the README, "CLI"), so a script can tell what went wrong:

====  ==========================================================================
0     ok
1     the API refused the request (422 invalid input, other 4xx/5xx)
2     usage: bad options or arguments, an unreadable or invalid file, missing configuration
3     not found (404)
4     conflict (409: id taken, stale revision, a state that forbids the command)
5     unavailable: the API, Kafka or the views could not be reached (503, connection refused, timeout)
6     not authorised (401 no or bad token, 403 missing role)
====  ==========================================================================
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
from pydantic import Field, SecretStr, ValidationError
from rich.console import Console
from rich.table import Table

from streams.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


class ExitCode(IntEnum):
    """What a ``scheduler`` command's exit status means."""

    OK = 0
    """Done."""
    API_ERROR = 1
    """The API refused the request (422 invalid input, or another error status)."""
    USAGE = 2
    """Bad options or arguments, an unreadable or invalid file, missing configuration (as click's own)."""
    NOT_FOUND = 3
    """The task or execution does not exist (404)."""
    CONFLICT = 4
    """The command conflicts with the task's state (409)."""
    UNAVAILABLE = 5
    """The API, Kafka or the views could not be reached (503, connection refused, timeout)."""
    UNAUTHORISED = 6
    """No token, a bad or expired token (401), or a role too low for the command (403)."""


_STATUS_CODES = {
    401: ExitCode.UNAUTHORISED,
    403: ExitCode.UNAUTHORISED,
    404: ExitCode.NOT_FOUND,
    409: ExitCode.CONFLICT,
    412: ExitCode.CONFLICT,
    503: ExitCode.UNAVAILABLE,
    504: ExitCode.UNAVAILABLE,
}


class CliError(click.ClickException):
    """A failure reported as one line ``error: <message>`` on stderr and a meaningful exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.API_ERROR) -> None:
        super().__init__(message)
        self.exit_code = int(code)

    def show(self, file: Any = None) -> None:
        """One line on stderr, whatever the message holds (a detail can span lines)."""
        click.echo(f"error: {' '.join(self.format_message().split())}", err=True)


def exit_code_for(status: int) -> ExitCode:
    """The exit code of an HTTP error status."""
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    return ExitCode.UNAVAILABLE if status >= 500 and status != 500 else ExitCode.API_ERROR


def problem_message(response: httpx.Response) -> str:
    """One line naming what the API said was wrong: the problem's detail and its fields."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = " ".join(response.text.split())[:300]
        return f"HTTP {response.status_code}" + (f": {text}" if text else "")
    detail = body.get("detail") or body.get("title") or f"HTTP {response.status_code}"
    fields = [str(e["field"]) for e in body.get("errors") or [] if isinstance(e, dict) and e.get("field")]
    named = [f for f in fields if f not in str(detail)]
    suffix = f" (fields: {', '.join(named)})" if named else ""
    retry = response.headers.get("Retry-After")
    if response.status_code == 503 and retry:
        suffix += f"; retry after {retry} s"
    return f"{detail}{suffix} [HTTP {response.status_code}]"


class CliSettings(Settings):
    """The deployment's settings plus what the command-line client needs, from ``SCHED_*``."""

    api_url: str = "http://127.0.0.1:8000"
    """Base URL of the REST API the ``tasks`` and ``executions`` commands talk to."""
    api_token: SecretStr | None = None
    """Bearer token sent to the API (``scheduler token`` mints a development one)."""
    api_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """Longest wait for one API answer (a command's ``--wait`` is added to it)."""


S = TypeVar("S", bound=Settings)


def load_settings(kind: type[S]) -> S:
    """``kind()`` from the environment; a bad ``SCHED_*`` value is a usage error naming the variable.

    Only pydantic's messages are shown, never the input: it could be a token or a secret.
    """
    try:
        return kind()
    except ValidationError as exc:
        reasons = "; ".join(
            (f"SCHED_{'_'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "") + e["msg"] for e in exc.errors()
        )
        raise CliError(f"invalid settings: {reasons}", ExitCode.USAGE) from None


class ApiClient:
    """A small synchronous client of the REST API that raises :class:`CliError` for any failure."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        if not token:
            raise CliError(
                "no API token: set SCHED_API_TOKEN or pass --token (scheduler token mints one)", ExitCode.USAGE
            )
        self.url = url.rstrip("/")
        try:
            self._http = httpx.Client(
                base_url=self.url,
                headers={"Authorization": f"Bearer {token}", "User-Agent": "scheduler-cli"},
                timeout=timeout,
            )
        except httpx.InvalidURL as exc:
            raise CliError(f"invalid API URL {self.url!r}: {exc}", ExitCode.USAGE) from None

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        wait: float = 0,
    ) -> httpx.Response:
        """Send one request; the response when it is a success, :class:`CliError` otherwise.

        :raises CliError: the API answered an error (exit code by status), or could not be reached (5).
        """
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if wait:
            query["wait"] = wait
        try:
            response = self._http.request(
                method,
                path,
                params=query,
                json=body,
                headers=headers,
                # A command waiting for the views answers after up to ``wait`` seconds.
                timeout=self._http.timeout.read + wait if self._http.timeout.read is not None else None,
            )
        except httpx.TimeoutException:
            raise CliError(f"the API at {self.url} did not answer in time", ExitCode.UNAVAILABLE) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            message = f"invalid API URL {self.url!r} (e.g. http://127.0.0.1:8000): {exc}"
            raise CliError(message, ExitCode.USAGE) from None
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach the API at {self.url}: {exc}", ExitCode.UNAVAILABLE) from None
        if response.is_success:
            return response
        raise CliError(problem_message(response), exit_code_for(response.status_code))

    def get(self, path: str, **params: Any) -> Any:
        """The JSON body of a ``GET``."""
        return self.request("GET", path, params=params).json()


def api_options(func: F) -> F:
    """The options of every command that talks to the API: where, with which token, how to print."""
    func = click.option("--json", "as_json", is_flag=True, help="print JSON (for scripts) instead of tables")(func)
    func = click.option("--token", envvar="SCHED_API_TOKEN", help="bearer token [env SCHED_API_TOKEN]")(func)
    func = click.option("--api-url", envvar="SCHED_API_URL", help="REST API base URL [env SCHED_API_URL]")(func)
    return func


def open_client(api_url: str | None, token: str | None) -> ApiClient:
    """A client of the API named by the options, else by ``SCHED_API_URL`` / ``SCHED_API_TOKEN``;
    closed when the command ends."""
    settings = load_settings(CliSettings)
    secret = token or (settings.api_token.get_secret_value() if settings.api_token else None)
    client = ApiClient(api_url or settings.api_url, secret, settings.api_timeout_seconds)
    context = click.get_current_context(silent=True)
    if context is not None:
        context.call_on_close(client.close)
    return client


# ---------------------------------------------------------------------------------------------
# Input files
# ---------------------------------------------------------------------------------------------


_YAML_12_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
"""Booleans as YAML 1.2 has them (PyYAML follows YAML 1.1, where ``on``, ``off``, ``yes`` and
``no`` are booleans too)."""


@functools.cache
def _yaml_loader() -> Any:
    """PyYAML's safe loader with YAML 1.2 booleans only.

    Under YAML 1.1 a notification rule's ``on: [failed]`` is read as ``{True: ["failed"]}`` (the
    API then says field ``on`` is missing and ``true`` is not allowed), and a word such as ``no``
    or ``off`` in a list of values becomes ``False``. PyYAML has no YAML 1.2 mode, so the bool
    resolver is replaced by one matching only ``true`` and ``false``.
    """
    import yaml

    loader: Any = type("Yaml12SafeLoader", (yaml.SafeLoader,), {})
    bool_tag = "tag:yaml.org,2002:bool"
    loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    loader.add_implicit_resolver(bool_tag, _YAML_12_BOOL, list("tTfF"))
    return loader


def load_document(path: str, what: str = "a task definition (a mapping)") -> dict[str, Any]:
    """A mapping (``what``: a task definition, a calendar...) from a YAML or JSON file (``-``:
    stdin); :class:`CliError` (usage) if unreadable or not a mapping.

    YAML is a superset of JSON, so one parser reads both; a ``.json`` file is read as strict
    JSON so its errors name the line and column the way JSON tools do. YAML booleans are only
    ``true`` and ``false`` (YAML 1.2): ``on:`` is the key of a notification rule, not ``True``.
    """
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", ExitCode.USAGE) from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text", ExitCode.USAGE) from None
    try:
        doc = json.loads(text) if path.endswith(".json") else yaml.load(text, Loader=_yaml_loader())  # nosec B506  # a SafeLoader
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", ExitCode.USAGE
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CliError(f"{path}: invalid YAML{where}: {problem}", ExitCode.USAGE) from None
    if not isinstance(doc, dict):
        raise CliError(f"{path}: expected {what}, got {type(doc).__name__}", ExitCode.USAGE)
    # YAML reads unquoted timestamps as datetimes; the API wants ISO 8601 strings.
    converted: dict[str, Any] = json.loads(json.dumps(doc, default=_iso))
    return converted


def _iso(value: Any) -> str:
    if isinstance(value, datetime) or hasattr(value, "isoformat"):
        return str(value.isoformat())
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def console() -> Console:
    """The console of human output (stdout); rich drops colours when it is not a terminal.

    Piped into ``less`` or a file, the output is as wide as it needs (up to 250 columns) rather
    than rich's 80, unless ``COLUMNS`` says otherwise: the tables then keep all their columns.
    """
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, soft_wrap=False, width=250 if piped else None)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout."""
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def when(value: Any) -> str:
    """A timestamp from the API as ``YYYY-MM-DD HH:MM:SS`` (UTC), or ``-``."""
    if not value:
        return "-"
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    return parsed.strftime("%Y-%m-%d %H:%M:%S")


_WRAPPED_MIN = 12
"""Narrowest a wrapping column is made (a name, a schedule) before optional columns give way."""


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    title: str | None = None,
    keep: Iterable[str] = (),
    optional: Sequence[str] = (),
    width: int | None = None,
) -> Table:
    """A rich table with ``columns`` and ``rows`` (``None`` shows as ``-``).

    Columns named in ``keep`` (ids, timestamps: what people copy or compare) are never wrapped
    or cut short; the others wrap between words. When the table would not fit in ``width``
    (the terminal's), the ``optional`` columns are left out, in that order, until it does: a
    narrow terminal shows fewer columns rather than every cell cut to an ellipsis.
    """
    cells = [["-" if cell is None else str(cell) for cell in row] for row in rows]
    widths = {name: max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)}
    kept = set(keep)
    # A wrapping column still needs room for a word or two.
    least = {name: widths[name] if name in kept else min(widths[name], _WRAPPED_MIN) for name in columns}
    shown = list(columns)
    for name in optional:
        if width is None or sum(least[c] + 3 for c in shown) + 1 <= width:
            break
        shown.remove(name)
    wrapped = [c for c in shown if c not in kept]
    if width is not None and wrapped:
        # Still too wide: the wrapping columns share what the kept ones leave (a terminal cuts
        # a table wider than itself, which would hide the kept columns at the right).
        room = width - 1 - sum(least[c] + 3 for c in shown if c in kept) - 3 * len(wrapped)
        share = max(4, room // len(wrapped))
        least.update({c: min(least[c], share) for c in wrapped})
    out = Table(title=title, title_justify="left", header_style="bold")
    for name in shown:
        if name in kept:
            out.add_column(name, no_wrap=True, min_width=widths[name])
        else:
            out.add_column(name, min_width=least[name], overflow="fold")
    for row in cells:
        out.add_row(*(cell for name, cell in zip(columns, row, strict=True) if name in shown))
    return out
