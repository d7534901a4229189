"""The executor's HTTP runner against a real local HTTP server: the fence on addresses (issue
11: HTTP work fetched the API's /metrics on 127.0.0.1), redirects, proxies from the
environment, and the caps on what a response can put in a result."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from schemas.specs import HandlerWork, HttpPoll, HttpWork, KafkaWork
from streams.fence import AddressRefused, TopicFence, fenced_http_client, fenced_socket
from streams.runners import RESULT_LIMIT, RESULT_MAX_BYTES, Attempt, Runners
from streams.settings import Settings
from tests.integration.harness import serving

AT = Attempt("acme/t1", "acme", "exec-1", 1, {})
LOOPBACK_V4 = ["127.0.0.0/8"]
HUGE = 5 * 1024 * 1024


@dataclass
class Target:
    """A server on 127.0.0.1 recording the paths it was asked for."""

    port: int = 0
    paths: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        if request.path == "/metrics":
            return web.Response(text="secret_metric 1\n")
        if request.path == "/redirect":
            raise web.HTTPFound(self.url("/metrics"))
        if request.path == "/start":
            return web.json_response({"id": "job-1"})
        if request.path == "/huge":
            response = web.StreamResponse()
            await response.prepare(request)
            chunk = b"x" * 65536
            for _ in range(HUGE // len(chunk)):
                await response.write(chunk)
            return response
        return web.json_response({"ok": True})


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    target = Target()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", target.handle)
    async with serving(app) as target.port:
        yield target


async def run(work: Any, allow: list[str], read_limit: int = 1024 * 1024) -> Any:
    settings = Settings(http_allow_networks=allow)  # type: ignore[arg-type]
    async with fenced_http_client(settings, 100) as http:
        runners = Runners(http, None, None, TopicFence.from_settings(settings), read_limit)
        return await runners.run(work, AT, budget=10)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "address 127.0.0.1 is loopback; not allowed for HTTP work (an operator allows"),
        ("localhost", "(localhost) is loopback; not allowed for HTTP work (an operator allows"),
        # The client refuses the decimal form of 127.0.0.1 itself, before any connection.
        ("2130706433", "2130706433 - is not a canonical IPv4 address"),
    ],
)
async def test_loopback_is_refused_and_the_target_receives_nothing(target: Target, host: str, expected: str) -> None:
    result = await run(HttpWork(method="GET", url=target.url("/metrics", host)), allow=[])
    assert result.status == "failed"
    assert expected in result.error
    assert result.result is None
    assert target.paths == []


async def test_an_allowed_network_is_reached(target: Target) -> None:
    result = await run(HttpWork(method="GET", url=target.url("/metrics")), allow=LOOPBACK_V4)
    assert result.status == "succeeded", result.error
    assert result.result == {"status_code": 200, "body": "secret_metric 1\n"}
    assert target.paths == ["/metrics"]


async def test_the_poll_status_url_is_fenced_too(target: Target) -> None:
    # The start request is allowed (127.0.0.1); the status URL points at ::1, which is not.
    poll = HttpPoll(status_url=f"http://[::1]:{target.port}/status/{{job_id}}", interval_seconds=0.01)
    work = HttpWork(method="POST", url=target.url("/start"), poll=poll)
    result = await run(work, allow=LOOPBACK_V4)
    assert result.status == "failed"
    assert "address ::1 is loopback; not allowed for HTTP work" in result.error
    assert target.paths == ["/start"]


async def test_redirects_are_not_followed(target: Target) -> None:
    result = await run(HttpWork(method="GET", url=target.url("/redirect")), allow=LOOPBACK_V4)
    assert result.status == "failed" and result.error.startswith("HTTP 302")
    assert target.paths == ["/redirect"]


async def test_proxies_from_the_environment_are_not_used(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    # Were the environment's proxy used, the request for a refused address would reach the
    # (allowed) proxy, which would fetch it on the work's behalf.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, target.url("/"))
    result = await run(HttpWork(method="GET", url="http://10.1.2.3:8000/metrics"), allow=LOOPBACK_V4)
    assert result.status == "failed" and "address 10.1.2.3 is private" in result.error
    assert target.paths == []


async def test_a_huge_response_is_cut_and_not_read_whole(target: Target) -> None:
    result = await run(HttpWork(method="GET", url=target.url("/huge")), allow=LOOPBACK_V4, read_limit=65536)
    assert result.status == "succeeded"
    assert result.result["truncated"] is True
    assert len(result.result["body"]) == RESULT_LIMIT


async def test_a_huge_poll_start_response_is_an_error_not_a_parse_of_everything(target: Target) -> None:
    poll = HttpPoll(status_url=target.url("/status/{job_id}"), interval_seconds=0.01)
    work = HttpWork(method="GET", url=target.url("/huge"), poll=poll)
    result = await run(work, allow=LOOPBACK_V4, read_limit=65536)
    assert result.status == "failed" and "larger than 65536 bytes" in result.error


async def test_handler_results_and_errors_are_capped() -> None:
    big = {"blob": "y" * (RESULT_MAX_BYTES * 2)}
    result = await run(HandlerWork(name="echo", params=big), allow=[])
    assert result.status == "succeeded"
    assert result.result["truncated"] is True and len(result.result["preview"]) <= RESULT_LIMIT
    failed = await run(HandlerWork(name="fail", params={"message": "z" * (RESULT_LIMIT * 3)}), allow=[])
    assert failed.status == "failed" and len(failed.error) == RESULT_LIMIT


async def test_kafka_work_is_refused_before_anything_is_produced() -> None:
    # No producer at all: a refusal must come before the producer is even looked at.
    result = await run(KafkaWork(topic="commands", key="acme/t1", value={}), allow=[])
    assert result.status == "failed"
    assert result.error == "topic 'commands' is one of this deployment's own topics; Kafka work may never produce to it"


def test_allowed_networks_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHED_HTTP_ALLOW_NETWORKS", '["10.20.0.0/16", "fd00::/8"]')
    monkeypatch.setenv("SCHED_KAFKA_WORK_TOPICS", '["jobs.{tenant}.*"]')
    settings = Settings()
    assert settings.http_allow_networks == [ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00::/8")]
    assert settings.kafka_work_topics == ["jobs.{tenant}.*"]
    assert Settings.model_fields["http_allow_networks"].default == []
    assert Settings.model_fields["kafka_work_topics"].default == []


def test_the_socket_factory_refuses_the_address_itself_and_lets_public_ones_through() -> None:
    create = fenced_socket([])
    for address in (("127.0.0.1", 80), ("169.254.169.254", 80), ("::ffff:10.0.0.1", 80, 0, 0)):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        with pytest.raises(AddressRefused):
            create((family, socket.SOCK_STREAM, 6, "", address))
    sock = create((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", 80)))
    sock.close()
    allowed = fenced_socket([ipaddress.ip_network("127.0.0.0/8")])
    allowed((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))).close()
