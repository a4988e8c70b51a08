"""fold on whole models: exact within float rounding, BatchNorm gone, fewer ops."""

from __future__ import annotations

import models
import numpy as np
import pytest

import mcir
from mcir.pass_manager import GraphStats


@pytest.mark.parametrize("name", ["mlp", "cnn", "encoder"])
def test_fold_keeps_outputs_within_1e_6_relative(name):
    model, inputs = models.build(name)
    g = mcir.trace(model, inputs)
    folded = mcir.run_passes(g, "fold")
    xs = [t.numpy() for t in inputs]
    for ref, got in zip(mcir.interpret(g, *xs), mcir.interpret(folded, *xs)):
        ref64 = np.asarray(ref, np.float64)
        assert np.abs(np.asarray(got, np.float64) - ref64).max() <= 1e-6 * np.abs(ref64).max()
    assert GraphStats.of(folded).ops <= GraphStats.of(g).ops


def test_fold_removes_every_batch_norm_of_the_cnn():
    model, inputs = models.build("cnn")
    g = mcir.trace(model, inputs)
    assert any(op.name == "batch_norm" for op in g.compute_ops())
    folded = mcir.run_passes(g, "fold")
    assert not any(op.name == "batch_norm" for op in folded.compute_ops())
    # folding BN into its conv costs no extra parameters: the conv gains (or updates) a bias
    assert GraphStats.of(folded).params < GraphStats.of(g).params


def test_fold_shrinks_the_encoder():
    model, inputs = models.build("encoder")
    g = mcir.trace(model, inputs)
    folded = mcir.run_passes(g, "fold")
    before, after = GraphStats.of(g), GraphStats.of(folded)
    assert after.ops < before.ops
    assert not any(op.name == "dropout" for op in folded.compute_ops())
