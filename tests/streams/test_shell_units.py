"""Issue 13, shell work, part by part: the operator's allow-lists (path and symlink tricks,
reserved variables, working directories) and the runner, against real processes (exit codes,
output bound, CPU, memory, open files and file size limits set by the OS, an environment built
from nothing, cancellation and timeout stopping the whole process group)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.events import ExecutionDispatched
from schemas.secrets import Keyring, new_key, open_work, seal_definition
from schemas.specs import SHELL_OUTPUT_MAX, Priority, ShellLimits, ShellWork, TaskDefinition
from streams.executor import Executor
from streams.fence import TopicFence
from streams.runners import Attempt, Runners, RunResult
from streams.settings import Settings
from streams.shell import ShellFence, ShellRunner

PYTHON = os.path.realpath(sys.executable)
SH = os.path.realpath("/bin/sh")
ALLOWED = (PYTHON, "/usr/bin/*", "/bin/sh")


def _attempt(params: dict[str, Any] | None = None) -> Attempt:
    return Attempt("acme/t1", "acme", "exec-1", 1, params or {})


def _runner(grace: float = 1.0, **fence: Any) -> ShellRunner:
    return ShellRunner(ShellFence(fence.pop("commands", ALLOWED), **fence), grace)


GROUP = "cut -d' ' -f5 /proc/$$/stat"
"""A shell command printing the shell's process group id (the group the runner stops)."""


def _gone(pid: int) -> bool:
    """Whether no process is left in the process group ``pid`` (zombies are reaped by then)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _eventually_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _py(code: str, **limits: int) -> ShellWork:
    return ShellWork(argv=[PYTHON, "-c", code], limits=ShellLimits(**limits))


# --- the allow-lists ---------------------------------------------------------------------------


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    """An operator's job directory holding one script, ``report``, and a symlink to ``/bin/sh``."""
    root = tmp_path / "jobs"
    (root / "sub").mkdir(parents=True)
    for script in (root / "report", root / "sub" / "deep"):
        script.write_text("#!/bin/sh\necho report\n")
        script.chmod(0o755)
    (root / "shell").symlink_to("/bin/sh")
    return root


def _problems(fence: ShellFence, work: ShellWork, *, must_exist: bool = True) -> dict[str, str]:
    vetted, problems = fence.vet(work, must_exist=must_exist)
    assert (vetted is None) == bool(problems)
    return dict(problems)


def test_by_default_no_program_is_allowed() -> None:
    fence = ShellFence.from_settings(Settings())
    problems = _problems(fence, ShellWork(argv=["/bin/true"]))
    assert "SCHED_SHELL_COMMANDS" in problems["argv[0]"]


def test_an_allowed_program_is_resolved_to_its_real_file(jobs: Path) -> None:
    fence = ShellFence((f"{jobs}/*",))
    vetted, problems = fence.vet(ShellWork(argv=[f"{jobs}/report", "--all"]))
    assert problems == [] and vetted is not None and vetted.program == str(jobs / "report")


@pytest.mark.parametrize(
    "argv0",
    [
        "{jobs}/shell",  # a symlink in an allowed directory pointing outside it
        "{jobs}/../../../../../../../../../../bin/sh",  # climbing out with ..
        "{jobs}/sub/deep",  # '*' stays within one directory
        "sh",  # a bare name found in PATH, outside the allowed directory
    ],
)
def test_path_tricks_are_refused(jobs: Path, argv0: str) -> None:
    fence = ShellFence((f"{jobs}/*",))
    problems = _problems(fence, ShellWork(argv=[argv0.format(jobs=jobs)]))
    assert "is not allowed for shell work" in problems["argv[0]"], problems


def test_double_star_crosses_directories_and_bare_names_use_the_fixed_path(jobs: Path) -> None:
    fence = ShellFence((f"{jobs}/**",), path=f"{jobs}/sub:/usr/bin")
    vetted, _ = fence.vet(ShellWork(argv=["deep"]))
    assert vetted is not None and vetted.program == str(jobs / "sub" / "deep")


def test_a_pattern_through_a_symlinked_directory_matches_the_real_file() -> None:
    # /bin/sh is /usr/bin/sh (or /bin/dash) on merged-/usr systems: the operator's '/bin/sh' still means it.
    vetted, problems = ShellFence(("/bin/sh",)).vet(ShellWork(argv=["/bin/sh"]))
    assert problems == [] and vetted is not None and vetted.program == SH


@pytest.mark.parametrize("argv0", ["./report", "jobs/report", "/no/such/program", "nosuchprogram"])
def test_relative_or_missing_programs_are_refused(jobs: Path, argv0: str) -> None:
    problems = _problems(ShellFence(("/**",)), ShellWork(argv=[argv0]))
    assert "argv[0]" in problems


def test_the_api_accepts_a_program_it_cannot_see_only_by_its_normalised_path(jobs: Path) -> None:
    # The API may run apart from the executors: a program missing here is judged by its path.
    fence = ShellFence(("/opt/jobs/*",))
    assert _problems(fence, ShellWork(argv=["/opt/jobs/nightly"]), must_exist=False) == {}
    assert "argv[0]" in _problems(fence, ShellWork(argv=["/opt/jobs/../../bin/sh"]), must_exist=False)
    assert "argv[0]" in _problems(fence, ShellWork(argv=["/opt/jobs/nightly"]), must_exist=True)


@pytest.mark.parametrize("name", ["PATH", "HOME", "LD_PRELOAD", "LD_LIBRARY_PATH", "SCHED_SECRET_KEYS", "BASH_ENV"])
def test_reserved_variables_are_refused_even_when_everything_is_allowed(name: str) -> None:
    problems = _problems(ShellFence(("/**",), env=("*",)), ShellWork(argv=["/bin/sh"], env={name: "x"}))
    assert "may not set it" in problems[f"env.{name}"]


def test_only_allowed_variable_names_may_be_set() -> None:
    fence = ShellFence(("/**",), env=("REPORT_*", "TZ"))
    assert _problems(fence, ShellWork(argv=["/bin/sh"], env={"REPORT_DAY": "1", "TZ": "UTC"})) == {}
    problems = _problems(fence, ShellWork(argv=["/bin/sh"], env={"AWS_SECRET_ACCESS_KEY": "x"}))
    assert "SCHED_SHELL_ENV" in problems["env.AWS_SECRET_ACCESS_KEY"]


def test_working_directories_must_lie_under_an_allowed_root(tmp_path: Path) -> None:
    root = tmp_path / "work"
    (root / "a").mkdir(parents=True)
    (root / "out").symlink_to("/etc")
    fence = ShellFence(("/**",), cwd_roots=(str(root),))
    vetted, _ = fence.vet(ShellWork(argv=["/bin/sh"], cwd=str(root / "a")))
    assert vetted is not None and vetted.cwd == str(root / "a")
    for cwd in (str(root / "out"), f"{root}/a/../../..", "/tmp", f"{root}-other"):
        assert "cwd" in _problems(fence, ShellWork(argv=["/bin/sh"], cwd=cwd)), cwd
    assert "SCHED_SHELL_CWD" in _problems(ShellFence(("/**",)), ShellWork(argv=["/bin/sh"], cwd=str(root)))["cwd"]


@pytest.mark.parametrize(
    "work",
    [
        {"argv": []},
        {"argv": [""]},
        {"argv": ["/bin/sh", "a\x00b"]},
        {"argv": ["/bin/sh", "x" * 200_000]},
        {"argv": ["/bin/sh"], "env": {"1BAD": "x"}},
        {"argv": ["/bin/sh"], "env": {"GOOD\n": "x"}},  # `$` matched before a final line break
        {"argv": ["/bin/sh"], "cwd": "relative/dir"},
        {"argv": ["/bin/sh"], "limits": {"memory_mb": 10**9}},
        {"argv": ["/bin/sh"], "limits": {"output_bytes": SHELL_OUTPUT_MAX + 1}},
        {"argv": ["/bin/sh"], "success_exit_codes": [256]},
    ],
)
def test_malformed_shell_work_is_refused_by_the_model(work: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ShellWork.model_validate({"kind": "shell", **work})


def test_sensitive_env_values_are_encrypted_at_rest_and_opened_by_the_executor() -> None:
    keyring = Keyring({"k1": b"k" * 32})
    definition = TaskDefinition(
        name="t",
        work=ShellWork(argv=["/bin/sh"], env={"DB_PASSWORD": "hunter22", "DAY": "mon"}, sensitive_env=["DB_PASSWORD"]),
    )
    sealed = seal_definition(definition, keyring=keyring, tenant="acme", task_id="acme/t1")
    assert isinstance(sealed.work, ShellWork)
    assert sealed.work.env["DB_PASSWORD"].startswith("enc:v1:") and sealed.work.env["DAY"] == "mon"
    opened, _, clears = open_work(sealed.work, {}, keyring=keyring, tenant="acme", task_id="acme/t1")
    assert isinstance(opened, ShellWork) and opened.env["DB_PASSWORD"] == "hunter22"
    assert clears == ["hunter22"]


# --- the runner ----------------------------------------------------------------------------------


async def test_the_exit_code_is_the_outcome() -> None:
    work = ShellWork(argv=["/bin/sh", "-c", "echo ok; echo 'disk full' >&2; exit $0", "3"], success_exit_codes=[0, 3])
    result = await _runner().run(work, _attempt())
    assert result == RunResult("succeeded", {"exit_code": 3, "stdout": "ok\n", "stderr": "disk full\n"})
    failed = await _runner().run(work.model_copy(update={"argv": [*work.argv[:3], "4"]}), _attempt())
    assert failed.status == "failed" and failed.error == "exit code 4: disk full"


async def test_output_beyond_the_bound_is_read_and_dropped_keeping_the_end() -> None:
    code = "import sys; sys.stdout.write('a' * 1_000_000 + 'THE END'); sys.stderr.write('e' * 50_000)"
    result = await _runner().run(_py(code, output_bytes=100), _attempt())
    assert result.status == "succeeded"
    assert result.result["stdout"] == "a" * 93 + "THE END" and len(result.result["stderr"]) == 100
    assert result.result["stdout_truncated"] and result.result["stdout_bytes"] == 1_000_007
    assert result.result["stderr_bytes"] == 50_000


async def test_the_cpu_limit_kills_with_sigxcpu() -> None:
    result = await _runner().run(_py("while True: pass", cpu_seconds=1), _attempt())
    assert result.status == "failed" and result.error == "killed by SIGXCPU: CPU limit of 1 s exceeded"
    assert result.result["signal"] == "SIGXCPU"


async def test_the_memory_limit_fails_the_allocation() -> None:
    result = await _runner().run(_py("x = bytearray(400 * 1024 * 1024)", memory_mb=64), _attempt())
    assert result.status == "failed"
    assert result.error == "memory limit of 64 MB exceeded (exit code 1): MemoryError"
    # The same program with room enough succeeds: the limit, not the program, failed it.
    assert (await _runner().run(_py("x = bytearray(20 * 1024 * 1024)", memory_mb=512), _attempt())).status == (
        "succeeded"
    )


async def test_the_open_files_limit_holds() -> None:
    result = await _runner().run(_py("fs = [open('/dev/null') for _ in range(64)]", open_files=16), _attempt())
    assert result.status == "failed" and result.error.startswith("open files limit of 16 exceeded")


async def test_the_file_size_limit_kills_with_sigxfsz() -> None:
    # Python ignores SIGXFSZ and ignored signals survive exec: the wrapper restores it.
    work = ShellWork(argv=["dd", "if=/dev/zero", "of=big", "bs=1M", "count=3"], limits=ShellLimits(file_size_mb=1))
    result = await _runner().run(work, _attempt())
    assert result.status == "failed" and result.error == "killed by SIGXFSZ: file size limit of 1 MB exceeded"


async def test_the_environment_is_built_from_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHED_SECRET_KEYS", '{"k": "secret"}')
    monkeypatch.setenv("SCHED_KAFKA_SASL_PASSWORD", "kafka-secret")
    work = ShellWork(argv=["/usr/bin/env"], env={"REPORT_DAY": "mon"})
    result = await _runner(env=("REPORT_*",), path="/usr/bin:/bin").run(work, _attempt({"n": 1}))
    env = dict(line.split("=", 1) for line in result.result["stdout"].splitlines())
    assert sorted(env) == [
        "HOME", "PATH", "REPORT_DAY", "SCHED_ATTEMPT", "SCHED_EXECUTION_ID", "SCHED_PARAMS", "SCHED_TASK_ID",
    ]  # fmt: skip
    assert env["PATH"] == "/usr/bin:/bin" and env["SCHED_PARAMS"] == '{"n":1}' and env["REPORT_DAY"] == "mon"
    assert os.path.basename(env["HOME"]).startswith("sched-shell-")
    assert not Path(env["HOME"]).exists()  # noqa: ASYNC240 - the fresh directory is removed


async def test_a_program_not_allowed_at_the_executor_fails_with_the_reason() -> None:
    result = await _runner(commands=("/opt/jobs/*",)).run(ShellWork(argv=["/bin/sh", "-c", "true"]), _attempt())
    assert result.status == "failed" and result.result is None
    assert result.error.startswith("shell work refused: argv[0]: program '/bin/sh'")


async def test_what_the_program_leaves_running_in_its_group_is_killed() -> None:
    result = await _runner().run(ShellWork(argv=["/bin/sh", "-c", f"sleep 300 & echo $!; {GROUP}"]), _attempt())
    assert result.status == "succeeded"
    sleeper, group = (int(line) for line in result.result["stdout"].split())
    assert await _eventually_gone(group)
    with pytest.raises(ProcessLookupError):  # reaped, not merely moved out of the group
        os.kill(sleeper, 0)


async def _start_then_cancel(
    tmp_path: Path, script: str, *, requested: bool, grace: float
) -> tuple[int, float, Attempt]:
    pidfile = tmp_path / "pid"
    work = ShellWork(argv=["/bin/sh", "-c", f"{GROUP} > {pidfile}; {script}"])
    at = _attempt()
    task = asyncio.create_task(_runner(grace).run(work, at))
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the process never started"
        await asyncio.sleep(0.02)
    pid = int(pidfile.read_text())
    assert not _gone(pid)
    at.cancellation.requested = requested
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return pid, time.monotonic() - started, at


@pytest.mark.parametrize("requested", [True, False], ids=["cancelled", "shutdown"])
async def test_cancellation_terminates_the_whole_process_group(tmp_path: Path, requested: bool) -> None:
    pid, took, _ = await _start_then_cancel(tmp_path, "sleep 300 & sleep 300 & wait", requested=requested, grace=5)
    assert await _eventually_gone(pid), "processes of the group outlived the cancellation"
    assert took < 3, f"SIGTERM should have sufficed, took {took:.1f}s"


async def test_a_process_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    pid, took, _ = await _start_then_cancel(tmp_path, "trap '' TERM; sleep 300; sleep 300", requested=True, grace=0.5)
    assert await _eventually_gone(pid)
    assert 0.4 < took < 3


async def test_the_deadline_stops_the_process_group_and_fails_the_attempt(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    runners = Runners(None, None, None, TopicFence.from_settings(Settings()), shell=_runner())  # type: ignore[arg-type]
    work = ShellWork(argv=["/bin/sh", "-c", f"{GROUP} > {pidfile}; sleep 300"])
    result = await runners.run(work, _attempt(), budget=0.5)
    assert result.status == "failed" and result.error == "timed out after 0.5s"
    assert await _eventually_gone(int(pidfile.read_text()))


async def test_an_executor_without_a_shell_runner_fails_shell_work() -> None:
    runners = Runners(None, None, None, TopicFence.from_settings(Settings()))  # type: ignore[arg-type]
    result = await runners.run(ShellWork(argv=["/bin/true"]), _attempt(), budget=5)
    assert result == RunResult("failed", error="this executor does not run shell work")


async def test_a_sensitive_env_value_reaches_the_program_but_not_the_outcome() -> None:
    keys = {"k": new_key()}
    settings = Settings(secret_keys=keys, shell_commands=["/bin/sh"], shell_env=["REPORT_*"])  # type: ignore[arg-type]
    ring = settings.secret_keyring()
    definition = TaskDefinition(
        name="t",
        work=ShellWork(
            argv=["/bin/sh", "-c", 'echo "token is $REPORT_TOKEN"; echo "$REPORT_TOKEN" >&2; exit 1'],
            env={"REPORT_TOKEN": "tok-s3cr3t"},
            sensitive_env=["REPORT_TOKEN"],
        ),
    )
    sealed = seal_definition(definition, keyring=ring, tenant="acme", task_id="acme/t1")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    event = ExecutionDispatched(
        event_id="e", task_id="acme/t1", tenant="acme", sequence=2, at=t0, causation_id="c", actor="a",
        execution_id="x", attempt=1, reason="manual", priority=Priority.NORMAL, work=sealed.work,
        params={}, scheduled_for=t0, deadline=t0 + timedelta(hours=1),
    )  # fmt: skip
    runners = Runners(None, None, None, TopicFence.from_settings(settings), shell=ShellRunner.from_settings(settings))  # type: ignore[arg-type]
    result = await Executor(settings)._run(event, runners, 10.0)
    assert result.status == "failed", result
    assert result.result["stdout"] == "token is ***\n" and result.result["stderr"] == "***\n"
    assert result.error == "exit code 1: ***"


async def test_a_program_that_ignores_sigxcpu_is_killed_at_the_hard_limit() -> None:
    code = "import signal; signal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass"
    result = await _runner().run(_py(code, cpu_seconds=1), _attempt())
    assert result.status == "failed" and result.error.startswith("killed by SIGKILL (the CPU limit's hard stop at 2 s")


async def test_shell_processes_wait_for_a_slot() -> None:
    runner = ShellRunner(ShellFence(ALLOWED), concurrency=1)
    work = ShellWork(argv=["/bin/sh", "-c", "sleep 0.5"])
    started = time.monotonic()
    results = await asyncio.gather(runner.run(work, _attempt()), runner.run(work, _attempt()))
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    assert time.monotonic() - started >= 0.95  # one after the other


_EXECUTOR = """
import asyncio, sys
from schemas.specs import ShellWork
from streams.runners import Attempt
from streams.shell import ShellFence, ShellRunner
work = ShellWork(argv=["/bin/sh", "-c", "cut -d' ' -f5 /proc/$$/stat > " + sys.argv[1] + "; sleep 300 & wait"])
asyncio.run(ShellRunner(ShellFence(("/bin/sh",))).run(work, Attempt("a/t", "a", "x", 1, {})))
"""


async def test_a_killed_executor_leaves_no_process_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    executor = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _EXECUTOR, str(pidfile), env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    try:
        deadline = time.monotonic() + 20
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline and executor.returncode is None, "the program never started"
            await asyncio.sleep(0.05)
        assert not _gone(int(pidfile.read_text()))
        executor.kill()  # SIGKILL: no cleanup of its own runs
        await executor.wait()
        assert await _eventually_gone(int(pidfile.read_text())), "the program outlived its executor"
    finally:
        if executor.returncode is None:
            executor.kill()


@pytest.mark.parametrize(
    "setting", [{"shell_commands": ["bin/sh"]}, {"shell_cwd": ["work"]}, {"shell_env": ["BAD NAME"]}]
)
def test_operator_settings_that_cannot_mean_what_they_say_stop_the_start(setting: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(**setting)
