"""The Grafana dashboard and the Prometheus alert rules in ``deploy/`` name only exported series."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY, CollectorRegistry

import projections.metrics  # noqa: F401  # the projector's metrics are registered on import
import streams.metrics
import streams.notifier  # the notifier's and the trigger router's likewise
import streams.triggers  # noqa: F401
from api.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_SERIES = {"up"}
"""Series Prometheus makes itself for every scrape target."""
SERIES = re.compile(r"\b(scheduler_[a-z0-9_]+|up)\b")


def exported(*registries: CollectorRegistry) -> set[str]:
    """Every series name the registries expose (a counter's ``_total``, a histogram's ``_bucket``...)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "scheduler.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def named(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in SERIES.findall(expr)}


def test_every_series_the_dashboard_and_alerts_name_is_exported() -> None:
    available = exported(REGISTRY, Metrics().registry) | PROMETHEUS_SERIES
    used = named(dashboard_exprs()) | named([rule["expr"] for rule in alert_rules()])
    assert used, "no series found: the patterns no longer match the files"
    assert used <= available, f"named but not exported: {sorted(used - available)}"


def test_the_dashboard_and_alerts_cover_what_operators_need() -> None:
    used = named(dashboard_exprs())
    for series in (
        "scheduler_fire_dispatch_lateness_seconds_bucket",
        "scheduler_fire_start_lateness_seconds_bucket",
        "scheduler_consumer_lag_messages",
        "scheduler_executions_in_flight",
        "scheduler_execution_outcomes_total",
        "scheduler_api_request_duration_seconds_bucket",
        "scheduler_api_requests_total",
        "scheduler_trigger_events_total",
        "scheduler_notifications_total",
        "scheduler_notification_latency_seconds_bucket",
    ):
        assert series in used, series
    alerts = {rule["alert"]: rule for rule in alert_rules()}
    assert {
        "SchedulerWorkerDown",
        "SchedulerConsumerLagGrowing",
        "SchedulerFiresLate",
        "SchedulerFailureRate",
        "SchedulerProcessDown",
        "SchedulerNotificationsDeadLettered",
    } <= set(alerts)
    for rule in alerts.values():
        assert rule["expr"].strip() and rule["for"] and rule["annotations"]["summary"]
