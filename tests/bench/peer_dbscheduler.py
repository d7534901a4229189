"""The peer a JVM shop would pick: db-scheduler 16.7.1 on PostgreSQL, lock-and-fetch polling.

Same workload and definitions as ``tests.bench.lateness`` and ``tests.bench.peer_apscheduler``:
N recurring tasks every P seconds with no-op work (slots anchor + k*P, with ``spread`` the i-th
task offset by i*P/N), measured over a window after a warm-up:

- slot -> dispatch: when db-scheduler's handler began, minus the slot (the execution's scheduled
  time). db-scheduler hands each execution it locked to its thread pool, which runs the work at
  once (no dispatch step of its own), so start is the same instant;
- slots missed (never run in the window) and doubled (run more than once);
- the JVM's resident memory, sampled every 0.5 s as for the other rows (the database server's
  is not counted, as Kafka's and FerretDB's are not for this scheduler).

The Java side is ``tests/bench/dbscheduler`` (one ``Main``, see its docstring), built with Maven
once and cached under the local stack's cache (``$SCHED_STACK_CACHE``, default
``.stack/cache``), keyed by the hash of its sources, as ``deploy/stack.py`` does for Kafka.

PostgreSQL comes from Debian's packages, found under ``/usr/lib/postgresql/*/bin``; when absent
and running as root with apt-get (as CI does), ``postgresql`` is installed. Each run makes a
throwaway cluster in a temporary directory (as the ``postgres`` user when root, since initdb
refuses root), starts it on a free 127.0.0.1 port with the durable settings (fsync and
synchronous commit on, as the SQLite store of the APScheduler row), and stops and removes it at
the end, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deploy.stack import StackConfig
from tests.bench.common import rss_mb
from tests.bench.lateness import Result

DBSCHEDULER_VERSION = "16.7.1"
"""The db-scheduler release measured (the version in ``tests/bench/dbscheduler/pom.xml``)."""

PROJECT = Path(__file__).resolve().parent / "dbscheduler"
MAIN_CLASS = "local.bench.DbSchedulerPeer"
POSTGRES_LIB = Path("/usr/lib/postgresql")
INSTALL_HINT = "install PostgreSQL's server (Debian: apt-get install postgresql)"


class PeerError(RuntimeError):
    """The peer could not run; the message is one line that says what to do."""


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with ``initdb`` and ``pg_ctl``.

    Installs Debian's ``postgresql`` when none is there and this process may (root, apt-get);
    otherwise raises :class:`PeerError` naming what to install.
    """
    found = _find_postgres()
    if found is not None:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("peer_dbscheduler: PostgreSQL not found; installing Debian's postgresql (apt-get)", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
            done = subprocess.run(step, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if done.returncode != 0:
                tail = " | ".join(done.stderr.strip().splitlines()[-3:])
                raise PeerError(f"`{' '.join(step)}` failed (exit {done.returncode}): {tail}; {INSTALL_HINT}")
        found = _find_postgres()
        if found is not None:
            return found
    raise PeerError(f"PostgreSQL not found under {POSTGRES_LIB}/*/bin: {INSTALL_HINT}")


def _find_postgres() -> Path | None:
    found = [b for b in POSTGRES_LIB.glob("*/bin") if (b / "initdb").exists() and (b / "pg_ctl").exists()]
    return max(found, key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else -1, default=None)


def postgres_major() -> str:
    """The major version of the PostgreSQL the peer runs on (installing it if needed)."""
    return postgres_bin().parent.name


@dataclass(frozen=True)
class Cluster:
    """A running throwaway PostgreSQL cluster."""

    port: int
    """Its port on 127.0.0.1."""
    database: str
    """The database made for the run."""
    directory: Path
    """Where its data, socket and log live (deleted when it stops)."""

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{self.database}?user=postgres"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _check(cmd: list[str], what: str, cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        raise PeerError(f"{what} failed (exit {done.returncode}): {tail}")


@contextlib.contextmanager
def postgres_cluster(database: str = "bench") -> Iterator[Cluster]:
    """Start a fresh cluster on a free loopback port; stop it and delete it on the way out."""
    bin_dir = postgres_bin()
    tmp = Path(tempfile.mkdtemp(prefix="dbscheduler-pg-"))
    data = tmp / "data"
    # initdb refuses to run as root: the cluster belongs to the user Debian's package creates.
    owner: list[str] = []
    if os.geteuid() == 0:
        try:
            postgres = pwd.getpwnam("postgres")
        except KeyError:
            raise PeerError(f"running as root but no `postgres` user to own the cluster: {INSTALL_HINT}") from None
        os.chown(tmp, postgres.pw_uid, postgres.pw_gid)
        owner = ["runuser", "-u", "postgres", "--"]
    started = False
    try:
        _check(
            [*owner, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C"],
            "initdb", tmp,
        )  # fmt: skip
        port = _free_port()
        # Durable (the defaults, said out loud: this row is the durable peer), reachable only on
        # loopback, its socket in the temporary directory (Debian's default dir may not exist).
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={tmp} "
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on -c max_connections=100"
        )
        log = tmp / "postgres.log"
        # Stopped on the way out even when pg_ctl gives up waiting: the server may come up later.
        started = True
        try:
            _check([*owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                    "-w", "-t", "60", "start"], "starting PostgreSQL", tmp)  # fmt: skip
        except PeerError as exc:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:]) if log.exists() else ""
            raise PeerError(f"{exc}; log: {tail}") from None
        _check(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
            "createdb", tmp,
        )  # fmt: skip
        yield Cluster(port, database, tmp)
    finally:
        if started:
            subprocess.run(
                [*owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
                cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True,
            )  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the Java peer


def peer_build(cfg: StackConfig | None = None) -> Path:
    """Build the Java peer once (jar plus ``lib/`` of its dependencies); later calls return the cache."""
    cfg = cfg or StackConfig.from_env()
    sources = sorted(p for p in PROJECT.rglob("*") if p.is_file() and "target" not in p.relative_to(PROJECT).parts)
    digest = hashlib.sha256()
    for source in sources:
        digest.update(str(source.relative_to(PROJECT)).encode() + b"\0" + source.read_bytes())
    out = cfg.cache / f"dbscheduler-{digest.hexdigest()[:16]}"
    if (out / ".complete").exists():
        return out
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PeerError("mvn not found on PATH: install Maven (Debian: apt-get install maven) to build the peer")
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("javac") is None and not (java_home and (Path(java_home) / "bin" / "javac").exists()):
        # A JRE alone makes Maven fail with "No compiler is provided"; say what to install instead.
        raise PeerError("javac not found: install a JDK 17 (Debian: apt-get install openjdk-17-jdk-headless)")
    log = cfg.path("logs", "dbscheduler-build.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"peer_dbscheduler: building the db-scheduler peer with Maven (once) -> {out}", file=sys.stderr)
    with log.open("w") as output:
        rc = subprocess.run(
            [mvn, "-q", "-B", "-f", str(PROJECT / "pom.xml"), "package", "dependency:copy-dependencies",
             f"-Dpeer.build={tmp / 'build'}", f"-DoutputDirectory={tmp / 'lib'}", "-DincludeScope=runtime"],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        ).returncode  # fmt: skip
    if rc != 0:
        raise PeerError(f"building the db-scheduler peer with Maven failed (exit {rc}); see {log}")
    (tmp / "build" / "dbscheduler-peer.jar").rename(tmp / "dbscheduler-peer.jar")
    shutil.rmtree(tmp / "build")
    (tmp / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    shutil.rmtree(out, ignore_errors=True)
    try:
        tmp.rename(out)
    except OSError:
        # Another run built the same sources at the same time: theirs is as good.
        shutil.rmtree(tmp, ignore_errors=True)
    return out


async def run(
    tasks: int, period: float, seconds: float, warmup: float, spread: bool, poll_ms: int = 50, threads: int = 20
) -> Result:
    """Run the workload on db-scheduler with a fresh PostgreSQL cluster; figures as for our scheduler.

    ``poll_ms``: db-scheduler's polling interval (its default is 10 s; 50 ms is this scheduler's
    firing tick, so both look for due work as often). ``threads``: its execution threads.
    """
    return await asyncio.to_thread(_run, tasks, period, seconds, warmup, spread, poll_ms, threads)


def _run(tasks: int, period: float, seconds: float, warmup: float, spread: bool, poll_ms: int, threads: int) -> Result:
    java = shutil.which("java")
    if java is None:
        raise PeerError("java not found on PATH: install Java 17 (Debian: apt-get install openjdk-17-jdk-headless)")
    cfg = StackConfig.from_env()
    build = peer_build(cfg)
    log = cfg.path("logs", "dbscheduler-peer.log")
    with postgres_cluster() as cluster, log.open("w") as errors, tempfile.TemporaryFile("w+") as output:
        cmd = [
            java, "-cp", f"{build / 'dbscheduler-peer.jar'}{os.pathsep}{build / 'lib'}/*", MAIN_CLASS,
            "--jdbc-url", cluster.jdbc_url, "--tasks", str(tasks), "--period", str(period),
            "--seconds", str(seconds), "--warmup", str(warmup), "--poll-ms", str(poll_ms),
            "--threads", str(threads), *(["--spread"] if spread else []),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=output, stderr=errors, stdin=subprocess.DEVNULL, text=True)
        # Start-up, the warm-up, the window, the peer's 3 s of drain, and room for a slow JVM.
        deadline = time.monotonic() + 2 + warmup + seconds + 3 + 120
        rss_peak = 0.0
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise PeerError(f"the db-scheduler peer did not finish in time; see {log}")
                rss_peak = max(rss_peak, rss_mb(proc.pid))
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise PeerError(f"the db-scheduler peer exited {proc.returncode}; see {log}")
        output.seek(0)
        lines = output.read().strip().splitlines()
    figures = json.loads(lines[-1]) if lines else {}
    if "dispatch_ms" not in figures:
        raise PeerError(f"the db-scheduler peer printed no figures; see {log}")
    p50, p99, worst = (float(x) for x in figures["dispatch_ms"])
    return Result(
        tasks, period, seconds, figures["dispatched"], figures["expected"], figures["missed"], figures["doubled"],
        # Dispatch and start are one instant here: the handler starting is db-scheduler's dispatch.
        (p50, p99, worst), (p50, p99, worst), rss_peak, float(figures["rss_end_mb"]),
    )  # fmt: skip
