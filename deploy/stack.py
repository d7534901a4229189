"""Local single-node stack without Docker: Apache Kafka (KRaft) and FerretDB (SQLite).

    python -m deploy.stack up        # build/download once (cached), start, wait until both answer
    python -m deploy.stack down      # stop both, keep the data
    python -m deploy.stack status    # what runs where
    python -m deploy.stack reset     # stop and delete the data (keeps the cached builds)
    python -m deploy.stack env       # shell exports pointing clients at the stack

The same click group is ``scheduler stack`` (``streams/cli.py``). ``status`` exits 1 when a
service is stopped.

Kafka comes from the official jars on Maven Central (resolved with Maven from
``deploy/kafka/pom.xml``) and runs on Java 17+ as ``kafka.Kafka``; its storage is formatted
once with ``kafka.tools.StorageTool``. FerretDB v1.24 is built with Go from
``deploy/ferretdb`` (a tiny program embedding the ``ferretdb`` package, because the module's
own ``main`` panics when built with ``go install``).

Everything lives under one directory, ``$SCHED_STACK_DIR`` (default ``.stack/`` in the
repository): ``cache/`` (or ``$SCHED_STACK_CACHE``) holds the jars and the binary keyed
by the hash of the files that produce them, ``data/`` the broker's log and the SQLite
files, ``logs/`` the process logs, ``run/`` the pid files. Ports come from ``SCHED_KAFKA_PORT`` (9092),
``SCHED_KAFKA_CONTROLLER_PORT`` (9093) and ``SCHED_MONGO_PORT`` (27017).

Errors are one line that says what failed and what to do, with the log's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


class StackError(RuntimeError):
    """A stack operation failed; the message is one line that says what to do."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which ports it uses."""

    root: Path
    cache: Path
    kafka_port: int
    controller_port: int
    mongo_port: int
    host: str = "127.0.0.1"

    @classmethod
    def from_env(cls) -> StackConfig:
        """Read the configuration from ``SCHED_*`` environment variables."""
        root = Path(os.environ.get("SCHED_STACK_DIR", REPO / ".stack")).resolve()
        return cls(
            root=root,
            cache=Path(os.environ.get("SCHED_STACK_CACHE", root / "cache")).resolve(),
            kafka_port=_port("SCHED_KAFKA_PORT", 9092),
            controller_port=_port("SCHED_KAFKA_CONTROLLER_PORT", 9093),
            mongo_port=_port("SCHED_MONGO_PORT", 27017),
        )

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap servers for clients."""
        return f"{self.host}:{self.kafka_port}"

    @property
    def mongo_url(self) -> str:
        """MongoDB connection string for clients."""
        return f"mongodb://{self.host}:{self.mongo_port}/"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise StackError(f"{name}={port} is out of range 1-65535")
    return port


# --------------------------------------------------------------------------- helpers


def _require(tool: str, hint: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise StackError(f"{tool} not found on PATH: {hint}")
    return found


def _java() -> str:
    java = _require(
        "java",
        "install Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless), "
        "or run the stack with `docker compose up`",
    )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < 17:
        raise StackError(f"Java {major or '?'} found at {java}; Kafka 4 needs Java 17 or newer")
    return java


def _digest(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # A zombie or a recycled pid is not ours: check the command line names our stack dir.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    return pid if str(pidfile.parent.parent).encode() in cmdline else None


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(text[-lines:])


# --------------------------------------------------------------------------- builds


def kafka_libs(cfg: StackConfig) -> Path:
    """Resolve the Kafka broker jars once; later calls return the cached directory."""
    pom = DEPLOY / "kafka" / "pom.xml"
    libs = cfg.cache / f"kafka-{_digest(pom)}"
    if (libs / ".complete").exists():
        return libs
    mvn = _require("mvn", "install Maven (Debian: apt-get install maven) to fetch the Kafka jars")
    log = cfg.path("logs", "kafka-fetch.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    tmp = libs.with_name(libs.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"stack: fetching Kafka jars with Maven (once) -> {libs}", file=sys.stderr)
    with log.open("w") as out:
        rc = subprocess.run(
            [
                mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
            ],
            stdout=out, stderr=subprocess.STDOUT,
        ).returncode  # fmt: skip
    if rc != 0:
        raise StackError(f"fetching the Kafka jars with Maven failed (exit {rc}); see {log}")
    (tmp / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs


def ferretdb_binary(cfg: StackConfig) -> Path:
    """Build the FerretDB launcher once; later calls return the cached binary."""
    src = DEPLOY / "ferretdb"
    binary = cfg.cache / f"ferretdb-{_digest(*sorted(src.glob('*.go')), src / 'go.mod', src / 'go.sum')}"
    if binary.exists():
        return binary
    go = _require("go", "install Go 1.22 or newer (https://go.dev/doc/install) to build FerretDB")
    log = cfg.path("logs", "ferretdb-build.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"stack: building FerretDB with Go (once) -> {binary}", file=sys.stderr)
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(binary.name + ".tmp")
    with log.open("w") as out:
        rc = subprocess.run(
            [go, "build", "-trimpath", "-o", str(tmp), "."],
            cwd=src, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "CGO_ENABLED": "0"},
        ).returncode  # fmt: skip
    if rc != 0:
        raise StackError(f"building FerretDB with Go failed (exit {rc}); see {log}")
    tmp.rename(binary)
    return binary


# --------------------------------------------------------------------------- kafka

_KAFKA_PROPERTIES = """\
# Written by deploy/stack.py: a single KRaft node acting as broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{kafka_port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{kafka_port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=8
default.replication.factor=1
auto.create.topics.enable=true
delete.topic.enable=true
# One broker: every internal topic must accept replication factor 1, including the
# transaction state log, or transactional producers can never initialise.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
# Tests create and join many groups; do not wait 3 s for more members to arrive.
group.initial.rebalance.delay.ms=0
log.retention.hours=-1
log.segment.bytes=67108864
"""

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = info
"""


def _kafka_cmd(cfg: StackConfig, libs: Path, main: str, *args: str) -> list[str]:
    heap = os.environ.get("SCHED_KAFKA_HEAP", "-Xms256m -Xmx1g").split()
    return [
        _java(), *heap, "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={cfg.path('run', 'log4j2.properties')}",
        "-cp", f"{libs}/*", main, *args,
    ]  # fmt: skip


def _prepare_kafka(cfg: StackConfig, libs: Path) -> Path:
    data = cfg.path("data", "kafka")
    props = cfg.path("run", "server.properties")
    props.parent.mkdir(parents=True, exist_ok=True)
    props.write_text(
        _KAFKA_PROPERTIES.format(
            host=cfg.host, kafka_port=cfg.kafka_port, controller_port=cfg.controller_port, data=data
        )
    )
    cfg.path("run", "log4j2.properties").write_text(_LOG4J2)
    if not (data / "meta.properties").exists():
        data.mkdir(parents=True, exist_ok=True)
        cluster_id = _kafka_cluster_id()
        log = cfg.path("logs", "kafka-format.log")
        with log.open("w") as out:
            fmt = _kafka_cmd(cfg, libs, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props))
            rc = subprocess.run(fmt, stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise StackError(f"formatting Kafka storage failed (exit {rc}); see {log}")
    return props


def _kafka_cluster_id() -> str:
    """A random cluster id as Kafka makes them: URL-safe base64 of a UUID, never starting with ``-``.

    About one id in 64 would start with ``-``, which the storage tool's parser reads as an option
    ("argument --cluster-id/-t: expected one argument"); Kafka's own generator draws again then.
    """
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


async def _kafka_answers(bootstrap: str) -> bool:
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await client.bootstrap()
        meta = await client.fetch_all_metadata()
        return bool(meta.brokers())
    except (KafkaError, OSError):
        return False
    finally:
        await client.close()


async def _mongo_answers(url: str) -> bool:
    from pymongo import AsyncMongoClient
    from pymongo.errors import PyMongoError

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url, serverSelectionTimeoutMS=1500)
    try:
        await client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        await client.close()


# --------------------------------------------------------------------------- lifecycle


@dataclass(frozen=True)
class _Service:
    name: str
    ports: tuple[tuple[str, int], ...]


def _services(cfg: StackConfig) -> list[_Service]:
    return [
        _Service(
            "kafka",
            (("SCHED_KAFKA_PORT", cfg.kafka_port), ("SCHED_KAFKA_CONTROLLER_PORT", cfg.controller_port)),
        ),
        _Service("ferretdb", (("SCHED_MONGO_PORT", cfg.mongo_port),)),
    ]


def _start(cfg: StackConfig, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
    log = cfg.path("logs", f"{name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=cfg.root,
        )  # fmt: skip
    cfg.path("run", f"{name}.pid").write_text(str(proc.pid))
    return proc


def up(cfg: StackConfig, timeout: float = 120.0) -> None:
    """Start Kafka and FerretDB (idempotent) and wait until both answer."""
    cfg.path("run").mkdir(parents=True, exist_ok=True)
    running = {s.name: _read_pid(cfg.path("run", f"{s.name}.pid")) for s in _services(cfg)}
    for svc in _services(cfg):
        if running[svc.name] is not None:
            continue
        for var, port in svc.ports:
            if not _port_free(cfg.host, port):
                raise StackError(
                    f"port {port} for {svc.name} is already in use by another process: "
                    f"stop it or set {var} to a free port"
                )
    if running["kafka"] is None:
        _java()  # fail fast, before a slow download that could not run anyway
    cfg.path("logs").mkdir(parents=True, exist_ok=True)
    # Build first (slow only once), then start both and wait for them together.
    libs = kafka_libs(cfg) if running["kafka"] is None else None
    fdb = ferretdb_binary(cfg) if running["ferretdb"] is None else None
    started: dict[str, subprocess.Popen[bytes]] = {}
    if libs is not None:
        props = _prepare_kafka(cfg, libs)
        started["kafka"] = _start(cfg, "kafka", _kafka_cmd(cfg, libs, "kafka.Kafka", str(props)))
    if fdb is not None:
        sqlite_dir = cfg.path("data", "ferretdb")
        sqlite_dir.mkdir(parents=True, exist_ok=True)
        started["ferretdb"] = _start(
            cfg, "ferretdb",
            [str(fdb), "-listen-addr", f"{cfg.host}:{cfg.mongo_port}", "-sqlite-url", f"file:{sqlite_dir}/",
             "-log-level", "error"],
        )  # fmt: skip
    asyncio.run(_wait_ready(cfg, started, timeout))


async def _wait_ready(cfg: StackConfig, started: dict[str, subprocess.Popen[bytes]], limit: float) -> None:
    import logging

    # The client logs every refused connection while the broker boots; that is expected here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    deadline = time.monotonic() + limit
    probes = {
        "kafka": lambda: _kafka_answers(cfg.bootstrap),
        "ferretdb": lambda: _mongo_answers(cfg.mongo_url),
    }
    pending = set(probes)
    while pending:
        for name in sorted(pending):
            proc = started.get(name)
            if proc is not None and proc.poll() is not None:
                log = cfg.path("logs", f"{name}.log")
                raise StackError(f"{name} exited during start-up (exit {proc.returncode}); see {log}: {_tail(log, 3)}")
            if await probes[name]():
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            names = ", ".join(sorted(pending))
            logs = ", ".join(str(cfg.path("logs", f"{n}.log")) for n in sorted(pending))
            raise StackError(f"{names} did not answer within {limit:.0f}s; see {logs}")
        if pending:
            await asyncio.sleep(0.3)


def down(cfg: StackConfig, timeout: float = 30.0, only: str | None = None) -> None:
    """Stop both services, or ``only`` one of them (SIGTERM, then SIGKILL after ``timeout``);
    data is kept and ``up`` starts what is not running."""
    for svc in reversed(_services(cfg)):
        if only is not None and svc.name != only:
            continue
        pidfile = cfg.path("run", f"{svc.name}.pid")
        pid = _read_pid(pidfile)
        if pid is not None:
            _terminate(pid, timeout)
        pidfile.unlink(missing_ok=True)


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # Reap it when it is our own child (started by this process), else it stays a zombie.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def status(cfg: StackConfig) -> dict[str, int | None]:
    """Pid of each running service (None when stopped)."""
    return {s.name: _read_pid(cfg.path("run", f"{s.name}.pid")) for s in _services(cfg)}


def reset(cfg: StackConfig) -> None:
    """Stop the stack and delete its data and logs (the cached builds stay)."""
    down(cfg)
    shutil.rmtree(cfg.path("data"), ignore_errors=True)
    shutil.rmtree(cfg.path("logs"), ignore_errors=True)


@click.group(name="stack", help=(__doc__ or "").split("\n")[0])
def cli() -> None:
    """The local stack: ``up``, ``down``, ``status``, ``reset``, ``env``."""


def _config() -> StackConfig:
    try:
        return StackConfig.from_env()
    except StackError as exc:
        raise _Failed(str(exc)) from None


class _Failed(click.ClickException):
    """A stack operation failed: ``stack: error: <one line>`` on stderr, exit 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"stack: error: {self.format_message()}", err=True)


@cli.command("up")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="seconds to wait for the services")
def _up(timeout: float) -> None:
    """Build once (cached), start Kafka and FerretDB, wait until both answer."""
    cfg = _config()
    started = time.monotonic()
    try:
        up(cfg, timeout)
    except StackError as exc:
        raise _Failed(str(exc)) from None
    click.echo(
        f"stack: up in {time.monotonic() - started:.1f}s; kafka {cfg.bootstrap}, "
        f"mongo {cfg.mongo_url}, logs {cfg.path('logs')}",
        err=True,
    )


@cli.command("down")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds before SIGKILL")
def _down(timeout: float) -> None:
    """Stop both services; the data is kept."""
    down(_config(), timeout)
    click.echo("stack: down (data kept)", err=True)


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="print {service: pid or null} as JSON")
def _status(as_json: bool) -> None:
    """What runs, with its pid; exit 0 when both run, 1 when not."""
    import json

    pids = status(_config())
    if as_json:
        click.echo(json.dumps(pids))
    else:
        for name, pid in pids.items():
            click.echo(f"{name}: {'running, pid ' + str(pid) if pid else 'stopped'}")
    if not all(pids.values()):
        raise click.exceptions.Exit(1)


@cli.command("reset")
def _reset() -> None:
    """Stop the stack and delete its data and logs (the cached builds stay)."""
    reset(_config())
    click.echo("stack: stopped and data deleted", err=True)


@cli.command("env")
def _env() -> None:
    """Print the shell exports that point clients at this stack."""
    cfg = _config()
    click.echo(f"export SCHED_KAFKA_BOOTSTRAP={cfg.bootstrap}")
    click.echo(f"export SCHED_MONGO_URL={cfg.mongo_url}")


def main(argv: list[str] | None = None) -> int:
    """``python -m deploy.stack <action>``: the exit status of the action."""
    try:
        code = cli.main(args=argv, prog_name="python -m deploy.stack", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
