"""Sparse int8 kernels (``linear`` / ``conv2d`` of any kernel size with #csr / #nm int8 weights on u8 inputs)
against the interpreter: random shapes with odd K and N, densities 0..1, empty rows, zero points,
folded and float biases, u8 and f32 results, batch 1 (VBMI+VNNI kernel) and batched, every target.
Tolerance: u8 results within 1 LSB, f32 results within helpers.RTOL relative to the largest."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mcir
from mcir import dtypes
from mcir.codegen.kernels import lookup, sparse
from mcir.codegen.kernels.sparse_i8 import BATCH_MIN_I8
from mcir.encodings import Quant
from mcir.errors import CodegenError
from mcir.ir import Graph
from mcir.types import TensorType, tensor

from .helpers import assert_close, build, runnable_targets
from .sparse_cases import nm_pruned, pruned, sparse_const

TARGETS = runnable_targets()
X_SCALE, X_ZERO = 0.02, 117


def _graph(rng, shape, weight, encoding, bias, result, act, op="linear", conv=None) -> Graph:
    """x: u8 #quant input; weight: int8 sparse; bias: int (folded), float (another scale) or None."""
    g = Graph("spq")
    x = g.add_input("x", TensorType(shape, dtypes.u8, Quant(scale=X_SCALE, zero_point=X_ZERO)))
    w = sparse_const(g, "w", weight, encoding, dtypes.i8, nm=(1, 4))
    ops = [x, w]
    n = weight.shape[0]
    if bias is not None:
        w_scale = np.asarray(w.producer.data["scale"], np.float32)
        scale = (np.float32(X_SCALE) * w_scale).astype(np.float32)
        if bias == "float":
            scale = scale * np.float32(0.75)  # not the accumulator's scale: added as a float
        data = rng.integers(-3000, 3000, n).astype(np.int32)
        ops.append(g.const("b", {"data": data, "scale": scale}, TensorType((n,), dtypes.i32, Quant(axis=0))))
    attrs = {} if op == "linear" else (conv or {"stride": [1, 1], "padding": [0, 0]})
    if result == "f32":
        y = g.add(op, ops, attrs)
        g.set_outputs([g.add(act, [y]) if act else y])
        return g
    float_y = g.add(op, ops, attrs)
    g.set_outputs([float_y])
    ref = mcir.interpret(g, rng.integers(0, 256, shape).astype(np.uint8))[0]
    g.set_outputs([])
    lo, hi = min(float(ref.min()), 0.0), max(float(ref.max()), 1e-3)
    enc = Quant(scale=(hi - lo) / 255, zero_point=round(-lo / ((hi - lo) / 255)))
    g.erase(float_y.producer)
    g.set_outputs([g.add(op, ops, attrs, type=TensorType(float_y.type.shape, dtypes.u8, enc))])
    return g


def check_int8(g: Graph, tmp_path, x: np.ndarray, **kwargs) -> np.ndarray:
    """Native vs interpreter: u8 within 1 LSB, f32 within the f32 contract."""
    mcir.verify(g)
    native = build(g, tmp_path, **kwargs)(x)[0]
    ref = mcir.interpret(g, x)[0]
    if ref.dtype == np.uint8:
        diff = np.abs(native.astype(np.int64) - ref.astype(np.int64))
        assert diff.max(initial=0) <= 1, f"u8 results differ by {diff.max()} LSB"
        assert (diff == 0).mean() > 0.9  # off by one only at rounding ties of the float reference
    else:
        assert_close(native, ref)
    return native


def weight(rng, n, k, density, encoding, empty_rows=0.0):
    return nm_pruned(rng, n, k, 1, 4) if encoding == "nm" else pruned(rng, n, k, density, empty_rows)


@settings(max_examples=25)
@given(
    m=st.sampled_from([1, 1, 2, 3, BATCH_MIN_I8 - 1, BATCH_MIN_I8, 17, 33]),
    n=st.integers(1, 150),
    k=st.integers(1, 300),
    density=st.sampled_from([0.0, 0.02, 0.1, 0.3, 0.7, 1.0]),
    empty_rows=st.sampled_from([0.0, 0.3]),
    bias=st.sampled_from([None, "int", "float"]),
    result=st.sampled_from(["u8", "f32"]),
)
def test_csr_linear_random_shapes(tmp_path_factory, m, n, k, density, empty_rows, bias, result):
    rng = np.random.default_rng(m * 7919 + n * 31 + k)
    g = _graph(rng, (m, k), weight(rng, n, k, density, "csr", empty_rows), "csr", bias, result, "relu")
    check_int8(g, tmp_path_factory.mktemp("spq"), rng.integers(0, 256, (m, k)).astype(np.uint8))


@settings(max_examples=10)
@given(
    m=st.sampled_from([1, 6]), n=st.integers(1, 90), groups=st.integers(1, 40), result=st.sampled_from(["u8", "f32"])
)
def test_nm_linear_random_shapes(tmp_path_factory, m, n, groups, result):
    rng = np.random.default_rng(m * 101 + n * 7 + groups)
    g = _graph(rng, (m, 4 * groups), weight(rng, n, 4 * groups, 0.25, "nm"), "nm", "int", result, None)
    check_int8(g, tmp_path_factory.mktemp("spqnm"), rng.integers(0, 256, (m, 4 * groups)).astype(np.uint8))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("m", "n", "k", "density"), [(1, 1024, 784, 0.1), (3, 70, 333, 0.2), (1, 40, 3000, 0.03)])
def test_linear_on_each_target(tmp_path, target, m, n, k, density):
    rng = np.random.default_rng(n + k)
    g = _graph(rng, (m, k), pruned(rng, n, k, density), "csr", "int", "u8", None)
    check_int8(g, tmp_path, rng.integers(0, 256, (m, k)).astype(np.uint8), target=target)


@settings(max_examples=10)
@given(
    batch=st.integers(1, 2),
    cin=st.integers(1, 40),
    cout=st.integers(1, 40),
    hw=st.integers(1, 60),
    density=st.sampled_from([0.1, 0.5, 1.0]),
    result=st.sampled_from(["u8", "f32"]),
)
def test_pointwise_conv(tmp_path_factory, batch, cin, cout, hw, density, result):
    rng = np.random.default_rng(cin * 41 + cout * 3 + hw)
    w = pruned(rng, cout, cin, density).reshape(cout, cin, 1, 1)
    g = _graph(rng, (batch, cin, 1, hw), w, "csr", "int", result, "relu", op="conv2d")
    check_int8(g, tmp_path_factory.mktemp("spqc"), rng.integers(0, 256, (batch, cin, 1, hw)).astype(np.uint8))


#: (cin, cout, kernel, stride, padding, dilation, h, w): kernel sizes 1-7, strides, padding (where the
#: zero point stands in for the real 0), dilation, odd channel counts
CONV_CASES = [
    (3, 5, (1, 1), (2, 2), (0, 0), (1, 1), 9, 9),
    (5, 7, (3, 3), (1, 1), (1, 1), (1, 1), 8, 7),
    (7, 5, (3, 3), (2, 2), (1, 1), (2, 2), 11, 9),
    (4, 9, (5, 5), (1, 1), (2, 2), (1, 1), 9, 9),
    (3, 11, (7, 7), (2, 2), (3, 3), (1, 1), 16, 15),
    (6, 4, (3, 5), (1, 2), (1, 0), (1, 1), 10, 11),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"k{c[2][0]}x{c[2][1]}s{c[3][0]}p{c[4][0]}d{c[5][0]}")
@pytest.mark.parametrize("result", ["u8", "f32"])
def test_conv_of_any_kernel_size_stride_padding_dilation(tmp_path, monkeypatch, case, result):
    cin, cout, kernel, stride, padding, dilation, h, w = case
    if result == "f32":  # patches built 2 output rows at a time, the last block shorter when OH is odd
        monkeypatch.setattr(sparse, "PATCH_BLOCK_BYTES", 4 * cin * kernel[0] * kernel[1] * w * 2)
    rng = np.random.default_rng(cin * 131 + cout * 7 + kernel[0] * kernel[1] + h)
    dense = pruned(rng, cout, cin * kernel[0] * kernel[1], 0.3).reshape(cout, cin, *kernel)
    attrs = {"stride": list(stride), "padding": list(padding), "dilation": list(dilation)}
    batch = 2 if kernel == (3, 3) else 1
    g = _graph(rng, (batch, cin, h, w), dense, "csr", "int", result, "relu", op="conv2d", conv=attrs)
    check_int8(g, tmp_path, rng.integers(0, 256, (batch, cin, h, w)).astype(np.uint8))


def test_long_rows_and_window(tmp_path):
    """Rows with gaps of thousands of columns (escapes) and rows far apart (window stalls)."""
    rng = np.random.default_rng(5)
    w = np.zeros((40, 5000), np.float32)
    w[0, [0, 4999]] = [1.0, -1.0]
    w[1:20, :300] = pruned(rng, 19, 300, 0.9)
    w[20:, 4700:] = pruned(rng, 20, 300, 0.9)
    g = _graph(rng, (1, 5000), w, "csr", "float", "f32", None)
    check_int8(g, tmp_path, rng.integers(0, 256, (1, 5000)).astype(np.uint8))


def _mlp():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    ).eval()
    return model, mcir.trace(model, (torch.zeros(1, 784),), name="mlp")


def test_pruned_quantised_mlp_matches_the_interpreter(tmp_path):
    """prune(sparsity=0.9),quant8 of the benchmark MLP, every layer sparse int8 (skip=none)."""
    rng = np.random.default_rng(0)
    _, graph = _mlp()
    cal = [(rng.standard_normal((1, 784)).astype(np.float32),) for _ in range(8)]
    g = mcir.run_passes(graph, "prune(sparsity=0.9,skip=none),quant8", calibration=cal)
    assert all(op.operands[1].type.encoding.name == "csr" for op in g.compute_ops() if op.name == "linear")
    lib = build(g, tmp_path)
    for _ in range(3):
        x = rng.standard_normal((1, 784)).astype(np.float32)
        assert_close(lib(x)[0], mcir.interpret(g, x)[0], rtol=2e-2)  # u8 hidden layers: 1 LSB may propagate


def test_pruned_quantised_mlp_default_pipeline(tmp_path):
    """The default prune keeps the classifier dense: it needs the dense int8 kernel (issue #5)."""
    rng = np.random.default_rng(1)
    _, graph = _mlp()
    g = mcir.run_passes(graph, "prune(sparsity=0.9),quant8", calibration=[(np.zeros((1, 784), np.float32),)])
    last = [op for op in g.compute_ops() if op.name == "linear"][-1]
    try:
        lookup(last)
    except CodegenError:
        pytest.skip("no dense int8 linear kernel in this build yet (issue #5)")
    lib = build(g, tmp_path)
    x = rng.standard_normal((1, 784)).astype(np.float32)
    assert_close(lib(x)[0], mcir.interpret(g, x)[0], rtol=2e-2)


def test_weight_bytes_of_the_pruned_quantised_mlp(tmp_path):
    """Issue #6: prune(sparsity=0.9),quant8 weights <= 5 % of the dense fp32 library's."""
    _, graph = _mlp()
    dense = build(graph, tmp_path).weight_bytes
    g = mcir.run_passes(graph, "prune(sparsity=0.9,skip=none),quant8", calibration=[(np.zeros((1, 784), np.float32),)])
    sparse = build(g, tmp_path).weight_bytes
    assert sparse <= 0.05 * dense, f"{sparse} bytes = {sparse / dense:.2%} of {dense}"


def test_runtime_bias_is_refused(tmp_path):
    g = Graph("rtb")
    x = g.add_input("x", TensorType((1, 8), dtypes.u8, Quant(scale=0.1, zero_point=0)))
    b = g.add_input("b", tensor([4]))
    w = sparse_const(g, "w", pruned(np.random.default_rng(0), 4, 8, 0.5), "csr", dtypes.i8)
    g.set_outputs([g.add("linear", [x, w, b])])
    with pytest.raises(CodegenError, match=r"its bias %b : f32\[4\] must be a compile-time constant"):
        build(g, tmp_path)


@pytest.mark.parametrize(("m", "n"), [(4, 17), (17, 33), (1, 1)])
def test_single_lane_tails_of_u8_results(tmp_path, m, n):
    """One-lane edge stores of u8 vectors (an LLVM 22 masked-store miscompile wrote 4 bytes)."""
    rng = np.random.default_rng(m + n)
    g = _graph(rng, (m, 3), pruned(rng, n, 3, 0.5), "csr", "int", "u8", None)
    check_int8(g, tmp_path, rng.integers(0, 256, (m, 3)).astype(np.uint8))


# batched kernel with VBMI decoding, the window kernel without VBMI, the batched kernel without it
@pytest.mark.parametrize(("m", "target"), [(BATCH_MIN_I8, "native"), (1, TARGETS[-1]), (BATCH_MIN_I8, TARGETS[-1])])
def test_batched_sums_are_exact(tmp_path, m, target):
    """Rows of 6000 products near 255 x 127 whose partial sums pass 2^25 while the total is
    small: the batched kernel sums in f32 runs that stay exact integers, so the result is."""
    w = np.zeros((2, 6100), np.float32)
    w[:, :3000], w[:, 3000:6000] = 1.0, -1.0
    w[1, 6000:] = 0.5
    g = Graph("exact")
    x = g.add_input("x", TensorType((m, 6100), dtypes.u8, Quant(scale=X_SCALE, zero_point=X_ZERO)))
    g.set_outputs([g.add("linear", [x, sparse_const(g, "w", w, "csr", dtypes.i8)])])
    xs = np.random.default_rng(2).integers(200, 256, (m, 6100)).astype(np.uint8)
    out = build(g, tmp_path, target=target)(xs)[0]
    assert_close(out, mcir.interpret(g, xs)[0])  # an inexact f32 sum is off by ~1e-4 here


def test_unsupported_operands_raise_the_registry_error(tmp_path):
    """f32 activations with an int8 sparse weight have no kernel: the registry's CodegenError."""
    g = Graph("mixed")
    x = g.add_input("x", tensor([1, 8]))
    w = sparse_const(g, "w", pruned(np.random.default_rng(0), 4, 8, 0.5), "csr", dtypes.i8)
    g.set_outputs([g.add("linear", [x, w])])
    with pytest.raises(CodegenError, match=r"no native kernel for op 'linear'.*\(f32, i8#csr\).*u8#quant, i8#csr"):
        build(g, tmp_path)


def test_nm_conv_of_a_3x3_kernel(tmp_path):
    rng = np.random.default_rng(12)
    dense = nm_pruned(rng, 6, 36, 1, 4).reshape(6, 4, 3, 3)
    attrs = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}
    g = _graph(rng, (1, 4, 7, 7), dense, "nm", "int", "u8", None, op="conv2d", conv=attrs)
    check_int8(g, tmp_path, rng.integers(0, 256, (1, 4, 7, 7)).astype(np.uint8))
