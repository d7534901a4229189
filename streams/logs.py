"""Logging of every process: structlog over the standard library, quiet by default.

- One line per record, JSON when stderr is not a terminal (``SCHED_LOG_FORMAT``), with the
  time (UTC), level, logger, message and any ``extra=`` fields and bound context
  (``task_id``, ``execution_id``, ``correlation_id``; see :func:`bound`).
- The libraries that log per request or per fetch (aiohttp, aiokafka, Faust, mode, httpx)
  are held at WARNING unless ``SCHED_LOG_LEVEL=debug``: at INFO they wrote a line per HTTP
  call of the executor, thousands a minute under load.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import orjson
import structlog
from structlog.typing import Processor

from streams.settings import Settings

NOISY = ("aiohttp", "aiokafka", "faust", "mode", "httpx", "httpcore", "kafka")
"""Loggers kept at WARNING (or above the process's level) unless the level is ``debug``."""

bound = structlog.contextvars.bound_contextvars
"""``with bound(task_id=..., correlation_id=...):`` adds these fields to every record logged
inside (this task, or coroutine, only)."""


def _dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def configure(settings: Settings, stream: IO[str] | None = None) -> None:
    """Send every record of the process to ``stream`` (stderr) as configured by ``settings``.

    Replaces the root logger's handlers, so it is also right after a library (Faust's worker)
    set up its own.
    """
    name = settings.log_level.upper()
    level = logging.getLevelNamesMapping().get("WARNING" if name == "WARN" else name, logging.INFO)
    out = stream if stream is not None else sys.stderr
    as_json = settings.log_format == "json" or (settings.log_format == "auto" and not out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps) if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
