"""Lateness side by side: this scheduler and APScheduler 3.x, same workload, same run.

    .venv/bin/python -m tests.bench.compare --tasks 3000 --period 10 --seconds 60 --repeat 3

Writes the table to BENCHMARKS.md (``--out``) with the machine and versions. Each figure is
the median over ``--repeat`` runs; the ratios compare medians measured in this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.bench import lateness, peer_apscheduler
from tests.bench.common import machine, stack_urls

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    name: str
    results: list[lateness.Result]

    def med(self, pick: str, i: int = -1) -> float:
        values = [getattr(r, pick) if i < 0 else getattr(r, pick)[i] for r in self.results]
        return float(statistics.median(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--period", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--spread", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="append the table to this Markdown file")
    args = parser.parse_args(argv)
    bootstrap, mongo = stack_urls()
    w = (args.tasks, args.period, args.seconds, args.warmup)
    rows = [Row("this scheduler (1 worker, durable)", []), Row("APScheduler 3, memory store", []),
            Row("APScheduler 3, SQLite store", [])]  # fmt: skip
    for _ in range(args.repeat):
        rows[0].results.append(asyncio.run(lateness.run(bootstrap, mongo, *w, False, args.spread)))
        rows[1].results.append(asyncio.run(peer_apscheduler.run("memory", *w, args.spread)))
        rows[2].results.append(asyncio.run(peer_apscheduler.run("sqlite", *w, args.spread)))
    ours = rows[0]
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
    for row in rows:
        ratio = ours.med("dispatch_ms", 1) / row.med("dispatch_ms", 1) if row is not ours else 1.0
        lines.append(
            f"| {row.name} | {row.med('missed'):.0f} | {row.med('doubled'):.0f} | {row.med('dispatch_ms', 0):.1f} "
            f"| {row.med('dispatch_ms', 1):.1f} | {row.med('dispatch_ms', 2):.1f} | {row.med('start_ms', 1):.1f} "
            f"| {row.med('rss_peak_mb'):.0f} | {ratio:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        with args.out.open("a") as out:
            out.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
