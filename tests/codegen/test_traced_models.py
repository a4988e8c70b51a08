"""The shared test models of ``tests/models.py`` traced by the torch frontend and compiled:
native against the interpreter (helpers.RTOL) and against torch itself."""

from __future__ import annotations

import models
import numpy as np
import pytest
import torch

import mcir

from .helpers import build, check_native


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_traced_model_runs_natively(tmp_path, name):
    model, inputs = models.build(name)
    g = mcir.trace(model, inputs)
    arrays = [t.numpy() for t in inputs]
    (native,) = check_native(g, tmp_path, *arrays)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    assert np.abs(native - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(models.BENCHMARKS))
def test_traced_benchmark_model_matches_torch(tmp_path, name):
    model, inputs = models.build(name, benchmark=True)
    lib = build(mcir.trace(model, inputs), tmp_path)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    (native,) = lib(*[t.numpy() for t in inputs])
    assert np.abs(native - ref).max() <= 1e-4 * np.abs(ref).max()
