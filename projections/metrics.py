"""Metrics of the projector process: its lag behind ``task-events``, on ``SCHED_METRICS_PORT``.

Kept apart from the projector itself: the lag is read from the broker (the group's committed
offsets against the end offsets), so it is right whatever the projector's batching does.
"""

from __future__ import annotations

from projections.settings import ProjectionSettings
from streams import metrics


async def run(settings: ProjectionSettings) -> None:
    """Serve ``/metrics`` (when ``SCHED_METRICS_PORT`` is set) and keep the projector's lag,
    ``scheduler_consumer_lag_messages{topic=<task-events>, group=<projector>}``, until cancelled."""
    metrics.serve(settings)
    await metrics.measure_lag(settings, {settings.group_id: [settings.events_topic]})
