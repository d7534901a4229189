"""The fences on tenant work, as tables: which addresses HTTP work may reach, which topics
Kafka work may produce to (issue 11: SSRF to the API's /metrics, and forged commands)."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from streams.fence import (
    TopicFence,
    address_kind,
    address_refusal,
    literal_host,
    literal_url_refusal,
    topic_pattern_problem,
)
from streams.settings import Settings

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]

ADDRESSES = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback (IPv4 127.0.0.1 inside IPv6)"),
    ("::ffff:169.254.169.254", "link-local (cloud metadata lives there) (IPv4 169.254.169.254 inside IPv6)"),
    ("64:ff9b::7f00:1", "loopback (IPv4 127.0.0.1 inside IPv6)"),  # NAT64 of 127.0.0.1
    ("2002:7f00:1::", "loopback (IPv4 127.0.0.1 inside IPv6)"),  # 6to4 of 127.0.0.1
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("169.254.169.254", "link-local (cloud metadata lives there)"),
    ("fe80::1", "link-local (cloud metadata lives there)"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("fd00:ec2::254", "private"),  # unique-local (the IPv6 metadata address of one cloud)
    ("100.100.100.200", "shared address space (CGNAT)"),  # another cloud's metadata address
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("::127.0.0.1", "reserved"),  # IPv4-compatible form
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("2001:4860:4860::8888", None),
    ("::ffff:8.8.8.8", None),
]


@pytest.mark.parametrize(("address", "kind"), ADDRESSES)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(("address", "kind"), ADDRESSES)
def test_refusal_names_the_address_and_what_it_is(address: str, kind: str | None) -> None:
    refusal = address_refusal(ipaddress.ip_address(address), [])
    if kind is None:
        assert refusal is None
    else:
        assert refusal is not None
        assert refusal.startswith(f"address {ipaddress.ip_address(address)} is {kind}; not allowed for HTTP work")


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_allowed_networks_let_internal_addresses_through(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), LOOPBACK) is None
    assert address_refusal(ipaddress.ip_address("10.0.0.1"), LOOPBACK) is not None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # decimal
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("0x7f.0.0.1", "127.0.0.1"),  # hex
        ("127.1", "127.0.0.1"),  # shorthand
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("example.com", None),
        ("localhost", None),  # a name: resolved and checked where the work runs
    ],
)
def test_literal_hosts_in_every_form_a_resolver_accepts(host: str, address: str | None) -> None:
    found = literal_host(host)
    assert (str(found) if found is not None else None) == (str(ipaddress.ip_address(address)) if address else None)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/metrics",
        "http://2130706433/metrics",
        "http://0177.0.0.1/",
        "http://[::ffff:127.0.0.1]:8000/",
        "http://0.0.0.0:8000/",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:8000/metrics",
        "http://api.localhost./",
    ],
)
def test_api_refuses_literal_internal_urls(url: str) -> None:
    refusal = literal_url_refusal(url, [])
    assert refusal is not None and "not allowed for HTTP work" in refusal
    assert (
        literal_url_refusal(
            url.replace("169.254.169.254", "127.0.0.1"), [*LOOPBACK, ipaddress.ip_network("0.0.0.0/32")]
        )
        is None
    )


def test_api_leaves_names_to_the_executor() -> None:
    assert literal_url_refusal("https://reports.example.com/run", []) is None


PREFIX = "prod."
TOPICS = [
    # (topic, refused because ... or None when allowed), with every topic allowed by pattern.
    ("prod.commands", "one of this deployment's own topics"),
    ("prod.task-events", "one of this deployment's own topics"),
    ("prod.outcomes", "one of this deployment's own topics"),
    ("prod.triggers", "one of this deployment's own topics"),
    ("prod.dead-letter", "one of this deployment's own topics"),
    ("prod.dispatch.high", "one of this deployment's own topics"),
    # The compacted topics merged with calendars, triggers and notifications: a notification's
    # Kafka channel or Kafka work aimed there would rewrite another tenant's rules or calendars.
    ("prod.trigger-rules", "one of this deployment's own topics"),
    ("prod.calendars", "one of this deployment's own topics"),
    ("prod.notification-rules", "one of this deployment's own topics"),
    ("staging.calendars", "named like a scheduler deployment's topic"),
    ("staging-trigger-rules", "named like a scheduler deployment's topic"),
    ("notification-rules", "named like a scheduler deployment's topic"),
    ("prod.scheduler-tasks-changelog", "one of this deployment's own topics"),
    ("prod.scheduler-__assignor-__leader", "one of this deployment's own topics"),
    ("staging.commands", "named like a scheduler deployment's topic"),
    ("commands", "named like a scheduler deployment's topic"),
    ("staging.dispatch.low", "named like a scheduler deployment's topic"),
    ("other-app-table-changelog", "an internal topic of a stream processor"),
    ("__consumer_offsets", "an internal topic of Kafka or its tools"),
    ("__transaction_state", "an internal topic of Kafka or its tools"),
    ("_schemas", "an internal topic of Kafka or its tools"),
    ("orders.created", None),
    ("acme.jobs", None),
]


@pytest.mark.parametrize(("topic", "why"), TOPICS)
def test_own_and_internal_topics_are_refused_whatever_is_allowed(topic: str, why: str | None) -> None:
    fence = TopicFence.from_settings(Settings(topic_prefix=PREFIX, kafka_work_topics=["**"]))
    refusal = fence.refusal(topic, "acme")
    if why is None:
        assert refusal is None
    else:
        assert refusal == f"topic {topic!r} is {why}; Kafka work may never produce to it"


def test_nothing_is_allowed_by_default() -> None:
    fence = TopicFence.from_settings(Settings(topic_prefix=PREFIX))
    refusal = fence.refusal("orders.created", "acme")
    assert refusal is not None and "no topic is allowed for Kafka work" in refusal
    assert "SCHED_KAFKA_WORK_TOPICS" in refusal


@pytest.mark.parametrize(
    ("topic", "tenant", "allowed"),
    [
        ("jobs.acme.nightly", "acme", True),
        ("jobs.acme.nightly", "evil", False),
        # '*' stays within one dot-separated part: tenant "acme" cannot reach into the
        # namespace of tenant "acme.x" (tenants may hold dots), nor the other way round.
        ("jobs.acme.x.nightly", "acme", False),
        ("jobs.acme.x.nightly", "acme.x", True),
        ("jobs.acme.x", "acme.x", False),
        # A tenant holding pattern characters matches only itself.
        ("jobs.acme.nightly", "*", False),
        ("jobs.acme.nightly", "ac?e", False),
    ],
)
def test_tenant_placeholder_gives_each_tenant_its_own_namespace(topic: str, tenant: str, allowed: bool) -> None:
    fence = TopicFence.from_settings(Settings(topic_prefix=PREFIX, kafka_work_topics=["jobs.{tenant}.*"]))
    assert (fence.refusal(topic, tenant) is None) is allowed


@pytest.mark.parametrize(
    ("pattern", "topic", "allowed"),
    [
        ("orders.*", "orders.created", True),
        ("orders.*", "orders.eu.created", False),
        ("orders.**", "orders.eu.created", True),
        ("orders.v?", "orders.v1", True),
        ("orders.v?", "orders.v10", False),
    ],
)
def test_pattern_wildcards(pattern: str, topic: str, allowed: bool) -> None:
    fence = TopicFence.from_settings(Settings(kafka_work_topics=[pattern]))
    assert (fence.refusal(topic, "acme") is None) is allowed


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("jobs.{tenant}.**", "may not use '**'"),
        ("jobs-{tenant}-*", "must be a whole dot-separated part"),
        ("{tenant}.{tenant}", "may appear once"),
        ("jobs/{tenant}", "topic characters"),
        ("", "topic characters"),
    ],
)
def test_ambiguous_or_illegal_patterns_are_refused_at_start_up(pattern: str, problem: str) -> None:
    assert problem in (topic_pattern_problem(pattern) or "")
    with pytest.raises(ValidationError, match="kafka_work_topics"):
        Settings(kafka_work_topics=[pattern])


def test_illegal_topic_names_are_refused() -> None:
    fence = TopicFence.from_settings(Settings(kafka_work_topics=["**"]))
    for topic in ("", ".", "..", "a/b", "x" * 250):
        refusal = fence.refusal(topic, "acme")
        assert refusal is not None and "not a legal Kafka topic name" in refusal
