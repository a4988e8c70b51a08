"""Dynamic quantisation (``quantize(activations=dynamic)``, ``kernels/dynamic_i8.py``).

Contract: ``quantize`` to ``u8 #dynamic`` is bit-identical to the interpreter (q, scale and
zero point, compared through ``dequantize``-free access: the linear outputs and the encode);
``linear`` with int8 or int4 weights gives f32 within ``1e-5 x max|reference|`` (exact integer
sums, one f32 rounding per group); on every runnable target (VNNI and the widened fallback).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mcir
from mcir import dtypes
from mcir.encodings import Dynamic, Int4, Quant
from mcir.encodings.rows import quantize_rows
from mcir.ir import Graph
from mcir.types import TensorType, tensor
from tests.codegen.helpers import build, check_native, randn, runnable_targets


def dynamic_graph(rng, m: int, n: int, k: int, weights: str, bias: bool, relu: bool = False) -> Graph:
    g = Graph("dyn")
    x = g.add_input("x", tensor([m, k]))
    xq = g.add("quantize", [x], type=TensorType((m, k), dtypes.u8, Dynamic(0)))
    w = randn(rng, n, k)
    if weights == "int8":
        q, scale = quantize_rows(w.astype(np.float64))
        wv = g.const("w", {"data": q, "scale": scale}, TensorType((n, k), dtypes.i8, Quant(axis=0)))
    elif weights == "codebook":  # 16 centroids on an int8 grid (cluster(activations=dynamic))
        from mcir.encodings import Codebook
        from mcir.encodings.codebook import pack_indices
        from mcir.passes.cluster import int8_grid, kmeans

        c, idx = kmeans(w.reshape(1, -1), 16)
        t = TensorType((n, k), dtypes.f32, Codebook(4, "layer"))
        wv = g.const("w", {"indices": pack_indices(idx.reshape(n, k), 4), "centroids": int8_grid(c)}, t)
    else:
        group = int(weights.split(":")[1])
        t = TensorType((n, k), dtypes.i8, Int4(group))
        wv = g.const("w", t.encode(w), t)
    ops = [xq, wv] + ([g.const("b", randn(rng, n))] if bias else [])
    y = g.add("linear", ops)
    g.set_outputs([g.add("relu", [y]) if relu else y])
    return g


def test_encode_matches_the_kernels_formula():
    t = TensorType((2, 5), dtypes.u8, Dynamic(0))
    x = np.array([[-1.0, 0.5, 2.0, 0.0, 1.0], [0.25, 0.5, 1.0, 2.0, 4.0]], np.float32)
    s = t.encode(x)
    assert s["zero_point"].tolist() == [85, 0]  # row 2 is all positive: lo = 0
    np.testing.assert_allclose(t.decode(s), x, atol=float(s["scale"].max()) / 2)


@pytest.mark.parametrize("weights", ["int8", "int4:0", "int4:32", "int4:128", "codebook"])
@pytest.mark.parametrize(
    "target", runnable_targets()[:2] + (["x86-64-v3"] if "x86-64-v3" in runnable_targets() else [])
)
def test_linear_matches_the_interpreter(tmp_path, weights, target):
    if weights == "codebook" and target != "native":
        with pytest.raises(mcir.McirError, match="VBMI"):  # the x86-64 levels have no vpermb
            build(dynamic_graph(np.random.default_rng(0), 1, 3, 8, weights, bias=False), tmp_path, target=target)
        return
    rng = np.random.default_rng(0)
    g = dynamic_graph(rng, 5, 37, 300, weights, bias=True, relu=True)
    check_native(g, tmp_path, randn(rng, 5, 300), target=target)


@settings(max_examples=15, deadline=None)
@given(
    m=st.sampled_from([1, 3, 4, 9]),
    n=st.integers(1, 40),
    k=st.sampled_from([1, 3, 4, 17, 64, 100, 129]),
    weights=st.sampled_from(["int8", "int4:0", "int4:32", "codebook"]),
    bias=st.booleans(),
)
def test_shapes(tmp_path_factory, m, n, k, weights, bias):
    rng = np.random.default_rng(1)
    g = dynamic_graph(rng, m, n, k, weights, bias)
    check_native(g, tmp_path_factory.mktemp("dyn"), randn(rng, m, k))


def test_constant_rows_and_zeros(tmp_path):
    rng = np.random.default_rng(2)
    g = dynamic_graph(rng, 3, 20, 70, "int8", bias=False)
    x = np.zeros((3, 70), np.float32)
    x[1] = 3.0  # a constant positive row: lo = 0, every q = 255
    check_native(g, tmp_path, x)


def test_the_pass_inserts_one_quantize_per_input(tmp_path):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 40), torch.nn.ReLU(), torch.nn.Linear(40, 5)).eval()
    x = torch.randn(2, 30)
    g = mcir.trace(model, (x,))
    q = mcir.run_passes(g, "quantize(activations=dynamic)")
    text = str(q)
    assert text.count("#dynamic<axis=0>") == 2 and text.count("i8[40,30] #quant<axis=0>") == 1
    out = build(q, tmp_path)(x.numpy())[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), atol=0.05)
    assert mcir.stats(q).weight_bytes == build(q, tmp_path).weight_bytes


def test_cluster_with_dynamic_activations(tmp_path):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 40), torch.nn.ReLU(), torch.nn.Linear(40, 5)).eval()
    x = torch.randn(3, 64)
    q = mcir.run_passes(mcir.trace(model, (x,)), "cluster(bits=4,activations=dynamic)")
    assert str(q).count("#dynamic<axis=0>") == 2 and str(q).count("#codebook") == 2
    lib = build(q, tmp_path)
    ref = mcir.interpret(q, x.numpy())[0]
    assert np.abs(lib(x.numpy())[0] - ref).max() <= 1e-3 * np.abs(ref).max()  # a quantised model's tolerance
    assert lib.weight_bytes == mcir.stats(q).weight_bytes
    with pytest.raises(mcir.McirError, match="bits<=4"):
        mcir.run_passes(mcir.trace(model, (x,)), "cluster(bits=5,activations=dynamic)")
