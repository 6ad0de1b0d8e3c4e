"""Shared pytest configuration: Hypothesis profiles.

* ``ci`` (default): few examples, no deadline - fast enough for every CI run.
* ``long``: many examples, for a by-hand soak: ``HYPOTHESIS_PROFILE=long pytest tests/codec``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
