"""Shared pytest configuration: deterministic seeds and hypothesis settings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("mcir", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)
settings.load_profile("mcir")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
