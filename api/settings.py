"""Settings of the API process, from ``SCHED_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from schemas.commands import MAX_BACKFILL_SLOTS
from streams.settings import Settings


class TenantQuota(BaseModel):
    """One tenant's quotas, overriding the deployment's defaults field by field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tasks: int | None = Field(default=None, ge=0)
    """Tasks the tenant may have (not deleted); None: ``SCHED_QUOTA_MAX_TASKS``."""
    triggers_per_minute: int | None = Field(default=None, ge=0)
    """Manual runs (``POST /v1/tasks/{id}/trigger``) a minute; None: ``SCHED_QUOTA_TRIGGERS_PER_MINUTE``."""


class ApiSettings(Settings):
    """The deployment's settings (Kafka, Mongo, topic prefix) plus what only the API needs.

    Each field is ``SCHED_<NAME>`` in the environment. At least one way of verifying tokens
    must be configured: an HS256 secret, an RS256 public key file, or an RS256 JWKS file.
    """

    jwt_hs256_secret: SecretStr | None = None
    """Shared secret for HS256 tokens (at least 32 bytes); unset means HS256 tokens are refused."""
    jwt_public_key_file: Path | None = None
    """PEM file with the RS256 public key (used for tokens without a ``kid`` found in the JWKS)."""
    jwt_jwks_file: Path | None = None
    """JWKS JSON file with RS256 public keys, looked up by the token's ``kid``."""
    jwt_audience: str | None = None
    """When set, tokens must carry this ``aud``."""
    jwt_issuer: str | None = None
    """When set, tokens must carry this ``iss``."""
    jwt_leeway_seconds: float = Field(default=5.0, ge=0, le=300)
    """Clock skew tolerated on ``exp`` and ``nbf``."""

    api_host: str = "127.0.0.1"
    """Interface ``python -m api`` listens on."""
    api_port: int = Field(default=8000, ge=0, le=65535)
    """Port ``python -m api`` listens on."""
    api_tls_cert_file: Path | None = None
    """PEM certificate (chain) the API serves HTTPS with; with ``api_tls_key_file``. Unset: plain
    HTTP (behind a TLS-terminating proxy, or on a trusted network only)."""
    api_tls_key_file: Path | None = None
    """PEM private key of ``api_tls_cert_file``."""
    api_tls_key_password: SecretStr | None = None
    """Password of ``api_tls_key_file`` when it is encrypted."""
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    """Largest request body accepted; larger ones get 413."""

    max_requests_in_progress: int = Field(default=256, ge=1)
    """Requests past this many in progress at once are answered 503 with ``Retry-After`` at
    once rather than queued (health, readiness, metrics and live streams are not counted)."""

    kafka_send_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """A command not acknowledged by Kafka within this time is answered 503 (not accepted)."""
    kafka_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """Longest wait for the producer (or a readiness probe) to reach the brokers."""
    mongo_timeout_ms: int = Field(default=2000, ge=100, le=60_000)
    """Server selection and socket timeout of view reads; past it a read is answered 503."""
    retry_after_seconds: int = Field(default=5, ge=1, le=3600)
    """``Retry-After`` sent with 503 answers."""
    max_wait_seconds: float = Field(default=30.0, gt=0, le=300)
    """Upper bound of the ``?wait=`` parameter of commands."""
    backfill_max_slots: int = Field(default=MAX_BACKFILL_SLOTS, ge=1, le=MAX_BACKFILL_SLOTS)
    """Most slots a backfill asked through the API may hold (a 422 naming ``to`` beyond it); the
    task processor refuses more than ``MAX_BACKFILL_SLOTS`` (10,000) whoever asks."""
    wait_poll_seconds: float = Field(default=0.05, gt=0, le=5)
    """How often a waiting command looks at the views."""
    views_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    """How long the names of the live view collections are cached (a replay switches them)."""
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    """Interval of the comment lines that keep an idle event stream open."""
    sse_max_streams: int = Field(default=100, ge=1)
    """Event streams open at once (each holds a Kafka consumer); beyond it 503."""
    sse_max_seconds: float = Field(default=3600.0, gt=0)
    """An event stream is closed after this long; clients reconnect."""

    idempotency_key_ttl_seconds: float = Field(default=86_400.0, ge=60)
    """How long an ``Idempotency-Key`` remembers the request it was first used with (a reuse with
    another request is refused with 422 meanwhile); after it the key may be used afresh."""

    quota_max_tasks: int = Field(default=10_000, ge=0)
    """Tasks (not deleted) one tenant may have; a create beyond it is answered 429. Counted from the
    statistics view, one document per partition: ``SCHED_PARTITIONS`` must be the deployment's."""
    quota_triggers_per_minute: int = Field(default=600, ge=0)
    """Manual runs one tenant may trigger per calendar minute, over all API processes; beyond it 429."""
    quota_max_calendars: int = Field(default=500, ge=0)
    """Calendars (not deleted) one tenant may have; creating one more is answered 429. Every
    worker holds every calendar in memory, so this bounds what a tenant adds there."""
    quota_overrides: dict[str, TenantQuota] = Field(default_factory=dict)
    """Per-tenant exceptions, as JSON: ``{"acme": {"max_tasks": 50000}}``."""
    quota_pending_seconds: float = Field(default=300.0, gt=0, le=86_400)
    """How long an accepted create counts as pending while the tasks view does not show it yet;
    a projector stalled for longer lets creates made before the stall be counted once fewer."""

    limits_fail_open: bool = True
    """With MongoDB unreachable, a create is still accepted (the views catch up from the log),
    without the quota and ``Idempotency-Key`` checks; False answers 503 instead."""

    report_max_span_days: int = Field(default=400, ge=1, le=3660)
    """Longest range ``[from, to)`` of a report (``GET /v1/reports``, ``GET /v1/stats``); a longer
    one is a 422 naming ``to``."""
    report_max_executions: int = Field(default=100_000, ge=1)
    """Most execution documents one report reads (each costs a read and two integers of memory
    while the report is computed); a range holding more is a 422 asking for a narrower one.
    Measured on FerretDB v1 (SQLite, 2 busy cores): 4,000-8,000 documents a second, so about
    15-25 s at this bound; MongoDB reads the range from its index, much faster."""

    metrics_path: str = "/metrics"
    """Where Prometheus metrics are served; empty: not served at all."""
    metrics_token: SecretStr | None = None
    """When set, ``/metrics`` answers only ``Authorization: Bearer <this token>`` (Prometheus:
    ``authorization: {credentials_file: ...}``); unset, it is open, like ``/healthz``."""

    @field_validator("metrics_path")
    @classmethod
    def _metrics_path(cls, value: str) -> str:
        if value and (not value.startswith("/") or value.startswith("/v1/") or value in ("/healthz", "/readyz")):
            raise ValueError("metrics_path must be empty or an absolute path outside /v1/, /healthz and /readyz")
        return value

    def quota(self, tenant: str) -> tuple[int, int]:
        """``(max_tasks, triggers_per_minute)`` of ``tenant``, its overrides applied."""
        override = self.quota_overrides.get(tenant, TenantQuota())
        max_tasks = self.quota_max_tasks if override.max_tasks is None else override.max_tasks
        triggers = override.triggers_per_minute
        if triggers is None:
            triggers = self.quota_triggers_per_minute
        return max_tasks, triggers

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        if (self.api_tls_cert_file is None) != (self.api_tls_key_file is None):
            raise ValueError("api_tls_cert_file and api_tls_key_file must be set together")
        for path in (self.api_tls_cert_file, self.api_tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        return self

    @model_validator(mode="after")
    def _sane_secret(self) -> ApiSettings:
        secret = self.jwt_hs256_secret
        if secret is not None and len(secret.get_secret_value().encode()) < 32:
            raise ValueError("jwt_hs256_secret must be at least 32 bytes (RFC 7518 section 3.2)")
        return self

    @property
    def commands_topic(self) -> str:
        """The deployment's ``commands`` topic."""
        return self.topics.commands

    @property
    def events_topic(self) -> str:
        """The deployment's ``task-events`` topic."""
        return self.topics.task_events
