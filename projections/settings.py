"""Settings of the projection processes, from ``SCHED_*`` environment variables."""

from __future__ import annotations

from pydantic import Field

from streams.settings import Settings


class ProjectionSettings(Settings):
    """The deployment's settings (``streams.settings.Settings``) plus the projector's own."""

    projector_group: str = "projector"
    """Consumer group of the projector (after the prefix)."""
    retention_days: float = Field(default=90.0, gt=0)
    """Finished executions are deleted this many days after they finished."""
    projector_batch_max: int = Field(default=1000, ge=1, le=100_000)
    """Most events the projector folds in one batch: more events a batch means fewer writes
    under load (each touched document is written once per batch)."""
    projector_cache_documents: int = Field(default=20_000, ge=0)
    """Documents per view the projector holds in memory (least recently used go, and are read
    again by ``_id`` when touched): the hot set of tasks and recent executions."""
    sweep_interval_seconds: float = Field(default=3600.0, gt=0)
    """How often the retention sweeper runs where TTL indexes do not work (FerretDB)."""

    @property
    def events_topic(self) -> str:
        """The ``task-events`` topic of the deployment."""
        return self.topics.task_events

    @property
    def group_id(self) -> str:
        """The projector's consumer group."""
        return self.topics.name(self.projector_group)
