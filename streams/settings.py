"""Configuration of the worker, executors and API, from ``SCHED_*`` environment variables."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.secrets import Keyring, load_keyring
from schemas.topics import Topics


class Settings(BaseSettings):
    """One settings object for every process; each field is ``SCHED_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="SCHED_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma separated."""
    mongo_url: str = "mongodb://127.0.0.1:27017/"
    """MongoDB (or FerretDB) connection string for the views."""
    mongo_database: str = "scheduler"
    """Database holding the views."""
    topic_prefix: str = ""
    """Prefix for every topic, consumer group and the Faust app id (isolates deployments and tests)."""
    app_id: str = "scheduler"
    """Faust application id: workers with the same id share the task partitions."""
    partitions: int = Field(default=8, ge=1)
    """Partitions of the commands topic and the state table; the unit of ownership."""
    data_dir: Path = Path(".stack/worker")
    """Where the worker keeps its local state store (RocksDB)."""
    worker_id: str = Field(default_factory=socket.gethostname)
    """Name of this worker in execution records."""
    store: str = "rocksdb://"
    """Faust table store URL (``rocksdb://`` persists across restarts; ``memory://`` for tests)."""

    rocksdb_write_buffer_mb: int = Field(default=8, ge=1)
    """Size of one RocksDB memtable of the state table, per owned partition (two at most)."""
    rocksdb_block_cache_mb: int = Field(default=16, ge=1)
    """RocksDB block cache of the state table, per owned partition. Faust's defaults (3 x 64 MB
    memtables and a 2 GB cache, per partition) let a worker's memory grow with its tasks."""

    session_timeout_seconds: float = Field(default=10.0, ge=3)
    """A worker that stops heartbeating for this long loses its partitions to the others."""
    metadata_max_age_seconds: float | None = Field(default=None, ge=1)
    """How often every Kafka client refreshes the cluster's metadata; None: aiokafka's 5 minutes.
    A group's leader assigns only the partitions its metadata shows, so a topic created after
    the group formed is assigned at the next refresh; the deployment's topics are created, and
    served, before any worker starts (streams/admin.py). A refresh used to stall a busy worker
    for about 300 ms (clients that asked for every topic's metadata); since
    streams/connections.track_topics it does not (BENCHMARKS.md, stop 20)."""
    fetch_max_wait_ms: int = Field(default=20, ge=1, le=1500)
    """Longest broker long-poll of the task processor's consumer (see streams/faust_consumer.py)."""
    producer_linger_ms: int = Field(default=5, ge=0)
    """How long the processor's producer waits to batch messages; fewer, larger requests."""
    state_cache_size: int = Field(default=20_000, ge=0)
    """Decoded task states kept in memory (the table stays the source of truth). Each costs
    about 4 KB (a new task's) to 10 KB (with its 64 recent command ids); a miss costs about
    0.15 ms. Keep it above the number of tasks that fire within a few periods of each other:
    tasks touched in a cycle larger than the cache miss every time."""
    gc_thresholds: tuple[int, int, int] = (50_000, 20, 100)
    """The garbage collector's thresholds (``gc.set_threshold``); see streams/runtime.py.
    CPython's (700, 10, 10) paused the worker for 100-280 ms every few seconds at 1,000
    fires/s."""
    switch_interval_seconds: float = Field(default=0.0005, gt=0, le=0.1)
    """The GIL's switch interval (``sys.setswitchinterval``); see streams/runtime.py. At
    CPython's 5 ms, Faust's consumer thread held the event loop back for milliseconds at a time."""
    tick_resend_seconds: float = Field(default=5.0, gt=0)
    """A partition's tick not applied after this long is sent again (it was lost, or the
    partition is that far behind); while one is on its way, none more is sent."""
    firing_tick_seconds: float = Field(default=0.05, gt=0)
    """Longest sleep of the firing loop when nothing is due sooner."""
    batch_size: int = Field(default=500, ge=1)
    """Most commands applied in one batch by the task processor."""
    batch_window_seconds: float = Field(default=0.005, ge=0)
    """How long the processor waits to fill a batch."""

    executor_enabled: bool = True
    """Run the executor service in the worker process."""
    executor_concurrency: int = Field(default=2000, ge=1)
    """Executions in flight at once per executor process."""
    executor_weights: tuple[int, int, int] = (6, 3, 1)
    """Share of free execution slots given to high, normal and low priority when all are waiting."""
    executor_report_window_seconds: float = Field(default=0.005, ge=0, le=1)
    """How long an executor holds an outcome report to batch it with others for the same partition."""
    executor_report_batch_size: int = Field(default=200, ge=1, le=1000)
    """Most reports in one batch; a full batch leaves at once."""
    executor_commit_interval_seconds: float = Field(default=0.2, gt=0, le=10)
    """How often an executor commits its dispatch offsets; work finished since the last commit
    is run again by the next owner after a crash."""
    executor_started_report_after_seconds: float = 0.5
    """Report an execution as running only once it has run this long (0: always, at once)."""
    handler_modules: list[str] = ["streams.handlers"]
    """Modules imported at start-up to register Python handlers."""
    allowed_handlers: list[str] | None = None
    """Handler names executions may call (None: every registered handler)."""
    kafka_work_topics: list[str] = []
    """Topics Kafka work may produce to: patterns where ``*`` matches within a dot-separated part,
    ``**`` across parts, ``?`` one character, and ``{tenant}`` (a whole part) is the task's tenant,
    e.g. ``["jobs.{tenant}.*"]``. Empty (the default): Kafka work is refused. This deployment's
    own topics, Faust's and Kafka's internal ones are refused even if they match."""
    http_allow_networks: list[IPvAnyNetwork] = []
    """Networks HTTP work may reach although they are loopback, link-local, private or otherwise
    internal (CIDR, e.g. ``["10.20.0.0/16"]``). Empty (the default): only public addresses."""
    shell_commands: list[str] = []
    """Programs shell work may run: absolute paths or patterns (``*`` within a directory, ``**``
    across directories, ``?`` one character), e.g. ``["/usr/bin/rsync", "/opt/jobs/**"]``. A
    work's ``argv[0]`` is resolved (``PATH``, symlinks, ``..``) to its real file first, and
    that is what must match. Empty (the default): shell work is refused."""
    shell_env: list[str] = []
    """Environment variable names shell work may set (exact names, or patterns with ``*``,
    e.g. ``["REPORT_*"]``). ``PATH``, ``HOME``, ``SCHED_*`` and loader variables (``LD_*``,
    ``DYLD_*``, ``BASH_ENV``, ...) are refused even if they match."""
    shell_cwd: list[str] = []
    """Directories (and everything under them) shell work may use as its working directory.
    Empty: only the default, a fresh empty directory per attempt."""
    shell_path: str = "/usr/local/bin:/usr/bin:/bin"
    """``PATH`` of shell work's processes, and where a bare program name in ``argv[0]`` is looked up."""
    shell_concurrency: int = Field(default=16, ge=1, le=10_000)
    """Shell processes an executor runs at once; further shell attempts wait (within their
    deadline). ``executor_concurrency`` is sized for HTTP calls, far too many processes."""
    shell_kill_grace_seconds: float = Field(default=5.0, ge=0, le=300)
    """On cancel, timeout or shutdown the work's process group gets SIGTERM, then SIGKILL after this long."""
    http_response_limit_bytes: int = Field(default=1024 * 1024, ge=4096)
    """Most bytes of an HTTP work response read (to find a job id or status); the rest is not
    read, and the execution's result keeps only the first few kilobytes."""

    trigger_dedup_seconds: float = Field(default=86_400.0, ge=0, le=30 * 86_400)
    """How long the trigger router remembers a CloudEvent's (tenant, source, id), so the same
    event delivered again within it runs nothing more (0: only the task processor's memory of a
    task's last 64 trigger ids)."""
    trigger_dedup_max_events: int = Field(default=200_000, ge=1)
    """Most events the trigger router remembers (oldest forgotten first; about 300 bytes each)."""
    trigger_max_event_bytes: int = Field(default=64 * 1024, ge=1024, le=512 * 1024)
    """Largest CloudEvent the trigger router accepts (and ``POST /v1/events``); larger ones are
    dead-lettered (answered 413)."""

    secret_keys: dict[str, SecretStr] = Field(default_factory=dict)
    """Keys that encrypt sensitive task fields (auth headers, sensitive params) at rest: a JSON
    object of key id -> base64 of 32 random bytes (``scheduler secrets new-key``). The
    API and the executors need the same keys; without any, the API refuses sensitive values."""
    secret_keys_file: Path | None = None
    """A JSON file with more keys in the same form (merged over ``secret_keys``)."""
    secret_active_key: str | None = None
    """Id of the key that encrypts new values (needed when several keys are configured); every
    configured key decrypts, which is how keys rotate."""

    secret_accept_clear_headers: bool = False
    """Let executors send ``Authorization``-like headers held in clear (tasks created before
    secrets were encrypted, or by a producer that does not encrypt). Off: such attempts fail
    saying so. Only for a migration: re-submit those tasks, then turn it off."""

    log_level: str = "info"
    """Level of this process's logs; ``debug`` also lets the Kafka, Faust and HTTP client
    libraries log below WARNING (they log every request or fetch otherwise)."""
    log_format: Literal["auto", "json", "text"] = "auto"
    """``json``: one JSON object a line (for log collectors); ``text``: plain lines; ``auto``:
    text on a terminal, JSON otherwise."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Prometheus endpoint of a worker, executor or projector process (``/metrics``
    over HTTP). Unset (the default): none, so several processes on one host do not collide;
    set it in deployments that are scraped. The API serves its own at ``SCHED_METRICS_PATH``."""
    metrics_host: str = "0.0.0.0"  # nosec B104  # a scrape target must be reachable by Prometheus
    """Interface the metrics endpoint listens on."""
    lag_interval_seconds: float = Field(default=15.0, gt=0)
    """How often a process measures its consumer groups' lag (end offsets minus committed)."""

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How every Kafka client (worker, executor, projector, API, CLI) talks to the brokers."""
    kafka_ssl_cafile: Path | None = None
    """PEM file of the CA that signed the brokers' certificates (unset: the system's CAs)."""
    kafka_ssl_certfile: Path | None = None
    """PEM client certificate, for brokers that require mutual TLS."""
    kafka_ssl_keyfile: Path | None = None
    """PEM key of ``kafka_ssl_certfile``."""
    kafka_ssl_check_hostname: bool = True
    """Check that a broker's certificate names the host connected to."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    """SASL mechanism, with ``SASL_PLAINTEXT`` or ``SASL_SSL``."""
    kafka_sasl_username: str | None = None
    """SASL user name."""
    kafka_sasl_password: SecretStr | None = None
    """SASL password."""

    mongo_tls: bool = False
    """Connect to MongoDB over TLS (as ``tls=true`` in the URL would)."""
    mongo_tls_ca_file: Path | None = None
    """PEM file of the CA of the MongoDB servers (unset: the system's CAs)."""
    mongo_tls_certificate_key_file: Path | None = None
    """PEM file with a client certificate and its key, for servers that require mutual TLS."""

    @field_validator("kafka_work_topics")
    @classmethod
    def _topic_patterns(cls, value: list[str]) -> list[str]:
        # Imported here: streams.fence imports this module.
        from streams.fence import topic_pattern_problem

        problems = [p for p in map(topic_pattern_problem, value) if p is not None]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("shell_commands", "shell_cwd")
    @classmethod
    def _absolute_paths(cls, value: list[str]) -> list[str]:
        relative = [p for p in value if not p.startswith("/")]
        if relative:
            raise ValueError(f"must be absolute paths (starting with '/'): {', '.join(relative)}")
        return value

    @field_validator("shell_env")
    @classmethod
    def _env_names(cls, value: list[str]) -> list[str]:
        bad = [n for n in value if not re.fullmatch(r"[A-Za-z_*][A-Za-z0-9_*]*", n)]
        if bad:
            raise ValueError(f"must be variable names (letters, digits, '_', and '*' for any): {', '.join(bad)}")
        return value

    def secret_keyring(self) -> Keyring | None:
        """The keys for sensitive fields, or None when none are configured.

        Called once when the API or an executor starts. Not a validator of the settings: a
        validation error would print the input, keys included.

        :raises KeyConfigError: unreadable key file, bad keys, unknown active key id.
        """
        keys = {kid: key.get_secret_value() for kid, key in self.secret_keys.items()}
        return load_keyring(keys, self.secret_keys_file, self.secret_active_key)

    @property
    def topics(self) -> Topics:
        """The names of this deployment's topics."""
        return Topics(self.topic_prefix)


def topic_name(settings: Settings, name: str) -> str:
    """The full name of a topic (or consumer group) for this deployment."""
    return settings.topics.name(name)
