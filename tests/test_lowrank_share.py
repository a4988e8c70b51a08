"""lowrank and share: fewer parameters and bytes, with the stated error bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mcir
from mcir.pass_manager import GraphStats


def _lowrank_model(rank: int = 16, noise: float = 0.001) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    with torch.no_grad():  # a weight of rank 16 plus a little noise
        a, b = torch.randn(256, rank), torch.randn(rank, 256)
        model[0].weight.copy_(a @ b / 16 + noise * torch.randn(256, 256))
    return model.eval()


def test_lowrank_by_energy_shrinks_params_and_macs_with_small_error():
    model = _lowrank_model()
    x = torch.randn(4, 256)
    g = mcir.trace(model, (x,))
    low = mcir.run_passes(g, "lowrank(energy=0.999)", sample_inputs=[(x.numpy(),)])
    before, after = GraphStats.of(g), GraphStats.of(low)
    assert after.params < 0.3 * before.params and after.macs < 0.3 * before.macs
    kinds = [op.name for op in low.compute_ops()]
    assert kinds == ["linear", "linear", "relu", "linear"]  # the 256x10 classifier is not worth factorising
    ref, got = mcir.interpret(g, x.numpy())[0], mcir.interpret(low, x.numpy())[0]
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()
    assert any("would not shrink" in w for w in low.meta["report"].warnings)


def test_lowrank_at_the_weights_true_rank_is_exact_up_to_rounding():
    model = _lowrank_model(rank=16, noise=0.0)
    x = torch.randn(2, 256)
    g = mcir.trace(model, (x,))
    low = mcir.run_passes(g, "lowrank(rank=16)")
    ref, got = mcir.interpret(g, x.numpy())[0], mcir.interpret(low, x.numpy())[0]
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())


def test_share_merges_identical_and_near_identical_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    with torch.no_grad():
        model[2].weight.copy_(model[0].weight)
        model[4].weight.copy_(model[0].weight * (1 + 1e-4))
    x = torch.randn(1, 64)
    g = mcir.trace(model.eval(), (x,))
    exact = mcir.run_passes(g, "share")
    assert GraphStats.of(exact).params == GraphStats.of(g).params - 64 * 64
    np.testing.assert_array_equal(mcir.interpret(exact, x.numpy())[0], mcir.interpret(g, x.numpy())[0])
    loose = mcir.run_passes(g, "share(tolerance=0.001)")
    assert GraphStats.of(loose).params == GraphStats.of(g).params - 2 * 64 * 64


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("lowrank(rank=-1)", "rank=-1 must be >= 0"),
        ("lowrank(energy=1.5)", "energy=1.5 must be in"),
        ("share(tolerance=2)", "tolerance=2.0 must be in"),
    ],
)
def test_bad_options(pipeline, message):
    g = mcir.trace(_lowrank_model(), (torch.zeros(1, 256),))
    with pytest.raises(mcir.ParseError, match=message):
        mcir.run_passes(g, pipeline)
