"""Shared pytest configuration: deterministic seeds, hypothesis settings, shared fixtures.

``tests/`` is put on ``sys.path`` so every test module can ``import models`` (the shared
torch models of ``tests/models.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))  # for `examples.digits`

settings.register_profile("mcir", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)
settings.load_profile("mcir")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def digits():
    """The bundled digits MLP, trained once per session (~3 s), with its data and float graph."""
    import torch

    import mcir
    from examples.digits.model import load_data, train

    model, accuracy = train()
    x_train, y_train, x_test, y_test = load_data()
    graph = mcir.trace(model, (torch.zeros(1, 64),))
    batch = mcir.trace(model, (torch.zeros(len(x_test), 64),))  # the whole test set in one call
    calibration = [(x_train[i : i + len(x_test)],) for i in range(0, len(x_train) - len(x_test) + 1, len(x_test))]
    return {
        "model": model,
        "accuracy": accuracy,
        "graph": graph,
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "y_test": y_test,
        "batch_graph": batch,
        "batch_calibration": calibration,
    }
