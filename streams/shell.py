"""Shell work: the operator's allow-lists (:class:`ShellFence`) and the runner (:class:`ShellRunner`).

Shell work is off unless an operator allows programs (``SCHED_SHELL_COMMANDS``). What a task
may run is checked twice with the same code: by the API when the task is created or updated
(a 422 naming ``definition.work.argv[0]``, ``definition.work.env.<NAME>`` or
``definition.work.cwd``), and by the executor right before it starts the process (commands can
reach the task processor without the API, and the API's settings may differ from the
executor's); a refusal there is a failed attempt saying why.

How a process is run:

- ``argv[0]`` is resolved (the fixed ``PATH``, then symlinks and ``..``) to the real file, and
  that file is what must be allowed and what is executed, so ``/opt/jobs/../../bin/sh`` or a
  symlink into an allowed directory pointing elsewhere are refused.
- The environment is built from nothing: ``PATH`` (the operator's), ``HOME`` (the working
  directory), the work's allowed ``env``, and ``SCHED_TASK_ID``, ``SCHED_EXECUTION_ID``,
  ``SCHED_ATTEMPT``, ``SCHED_PARAMS``. Nothing of the executor's environment is inherited
  (its secret keys and Kafka credentials stay there).
- Limits are set by the OS (``setrlimit``: CPU, address space, open files, file size, no core
  files) in the child of a small supervisor (``streams/shell_supervisor.py``, ``python -I
  -S``) rather than in a ``preexec_fn``: the executor has threads (the HTTP resolver's), and
  Python code between fork and exec in a threaded process can deadlock on a lock held by
  another thread. The supervisor stays while the program runs and, should the executor die,
  kills the program's whole process group (``PR_SET_PDEATHSIG``), so a killed executor leaves
  no orphan running beside the attempt the partition's next owner starts again.
- The process leads its own session and process group; a cancellation, a timeout or an
  executor shutdown sends SIGTERM to the whole group, then SIGKILL after a grace period. When
  the program exits, whatever it left running in its group is killed.
- stdout and stderr are read to the end; the last ``limits.output_bytes`` of each are kept
  (the rest is read and dropped, so a chatty program is never blocked on a full pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from schemas.specs import ShellWork
from streams.runners import RESULT_MAX_BYTES, Attempt, RunResult
from streams.settings import Settings

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
_HOW_TO_ALLOW = "an operator allows programs with SCHED_SHELL_COMMANDS"

RESERVED_ENV = frozenset(
    {
        "PATH", "HOME", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "CDPATH", "GLOBIGNORE",
        "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PERL5LIB", "PERL5OPT", "PERLLIB", "RUBYLIB", "RUBYOPT",
        "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "LOCPATH", "NLSPATH",
        "HOSTALIASES", "RES_OPTIONS", "LOCALDOMAIN",
    }
)  # fmt: skip
"""Variables shell work may never set, whatever ``SCHED_SHELL_ENV`` says: the executor sets
``PATH`` and ``HOME``, and the others make a shell, runtime or the C library load code or
configuration of the caller's choosing into an allowed program."""
RESERVED_ENV_PREFIXES = ("SCHED_", "LD_", "DYLD_", "BASH_FUNC_", "GCONV_", "MALLOC_")
"""Prefixes of variables shell work may never set (the executor's own, and loader variables)."""

_MEMORY_HINTS = re.compile(
    rb"MemoryError|Cannot allocate memory|[Oo]ut of memory|bad_alloc|memory exhausted|failed to allocate|"
    rb"mmap\(\) failed|unable to allocate"
)
_NOFILE_HINT = re.compile(rb"Too many open files")
_FSIZE_HINT = re.compile(rb"File too large")

_SUPERVISOR = str(Path(__file__).with_name("shell_supervisor.py"))
"""The script that runs a program under its limits (see ``streams/shell_supervisor.py``)."""


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` within one path part, ``**`` across parts, ``?`` one character but ``/``."""
    out = []
    for part in re.split(r"(\*\*|\*|\?)", pattern):
        match part:
            case "**":
                out.append(".*")
            case "*":
                out.append("[^/]*")
            case "?":
                out.append("[^/]")
            case _:
                out.append(re.escape(part))
    return re.compile("".join(out))


def _real_pattern(pattern: str) -> str:
    """``pattern`` with its literal leading directories resolved (``/bin/*`` is ``/usr/bin/*``
    on a merged-``/usr`` system), since the programs it is matched against are resolved."""
    first = min((i for i in (pattern.find("*"), pattern.find("?")) if i >= 0), default=-1)
    if first < 0:
        return os.path.realpath(pattern)
    directory, _, partial = pattern[:first].rpartition("/")
    return os.path.join(os.path.realpath(directory or "/"), partial + pattern[first:])


def _name_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(p) for p in pattern.split("*")))


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class Vetted:
    """What the fence found for a work: the real program to execute and working directory."""

    program: str
    """The real path of ``argv[0]``."""
    cwd: str | None
    """The real path of ``cwd`` (None: a fresh directory)."""


@dataclass(frozen=True)
class ShellFence:
    """What shell work may run, use and set, for one deployment (see :class:`Settings`)."""

    commands: tuple[str, ...]
    """Allowed programs: absolute paths or patterns, matched against real paths."""
    env: tuple[str, ...] = ()
    """Allowed environment variable names (``*`` matches any characters)."""
    cwd_roots: tuple[str, ...] = ()
    """Allowed working directories and everything under them."""
    path: str = "/usr/local/bin:/usr/bin:/bin"
    """``PATH`` of the processes, where a bare program name is looked up."""
    _commands: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _env: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        patterns = {p for c in self.commands for p in (c, _real_pattern(c))}
        object.__setattr__(self, "_commands", tuple(_glob_regex(p) for p in sorted(patterns)))
        object.__setattr__(self, "_env", tuple(_name_regex(p) for p in self.env))

    @classmethod
    def from_settings(cls, settings: Settings) -> ShellFence:
        """The fence of the deployment ``settings`` describe."""
        return cls(
            tuple(settings.shell_commands), tuple(settings.shell_env), tuple(settings.shell_cwd), settings.shell_path
        )

    def vet(self, work: ShellWork, *, must_exist: bool = True) -> tuple[Vetted | None, list[tuple[str, str]]]:
        """The program and directory to use, or the problems as ``(field, message)`` pairs, the
        field relative to the work (``argv[0]``, ``env.NAME``, ``cwd``).

        ``must_exist`` False (the API, which may not run where the executors do) accepts a
        program or directory missing on this host when its normalised path is allowed; the
        executor checks the real file again before running.
        """
        problems: list[tuple[str, str]] = []
        program, why = self._program(work.argv[0], must_exist)
        if why is not None:
            problems.append(("argv[0]", why))
        for name in work.env:
            refusal = self.env_refusal(name)
            if refusal is not None:
                problems.append((f"env.{name}", refusal))
        cwd = None
        if work.cwd is not None:
            cwd, why = self._cwd(work.cwd, must_exist)
            if why is not None:
                problems.append(("cwd", why))
        if problems or program is None:
            return None, problems
        return Vetted(program, cwd), []

    def env_refusal(self, name: str) -> str | None:
        """Why shell work may not set the variable ``name``, or None if it may."""
        if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
            return (
                f"env variable {name} is set by the executor or changes what a program loads; shell work may not set it"
            )
        if not any(p.fullmatch(name) for p in self._env):
            return f"env variable {name} is not allowed for shell work (an operator allows names with SCHED_SHELL_ENV)"
        return None

    def _program(self, argv0: str, must_exist: bool) -> tuple[str | None, str | None]:
        if not self._commands:
            return None, f"shell work is not allowed: no program is allowed ({_HOW_TO_ALLOW})"
        if "/" in argv0 and not argv0.startswith("/"):
            return None, f"program {argv0!r} must be an absolute path or a bare name looked up in PATH"
        found = argv0 if argv0.startswith("/") else shutil.which(argv0, path=self.path)
        candidates: list[str] = []
        if found is not None and os.path.exists(found):
            real = os.path.realpath(found)
            if not os.path.isfile(real) or not os.access(real, os.X_OK):
                return None, f"program {argv0!r} ({real}) is not an executable file"
            candidates = [real]
        elif must_exist:
            return None, f"program {argv0!r} not found (PATH is {self.path})"
        elif argv0.startswith("/"):
            candidates = [os.path.normpath(argv0)]
        else:
            candidates = [os.path.join(d, argv0) for d in self.path.split(":") if d.startswith("/")]
        for candidate in candidates:
            if any(p.fullmatch(candidate) for p in self._commands):
                return candidate, None
        shown = f" ({candidates[0]})" if len(candidates) == 1 and candidates[0] != argv0 else ""
        return None, (
            f"program {argv0!r}{shown} is not allowed for shell work (allowed: {', '.join(self.commands)}; "
            f"{_HOW_TO_ALLOW})"
        )

    def _cwd(self, cwd: str, must_exist: bool) -> tuple[str | None, str | None]:
        if not self.cwd_roots:
            return None, "no working directory may be chosen (an operator allows directories with SCHED_SHELL_CWD)"
        if os.path.exists(cwd):
            real = os.path.realpath(cwd)
            if not os.path.isdir(real):
                return None, f"cwd {cwd!r} is not a directory"
        elif must_exist:
            return None, f"cwd {cwd!r} does not exist"
        else:
            real = os.path.normpath(cwd)
        roots = [os.path.realpath(r) for r in self.cwd_roots] + [os.path.normpath(r) for r in self.cwd_roots]
        if not any(_within(real, root) for root in roots):
            return None, (
                f"cwd {cwd!r} is not under a directory allowed for shell work "
                f"(allowed: {', '.join(self.cwd_roots)}; SCHED_SHELL_CWD)"
            )
        return real, None


class _Tail:
    """The last ``limit`` bytes of a stream, and how many bytes it had."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)


async def _pump(stream: asyncio.StreamReader | None, tail: _Tail) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        tail.add(chunk)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(data: bytes, limit: int = 300) -> str:
    lines = [line for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:limit] if lines else ""


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ShellRunner:
    """Runs shell work: checks it against the fence, starts it under its limits, reports its exit."""

    def __init__(self, fence: ShellFence, kill_grace_seconds: float = 5.0, concurrency: int = 16) -> None:
        self.fence = fence
        self.kill_grace_seconds = kill_grace_seconds
        self._slots = asyncio.Semaphore(concurrency)

    @classmethod
    def from_settings(cls, settings: Settings) -> ShellRunner:
        """The runner of the deployment ``settings`` describe."""
        return cls(ShellFence.from_settings(settings), settings.shell_kill_grace_seconds, settings.shell_concurrency)

    async def run(self, work: ShellWork, at: Attempt) -> RunResult:
        """Run one attempt of ``work``; never raises for the work's own failure.

        At most ``concurrency`` processes run at once; an attempt waits for a slot. Cancelled
        (by the scheduler, the attempt's deadline or a shutdown), it terminates the process
        group, kills it after the grace period, and lets ``CancelledError`` through.
        """
        vetted, problems = self.fence.vet(work)
        if vetted is None:
            return RunResult("failed", error="shell work refused: " + "; ".join(f"{f}: {m}" for f, m in problems))
        async with self._slots:
            return await self._run(work, vetted, at)

    async def _run(self, work: ShellWork, vetted: Vetted, at: Attempt) -> RunResult:
        with tempfile.TemporaryDirectory(prefix="sched-shell-", ignore_cleanup_errors=True) as fresh:
            cwd = vetted.cwd or fresh
            env = {
                **work.env,
                "PATH": self.fence.path,
                "HOME": cwd,
                "SCHED_TASK_ID": at.task_id,
                "SCHED_EXECUTION_ID": at.execution_id,
                "SCHED_ATTEMPT": str(at.attempt),
                "SCHED_PARAMS": orjson.dumps(at.params, option=orjson.OPT_NON_STR_KEYS).decode(),
            }
            limits = work.limits
            loop = asyncio.get_running_loop()
            try:
                # As asyncio.create_subprocess_exec, with a protocol that tells when the process
                # exits: Process.wait() also waits for its pipes, which a process left running
                # in the background can hold open for ever.
                transport, protocol = await loop.subprocess_exec(
                    lambda: _Protocol(loop),
                    sys.executable, "-I", "-S", _SUPERVISOR,
                    str(os.getpid()), str(limits.cpu_seconds), str(limits.memory_mb * _MIB),
                    str(limits.open_files), str(limits.file_size_mb * _MIB), str(int("LC_CTYPE" in work.env)),
                    vetted.program, *work.argv,
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, cwd=cwd, env=env, start_new_session=True,
                )  # fmt: skip
            except OSError as exc:
                return RunResult("failed", error=f"could not start {vetted.program}: {exc.strerror or exc}")
            out, err = _Tail(limits.output_bytes), _Tail(max(limits.output_bytes, 4096))
            readers = asyncio.gather(_pump(protocol.stdout, out), _pump(protocol.stderr, err))
            pid = transport.get_pid()
            try:
                try:
                    await asyncio.shield(protocol.exited)
                except asyncio.CancelledError:
                    await self._stop(pid, protocol, at)
                    raise
                finally:
                    _killpg(pid, signal.SIGKILL)  # what it left running in its group
                # A descendant that left the group may hold a pipe open: its output is not awaited.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(readers), 1.0)
            finally:
                readers.cancel()
                with contextlib.suppress(BaseException):
                    await readers
                transport.close()
            code = transport.get_returncode()
            assert code is not None  # set before ``exited``
            return _outcome(work, code, out, err)

    async def _stop(self, pid: int, protocol: _Protocol, at: Attempt) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period (at once if the cleanup
        itself is cancelled)."""
        why = "cancelled" if at.cancellation.requested else "timed out or shutting down"
        sent = signal.SIGTERM
        try:
            _killpg(pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(protocol.exited), self.kill_grace_seconds)
            except TimeoutError:
                sent = signal.SIGKILL
        finally:
            _killpg(pid, signal.SIGKILL)
        log.info("%s: shell work %s: process group stopped by %s", at.execution_id, why, sent.name)


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's protocol of a subprocess with streams, and a future done when it exits."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


def _outcome(work: ShellWork, code: int, out: _Tail, err: _Tail) -> RunResult:
    """The attempt's result (exit code or signal, output tails) and, for a failure, a clear error."""
    limits = work.limits
    stdout_tail = bytes(out.data)
    stderr_tail = bytes(err.data)[-limits.output_bytes :] if limits.output_bytes else b""
    result: dict[str, object] = {"exit_code": code if code >= 0 else None}
    error: str | None = None
    if code < 0:
        name = _signal_name(-code)
        result["signal"] = name
        if -code == signal.SIGXCPU:
            error = f"killed by SIGXCPU: CPU limit of {limits.cpu_seconds} s exceeded"
        elif -code == signal.SIGXFSZ:
            error = f"killed by SIGXFSZ: file size limit of {limits.file_size_mb} MB exceeded"
        elif _MEMORY_HINTS.search(err.data):
            error = f"memory limit of {limits.memory_mb} MB exceeded (killed by {name})"
        elif -code == signal.SIGKILL:
            # Not the runner's (it reports nothing for what it stops): the CPU limit's hard stop
            # for a program that handles SIGXCPU, the kernel's out-of-memory killer, or an operator.
            error = (
                f"killed by SIGKILL (the CPU limit's hard stop at {limits.cpu_seconds + 1} s, "
                "or the system's out-of-memory killer)"
            )
        else:
            error = f"killed by {name}"
    elif code not in work.success_exit_codes:
        said = _last_line(bytes(err.data))
        if _MEMORY_HINTS.search(err.data):
            error = f"memory limit of {limits.memory_mb} MB exceeded (exit code {code})"
        elif _NOFILE_HINT.search(err.data):
            error = f"open files limit of {limits.open_files} exceeded (exit code {code})"
        elif _FSIZE_HINT.search(err.data):
            error = f"file size limit of {limits.file_size_mb} MB exceeded (exit code {code})"
        else:
            error = f"exit code {code}"
        if said:
            error = f"{error}: {said}"
    texts, kept = _tails(stdout_tail, stderr_tail)
    result.update(texts)
    for name, tail, trimmed in (("stdout", out, stdout_tail), ("stderr", err, stderr_tail)):
        if tail.total > min(kept, len(trimmed)):
            result[f"{name}_truncated"] = True
            result[f"{name}_bytes"] = tail.total
    return RunResult("failed" if error else "succeeded", result, error)


def _tails(stdout: bytes, stderr: bytes, budget: int = RESULT_MAX_BYTES - 1024) -> tuple[dict[str, str], int]:
    """Both tails as text, shortened (from the front) until their JSON fits ``budget`` bytes,
    and the bytes kept of each: escaping can make output several times longer, and a result
    past the cap would be dropped whole."""
    keep = max(len(stdout), len(stderr))
    while True:
        texts = {
            "stdout": stdout[-keep:].decode("utf-8", errors="replace") if keep else "",
            "stderr": stderr[-keep:].decode("utf-8", errors="replace") if keep else "",
        }
        if keep == 0 or len(orjson.dumps(texts)) <= budget:
            return texts, keep
        keep //= 2
