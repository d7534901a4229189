"""Running one attempt of an execution: HTTP requests, Kafka messages, Python handlers, shell
commands (``streams.shell``).

A runner never raises for the work's own failure: it returns a ``RunResult``. The
execution id goes with every request (``Idempotency-Key`` for HTTP, a header for Kafka) so
that a redelivered dispatch is harmless at the target.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer

from schemas.specs import HandlerWork, HttpPoll, HttpRequestSpec, HttpWork, KafkaWork, ShellWork
from streams import handlers
from streams.fence import AddressRefused, TopicFence

if TYPE_CHECKING:  # streams.shell imports this module
    from streams.shell import ShellRunner

log = logging.getLogger(__name__)

RESULT_LIMIT = 4096
"""Bytes of a response body (and characters of an error) kept in the execution's result."""
RESULT_MAX_BYTES = 16 * 1024
"""Largest result (as JSON) an execution keeps; a larger one is replaced by a truncated preview.
Results go into events and views, so a target (or a handler) must not be able to bloat them."""


@dataclass(frozen=True)
class RunResult:
    """How one attempt ended."""

    status: Literal["succeeded", "failed"]
    result: Any = None
    error: str | None = None


@dataclass
class Cancellation:
    """Whether the scheduler cancelled the execution an attempt runs.

    The executor sets it before it cancels the attempt's asyncio task, so a runner's cleanup
    can tell a cancelled execution (stop the external work too) from a process shutting down
    (leave the external work alone: the partition's next owner runs the attempt again, with the
    same execution id). The shell runner stops its process group either way (a process left
    behind would run on beside the next owner's), and says which it was.
    """

    requested: bool = False


@dataclass(frozen=True)
class Attempt:
    """The execution an attempt belongs to."""

    task_id: str
    tenant: str
    execution_id: str
    attempt: int
    params: dict[str, Any]
    cancellation: Cancellation = field(default_factory=Cancellation, compare=False)
    """Set by the executor when the scheduler cancels the execution."""


@dataclass(frozen=True)
class Fetched:
    """A response and the first bytes of its body (never more than the read limit)."""

    status_code: int
    body: bytes
    encoding: str | None
    truncated: bool
    """True when the body was longer than the read limit and the rest was not read."""

    def text(self, limit: int = RESULT_LIMIT) -> str:
        return self.body[:limit].decode(self.encoding or "utf-8", errors="replace")

    def result(self) -> dict[str, Any]:
        """The part kept in the execution's result: the status and the body's first bytes."""
        out: dict[str, Any] = {"status_code": self.status_code, "body": self.text()}
        if self.truncated or len(self.body) > RESULT_LIMIT:
            out["truncated"] = True
        return out

    def json(self) -> Any:
        if self.truncated:
            raise ValueError(f"response body larger than {len(self.body)} bytes; not read")
        return orjson.loads(self.body)


def capped(result: RunResult) -> RunResult:
    """``result`` with its error cut to :data:`RESULT_LIMIT` characters and its result, if
    larger than :data:`RESULT_MAX_BYTES` as JSON, replaced by a truncated preview."""
    error = result.error[:RESULT_LIMIT] if result.error is not None else None
    value = result.result
    if value is not None:
        try:
            dumped = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:
            dumped = repr(value).encode()
        if len(dumped) > RESULT_MAX_BYTES:
            value = {"truncated": True, "preview": dumped[:RESULT_LIMIT].decode(errors="replace")}
    return RunResult(result.status, value, error)


def _request_body(body: Any, headers: dict[str, str]) -> bytes | str | None:
    """The bytes of a request body: text as given, anything else as JSON (then the content
    type is JSON unless ``headers`` name one)."""
    if body is None or isinstance(body, str | bytes):
        return body
    if not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"
    return orjson.dumps(body)


def _pointer(doc: Any, pointer: str) -> Any:
    """Resolve a JSON pointer (RFC 6901) in ``doc``; KeyError naming the missing part."""
    if pointer in ("", "/"):
        return doc
    cur = doc
    for raw in pointer.lstrip("/").split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(cur, list):
            cur = cur[int(part)]
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise KeyError(f"{pointer!r}: no {part!r} in response")
    return cur


def _report_url(doc: Any, poll: HttpPoll) -> Any:
    """The engine's report URL in a start or status response, if ``poll.report_url_pointer`` finds one."""
    if poll.report_url_pointer is None:
        return None
    try:
        return _pointer(doc, poll.report_url_pointer)
    except (KeyError, IndexError, ValueError):
        return None  # engines often add the report only once the run ends


def _needs_job_id(spec: HttpRequestSpec) -> bool:
    return "{job_id}" in spec.url or "{job_id}" in str(spec.body)


def _substitute(value: Any, job_id: str) -> Any:
    """``value`` with ``{job_id}`` replaced in every string in it."""
    if isinstance(value, str):
        return value.replace("{job_id}", job_id)
    if isinstance(value, list):
        return [_substitute(v, job_id) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, job_id) for k, v in value.items()}
    return value


class Runners:
    """Shared clients for the runners (one HTTP pool, one Kafka producer) and the fences."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        producer: AIOKafkaProducer | None,
        allowed: list[str] | None,
        topics: TopicFence,
        read_limit: int = 1024 * 1024,
        shell: ShellRunner | None = None,
    ) -> None:
        self.http = http
        self.producer = producer
        self.allowed = allowed
        self.topics = topics
        self.read_limit = read_limit
        self.shell = shell
        """Runs shell work (None: shell work fails, this executor does not run it)."""

    async def run(self, work: HttpWork | KafkaWork | HandlerWork | ShellWork, at: Attempt, budget: float) -> RunResult:
        """Run one attempt within ``budget`` seconds; the result and error are size-capped."""
        return capped(await self._run(work, at, budget))

    async def _run(self, work: HttpWork | KafkaWork | HandlerWork | ShellWork, at: Attempt, budget: float) -> RunResult:
        if budget <= 0:
            return RunResult("failed", error="deadline passed before the attempt started")
        try:
            async with asyncio.timeout(budget) as deadline:
                match work:
                    case HttpWork():
                        return await self._http(work, at, budget, deadline)
                    case KafkaWork():
                        return await self._kafka(work, at)
                    case HandlerWork():
                        return await self._handler(work, at)
                    case ShellWork():
                        if self.shell is None:
                            return RunResult("failed", error="this executor does not run shell work")
                        return await self.shell.run(work, at)
        except TimeoutError:
            return RunResult("failed", error=f"timed out after {budget:.1f}s")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                return RunResult("failed", error=str(exc.os_error))
            return RunResult("failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # the work's failure, reported, never raised
            return RunResult("failed", error=f"{type(exc).__name__}: {exc}")

    def _headers(self, headers: dict[str, str], at: Attempt) -> dict[str, str]:
        return {
            **headers,
            # Compressed bodies could expand far past the read limit in one chunk.
            "Accept-Encoding": "identity",
            "Idempotency-Key": at.execution_id,
            "X-Scheduler-Task-Id": at.task_id,
            "X-Scheduler-Attempt": str(at.attempt),
        }

    async def _fetch(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        timeout: float,  # noqa: ASYNC109 (the request's own timeout)
        data: bytes | str | None = None,
    ) -> Fetched:
        """Send a request and read at most ``read_limit`` bytes of the answer (streamed, so a
        huge response is never held whole in memory). Redirects are answers, not followed."""
        async with self.http.request(
            method,
            url,
            headers=headers,
            data=data,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as response:
            body = bytearray()
            truncated = False
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > self.read_limit:
                    del body[self.read_limit :]
                    truncated = True
                    break
            return Fetched(response.status, bytes(body), response.charset, truncated)

    async def _http(self, work: HttpWork, at: Attempt, budget: float, deadline: asyncio.Timeout) -> RunResult:
        job_id: Any = None
        try:
            headers = self._headers(work.headers, at)
            data = _request_body(work.body, headers)
            response = await self._fetch(work.method, work.url, headers, min(work.timeout_seconds, budget), data)
            if response.status_code not in work.accepted_statuses:
                return RunResult("failed", response.result(), f"HTTP {response.status_code} from {work.url}")
            if work.poll is None:
                return RunResult("succeeded", response.result())
            start = response.json()
            job_id = _pointer(start, work.poll.job_id_pointer)
            return await self._poll(work, work.poll, job_id, _report_url(start, work.poll), at)
        except asyncio.CancelledError:
            # Cancelled by the scheduler, or out of time: the request in flight is dropped (its
            # connection closed) and the external job is told to stop. Not on a shutdown.
            if work.cancel is not None and (at.cancellation.requested or deadline.expired()):
                await self._send_cancel(work, work.cancel, job_id, at)
            raise

    async def _send_cancel(self, work: HttpWork, cancel: HttpRequestSpec, job_id: Any, at: Attempt) -> None:
        """Send ``work.cancel`` (``{job_id}`` substituted) through the same fenced client; never raises."""
        if job_id is None and _needs_job_id(cancel):
            log.warning("%s: not cancelled at the target: no job id known yet", at.execution_id)
            return
        ident = "" if job_id is None else str(job_id)
        headers = self._headers({**work.headers, **cancel.headers}, at)
        data = _request_body(_substitute(cancel.body, ident), headers)
        url = cancel.url.replace("{job_id}", ident)
        try:
            response = await self._fetch(cancel.method, url, headers, cancel.timeout_seconds, data)
        except Exception as exc:  # the execution is over either way; the engine may time the job out
            log.warning("%s: cancel request to %s failed: %s", at.execution_id, url, exc)
            return
        if response.status_code >= 400:
            log.warning("%s: cancel request to %s answered HTTP %d", at.execution_id, url, response.status_code)

    async def _poll(self, work: HttpWork, poll: HttpPoll, job_id: Any, report_url: Any, at: Attempt) -> RunResult:
        """Drive an external engine: the start response named a job; poll it to an end state."""
        url = poll.status_url.replace("{job_id}", str(job_id))
        kept = {"job_id": job_id} if report_url is None else {"job_id": job_id, "report_url": report_url}
        while True:
            await asyncio.sleep(poll.interval_seconds)
            # The same fenced client: the status URL is checked like the start URL.
            headers = self._headers({**work.headers, **poll.headers}, at)
            response = await self._fetch("GET", url, headers, work.timeout_seconds)
            if response.status_code >= 400:
                continue  # a transient error of the engine; the deadline bounds the wait
            status = response.json()
            state = _pointer(status, poll.status_pointer)
            if report_url is None and (found := _report_url(status, poll)) is not None:
                kept = {**kept, "report_url": found}
            if state in poll.success_values:
                return RunResult("succeeded", {**kept, "state": state, **response.result()})
            if state in poll.failure_values:
                return RunResult("failed", {**kept, "state": state, **response.result()}, f"job ended {state}")

    async def _kafka(self, work: KafkaWork, at: Attempt) -> RunResult:
        # Authoritative: dispatches reach executors whether or not their task went through
        # the API, so the fence is checked here, right before producing.
        refusal = self.topics.refusal(work.topic, at.tenant)
        if refusal is not None:
            return RunResult("failed", error=refusal)
        if self.producer is None:
            return RunResult("failed", error="this executor has no Kafka producer")
        meta = await self.producer.send_and_wait(
            work.topic,
            value=orjson.dumps(work.value),
            key=work.key.encode() if work.key is not None else None,
            headers=[("execution-id", at.execution_id.encode()), ("task-id", at.task_id.encode())],
        )
        return RunResult("succeeded", {"topic": meta.topic, "partition": meta.partition, "offset": meta.offset})

    async def _handler(self, work: HandlerWork, at: Attempt) -> RunResult:
        fn = handlers.lookup(work.name, self.allowed)
        ctx = handlers.HandlerContext(at.task_id, at.execution_id, at.attempt, at.tenant)
        result = await fn({**work.params, **at.params}, ctx)
        return RunResult("succeeded", result)
