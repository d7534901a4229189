"""Load script (not a test): a steady rate of creates and gets against a running API.

Open loop: requests start on schedule whatever the latency, so slow answers show up as
latency rather than as a lower rate. Prints p50/p95/p99 of create (202), get (200), and
create-to-visible (from sending the create until a GET of the task answers 200, for every
``--visible-every``-th create; the four oldest not yet visible are polled every 50 ms). The
measured GETs read tasks already seen visible.

    # against an API you run (python -m api, a worker and python -m projections.run):
    python -m tests.api.load --url http://127.0.0.1:8000 --rate 20 --get-rate 50 --seconds 30

    # or let it start a worker, a projector and the API under a fresh prefix and database:
    SCHED_KAFKA_BOOTSTRAP=127.0.0.1:9092 SCHED_MONGO_URL=mongodb://127.0.0.1:27017/ \\
        python -m tests.api.load --spawn --rate 20 --get-rate 50 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
import orjson

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SECRET = "load-test-secret-with-at-least-32-bytes!"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _report(name: str, values: list[float], errors: int) -> str:
    if not values:
        return f"{name:<20} n=0 errors={errors}"
    ms = [v * 1000 for v in values]
    return (
        f"{name:<20} n={len(ms):<5} errors={errors:<3} p50={percentile(ms, 50):7.1f} ms  "
        f"p95={percentile(ms, 95):7.1f} ms  p99={percentile(ms, 99):7.1f} ms  max={max(ms):7.1f} ms  "
        f"mean={statistics.fmean(ms):7.1f} ms"
    )


class Load:
    """One run: creates at ``rate``/s and gets at ``get_rate``/s for ``seconds``."""

    def __init__(
        self, url: str, token: str, rate: float, get_rate: float, seconds: float, visible_every: int = 5
    ) -> None:
        self.url, self.rate, self.get_rate, self.seconds = url, rate, get_rate, seconds
        self.headers = {"Authorization": f"Bearer {token}"}
        self.create: list[float] = []
        self.get: list[float] = []
        self.visible: list[float] = []
        self.errors = {"create": 0, "get": 0, "visible": 0}
        self.statuses: dict[str, dict[int, int]] = {"create": {}, "get": {}}
        self.ids: list[str] = []
        self.visible_every = visible_every
        self.pending: dict[str, float] = {}
        """Watched creates not visible yet, oldest first: when each was sent."""
        self.watch_front = 4
        self.done_creating = False
        self.poll = 0.05
        self.tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _create(self, http: aiohttp.ClientSession, n: int) -> None:
        body = {
            "name": f"load-{n}",
            "schedule": {"kind": "interval", "every_seconds": 86400},
            "work": {"kind": "handler", "name": "noop"},
            "tags": ["load"],
        }
        start = time.perf_counter()
        try:
            async with http.post("/v1/tasks", json=body) as r:
                status, answer = r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError):
            self.errors["create"] += 1
            return
        self.statuses["create"][status] = self.statuses["create"].get(status, 0) + 1
        if status != 202:
            self.errors["create"] += 1
            return
        self.create.append(time.perf_counter() - start)
        task_id = orjson.loads(answer)["task_id"]
        if n % self.visible_every == 0:
            self.pending[task_id] = start

    async def _watch(self, http: aiohttp.ClientSession) -> None:
        """Create-to-visible: a GET of each of the ``watch_front`` oldest watched tasks not yet
        visible, every ``poll`` seconds, until all are visible (or a minute after the load).

        A GET by id is the one read FerretDB answers without scanning a collection (the list
        this script polled before is a scan of every task there, 0.4-0.6 ms a document, so its
        cost grew with the collection until the polling saturated the view store). Only the
        front of the queue is polled, so the reads added stay under ``watch_front / poll`` a
        second however far the views fall behind (a task polled each 50 ms for as long as it
        was not visible made the watching grow with the lag it measured, and collapse the API).
        A task that becomes visible before those ahead of it is seen when it reaches the front:
        the figure can only err long.
        """
        while not self.done_creating or self.pending:
            front = list(self.pending.items())[: self.watch_front]
            seen = await asyncio.gather(*(self._visible(http, task_id) for task_id, _ in front))
            now = time.perf_counter()
            for (task_id, started), visible in zip(front, seen, strict=True):
                if visible:
                    del self.pending[task_id]
                    self.visible.append(now - started)
                    self.ids.append(task_id)  # what the measured GETs read
                elif now - started > self.seconds + 60:
                    del self.pending[task_id]
                    self.errors["visible"] += 1
            await asyncio.sleep(self.poll)

    async def _visible(self, http: aiohttp.ClientSession, task_id: str) -> bool:
        try:
            async with http.get(f"/v1/tasks/{task_id}") as r:
                await r.read()
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _get(self, http: aiohttp.ClientSession) -> None:
        if not self.ids:
            return
        task_id = random.choice(self.ids)
        start = time.perf_counter()
        try:
            async with http.get(f"/v1/tasks/{task_id}") as r:
                status = r.status
                await r.read()
        except (aiohttp.ClientError, TimeoutError):
            self.errors["get"] += 1
            return
        self.statuses["get"][status] = self.statuses["get"].get(status, 0) + 1
        if status == 200:
            self.get.append(time.perf_counter() - start)
        else:
            self.errors["get"] += 1

    async def _ticker(self, rate: float, make: object) -> None:
        if rate <= 0:
            return
        interval, start, n = 1.0 / rate, time.perf_counter(), 0
        while (due := start + n * interval) < start + self.seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            self._spawn(make(n))  # type: ignore[operator]
            n += 1

    async def run(self) -> None:
        """Run the load, then wait for the stragglers."""

        # Separate connection pools, so that visibility polling never queues the measured requests.
        # aiohttp rather than httpx: at 250 requests a second httpx's own pool added seconds of
        # latency (and most of a core) to what this script measured of the API.
        def client() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(
                self.url,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=30),
                connector=aiohttp.TCPConnector(limit=200),
            )

        async with client() as creates, client() as gets, client() as polls:
            watcher = asyncio.create_task(self._watch(polls))
            await asyncio.gather(
                self._ticker(self.rate, lambda n: self._create(creates, n)),
                self._ticker(self.get_rate, lambda n: self._get(gets)),
            )
            while self.tasks:
                await asyncio.gather(*list(self.tasks), return_exceptions=True)
            self.done_creating = True
            await watcher

    def report(self) -> str:
        """The figures."""
        return "\n".join(
            [
                f"{self.seconds:.0f} s at {self.rate:g} creates/s and {self.get_rate:g} gets/s against {self.url}",
                _report("create (202)", self.create, self.errors["create"]),
                _report("get (200)", self.get, self.errors["get"]),
                _report("create-to-visible", self.visible, self.errors["visible"]),
                f"statuses: {self.statuses}",
            ]
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def spawned(secret: str) -> Iterator[str]:
    """A worker, a projector and the API under a fresh prefix and database; yields the API's URL."""
    name = f"load{uuid.uuid4().hex[:8]}"
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="sched-load-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    env.update(
        SCHED_KAFKA_BOOTSTRAP=os.environ.get("SCHED_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        SCHED_MONGO_URL=os.environ.get("SCHED_MONGO_URL", "mongodb://127.0.0.1:27017/"),
        SCHED_MONGO_DATABASE=name,
        SCHED_TOPIC_PREFIX=f"{name}.",
        SCHED_PARTITIONS="4",
        SCHED_DATA_DIR=str(tmp / "data"),
        SCHED_LOG_LEVEL="warning",
        SCHED_JWT_HS256_SECRET=secret,
        SCHED_API_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    procs = []
    for argv, log in (
        (["-m", "streams.cli", "worker", "--worker-id", "load-w1"], "worker.log"),
        (["-m", "projections.run"], "projector.log"),
        (["-m", "api"], "api.log"),
    ):
        out = (tmp / log).open("ab")
        proc = subprocess.Popen(
            [sys.executable, *argv], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        procs.append(proc)
    print(f"spawned worker, projector and API (prefix {name}., logs in {tmp})", file=sys.stderr)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


async def _warm_up(url: str, token: str, within: float = 120) -> None:
    """Wait until a create with ``?wait`` is applied: the worker and projector are running."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        while True:
            try:
                r = await http.post(
                    "/v1/tasks?wait=10",
                    json={"name": "warm-up", "work": {"kind": "handler", "name": "noop"}},
                    headers={"Idempotency-Key": "load-warm-up"},
                )
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the API (or its worker and projector) did not come up")
            await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--rate", type=float, default=20, help="creates per second")
    parser.add_argument("--get-rate", type=float, default=50, help="gets per second")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--tenant", default=f"load-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--secret", default=os.environ.get("SCHED_JWT_HS256_SECRET", DEFAULT_SECRET))
    parser.add_argument("--audience", default=os.environ.get("SCHED_JWT_AUDIENCE"))
    parser.add_argument("--issuer", default=os.environ.get("SCHED_JWT_ISSUER"))
    parser.add_argument(
        "--visible-every", type=int, default=5, help="watch every n-th create until it is visible (1: all)"
    )
    parser.add_argument("--spawn", action="store_true", help="start a worker, a projector and the API first")
    args = parser.parse_args(argv)

    claims = {"sub": "load", "tenant": args.tenant, "roles": ["admin"], "aud": args.audience, "iss": args.issuer,
              "exp": datetime.now(UTC) + timedelta(hours=2)}  # fmt: skip
    token = jwt.encode({k: v for k, v in claims.items() if v is not None}, args.secret, algorithm="HS256")

    async def go(url: str) -> None:
        await _warm_up(url, token)
        load = Load(url, token, args.rate, args.get_rate, args.seconds, max(1, args.visible_every))
        await load.run()
        print(load.report())

    if args.spawn:
        with spawned(args.secret) as url:
            asyncio.run(go(url))
    else:
        asyncio.run(go(args.url))


if __name__ == "__main__":
    main()
