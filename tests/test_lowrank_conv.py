"""lowrank on convolutions: channel bottleneck (kxk to r, then 1x1) and spatial (kx1, then 1xk), and budget=.

At full rank both factorisations are exact up to float rounding (checked against the interpreter
of the unfactorised graph, 1e-4 of the output scale); at a rank that shrinks, the layer's bytes
fall and the error follows the kept energy; the byte guard keeps convs whose factors would not
shrink; budget= meets a whole-model byte target.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mcir


def conv_model(rank: int | None = None, stride: int = 1) -> nn.Module:
    """Two 3x3 convs of 32 channels; with ``rank``, the second conv's [32, 32*9] weight has that rank."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=stride, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * (8 // stride) ** 2, 4),
    )
    if rank is not None:
        with torch.no_grad():
            a, b = torch.randn(32, rank), torch.randn(rank, 32 * 9)
            model[2].weight.copy_((a @ b / 30).reshape(32, 32, 3, 3))
    return model.eval()


def convs(g: mcir.Graph) -> list[tuple[tuple[int, ...], dict]]:
    return [(op.operands[1].type.shape, dict(op.attrs)) for op in g.compute_ops() if op.name == "conv2d"]


def close(a: mcir.Graph, b: mcir.Graph, x: torch.Tensor, tol: float) -> None:
    ref, got = mcir.interpret(a, x.numpy())[0], mcir.interpret(b, x.numpy())[0]
    np.testing.assert_allclose(got, ref, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("stride", [1, 2])
def test_channel_bottleneck_at_the_weights_rank_is_exact(stride):
    model = conv_model(rank=4, stride=stride)
    x = torch.randn(1, 3, 8, 8)
    g = mcir.trace(model, (x,))
    low = mcir.run_passes(g, "lowrank(rank=4,skip='^0$|^5$')")  # only the second conv
    (w1, _), (w2, a2), (w3, a3) = convs(low)
    assert w1 == (32, 3, 3, 3)
    assert w2 == (4, 32, 3, 3) and a2["stride"] == (stride, stride) and a2["padding"] == (1, 1)
    assert w3 == (32, 4, 1, 1) and a3["stride"] == (1, 1) and a3["padding"] == (0, 0)
    close(g, low, x, 1e-4)
    assert mcir.stats(low).weight_bytes < mcir.stats(g).weight_bytes


def test_spatial_factorisation_at_the_weights_separable_rank_is_exact():
    model = conv_model()
    with torch.no_grad():  # W[o,i,y,x] = sum_r A[(i,y),r] B[r,(o,x)]: separable with rank 8
        a, b = torch.randn(32 * 3, 8), torch.randn(8, 32 * 3)
        model[2].weight.copy_((a @ b / 30).reshape(32, 3, 32, 3).permute(2, 0, 1, 3))
    x = torch.randn(1, 3, 8, 8)
    g = mcir.trace(model, (x,))
    low = mcir.run_passes(g, "lowrank(conv=spatial,rank=8,skip='^0$|^5$')")
    (_, _), (w2, a2), (w3, a3) = convs(low)
    assert w2 == (8, 32, 3, 1) and a2["padding"] == (1, 0)
    assert w3 == (32, 8, 1, 3) and a3["padding"] == (0, 1)
    close(g, low, x, 1e-4)
    assert mcir.stats(low).weight_bytes < mcir.stats(g).weight_bytes

    # full rank (min(Cin*kh, Cout*kw) = 96) has more parameters than the conv: never applied
    refused = mcir.run_passes(g, "lowrank(conv=spatial,rank=96,skip='^0$|^5$',min_saving=0)")
    assert len(convs(refused)) == 2 and "would not shrink 32x32x3x3" in " ".join(refused.meta["report"].warnings)


@pytest.mark.slow  # two native compiles
def test_both_factorisations_compile_and_match_the_interpreter(tmp_path):
    model = conv_model()
    x = torch.randn(1, 3, 8, 8)
    g = mcir.trace(model, (x,))
    for conv in ("channel", "spatial"):
        low = mcir.run_passes(g, f"lowrank(conv={conv},rank=6,skip='^0$|^5$')")
        assert len(convs(low)) == 3
        lib = mcir.compile(low, tmp_path / conv)
        assert lib.weight_bytes == mcir.stats(low).weight_bytes
        ref = mcir.interpret(low, x.numpy())[0]
        np.testing.assert_allclose(lib(x.numpy())[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_conv_off_and_grouped_convs_are_left_alone():
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 64, 3, padding=1)).eval()
    g = mcir.trace(model, (torch.randn(1, 16, 8, 8),))
    assert convs(mcir.run_passes(g, "lowrank(conv=off,rank=2)")) == convs(g)
    low = mcir.run_passes(g, "lowrank(rank=2)")
    assert [w for w, _ in convs(low)] == [(16, 1, 3, 3), (2, 16, 3, 3), (64, 2, 1, 1)]  # depthwise kept


def test_budget_meets_a_whole_model_byte_target():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    x = torch.randn(2, 128)
    g = mcir.trace(model, (x,))
    low = mcir.run_passes(g, "lowrank(budget=0.5)")
    assert mcir.stats(low).weight_bytes <= 0.5 * mcir.stats(g).weight_bytes
    assert mcir.stats(low).weight_bytes >= 0.3 * mcir.stats(g).weight_bytes  # the largest energy that fits
    assert any("budget=0.5: energy" in w for w in low.meta["report"].warnings)
    with pytest.raises(mcir.McirError, match="cannot be met by factorising alone"):
        mcir.run_passes(g, "lowrank(budget=0.001)")
    with pytest.raises(mcir.McirError, match="give rank= or budget=, not both"):
        mcir.run_passes(g, "lowrank(budget=0.5,rank=3)")
