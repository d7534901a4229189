"""Registered Python handlers: work that runs in the executor process, looked up by name.

A handler is ``async def fn(params: dict, ctx: HandlerContext) -> Any``; what it returns is
the execution's result, what it raises is the failure. Register with ``@handler("name")``
in a module listed in ``SCHED_HANDLER_MODULES``; executions may only call names in
``SCHED_ALLOWED_HANDLERS`` when that list is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Handler = Callable[[dict[str, Any], "HandlerContext"], Awaitable[Any]]

_REGISTRY: dict[str, Handler] = {}


@dataclass(frozen=True)
class HandlerContext:
    """What a handler knows about the execution it runs."""

    task_id: str
    execution_id: str
    attempt: int
    tenant: str


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` under ``name`` (a name can be registered once)."""

    def register(fn: Handler) -> Handler:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"handler {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return register


def lookup(name: str, allowed: list[str] | None) -> Handler:
    """The handler called ``name``; KeyError naming the problem when it may not run."""
    if allowed is not None and name not in allowed:
        raise KeyError(f"handler {name!r} is not in the allow-list")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no handler named {name!r} is registered") from None


def registered() -> list[str]:
    """Names of the registered handlers."""
    return sorted(_REGISTRY)


# Built-in handlers: useful for smoke tests, benchmarks and the demo.


@handler("noop")
async def _noop(params: dict[str, Any], ctx: HandlerContext) -> Any:
    return None


@handler("echo")
async def _echo(params: dict[str, Any], ctx: HandlerContext) -> Any:
    return {"params": params, "execution_id": ctx.execution_id, "attempt": ctx.attempt}


@handler("sleep")
async def _sleep(params: dict[str, Any], ctx: HandlerContext) -> Any:
    await asyncio.sleep(float(params.get("seconds", 1.0)))
    return {"slept": params.get("seconds", 1.0)}


@handler("fail")
async def _fail(params: dict[str, Any], ctx: HandlerContext) -> Any:
    raise RuntimeError(str(params.get("message", "failed on purpose")))
