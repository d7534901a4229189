"""Process logging: JSON lines off a terminal with bound ids, and the chatty libraries quiet."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from streams.logs import NOISY, bound, configure
from streams.settings import Settings


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in NOISY}
    yield
    root.handlers, root.level = handlers, level
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def test_json_lines_carry_bound_and_extra_ids() -> None:
    out = io.StringIO()  # not a terminal: "auto" means JSON
    configure(Settings(log_level="info"), out)
    with bound(correlation_id="req-1", task_id="acme/t1"):
        logging.getLogger("streams.test").info("fired %d", 3, extra={"execution_id": "e-9"})
    record = orjson.loads(out.getvalue().splitlines()[-1])
    assert record["event"] == "fired 3"
    assert record["level"] == "info" and record["logger"] == "streams.test"
    assert (record["correlation_id"], record["task_id"], record["execution_id"]) == ("req-1", "acme/t1", "e-9")
    assert record["timestamp"].endswith("Z")


def test_http_and_kafka_clients_are_quiet_unless_debug() -> None:
    out = io.StringIO()
    configure(Settings(log_level="info", log_format="text"), out)
    logging.getLogger("aiohttp.client").info("GET http://target/ 200")
    logging.getLogger("aiokafka.consumer").info("fetched")
    logging.getLogger("streams.executor").info("ours")
    logging.getLogger("aiohttp.client").warning("connection reset")
    text = out.getvalue()
    assert "GET http://target/" not in text and "fetched" not in text
    assert "ours" in text and "connection reset" in text
    assert not text.lstrip().startswith("{")

    out = io.StringIO()
    configure(Settings(log_level="debug", log_format="text"), out)
    logging.getLogger("aiohttp.client").debug("GET http://target/ 200")
    assert "GET http://target/" in out.getvalue()
