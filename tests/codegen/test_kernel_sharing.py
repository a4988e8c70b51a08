"""Layers of the same shape share one kernel function (``lowering.kernel_key``).

int8 linears read every per-tensor scale (and the input's zero point) from their packed channel
table, so two layers that differ only in those share one function: an encoder's repeated int8
layers compile once. Each call still gets its own table, so every layer computes with its own
scales: native equals the interpreter up to 1 LSB of each u8 result (checked on the final
dequantised output, whose step is the last layer's scale)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import mcir
from mcir.codegen import lowering
from mcir.codegen.target import resolve

from .helpers import build


def _int8_stack(seed: int) -> tuple[mcir.Graph, np.ndarray]:
    """Four 64 -> 64 linears with ReLUs in between: same shapes, different calibrated ranges."""
    torch.manual_seed(seed)
    layers = []
    for i in range(4):
        fc = nn.Linear(64, 64)
        with torch.no_grad():
            fc.weight.mul_(1.0 + i)  # each layer's output range (so its scale) differs
        layers += [fc, nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randn(8, 64, generator=gen) for _ in range(5)]
    graph = mcir.run_passes(mcir.trace(model, xs[0]), "fold,quant8", calibration=[(x.numpy(),) for x in xs[1:]])
    return graph, xs[0].numpy()


def _linear_keys(graph: mcir.Graph) -> list[tuple]:
    steps = lowering.build_steps(graph, resolve("native", None, None, None))
    return [lowering.kernel_key(s, g) for s, g in steps if s.op is not None and s.op.name == "linear"]


def test_int8_linears_that_differ_only_in_scales_share_one_kernel():
    graph, _ = _int8_stack(0)
    linears = [op for op in graph.compute_ops() if op.name == "linear"]
    scales = {op.operands[0].type.encoding.scale for op in linears}
    assert len(linears) == 4 and len(scales) == 4  # four different input scales
    keys = _linear_keys(graph)
    # the three hidden layers (u8 in, u8 out) share one function; the last writes f32
    assert len(set(keys[:3])) == 1 and keys[3] != keys[0]


def test_shared_int8_kernels_use_each_layers_own_scales(tmp_path):
    graph, x = _int8_stack(1)
    (native,) = build(graph, tmp_path)(x)
    (interp,) = mcir.interpret(graph, x)
    last = [op for op in graph.compute_ops() if op.name == "linear"][-1]
    # a 1-LSB difference in every input code of the last layer moves its f32 output by at most
    # (its input scale) x (the largest row sum of |w|)
    step = last.operands[0].type.encoding.scale
    w = last.operands[1].producer
    bound = step * float(np.abs(w.result.type.decode(w.data)).sum(axis=1).max())
    assert np.abs(native - interp).max() <= bound
    assert np.abs(native - interp).max() < 1e-2 * np.abs(interp).max()
