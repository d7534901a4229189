"""The supervisor of one shell work process: ``python -I -S shell_supervisor.py <args>``.

Started by :class:`streams.shell.ShellRunner` as the leader of a new session and process group.
It forks the program with its resource limits set (``setrlimit``, inherited by the program's
own children), waits for it, and ends as the program ended: the same exit code, or killed by
the same signal. Standard library only, and run isolated (``-I -S``): it must start fast and
never import the executor's code or see its environment.

Why a separate process rather than a ``preexec_fn``: Python code between ``fork`` and ``exec``
in the executor, a process with threads, can deadlock on a lock another thread held.

Why it stays (rather than exec the program itself): if the executor dies (SIGKILL, OOM), the
kernel sends the supervisor SIGUSR1 (``PR_SET_PDEATHSIG``) and it kills the whole process
group, the program's children included, so no orphan runs on beside the attempt the
partition's next owner starts again. It ignores SIGTERM, which the runner sends the group for
the program (the runner's SIGKILL ends everyone). About 10 MB of memory per running program.

Arguments: executor pid, CPU seconds, memory bytes, open files, file size bytes, keep
``LC_CTYPE`` (0 or 1), program (a real path), then the program's argv (``argv[0]`` first).
"""

from __future__ import annotations

import os
import resource
import signal
import sys

_PR_SET_PDEATHSIG = 1
_EXECUTOR_GONE = 125
_CANNOT_RUN = 127


def _cap(kind: int, value: int, soft: int | None = None) -> None:
    """Set the limit ``kind`` to ``value`` (never above the current hard limit)."""
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value if soft is None else min(soft, value), value))


def _die_on_executor_exit(executor: int) -> None:
    signal.signal(signal.SIGUSR1, lambda *_: os.killpg(0, signal.SIGKILL))
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGUSR1), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the runner's own stop still applies
        pass
    if os.getppid() != executor:
        os._exit(_EXECUTOR_GONE)  # it died before the prctl: do not run unsupervised


def _exec_program(limits: list[int], program: str, argv: list[str], env: dict[str, str]) -> None:
    """In the forked child: default signal dispositions, the limits, then the program."""
    cpu, memory, files, fsize = limits
    try:
        # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        _cap(resource.RLIMIT_CPU, cpu + 1, soft=cpu)  # SIGXCPU at cpu, SIGKILL a second later
        _cap(resource.RLIMIT_AS, memory)
        _cap(resource.RLIMIT_NOFILE, files)
        _cap(resource.RLIMIT_FSIZE, fsize)
        os.execve(program, argv, env)  # nosec B606  # the allow-listed real path, no shell by design
    except OSError as exc:
        sys.stderr.write(f"cannot run {program}: {exc.strerror}\n")
    os._exit(_CANNOT_RUN)


def main(args: list[str]) -> None:
    """Run the program as ``args`` say, and end as it ended."""
    executor, cpu, memory, files, fsize, keep_lc = (int(a) for a in args[:6])
    program, argv = args[6], args[7:]
    signal.signal(signal.SIGTERM, lambda *_: None)
    _die_on_executor_exit(executor)
    env = dict(os.environ)
    if not keep_lc:
        env.pop("LC_CTYPE", None)  # set by Python's C locale coercion, not asked for
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    child = os.fork()
    if child == 0:
        _exec_program([cpu, memory, files, fsize], program, argv, env)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal whose default is not to terminate
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main(sys.argv[1:])
