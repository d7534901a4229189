"""Creating topics waits until the broker serves every partition: a group formed earlier is
assigned none of a topic that had no leader yet (streams/admin.py)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.admin import NewTopic

from streams.admin import _wait_until_served, too_few_partitions, unserved


def topic(name: str, partitions: int, *, error: int = 0, leaderless: tuple[int, ...] = ()) -> dict[str, Any]:
    return {
        "topic": name,
        "error_code": error,
        "partitions": [
            {"partition": p, "error_code": 5 if p in leaderless else 0, "leader": -1 if p in leaderless else 1}
            for p in range(partitions)
        ],
    }


@pytest.mark.parametrize(
    ("described", "pending"),
    [
        ([topic("a", 4), topic("b", 1)], set()),
        ([topic("a", 4)], {"b"}),  # not described at all
        ([topic("a", 4, error=3), topic("b", 1)], {"a"}),  # unknown topic or partition
        ([topic("a", 2), topic("b", 1)], {"a"}),  # fewer partitions than asked for
        ([topic("a", 4, leaderless=(3,)), topic("b", 1)], {"a"}),  # a partition without a leader
        ([topic("a", 4), topic("b", 1), topic("c", 9)], set()),  # others do not matter
    ],
)
def test_served_means_every_partition_has_a_leader(described: list[dict[str, Any]], pending: set[str]) -> None:
    assert unserved(described, {"a": 4, "b": 1}) == pending


class _Admin:
    """Describes the topics leaderless for the first ``until`` calls."""

    def __init__(self, until: int) -> None:
        self.until = until
        self.calls = 0

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        self.calls += 1
        return [topic(n, 2, leaderless=(0,) if self.calls <= self.until else ()) for n in names]


async def test_the_wait_ends_when_the_broker_serves_every_topic() -> None:
    admin = _Admin(until=2)
    await _wait_until_served(admin, [NewTopic("a", 2, 1), NewTopic("b", 2, 1)], within=10)
    assert admin.calls == 3


async def test_a_topic_never_served_is_named_in_the_error() -> None:
    with pytest.raises(RuntimeError, match=r"\['a', 'b'\]"):
        await _wait_until_served(_Admin(until=10**6), [NewTopic("a", 2, 1), NewTopic("b", 2, 1)], within=0.3)


def test_a_topic_with_fewer_partitions_than_the_deployment_is_named() -> None:
    described = [topic("a", 2), topic("b", 1), topic("c", 2, leaderless=(1,))]
    # "c" may still be on its way (a partition without a leader): only "a" is short for good.
    assert too_few_partitions(described, {"a": 4, "b": 1, "c": 4}) == {"a": "2 partitions, expected 4"}


class _ShortAdmin:
    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [topic(n, 2) for n in names]


async def test_the_wait_stops_at_once_on_a_topic_with_too_few_partitions() -> None:
    with pytest.raises(RuntimeError, match=r"fewer partitions.*'a': '2 partitions, expected 8'"):
        await _wait_until_served(_ShortAdmin(), [NewTopic("a", 8, 1)], within=30)
