"""Fixtures of the CLI tests: the API tests' worker and projector, plus a real API process.

The CLI talks HTTP to an API at a URL, as a person's terminal would, so the session starts
``scheduler api`` (the same command an operator runs) on a free port, against the worker and
projector of ``tests/api/conftest.py`` (reused, not copied). ``run`` invokes the ``scheduler``
group in-process with click's runner and an environment naming that deployment.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from streams.cli import main
from tests.api.conftest import SECRET, SECRET_KEYS, Stack, free_port, keys, stack, warm  # noqa: F401
from tests.integration.harness import WorkerProc


@dataclass
class Cli:
    """The ``scheduler`` command for one test: a tenant's token and the session's deployment."""

    env: dict[str, str]
    tenant: str
    url: str
    runner: CliRunner = field(default_factory=CliRunner)

    def run(self, *args: str, input: str | None = None, **env: str | None) -> Result:
        """``scheduler <args>``; ``env`` overrides (None unsets) variables for this call."""
        merged: dict[str, str | None] = {**self.env, **env}
        return self.runner.invoke(main, list(args), input=input, env=merged, catch_exceptions=False)

    def ok(self, *args: str, input: str | None = None) -> Result:
        """``run`` that must exit 0."""
        result = self.run(*args, input=input)
        assert result.exit_code == 0, f"scheduler {' '.join(args)} -> {result.exit_code}\n{result.output}"
        return result

    def ok_env(self, *args: str, **env: str | None) -> Result:
        """``run`` with environment overrides that must exit 0."""
        result = self.run(*args, **env)
        assert result.exit_code == 0, f"scheduler {' '.join(args)} -> {result.exit_code}\n{result.output}"
        return result

    def json(self, *args: str) -> dict[str, object]:
        """The JSON a ``--json`` command prints."""
        parsed: dict[str, object] = json.loads(self.ok(*args, "--json").stdout)
        return parsed


@dataclass(frozen=True)
class ApiServer:
    """The session's API process."""

    url: str
    env: dict[str, str]
    stack: Stack


def _deployment_env(deployment: Stack) -> dict[str, str]:
    return {
        "SCHED_KAFKA_BOOTSTRAP": deployment.infra.bootstrap,
        "SCHED_MONGO_URL": deployment.infra.mongo_url,
        "SCHED_MONGO_DATABASE": deployment.database,
        "SCHED_TOPIC_PREFIX": deployment.prefix,
        "SCHED_PARTITIONS": "4",
        "SCHED_JWT_HS256_SECRET": SECRET,
    }


@pytest.fixture(scope="session")
def api_server(warm: Stack) -> Iterator[ApiServer]:  # noqa: F811
    """``scheduler api`` on a free port, serving the warm session stack."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    env.update(
        _deployment_env(warm),
        SCHED_API_HOST="127.0.0.1",
        SCHED_API_PORT=str(port),
        SCHED_SECRET_KEYS=json.dumps(SECRET_KEYS),
        SCHED_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    proc = WorkerProc(env, warm.log_dir / "cli-api.log", None, command=("api",)).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if not proc.alive() or time.monotonic() > deadline:
                raise AssertionError(f"scheduler api did not become ready:\n{proc.tail()}")
            time.sleep(0.3)
        yield ApiServer(url, env, warm)
    finally:
        proc.stop()


@pytest.fixture
def cli(api_server: ApiServer) -> Cli:
    """The CLI for a fresh tenant (admin token minted by ``scheduler token``) of the session's API."""
    from tests.api.conftest import new_tenant

    tenant = new_tenant()
    env: dict[str, str] = {
        **_deployment_env(api_server.stack),
        "SCHED_API_URL": api_server.url,
        "COLUMNS": "200",  # rich: wide enough that tables are not wrapped in the output tests read
    }
    cli = Cli(env, tenant, api_server.url)
    minted = cli.ok("token", "--tenant", tenant, "--role", "admin", "--sub", "cli-test").stdout.strip()
    cli.env["SCHED_API_TOKEN"] = minted
    return cli


def write(tmp_path: Path, name: str, text: str) -> str:
    """A file of the test holding ``text``; its path."""
    path = tmp_path / name
    path.write_text(text)
    return str(path)
