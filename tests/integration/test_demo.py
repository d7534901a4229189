"""`make run` stays true: worker, projector and API come up, and a sample schedule visibly fires."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import jwt
import pytest

from streams.demo import DEV_SECRET
from tests.conftest import Infra
from tests.integration.harness import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _demo_env(infra: Infra, tmp_path: Path) -> tuple[dict[str, str], int]:
    """The demo's environment on the test stack, with an API port of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    port = free_port()
    env.update(
        SCHED_KAFKA_BOOTSTRAP=infra.bootstrap,
        SCHED_MONGO_URL=infra.mongo_url,
        SCHED_DATA_DIR=str(tmp_path),
        SCHED_API_PORT=str(port),
    )
    return env, port


def test_demo_prints_outcomes_of_the_sample_schedule(infra: Infra, tmp_path: Path) -> None:
    env, port = _demo_env(infra, tmp_path)
    prefix = f"demo{uuid.uuid4().hex[:8]}."
    out = subprocess.run(
        [sys.executable, "-m", "streams.demo", "--seconds", "16", "--prefix", prefix],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    fired = [line for line in out.stdout.splitlines() if " succeeded: slot " in line]
    assert len(fired) >= 2, out.stdout
    # The outcomes are visible through the API's views too.
    assert any("the API shows runs=" in line and "runs=None" not in line for line in fired), out.stdout
    # The dashboard's address, with a development token in the fragment (never in the query).
    [address] = [line.split("dashboard: ", 1)[1] for line in out.stdout.splitlines() if "dashboard: " in line]
    url, _, fragment = address.partition("#token=")
    assert url == f"http://127.0.0.1:{port}/ui/", address
    claims = jwt.decode(fragment, DEV_SECRET, algorithms=["HS256"])
    assert claims["tenant"] == "demo" and claims["roles"] == ["admin"]


def _popen_demo(infra: Infra, tmp_path: Path) -> subprocess.Popen[str]:
    """The demo for a minute, its output (stdout and stderr) to read line by line."""
    env, _ = _demo_env(infra, tmp_path)
    prefix = f"demo{uuid.uuid4().hex[:8]}."
    return subprocess.Popen(
        [sys.executable, "-m", "streams.demo", "--seconds", "60", "--prefix", prefix],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _pid(line: str) -> int:
    """The pid in a line such as ``12:00:00 api started (pid 123, log ...)``."""
    return int(line.split("(pid ")[1].split(",")[0])


def test_demo_counts_what_it_printed_when_a_process_dies(infra: Infra, tmp_path: Path) -> None:
    """The last line counts the outcomes printed, however the demo ends (it said 0 after 12)."""
    proc = _popen_demo(infra, tmp_path)
    lines: list[str] = []
    api_pid = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if " api started (pid " in line:
                api_pid = _pid(line)
            if sum(" succeeded: slot " in seen for seen in lines) == 2:
                assert api_pid is not None
                os.killpg(api_pid, signal.SIGKILL)
                break
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines += rest.splitlines(keepends=True)
    output = "".join(lines)
    assert proc.returncode != 0, output  # the API died: that is an error, said as such
    assert "the api exited" in output, output
    printed = sum(" succeeded: slot " in line for line in lines)
    assert printed >= 2, output
    assert any(f"stopped after {printed} outcomes;" in line for line in lines), output


def test_demo_stopped_by_sigterm_stops_what_it_started(infra: Infra, tmp_path: Path) -> None:
    """`timeout make run` or a closed terminal must not leave the processes it started running."""
    proc = _popen_demo(infra, tmp_path)
    started: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if " started (pid " in line:
                started.append(_pid(line))
            if " succeeded: slot " in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(started) == 5, started  # worker, trigger router, projector, notifier, API
    assert "stopped after" in rest, rest
    for pid in started:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
