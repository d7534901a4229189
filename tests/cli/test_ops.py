"""``scheduler tail | replay | token | stack | topics | secrets | demo`` against the real stack."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest

from tests.api.conftest import SECRET, free_port
from tests.cli.conftest import Cli, write
from tests.integration.harness import REPO


def _task(cli: Cli, tmp_path: Path, name: str, tags: list[str]) -> str:
    definition = {"name": name, "work": {"kind": "handler", "name": "noop"}, "tags": tags}
    body = cli.json("tasks", "create", write(tmp_path, f"{name}.json", json.dumps(definition)))
    return str(body["task_id"])


def _run_until_done(cli: Cli, task_id: str) -> str:
    execution_id = str(cli.json("tasks", "trigger", task_id)["execution_id"])
    deadline = time.monotonic() + 30
    while cli.json("executions", "get", execution_id)["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    return execution_id


def test_tail_filters_by_task_and_status(cli: Cli, tmp_path: Path) -> None:
    task_id = _task(cli, tmp_path, "tailed", ["t"])
    execution_id = _run_until_done(cli, task_id)

    # The id the API shows is matched as well as the internal <tenant>/<id>.
    lines = cli.ok("tail", "--task", task_id, "--from-beginning", "--max", "2", "--seconds", "20", "--json").stdout
    events = [json.loads(line) for line in lines.splitlines()]
    assert [e["type"] for e in events] == ["TaskCreated", "ExecutionDispatched"]
    assert {e["task_id"] for e in events} == {f"{cli.tenant}/{task_id}"}

    outcomes = cli.ok(
        "tail", "--tenant", cli.tenant, "--status", "succeeded", "--from-beginning", "--max", "1", "--seconds", "20"
    ).stdout
    assert "ExecutionCompleted" in outcomes and execution_id in outcomes and "succeeded" in outcomes
    public = cli.ok("tail", "--outcomes", "--task", f"{cli.tenant}/{task_id}", "--from-beginning", "--max", "1").stdout
    assert execution_id in public
    none = cli.ok("tail", "--tenant", cli.tenant, "--status", "failed", "--from-beginning", "--seconds", "3")
    assert none.stdout == ""


def test_tail_live_by_tag_as_a_person_runs_it(cli: Cli, tmp_path: Path) -> None:
    red = _task(cli, tmp_path, "red", ["red"])
    blue = _task(cli, tmp_path, "blue", ["blue"])
    env = {**os.environ, **cli.env, "PYTHONUNBUFFERED": "1"}
    # Live (from the end): the tags of tasks created before the tail starts come from the tasks view.
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "tail", "--tenant", cli.tenant, "--tag", "red",
         "--type", "ExecutionCompleted", "--max", "1", "--seconds", "60"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert "tailing " in proc.stderr.readline()
        _run_until_done(cli, blue)
        red_execution = _run_until_done(cli, red)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert red_execution in out and f"{cli.tenant}/{red}" in out and blue not in out


def test_tail_without_kafka_is_unavailable(cli: Cli) -> None:
    result = cli.run("tail", "--seconds", "1", SCHED_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    assert result.exit_code == 5 and result.stderr.startswith("error: cannot read"), result.output


def test_replay_rebuilds_the_views_and_reports(cli: Cli, tmp_path: Path) -> None:
    task_id = _task(cli, tmp_path, "replayed", ["r"])
    _run_until_done(cli, task_id)
    report = cli.json("replay")
    assert report["switched"] is True and int(report["events_applied"]) >= 4  # type: ignore[call-overload]
    assert str(report["collections"]["tasks"]).startswith("tasks_r")  # type: ignore[index]
    # The API reads the rebuilt views: the task and its counters are there.
    assert cli.json("tasks", "get", task_id)["counters"]["succeeded"] == 1  # type: ignore[index]
    human = cli.ok("replay", "--no-switch").stdout
    assert "replayed " in human and "built, not switched" in human

    no_kafka = cli.run("replay", SCHED_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    assert no_kafka.exit_code == 5 and "unreachable" in no_kafka.stderr, no_kafka.output


def test_a_mistyped_prefix_is_not_found_and_creates_no_topic(cli: Cli) -> None:
    """Asking the broker about a missing topic by name creates it (auto.create.topics.enable):
    the second try then found the stray topic and replayed or tailed nothing, exit 0."""
    prefix = f"typo{uuid.uuid4().hex[:8]}."
    for _ in range(2):
        for command in (("replay",), ("tail", "--seconds", "1")):
            result = cli.run(*command, SCHED_TOPIC_PREFIX=prefix)
            assert result.exit_code == 3, f"{command}: {result.output}"
            assert f"topic {prefix}task-events does not exist" in result.stderr


def test_token_is_accepted_and_refused_without_a_secret(cli: Cli) -> None:
    minted = cli.ok("token", "--tenant", "acme", "--role", "operator", "--sub", "ops", "--ttl", "60").stdout.strip()
    claims = jwt.decode(minted, SECRET, algorithms=["HS256"])
    assert claims["tenant"] == "acme" and claims["roles"] == ["operator"] and claims["sub"] == "ops"
    assert 55 <= claims["exp"] - time.time() <= 61
    with_aud = cli.run("token", "--tenant", "acme", SCHED_JWT_AUDIENCE="aud-1", SCHED_JWT_ISSUER="https://iss")
    aud_claims = jwt.decode(with_aud.stdout.strip(), SECRET, algorithms=["HS256"], audience="aud-1")
    assert aud_claims["iss"] == "https://iss"

    missing = cli.run("token", "--tenant", "acme", SCHED_JWT_HS256_SECRET=None)
    assert missing.exit_code == 2 and "SCHED_JWT_HS256_SECRET is not set" in missing.stderr
    short = cli.run("token", "--tenant", "acme", SCHED_JWT_HS256_SECRET="short-secret-value")
    assert short.exit_code == 2 and "32 bytes" in short.stderr and "short-secret-value" not in short.output
    assert cli.run("token", "--tenant", "a/b").exit_code == 2


def test_stack_commands(cli: Cli, tmp_path: Path) -> None:
    env = {"SCHED_STACK_DIR": str(tmp_path / "stack"), "SCHED_KAFKA_PORT": "19092"}
    status = cli.run("stack", "status", "--json", **env)
    assert status.exit_code == 1 and json.loads(status.stdout) == {"kafka": None, "ferretdb": None}
    assert "export SCHED_KAFKA_BOOTSTRAP=127.0.0.1:19092" in cli.ok_env("stack", "env", **env).stdout
    bad = cli.run("stack", "up", SCHED_STACK_DIR=str(tmp_path / "stack"), SCHED_KAFKA_PORT="nine")
    assert bad.exit_code == 1 and bad.stderr == "stack: error: SCHED_KAFKA_PORT='nine' is not a port number\n"
    (tmp_path / "stack" / "data" / "kafka").mkdir(parents=True)
    assert cli.run("stack", "reset", **env).exit_code == 0
    assert not (tmp_path / "stack" / "data").exists()
    # .ci/run and the Makefile call the module directly.
    module = [sys.executable, "-m", "deploy.stack", "env"]
    out = subprocess.run(module, env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "SCHED_MONGO_URL=mongodb://127.0.0.1:" in out.stdout


def test_topics_and_secrets(cli: Cli) -> None:
    prefix = f"cli{uuid.uuid4().hex[:8]}."
    created = cli.run("topics", SCHED_TOPIC_PREFIX=prefix)
    assert created.exit_code == 0 and f"{prefix}commands" in created.stdout, created.output
    assert cli.run("topics", SCHED_TOPIC_PREFIX=prefix).stdout.strip() == "created 0 topics"
    key = cli.ok("secrets", "new-key").stdout.strip()
    assert len(base64.b64decode(key)) == 32


@pytest.mark.slow
def test_demo_runs_through_the_one_cli(tmp_path: Path, cli: Cli) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    env.update(
        SCHED_KAFKA_BOOTSTRAP=cli.env["SCHED_KAFKA_BOOTSTRAP"],
        SCHED_MONGO_URL=cli.env["SCHED_MONGO_URL"],
        SCHED_DATA_DIR=str(tmp_path),
        SCHED_API_PORT=str(free_port()),
    )
    out = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--seconds", "14", "--prefix", f"demo{uuid.uuid4().hex[:8]}."],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert " succeeded: slot " in out.stdout, out.stdout


def test_ctrl_c_stops_tail_quietly(cli: Cli) -> None:
    env = {**os.environ, **cli.env}
    # As from a terminal: Ctrl-C is not ignored. A test session started in the background of a
    # shell without job control inherits SIGINT ignored, and so would the CLI (Python keeps an
    # ignored SIGINT), which then never saw the Ctrl-C and the test timed out.
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "tail", "--tenant", cli.tenant],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stderr is not None and "tailing " in proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err
