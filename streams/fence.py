"""Fencing the work a tenant can make the scheduler do.

Work runs with the scheduler's network position and credentials, so a tenant's task must
not be able to reach what the scheduler itself can:

- **Kafka work** may produce only to topics an operator allows (``SCHED_KAFKA_WORK_TOPICS``,
  topic patterns, ``{tenant}`` standing for the task's tenant; nothing by default). Topics of
  this deployment, topics named like another scheduler deployment's, Faust's internal and
  changelog topics, and Kafka's own ``_``-prefixed topics are refused even if a pattern
  matches: a message there would be a forged command or a corrupted state.
- **HTTP work** may not connect to loopback, link-local (cloud metadata), private,
  unique-local, shared (CGNAT), multicast, reserved or unspecified addresses, including the
  IPv4 forms embedded in IPv6 addresses, unless the address is inside an operator allowed
  network (``SCHED_HTTP_ALLOW_NETWORKS``; none by default). The check is made by
  :func:`fenced_socket` on the very address the connection goes to, after any lookup, so a
  name resolving to 127.0.0.1, a decimal or octal IPv4 literal and a DNS answer that
  changes between check and use are all covered.

The API applies the same rules at create and update time (:func:`topic_refusal`,
:func:`literal_url_refusal`), as an early courtesy; the executor's check is the real one,
since commands can reach the task processor without going through the API.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import ResolveResult

from schemas import topics
from streams.settings import Settings, topic_name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Names of a scheduler deployment's topics (after its prefix), to refuse them under any prefix.
_SCHEDULER_TOPICS = topics.NAMES
_PREFIX_SEPARATORS = ".-_"
# Faust names its table changelogs "<app id>-<table>-changelog" and its assignor topic
# "<app id>-__assignor-__leader"; repartition topics end in "-repartition".
_FAUST_SUFFIXES = ("-changelog", "-repartition", "-__assignor-__leader")
_HOW_TO_ALLOW = "an operator allows networks with SCHED_HTTP_ALLOW_NETWORKS"
_LEGAL_TOPIC = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


# ---------------------------------------------------------------------------------------------
# Kafka work: topics
# ---------------------------------------------------------------------------------------------


_TOKENS = re.compile(r"(\*\*|\*|\?|\{tenant\})")


def topic_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable topic pattern, or None.

    Patterns are Kafka topic names with ``*`` (any characters but ``.``: within one
    dot-separated segment), ``**`` (any characters) and ``?`` (one character but ``.``), and
    ``{tenant}``, the task's tenant. A ``{tenant}`` must be whole dot-separated segments, once,
    in a pattern without ``**``: the topic's segments then fix where the tenant is and how long
    it is, so no tenant's topics are another's (``jobs.{tenant}.*`` with shell-style ``*`` let
    tenant ``acme`` produce to ``jobs.acme.x.y``, which belongs to tenant ``acme.x``).
    """
    bare = _TOKENS.sub("x", pattern)
    if not bare or not set(bare) <= _LEGAL_TOPIC:
        return f"{pattern!r}: a topic pattern holds topic characters, '*', '**', '?' and '{{tenant}}' only"
    if "{tenant}" in pattern:
        if pattern.count("{tenant}") > 1:
            return f"{pattern!r}: '{{tenant}}' may appear once"
        if "**" in pattern:
            return f"{pattern!r}: a pattern with '{{tenant}}' may not use '**' (the tenant would be ambiguous)"
        if "{tenant}" not in pattern.split("."):
            return f"{pattern!r}: '{{tenant}}' must be a whole dot-separated part, e.g. 'jobs.{{tenant}}.*'"
    return None


def _topic_regex(pattern: str, tenant: str) -> re.Pattern[str]:
    out = []
    for part in _TOKENS.split(pattern):
        match part:
            case "**":
                out.append(".*")
            case "*":
                out.append("[^.]*")
            case "?":
                out.append("[^.]")
            case "{tenant}":
                out.append(re.escape(tenant))
            case _:
                out.append(re.escape(part))
    return re.compile("".join(out))


@dataclass(frozen=True)
class TopicFence:
    """Which topics Kafka work of a tenant may produce to, for one deployment."""

    patterns: tuple[str, ...]
    """Allowed topic patterns (see :func:`topic_pattern_problem`); ``{tenant}`` is the task's tenant."""
    own_topics: frozenset[str]
    """This deployment's topics, refused whatever the patterns say."""
    own_prefixes: tuple[str, ...]
    """Prefixes of this deployment's internal topics (the Faust app's), refused likewise."""

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicFence:
        """The fence of the deployment ``settings`` describe."""
        return cls(
            patterns=tuple(settings.kafka_work_topics),
            own_topics=frozenset(settings.topics.all),
            own_prefixes=(topic_name(settings, settings.app_id),),
        )

    def refusal(self, topic: str, tenant: str) -> str | None:
        """Why Kafka work of ``tenant`` may not produce to ``topic``, or None if it may."""
        if not topic or len(topic) > 249 or not set(topic) <= _LEGAL_TOPIC or topic in (".", ".."):
            return f"topic {topic!r} is not a legal Kafka topic name"
        reserved = self._reserved(topic)
        if reserved is not None:
            return f"topic {topic!r} is {reserved}; Kafka work may never produce to it"
        if not any(_topic_regex(p, tenant).fullmatch(topic) for p in self.patterns):
            if not self.patterns:
                return (
                    f"topic {topic!r} is not allowed: no topic is allowed for Kafka work "
                    "(an operator allows topics with SCHED_KAFKA_WORK_TOPICS)"
                )
            return f"topic {topic!r} is not allowed for Kafka work (allowed: {', '.join(self.patterns)})"
        return None

    def _reserved(self, topic: str) -> str | None:
        if topic.startswith("_"):
            return "an internal topic of Kafka or its tools"
        if topic in self.own_topics or topic.startswith(self.own_prefixes):
            return "one of this deployment's own topics"
        if topic.endswith(_FAUST_SUFFIXES):
            return "an internal topic of a stream processor"
        for name in _SCHEDULER_TOPICS:
            if topic == name or (topic.endswith(name) and topic[-len(name) - 1] in _PREFIX_SEPARATORS):
                return "named like a scheduler deployment's topic"
        return None


# ---------------------------------------------------------------------------------------------
# HTTP work: addresses
# ---------------------------------------------------------------------------------------------

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64, Teredo client), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def address_kind(ip: IPAddress) -> str | None:
    """What makes ``ip`` unfit for tenant HTTP work (``"loopback"``, ``"private"``...), or None
    when it is a public, globally routable unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(ip.compressed.split("%")[0])
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = address_kind(embedded)
            if inner is not None:
                return f"{inner} (IPv4 {embedded} inside IPv6)"
            if ip.ipv4_mapped is not None:
                return None  # a mapped address is its IPv4 address, nothing more
        if ip in _NAT64_LOCAL:
            return "private"
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local (cloud metadata lives there)"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED, "shared address space (CGNAT)"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "site-local"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    )
    for hit, kind in checks:
        if hit:
            return kind
    return None


def _allowed(ip: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(c.version == net.version and c in net for c in candidates for net in allow)


def address_refusal(ip: IPAddress, allow: Sequence[IPNetwork], name: str | None = None) -> str | None:
    """Why HTTP work may not connect to ``ip`` (which ``name`` resolved to, if given), or None
    if it may (a public address, or one inside an operator allowed network)."""
    if _allowed(ip, allow):
        return None
    kind = address_kind(ip)
    if kind is None:
        return None
    via = f" ({name})" if name is not None else ""
    return f"address {ip}{via} is {kind}; not allowed for HTTP work ({_HOW_TO_ALLOW})"


def literal_host(host: str) -> IPAddress | None:
    """The address a URL host names literally, in any form a resolver accepts (``127.1``,
    ``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``[::ffff:127.0.0.1]``), or None for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # inet_aton accepts the classic shorthand, decimal, octal and hex forms, as
        # getaddrinfo does; a pure parse, no lookup.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def literal_url_refusal(url: str, allow: Sequence[IPNetwork]) -> str | None:
    """Why ``url`` is refused before any lookup (a refused literal address, or ``localhost``).

    An early courtesy for the API: names are only checked where the work runs, on the
    address they resolve to at that moment.
    """
    try:
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return None  # the URL's own validation reports it
    if host == "localhost" or host.endswith(".localhost"):
        if any(ipaddress.IPv4Address("127.0.0.1") in net for net in allow if net.version == 4):
            return None
        return f"host {host} is loopback; not allowed for HTTP work ({_HOW_TO_ALLOW})"
    ip = literal_host(host)
    return address_refusal(ip, allow) if ip is not None else None


class AddressRefused(OSError):
    """A connection of HTTP work was refused by the fence (the message says why)."""


class FencedResolver(aiohttp.ThreadedResolver):
    """Resolves a host name and refuses it as a whole if any of its addresses is fenced.

    Refusing when one answer of several is fenced (rather than skipping it) leaves a name
    pointing at both a public and an internal address no way in, and names the host in the
    error. Literal addresses never reach a resolver: :func:`fenced_socket` checks those.
    """

    def __init__(self, allow: Sequence[IPNetwork]) -> None:
        super().__init__()
        self._allow = tuple(allow)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await super().resolve(host, port, family)
        for answer in found:
            refusal = address_refusal(ipaddress.ip_address(answer["host"].split("%")[0]), self._allow, host)
            if refusal is not None:
                raise AddressRefused(refusal)
        return found


def fenced_socket(allow: Sequence[IPNetwork]) -> Callable[[AddrInfoType], socket.socket]:
    """A socket factory that refuses to create a socket for a fenced address.

    It is given the very address the connection is about to be made to (after any lookup and
    for literal addresses too), so a decimal or octal IPv4 literal, a name resolving to
    127.0.0.1 and a DNS answer that changes between check and use are all covered.
    """
    networks = tuple(allow)

    def create(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, address = addr_info
        refusal = address_refusal(ipaddress.ip_address(str(address[0]).split("%")[0]), networks)
        if refusal is not None:
            raise AddressRefused(refusal)
        return socket.socket(family=family, type=type_, proto=proto)

    return create


def fenced_http_client(settings: Settings, limit: int) -> aiohttp.ClientSession:
    """The executor's HTTP client for tenant work, at most ``limit`` connections.

    Fenced connections (:class:`FencedResolver`, :func:`fenced_socket`); no proxies from the
    environment (they would connect on the work's behalf, past the fence); bodies as sent
    (no decompression, which could expand a body far past the read limit). Requests are made
    with ``allow_redirects=False``: a redirect is the target's answer, not a second request
    the tenant asked for. aiohttp rather than httpx: with 5,000 requests open at once httpx's
    pool took 26 s to send them all and aiohttp 7 s (same machine, same local server).
    """
    allow = settings.http_allow_networks
    connector = aiohttp.TCPConnector(
        limit=limit, limit_per_host=0, resolver=FencedResolver(allow), socket_factory=fenced_socket(allow)
    )
    return aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False)
