"""The interpreter of long-running processes: the garbage collector and the GIL's switch interval.

**The garbage collector**: fewer, shorter pauses, and a metric of them.

Measured in the worker at 1,000 fires a second (``tests.bench.lateness``, default thresholds):
full (generation 2) collections every few seconds, each pausing the event loop for 100-280 ms
and freeing nothing, and 3.3 s of the 50 s run spent collecting. Nearly everything a worker
allocates is freed by reference counting (states, envelopes, futures); what the collector
scans again and again is what lives for the whole process: modules, Faust, the due-index.

So a process (1) raises the thresholds, so young collections are rarer and a full one comes
only after a great many allocations, and (2) freezes what is alive once it has started and
recovered (:func:`freeze`): frozen objects are never scanned again, and reference counting
still frees them. In one run each at 1,000 fires/s on a busy machine, the worker logged ten
full collections over 70 ms with CPython's thresholds and three with these (up to 234 ms:
what survives churns through the state cache, so pauses remain, rarer). Every pause is
observed in ``scheduler_gc_pause_seconds{generation}``.

**The switch interval.** A worker runs two Python threads: the event loop (the agent, the
firing loop, the producer) and Faust's consumer thread (fetching and decoding records). When
the event loop gives up the GIL for a system call (every socket write, every ``select``) and
the consumer thread takes it, the loop gets it back only when that thread blocks or after the
switch interval, 5 ms by default: a convoy that adds milliseconds to a tick's way. At 0.5 ms,
300 fires/s on one worker (``tests.bench.lateness --tasks 3000 --period 10 --spread``, A/B runs
in turn on one machine) had dispatch p99 21-22 ms against 36-42 ms.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any

from prometheus_client import Histogram

GC_PAUSE = Histogram(
    "scheduler_gc_pause_seconds",
    "Pauses of the cyclic garbage collector, by generation collected.",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

DEFAULT_THRESHOLDS = (50_000, 20, 100)
"""Allocations before a young collection (CPython's default: 700), young collections before a
middle one (10), middle ones before a full one (10; CPython also waits until the objects not
yet fully collected are a quarter of those that were)."""

_started: list[float] = []
_installed = False


def _observe(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        GC_PAUSE.labels(str(info["generation"])).observe(time.perf_counter() - _started.pop())


def install(thresholds: tuple[int, int, int] = DEFAULT_THRESHOLDS, switch_interval: float | None = None) -> None:
    """Set the collector's thresholds (and the switch interval) and observe GC pauses (once per process)."""
    global _installed
    gc.set_threshold(*thresholds)
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    if not _installed:
        gc.callbacks.append(_observe)
        _installed = True


def freeze() -> None:
    """Collect once, then leave every object alive now out of every later collection.

    Called when a process has started (and a worker has recovered its partitions): what is
    alive then lives long. Objects frozen and later dropped are still freed by reference
    counting; only a reference cycle among them would wait for the process to end.
    """
    gc.collect()
    gc.freeze()
