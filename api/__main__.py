"""Run the API: ``python -m api`` (settings from ``SCHED_*``; see :class:`api.settings.ApiSettings`)."""

from __future__ import annotations

import logging

import uvicorn

from api.app import create_app
from api.settings import ApiSettings


def main() -> None:
    """Serve the API with uvicorn on ``SCHED_API_HOST``:``SCHED_API_PORT``."""
    settings = ApiSettings()
    logging.basicConfig(level=settings.log_level.upper())
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        # Event streams never end on their own: give them a few seconds, then close them.
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
