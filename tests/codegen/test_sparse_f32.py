"""Sparse f32 kernels (``linear`` and ``conv2d`` with #csr / #nm f32 weights) against the
interpreter: random shapes with odd K and N, densities from 0 to 1, empty rows, batch 1 (window
GEMV) and batched (CSR) paths, convolutions of kernel sizes 1-7 with strides, padding and
dilation, every target level. Tolerance: helpers.RTOL (1e-5 relative)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcir.codegen.kernels import sparse
from mcir.codegen.kernels.sparse import BATCH_MIN
from mcir.errors import CodegenError
from mcir.ir import Graph
from mcir.types import tensor

from .helpers import build, check_native, randn, runnable_targets
from .sparse_cases import nm_pruned, pruned, sparse_const

TARGETS = runnable_targets()


def sparse_linear(rng, lead, n, k, density, encoding="csr", bias=True, act="relu", empty_rows=0.0) -> Graph:
    g = Graph("splin")
    x = g.add_input("x", tensor([*lead, k]))
    dense = nm_pruned(rng, n, k, 2, 4) if encoding == "nm" else pruned(rng, n, k, density, empty_rows)
    ops = [x, sparse_const(g, "w", dense, encoding)]
    if bias:
        ops.append(g.const("b", randn(rng, n)))
    y = g.add("linear", ops)
    g.set_outputs([g.add(act, [y]) if act else y])
    return g


@settings(max_examples=25)
@given(
    m=st.sampled_from([1, 1, 2, BATCH_MIN - 1, BATCH_MIN, 7, 17, 33]),
    n=st.integers(1, 150),
    k=st.integers(1, 300),
    density=st.sampled_from([0.0, 0.02, 0.1, 0.3, 0.7, 1.0]),
    empty_rows=st.sampled_from([0.0, 0.3]),
    bias=st.booleans(),
    act=st.sampled_from([None, "relu", "tanh"]),
)
def test_csr_linear_random_shapes(tmp_path_factory, m, n, k, density, empty_rows, bias, act):
    rng = np.random.default_rng(m * 7919 + n * 31 + k)
    g = sparse_linear(rng, (m,), n, k, density, "csr", bias, act, empty_rows)
    check_native(g, tmp_path_factory.mktemp("spl"), randn(rng, m, k))


@settings(max_examples=10)
@given(m=st.sampled_from([1, 2, 9]), n=st.integers(1, 90), groups=st.integers(1, 40), bias=st.booleans())
def test_nm_linear_random_shapes(tmp_path_factory, m, n, groups, bias):
    rng = np.random.default_rng(m * 101 + n * 7 + groups)
    g = sparse_linear(rng, (m,), n, 4 * groups, 0.5, "nm", bias)
    check_native(g, tmp_path_factory.mktemp("spnm"), randn(rng, m, 4 * groups))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("lead", "n", "k"), [((1,), 1024, 784), ((2, 5), 70, 333), ((1,), 65, 31)])
def test_linear_on_each_target(tmp_path, target, lead, n, k):
    rng = np.random.default_rng(n + k)
    g = sparse_linear(rng, lead, n, k, 0.1)
    check_native(g, tmp_path, randn(rng, *lead, k), target=target)


def test_all_zero_weight_gives_the_bias(tmp_path, rng):
    g = sparse_linear(rng, (1,), 40, 50, 0.0, act=None)
    out = check_native(g, tmp_path, randn(rng, 1, 50))[0]
    np.testing.assert_array_equal(out[0], g.value("b").producer.data)


def test_sparse_library_is_smaller_than_dense(tmp_path, rng):
    dense = pruned(rng, 256, 512, 0.1)
    g_sparse, g_dense = Graph("s"), Graph("d")
    for g, w in ((g_sparse, None), (g_dense, dense)):
        x = g.add_input("x", tensor([1, 512]))
        const = sparse_const(g, "w", dense, "csr") if w is None else g.const("w", w)
        g.set_outputs([g.add("linear", [x, const])])
    sparse_bytes, dense_bytes = build(g_sparse, tmp_path).weight_bytes, build(g_dense, tmp_path).weight_bytes
    # window layout: 4-byte value + 1-byte offset per kept weight, ~60 % of lanes filled
    assert sparse_bytes < 0.25 * dense_bytes, (sparse_bytes, dense_bytes)


@st.composite
def pointwise_cases(draw):
    return (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 40)),
        draw(st.integers(1, 40)),
        draw(st.integers(1, 9)),
        draw(st.integers(1, 9)),
        draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        draw(st.booleans()),
    )


@settings(max_examples=12)
@given(case=pointwise_cases())
def test_pointwise_conv(tmp_path_factory, case):
    batch, cin, cout, h, w, density, bias = case
    rng = np.random.default_rng(cin * 41 + cout * 3 + h * w)
    g = Graph("spconv")
    x = g.add_input("x", tensor([batch, cin, h, w]))
    ops = [x, sparse_const(g, "w", pruned(rng, cout, cin, density).reshape(cout, cin, 1, 1), "csr")]
    if bias:
        ops.append(g.const("b", randn(rng, cout)))
    g.set_outputs([g.add("relu", [g.add("conv2d", ops, {})])])
    check_native(g, tmp_path_factory.mktemp("spc"), randn(rng, batch, cin, h, w))


#: (cin, cout, kernel (kh, kw), stride, padding, dilation, image h, w): every kernel size 1-7, strides 1/2,
#: padding, dilation, odd channel counts, rectangular kernels and images, a 1x1 that still needs im2col
CONV_CASES = [
    (3, 5, (1, 1), (2, 2), (0, 0), (1, 1), 9, 9),
    (5, 7, (1, 1), (1, 1), (1, 1), (1, 1), 6, 5),
    (3, 9, (3, 3), (1, 1), (1, 1), (1, 1), 8, 8),
    (7, 5, (3, 3), (2, 2), (1, 1), (1, 1), 11, 9),
    (5, 3, (3, 3), (1, 1), (2, 2), (2, 2), 7, 10),
    (4, 13, (5, 5), (1, 1), (2, 2), (1, 1), 9, 9),
    (3, 6, (5, 5), (2, 2), (0, 0), (1, 1), 13, 12),
    (3, 11, (7, 7), (2, 2), (3, 3), (1, 1), 16, 15),
    (2, 5, (7, 7), (1, 1), (0, 0), (1, 1), 7, 9),
    (6, 4, (3, 5), (1, 2), (1, 0), (2, 1), 10, 11),
]


def sparse_conv(rng, batch, cin, cout, kernel, stride, padding, dilation, h, w, density, bias=True, act="relu"):
    g = Graph("spconvk")
    x = g.add_input("x", tensor([batch, cin, h, w]))
    dense = pruned(rng, cout, cin * kernel[0] * kernel[1], density).reshape(cout, cin, *kernel)
    ops = [x, sparse_const(g, "w", dense, "csr")]
    if bias:
        ops.append(g.const("b", randn(rng, cout)))
    attrs = {"stride": list(stride), "padding": list(padding), "dilation": list(dilation)}
    y = g.add("conv2d", ops, attrs)
    g.set_outputs([g.add(act, [y]) if act else y])
    return g


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"k{c[2][0]}x{c[2][1]}s{c[3][0]}p{c[4][0]}d{c[5][0]}")
@pytest.mark.parametrize("block", ["whole", "rows"])
def test_conv_of_any_kernel_size_stride_padding_dilation(tmp_path, monkeypatch, case, block):
    cin, cout, kernel, stride, padding, dilation, h, w = case
    if block == "rows":  # patches built 2 output rows at a time, the last block shorter when OH is odd
        monkeypatch.setattr(sparse, "PATCH_BLOCK_BYTES", 4 * cin * kernel[0] * kernel[1] * w * 2)
    rng = np.random.default_rng(cin * 131 + cout * 7 + kernel[0] * kernel[1] + h)
    batch = 2 if kernel[0] == 3 else 1
    g = sparse_conv(rng, batch, cin, cout, kernel, stride, padding, dilation, h, w, 0.3, bias=kernel[0] != 5)
    check_native(g, tmp_path, randn(rng, batch, cin, h, w))


@pytest.mark.parametrize("density", [0.0, 0.1, 1.0])
def test_conv_densities_from_empty_to_full(tmp_path, density):
    rng = np.random.default_rng(int(density * 10))
    g = sparse_conv(rng, 1, 5, 7, (3, 3), (1, 1), (1, 1), (1, 1), 6, 6, density, act=None)
    check_native(g, tmp_path, randn(rng, 1, 5, 6, 6))


@pytest.mark.parametrize("target", TARGETS)
def test_conv_on_each_target(tmp_path, target):
    rng = np.random.default_rng(3)
    g = sparse_conv(rng, 1, 8, 16, (3, 3), (2, 2), (1, 1), (1, 1), 12, 12, 0.1)
    check_native(g, tmp_path, randn(rng, 1, 8, 12, 12), target=target)


def test_grouped_convolutions_raise_a_clear_error(tmp_path, rng):
    g = Graph("spconvg")
    x = g.add_input("x", tensor([1, 4, 8, 8]))
    w = sparse_const(g, "w", pruned(rng, 8, 18, 0.2).reshape(8, 2, 3, 3), "csr")
    g.set_outputs([g.add("conv2d", [x, w], {"padding": [1, 1], "groups": 2})])
    with pytest.raises(CodegenError, match=r"sparse convolution weights need groups=1 \(got groups 2\)"):
        build(g, tmp_path)


def test_nm_conv_of_a_3x3_kernel(tmp_path):
    rng = np.random.default_rng(11)
    g = Graph("spconvnm")
    x = g.add_input("x", tensor([1, 4, 9, 9]))
    w = sparse_const(g, "w", nm_pruned(rng, 6, 36, 2, 4).reshape(6, 4, 3, 3), "nm")
    g.set_outputs([g.add("conv2d", [x, w, g.const("b", randn(rng, 6))], {"stride": [2, 2], "padding": [1, 1]})])
    check_native(g, tmp_path, randn(rng, 1, 4, 9, 9))
