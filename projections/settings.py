"""Settings of the projection processes, from ``SCHED_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProjectionSettings(BaseSettings):
    """Each field is ``SCHED_<NAME>`` in the environment; shared names mean what they mean elsewhere."""

    model_config = SettingsConfigDict(env_prefix="SCHED_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma separated."""
    mongo_url: str = "mongodb://127.0.0.1:27017/"
    """MongoDB (or FerretDB) connection string for the views."""
    mongo_database: str = "scheduler"
    """Database holding the views."""
    topic_prefix: str = ""
    """Prefix of every topic and consumer group of the deployment."""
    projector_group: str = "projector"
    """Consumer group of the projector (after the prefix)."""
    retention_days: float = Field(default=90.0, gt=0)
    """Finished executions are deleted this many days after they finished."""
    sweep_interval_seconds: float = Field(default=3600.0, gt=0)
    """How often the retention sweeper runs where TTL indexes do not work (FerretDB)."""
    log_level: str = "info"

    @property
    def events_topic(self) -> str:
        """The ``task-events`` topic of the deployment."""
        return f"{self.topic_prefix}task-events"

    @property
    def group_id(self) -> str:
        """The projector's consumer group."""
        return f"{self.topic_prefix}{self.projector_group}"
