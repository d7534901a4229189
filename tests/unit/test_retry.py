"""Retry policy: attempts and exponential backoff with a cap and deterministic jitter."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.retry import backoff, should_retry
from schemas.specs import RetryPolicy

NO_JITTER = RetryPolicy(max_attempts=10, initial_backoff_seconds=1, multiplier=2, max_backoff_seconds=30, jitter=0)


@pytest.mark.parametrize(
    ("attempt", "seconds"),
    [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 30), (50, 30)],
)
def test_exponential_with_cap(attempt: int, seconds: float) -> None:
    assert backoff(NO_JITTER, attempt, "exec") == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("max_attempts", "attempt", "expected"), [(1, 1, False), (3, 1, True), (3, 2, True), (3, 3, False)]
)
def test_should_retry(max_attempts: int, attempt: int, expected: bool) -> None:
    assert should_retry(RetryPolicy(max_attempts=max_attempts), attempt) is expected


def test_jitter_is_deterministic_per_key_and_attempt() -> None:
    policy = RetryPolicy(initial_backoff_seconds=10, jitter=0.5, max_attempts=5)
    assert backoff(policy, 1, "a") == backoff(policy, 1, "a")
    assert len({backoff(policy, 1, str(k)) for k in range(20)}) > 10


policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 100),
    initial_backoff_seconds=st.floats(0, 86_400),
    multiplier=st.floats(1, 100),
    max_backoff_seconds=st.floats(0, 86_400),
    jitter=st.floats(0, 1),
)


@given(policies, st.integers(1, 100), st.text(max_size=10))
def test_backoff_never_exceeds_cap_and_jitter_only_shortens(policy: RetryPolicy, attempt: int, key: str) -> None:
    delay = backoff(policy, attempt, key)
    unjittered = backoff(policy.model_copy(update={"jitter": 0}), attempt, key)
    assert timedelta(0) <= delay <= unjittered <= timedelta(seconds=policy.max_backoff_seconds)
    assert delay >= unjittered * (1 - policy.jitter) - timedelta(microseconds=1)
