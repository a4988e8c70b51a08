"""Unstructured pruning pays on a ResNet-style CNN: ``prune(sparsity=0.9)`` stores the 7x7
stem and the 3x3 residual convs ``#csr``, the graph compiles (no layer refused for its kernel
size), the library embeds fewer weight bytes than the dense one, and native equals the
interpreter (f32: helpers.RTOL; with quant8 the int8 sparse kernels, u8 results within 1 LSB
of the interpreter's, so the f32 logits agree within 2e-3 of the largest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mcir
from tests.models import ResidualBlock

from .helpers import assert_close, build


class ResNetStyle(nn.Module):
    """7x7/2 stem + BN + ReLU, 3x3/2 max pool, two 3x3 residual blocks, global average pool, linear."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.blocks = nn.Sequential(ResidualBlock(width), ResidualBlock(width))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.pool(self.stem(x))))


def _traced(seed: int = 0):
    torch.manual_seed(seed)
    model = ResNetStyle().eval()
    x = torch.randn(1, 3, 32, 32)
    return model, mcir.trace(model, (x,)), x.numpy()


def _csr_convs(g: mcir.Graph) -> list[tuple[int, ...]]:
    return [
        op.operands[1].type.shape
        for op in g.ops
        if op.name == "conv2d"
        and op.operands[1].type.encoding is not None
        and op.operands[1].type.encoding.name == "csr"
    ]


def test_pruned_resnet_style_cnn_compiles_and_is_smaller(tmp_path):
    _, g, x = _traced()
    dense = mcir.run_passes(g, "fold")
    pruned = mcir.run_passes(g, "fold,prune(sparsity=0.9)")
    shapes = _csr_convs(pruned)
    assert (16, 3, 7, 7) in shapes and (16, 16, 3, 3) in shapes, shapes
    lib = build(pruned, tmp_path)
    assert_close(lib(x)[0], mcir.interpret(pruned, x)[0])
    assert lib.weight_bytes < 0.5 * build(dense, tmp_path).weight_bytes


@pytest.mark.slow
def test_pruned_and_quantised_resnet_style_cnn_compiles(tmp_path):
    _, g, x = _traced(1)
    rng = np.random.default_rng(0)
    calib = [(rng.standard_normal(x.shape).astype(np.float32),) for _ in range(4)]
    q = mcir.run_passes(g, "fold,prune(sparsity=0.9),quant8", calibration=calib)
    assert any(op.name == "conv2d" and "i8[16,16,3,3] #csr" in str(op.operands[1].type) for op in q.ops), str(q)
    lib = build(q, tmp_path)
    # u8 activations may differ by 1 LSB at rounding ties; one such LSB of the pooled features moves a
    # logit by about 1e-3 of the largest: the tolerance allows two
    assert_close(lib(x)[0], mcir.interpret(q, x)[0], rtol=2e-3)
