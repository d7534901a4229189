"""The README, docker-compose.yml and the Prometheus scrape configuration name what the code has.

Read against the code, not against a list kept here: the routes ``create_app()`` serves, the
fields of each process's settings class, the commands of the ``scheduler`` click group. A new
route, setting or process that is not documented fails here, and so does a documented one
that no longer exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from fastapi.routing import APIRoute
from pydantic_settings import BaseSettings
from starlette.routing import Route

from api.app import create_app
from api.settings import ApiSettings
from projections.settings import ProjectionSettings
from streams.cli import main as scheduler
from streams.cli_client import CliSettings
from streams.notifier import NotifierSettings
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
FASTAPI_OWN = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
"""Routes FastAPI adds itself (the README names ``/docs`` in prose)."""


def section(title: str) -> str:
    """The README's ``## <title>`` section, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no section '## {title}'"
    return match.group(1)


def normalise(path: str) -> str:
    """``/v1/tasks/{task_id}/`` and ``/v1/tasks/{id}`` alike: placeholders unnamed, no trailing slash."""
    return re.sub(r"\{[^}]*\}", "{}", path.split("?")[0]).rstrip("/") or "/"


def _flat(routes: Iterable[Any]) -> Iterator[Any]:
    # FastAPI (0.16x) keeps an included router as one entry whose routes are reached through
    # ``effective_route_contexts()``; earlier releases copied every route into ``app.routes``.
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            yield from contexts()
        else:
            yield route


def served_routes() -> set[tuple[str, str]]:
    """(method, normalised path) of every route the app serves, ``HEAD`` aside."""
    app = create_app(ApiSettings(jwt_hs256_secret="x" * 40))
    served = {
        (method, normalise(route.path))
        for route in _flat(app.routes)
        if isinstance(route, APIRoute | Route) or hasattr(route, "original_route")
        if route.path not in FASTAPI_OWN
        for method in route.methods or ()
        if method != "HEAD"
    }
    # The walk must see at least what the OpenAPI document describes (a public interface), so
    # a FastAPI change in how routes are kept cannot make this test pass on an empty set.
    documented = {(method.upper(), normalise(path)) for path, item in app.openapi()["paths"].items() for method in item}
    assert documented and documented <= served, sorted(documented - served)
    return served


def listed_routes() -> set[tuple[str, str]]:
    """(method, normalised path) of every line of the listing in the README's "REST API" section."""
    blocks = re.findall(r"^```\n(.*?)^```", section("REST API"), re.S | re.M)
    pattern = re.compile(rf"^({'|'.join(METHODS)})\s+(/\S*)", re.M)
    return {(method, normalise(path)) for block in blocks for method, path in pattern.findall(block)}


def test_the_readme_lists_every_route_the_api_serves() -> None:
    served, listed = served_routes(), listed_routes()
    assert any(path.startswith("/v1/") for _, path in served)
    missing = sorted(f"{m} {p}" for m, p in served - listed)
    assert not missing, f"served but not in the README's REST API listing: {missing}"
    stale = sorted(f"{m} {p}" for m, p in listed - served)
    assert not stale, f"in the README's REST API listing but not served: {stale}"


def _top_commands() -> set[str]:
    assert isinstance(scheduler, click.Group)
    return set(scheduler.commands)


def test_every_scheduler_command_is_in_the_processes_or_cli_table() -> None:
    processes = set(re.findall(r"^\| `scheduler ([a-z-]+)`", section("Processes"), re.M))
    cli = set(re.findall(r"^\| `([a-z-]+)[ `]", section("CLI"), re.M))
    commands = _top_commands()
    assert {"worker", "triggers", "notifier"} <= commands
    missing = sorted(commands - processes - cli)
    assert not missing, f"scheduler commands in neither the Processes nor the CLI table: {missing}"
    stale = sorted((processes | cli) - commands)
    assert not stale, f"documented but not scheduler commands: {stale}"


def test_the_processes_table_says_what_each_process_reads_and_how_many_run() -> None:
    header, _, *rows = [line for line in section("Processes").splitlines() if line.startswith("| `scheduler ")
                        or line.startswith("| command")]  # fmt: skip
    assert "reads → writes" in header and "how many" in header
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 4, row
    (triggers,) = [r for r in rows if r.startswith("| `scheduler triggers`")]
    assert "`triggers`" in triggers and "`trigger-rules`" in triggers and "`commands`" in triggers
    (notifier,) = [r for r in rows if r.startswith("| `scheduler notifier`")]
    assert "`task-events`" in notifier and "`notification-rules`" in notifier


BENCH_MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for path in [*(ROOT / "tests" / "bench").glob("*.py"), ROOT / "tests" / "api" / "load.py"]
    if 'if __name__ == "__main__"' in path.read_text()
)
"""The benchmarks one runs with ``python -m``."""


@pytest.mark.parametrize("module", BENCH_MODULES)
def test_the_readme_lists_every_benchmark(module: str) -> None:
    assert f"`{module}`" in section("Tests") or f"`python -m {module}`" in section("Tests"), module


SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    Settings,
    ApiSettings,
    ProjectionSettings,
    NotifierSettings,
    CliSettings,
)
"""The settings class of every process kind (each extends ``Settings``)."""


def configuration_tables() -> str:
    """The rows of the tables in the README's "Processes" section (where configuration is)."""
    return "\n".join(line for line in section("Processes").splitlines() if line.startswith("| `SCHED_"))


def test_the_configuration_tables_name_every_setting() -> None:
    variables = {
        f"{cls.model_config.get('env_prefix', '')}{name}".upper()
        for cls in SETTINGS_CLASSES
        for name in cls.model_fields
    }
    assert "SCHED_NOTIFY_ATTEMPTS" in variables and "SCHED_TRIGGER_DEDUP_SECONDS" in variables
    tables = configuration_tables()
    named = set(re.findall(r"`(SCHED_[A-Z0-9_]+)`", tables))
    missing = sorted(variables - named)
    assert not missing, f"settings missing from the README's configuration tables: {missing}"
    stale = sorted(named - variables)
    assert not stale, f"in the README's configuration tables but no process reads them: {stale}"


# ---------------------------------------------------------------------------------------------
# docker-compose.yml and the Prometheus scrape configuration
# ---------------------------------------------------------------------------------------------

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROCESSES = ("worker", "executor", "triggers", "projector", "notifier", "api")
"""The long-running ``scheduler`` processes (README, "Processes")."""


def scheduler_services() -> dict[str, dict[str, Any]]:
    """Services built from deploy/Dockerfile, whose entrypoint is ``scheduler``."""
    return {
        name: service
        for name, service in COMPOSE["services"].items()
        if (service.get("build") or {}).get("dockerfile") == "deploy/Dockerfile"
    }


def test_the_image_runs_the_scheduler_command() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["scheduler"\]$', dockerfile, re.M)
    assert 'scheduler = "streams.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_every_compose_command_is_a_scheduler_command_with_valid_options() -> None:
    services = scheduler_services()
    assert {s["command"][0] for s in services.values()} >= set(PROCESSES)
    for name, service in services.items():
        command = service["command"]
        assert isinstance(command, list) and all(isinstance(a, str) for a in command), name
        sub = scheduler.get_command(click.Context(scheduler), command[0])
        assert sub is not None, f"service {name}: {command[0]!r} is not a scheduler command"
        # Parsing the arguments (without running) catches a misspelt or removed option.
        sub.make_context(command[0], list(command[1:]))


def test_compose_sets_only_settings_that_exist() -> None:
    variables = {f"SCHED_{name}".upper() for cls in SETTINGS_CLASSES for name in cls.model_fields}
    for name, service in scheduler_services().items():
        environment = service.get("environment") or {}
        unknown = sorted(set(environment) - variables)
        assert not unknown, f"service {name} sets variables no process reads: {unknown}"
    api = scheduler_services()["api"]["environment"]
    assert api["SCHED_API_HOST"] == "0.0.0.0" and str(api["SCHED_API_PORT"]) in COMPOSE["services"]["api"]["ports"][0]


def test_prometheus_scrapes_every_process_compose_runs() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    ports = {
        int(target.rsplit(":", 1)[1])
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    for name, service in scheduler_services().items():
        if service["command"][0] not in PROCESSES:
            continue  # one-shot commands (topics) serve no metrics
        environment = service.get("environment") or {}
        port = environment.get("SCHED_METRICS_PORT") or environment.get("SCHED_API_PORT")
        assert port is not None, f"service {name} serves no metrics"
        assert int(port) in ports, f"service {name}: port {port} is not scraped by prometheus.yml"
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"scheduler-trigger-router", "scheduler-notifier"} <= jobs


def _field_defaults() -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for cls in SETTINGS_CLASSES:
        for name, info in cls.model_fields.items():
            if info.default_factory is None:
                defaults[f"SCHED_{name}".upper()] = info.default
    return defaults


def test_the_configuration_tables_give_the_defaults_the_code_has() -> None:
    """Numbers and quoted words in the default column match the fields' defaults (where a row
    lists as many defaults, split by ``/``, as variables)."""
    defaults, checked = _field_defaults(), 0
    for row in configuration_tables().splitlines():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        variables = re.findall(r"`(SCHED_[A-Z0-9_]+)`", cells[0])
        given = [text.strip() for text in cells[1].split(" / ")]
        if len(given) != len(variables):
            continue
        for variable, text in zip(variables, given, strict=True):
            text = re.sub(r"\s*\(.*\)$", "", text)  # "none (plain HTTP)": the words say it
            default = defaults.get(variable)
            if re.fullmatch(r"-?[0-9.]+", text) and isinstance(default, int | float):
                assert float(text) == float(default), f"{variable}: README says {text}, the code {default}"
                checked += 1
            elif re.fullmatch(r"`[^`]*`", text) and isinstance(default, str):
                assert text.strip("`") == default, f"{variable}: README says {text}, the code {default!r}"
                checked += 1
    assert checked > 40, checked
    print(checked)  # the rows are still read


def test_the_cli_table_names_every_subcommand() -> None:
    rows = [line for line in section("CLI").splitlines() if line.startswith("| `")]
    for name, command in sorted(scheduler.commands.items()):
        if not isinstance(command, click.Group):
            continue
        text = " ".join(row.split(" | ")[0] for row in rows if row.startswith(f"| `{name} "))
        missing = [sub for sub in command.commands if not re.search(rf"(?<![\w-]){re.escape(sub)}(?![\w-])", text)]
        assert not missing, f"scheduler {name}: subcommands missing from the README's CLI table: {missing}"
