"""Fixtures of the dashboard tests: the API tests' session stack (worker, projector) and a real
uvicorn server (``python -m api``) a browser can reach, reused from ``tests/api``."""

from __future__ import annotations

from tests.api.conftest import cold_api, keys, stack, warm
from tests.api.test_server import server

__all__ = ["cold_api", "keys", "server", "stack", "warm"]
