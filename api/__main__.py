"""Run the API: ``python -m api`` (settings from ``SCHED_*``; see :class:`api.settings.ApiSettings`)."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from api.settings import ApiSettings
from streams.logs import configure as configure_logs


def main() -> None:
    """Serve the API with uvicorn on ``SCHED_API_HOST``:``SCHED_API_PORT``, over HTTPS when
    ``SCHED_API_TLS_CERT_FILE`` and ``SCHED_API_TLS_KEY_FILE`` are set."""
    settings = ApiSettings()
    configure_logs(settings)
    tls = settings.api_tls_cert_file is not None
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # records go to the root logger, formatted by streams/logs.py
        ssl_certfile=settings.api_tls_cert_file if tls else None,
        ssl_keyfile=settings.api_tls_key_file if tls else None,
        ssl_keyfile_password=(
            settings.api_tls_key_password.get_secret_value() if settings.api_tls_key_password else None
        ),
        proxy_headers=True,
        # Event streams never end on their own: give them a few seconds, then close them.
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
