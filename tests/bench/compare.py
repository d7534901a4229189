"""Lateness side by side: this scheduler, APScheduler 3.x and db-scheduler, same workload, same run.

    .venv/bin/python -m tests.bench.compare --tasks 3000 --period 10 --seconds 60 --repeat 3

Writes the table to BENCHMARKS.md (``--out``) with the machine and versions. Each figure is
the median over ``--repeat`` runs; the ratios compare medians measured in this one run.
``--peers`` picks the rows (default all): ``ours``, ``ours-split`` (the same with the executor
in a process of its own, so the worker's event loop only applies and fires: the deployment
that uses a second core), ``aps-memory``, ``aps-sqlite``, ``dbscheduler`` (db-scheduler on a
PostgreSQL cluster this run starts, see ``tests.bench.peer_dbscheduler``). Without ``ours`` the ratio column says n/a.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.bench import lateness, peer_apscheduler, peer_dbscheduler
from tests.bench.common import machine, stack_urls

REPO = Path(__file__).resolve().parents[2]
PEERS = ("ours", "ours-split", "aps-memory", "aps-sqlite", "dbscheduler")


@dataclass
class Row:
    name: str
    results: list[lateness.Result]

    def med(self, pick: str, i: int = -1) -> float:
        values = [getattr(r, pick) if i < 0 else getattr(r, pick)[i] for r in self.results]
        return float(statistics.median(values))


def _peers(value: str) -> list[str]:
    """``--peers``: a comma-separated subset of :data:`PEERS`, kept in the table's order."""
    chosen = {p.strip() for p in value.split(",") if p.strip()}
    unknown = chosen - set(PEERS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(PEERS)} (comma-separated), got {value!r}")
    return [p for p in PEERS if p in chosen]


def _positive(value: str) -> int:
    """A whole number above zero (a polling interval, a thread count)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {number}")
    return number


def _measure(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Row]:
    """Run each chosen peer ``--repeat`` times, interleaved so drift on the machine hits them all."""
    bootstrap, mongo = stack_urls()
    w = (args.tasks, args.period, args.seconds, args.warmup)
    if "dbscheduler" in args.peers:
        # Finds (or installs) PostgreSQL before anything runs, so a missing one fails at once.
        pg = peer_dbscheduler.postgres_major()
        names["dbscheduler"] = f"db-scheduler {peer_dbscheduler.DBSCHEDULER_VERSION}, PostgreSQL {pg} (durable)"
    rows = {peer: Row(names[peer], []) for peer in args.peers}
    for _ in range(args.repeat):
        for peer, row in rows.items():
            if peer in ("ours", "ours-split"):
                result = asyncio.run(lateness.run(bootstrap, mongo, *w, peer == "ours-split", args.spread))
            elif peer == "dbscheduler":
                result = asyncio.run(
                    peer_dbscheduler.run(*w, args.spread, args.dbscheduler_poll_ms, args.dbscheduler_threads)
                )
            else:
                result = asyncio.run(peer_apscheduler.run(peer.removeprefix("aps-"), *w, args.spread))
            row.results.append(result)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--period", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--spread", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="append the table to this Markdown file")
    parser.add_argument("--peers", type=_peers, default=list(PEERS), help=f"rows to run, of {','.join(PEERS)}")
    parser.add_argument(
        "--dbscheduler-poll-ms", type=_positive, default=50,
        help="db-scheduler's polling interval (its default is 10 s; 50 ms is our firing tick)",
    )  # fmt: skip
    parser.add_argument("--dbscheduler-threads", type=_positive, default=20, help="db-scheduler's execution threads")
    args = parser.parse_args(argv)
    names = {
        "ours": "this scheduler (1 worker, durable)",
        "ours-split": "this scheduler (1 worker, executor in its own process, durable)",
        "aps-memory": "APScheduler 3, memory store",
        "aps-sqlite": "APScheduler 3, SQLite store",
    }
    try:
        rows = _measure(args, names)
    except peer_dbscheduler.PeerError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 1
    ours = rows.get("ours")
    lines = [
        f"### Lateness: {args.tasks} tasks every {args.period:g} s ({args.tasks / args.period:.0f} fires/s), "
        f"{'spread' if args.spread else 'aligned'}, {args.seconds:g} s window, median of {args.repeat}",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        f"Command: `python -m tests.bench.compare {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| scheduler | missed | doubled | dispatch p50 ms | dispatch p99 ms | dispatch max ms | start p99 ms "
        "| RSS MB | our p99 / its p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        ratio = f"{ours.med('dispatch_ms', 1) / row.med('dispatch_ms', 1):.2f}" if ours is not None else "n/a"
        lines.append(
            f"| {row.name} | {row.med('missed'):.0f} | {row.med('doubled'):.0f} | {row.med('dispatch_ms', 0):.1f} "
            f"| {row.med('dispatch_ms', 1):.1f} | {row.med('dispatch_ms', 2):.1f} | {row.med('start_ms', 1):.1f} "
            f"| {row.med('rss_peak_mb'):.0f} | {ratio} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        with args.out.open("a") as out:
            out.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
