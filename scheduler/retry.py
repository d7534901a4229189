"""Retry rules: how many attempts, and how long to wait between them."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from schemas.specs import RetryPolicy


def should_retry(policy: RetryPolicy, attempt: int) -> bool:
    """Whether another attempt follows the failed attempt number ``attempt`` (1-based)."""
    return attempt < policy.max_attempts


def backoff(policy: RetryPolicy, attempt: int, key: str) -> timedelta:
    """Delay before the attempt after failed attempt ``attempt``.

    ``initial * multiplier ** (attempt - 1)``, capped at ``max_backoff_seconds``, then reduced
    by a deterministic fraction in ``[0, jitter)`` derived from ``key`` and ``attempt`` (so
    replays agree and the cap is never exceeded).
    """
    delay = policy.initial_backoff_seconds
    # Multiply step by step so large multipliers and attempt counts saturate at the cap
    # instead of overflowing a float power.
    for _ in range(max(attempt - 1, 0)):
        if delay >= policy.max_backoff_seconds:
            break
        delay *= policy.multiplier
    delay = min(delay, policy.max_backoff_seconds)
    digest = hashlib.sha256(f"{key}\x1f{attempt}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    delay *= 1 - policy.jitter * unit
    return timedelta(microseconds=int(delay * 1_000_000))
