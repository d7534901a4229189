"""Hypothesis profiles and shared fixtures for the pure-core tests.

``HYPOTHESIS_PROFILE=ci`` makes runs reproducible (derandomized, no example database);
``HYPOTHESIS_PROFILE=thorough`` runs many more examples for a local soak.
"""

from __future__ import annotations

import os

import pytest
from croniter import croniter
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("thorough", max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def cron_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every cron expression croniter parses during the test, in order: tests count parses
    instead of timing them (a timed bound flakes on a busy machine)."""
    parses: list[str] = []
    expand = croniter.expand.__func__

    def counting(cls: type[croniter], /, expr_format: str, *args: object, **kwargs: object) -> object:
        parses.append(expr_format)
        return expand(cls, expr_format, *args, **kwargs)

    monkeypatch.setattr(croniter, "expand", classmethod(counting))
    return parses
