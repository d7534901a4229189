"""Hypothesis profiles for the pure-core tests.

``HYPOTHESIS_PROFILE=ci`` makes runs reproducible (derandomized, no example database);
``HYPOTHESIS_PROFILE=thorough`` runs many more examples for a local soak.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("thorough", max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
