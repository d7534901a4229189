"""Running one attempt of an execution: HTTP requests, Kafka messages, Python handlers.

A runner never raises for the work's own failure: it returns a ``RunResult``. The
execution id goes with every request (``Idempotency-Key`` for HTTP, a header for Kafka) so
that a redelivered dispatch is harmless at the target.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from schemas.specs import HandlerWork, HttpPoll, HttpWork, KafkaWork
from streams import handlers

RESULT_LIMIT = 4096
"""Bytes of a response body kept in the execution's result."""


@dataclass(frozen=True)
class RunResult:
    """How one attempt ended."""

    status: Literal["succeeded", "failed"]
    result: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Attempt:
    """The execution an attempt belongs to."""

    task_id: str
    tenant: str
    execution_id: str
    attempt: int
    params: dict[str, Any]


def _body_result(response: httpx.Response) -> dict[str, Any]:
    text = response.text[:RESULT_LIMIT]
    return {"status_code": response.status_code, "body": text}


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


class Runners:
    """Shared clients for the runners (one HTTP pool, one Kafka producer)."""

    def __init__(self, http: httpx.AsyncClient, producer: AIOKafkaProducer | None, allowed: list[str] | None) -> None:
        self.http = http
        self.producer = producer
        self.allowed = allowed

    async def run(self, work: HttpWork | KafkaWork | HandlerWork, at: Attempt, budget: float) -> RunResult:
        """Run one attempt within ``budget`` seconds."""
        if budget <= 0:
            return RunResult("failed", error="deadline passed before the attempt started")
        try:
            async with asyncio.timeout(budget):
                match work:
                    case HttpWork():
                        return await self._http(work, at, budget)
                    case KafkaWork():
                        return await self._kafka(work, at)
                    case HandlerWork():
                        return await self._handler(work, at)
        except TimeoutError:
            return RunResult("failed", error=f"timed out after {budget:.1f}s")
        except Exception as exc:  # the work's failure, reported, never raised
            return RunResult("failed", error=f"{type(exc).__name__}: {exc}"[:RESULT_LIMIT])

    def _headers(self, work: HttpWork, at: Attempt) -> dict[str, str]:
        return {
            **work.headers,
            "Idempotency-Key": at.execution_id,
            "X-Scheduler-Task-Id": at.task_id,
            "X-Scheduler-Attempt": str(at.attempt),
        }

    async def _http(self, work: HttpWork, at: Attempt, budget: float) -> RunResult:
        body = work.body
        kwargs: dict[str, Any] = {}
        if isinstance(body, str | bytes):
            kwargs["content"] = body
        elif body is not None:
            kwargs["json"] = body
        response = await self.http.request(
            work.method,
            work.url,
            headers=self._headers(work, at),
            timeout=min(work.timeout_seconds, budget),
            **kwargs,
        )
        if response.status_code not in work.accepted_statuses:
            return RunResult("failed", _body_result(response), f"HTTP {response.status_code} from {work.url}")
        if work.poll is None:
            return RunResult("succeeded", _body_result(response))
        return await self._poll(work, work.poll, response, at)

    async def _poll(self, work: HttpWork, poll: HttpPoll, started: httpx.Response, at: Attempt) -> RunResult:
        """Drive an external engine: the start response names a job; poll it to an end state."""
        job_id = _pointer(started.json(), poll.job_id_pointer)
        url = poll.status_url.replace("{job_id}", str(job_id))
        while True:
            await asyncio.sleep(poll.interval_seconds)
            response = await self.http.get(url, headers=self._headers(work, at))
            if response.status_code >= 400:
                continue  # a transient error of the engine; the deadline bounds the wait
            state = _pointer(response.json(), poll.status_pointer)
            if state in poll.success_values:
                return RunResult("succeeded", {"job_id": job_id, "state": state, **_body_result(response)})
            if state in poll.failure_values:
                return RunResult(
                    "failed",
                    {"job_id": job_id, "state": state, **_body_result(response)},
                    f"job ended {state}",
                )

    async def _kafka(self, work: KafkaWork, at: Attempt) -> RunResult:
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
