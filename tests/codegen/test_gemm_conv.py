"""linear / matmul / conv2d / pooling against the interpreter, with random shapes and
attributes (hypothesis), every target level, fused activations, runtime weights and
weight sharing (tolerance: see helpers.RTOL)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcir.ir import Graph
from mcir.types import tensor

from .helpers import build, check_native, randn, runnable_targets

TARGETS = runnable_targets()


def linear_graph(rng, lead: tuple[int, ...], n: int, k: int, bias: bool = True, act: str | None = "relu") -> Graph:
    g = Graph("lin")
    x = g.add_input("x", tensor([*lead, k]))
    ops = [x, g.const("w", randn(rng, n, k, scale=k**-0.5))]
    if bias:
        ops.append(g.const("b", randn(rng, n)))
    y = g.add("linear", ops)
    g.set_outputs([g.add(act, [y]) if act else y])
    return g


@settings(max_examples=10)
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 150),
    k=st.integers(1, 300),
    bias=st.booleans(),
    act=st.sampled_from([None, "relu", "gelu", "tanh"]),
)
def test_linear_random_shapes(tmp_path_factory, m, n, k, bias, act):
    rng = np.random.default_rng(m * 1000 + n)
    g = linear_graph(rng, (m,), n, k, bias, act)
    check_native(g, tmp_path_factory.mktemp("lin"), randn(rng, m, k))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("lead", "n", "k"), [((1,), 1024, 784), ((2, 33), 70, 600), ((7,), 10, 1024)])
def test_linear_tilings_on_each_target(tmp_path, target, lead, n, k):
    rng = np.random.default_rng(5)
    g = linear_graph(rng, lead, n, k)
    check_native(g, tmp_path, randn(rng, *lead, k), target=target)


def test_linear_with_runtime_weight(tmp_path, rng):
    g = Graph("rt")
    x, w = g.add_input("x", tensor([5, 40])), g.add_input("w", tensor([33, 40]))
    g.set_outputs([g.add("linear", [x, w])])
    check_native(g, tmp_path, randn(rng, 5, 40), randn(rng, 33, 40))


def test_shared_weight_is_stored_once(tmp_path, rng):
    g = Graph("shared")
    x = g.add_input("x", tensor([2, 64]))
    w = g.const("w", randn(rng, 64, 64))
    h = g.add("linear", [x, w])
    g.set_outputs([g.add("linear", [h, w])])
    lib = build(g, tmp_path)
    assert lib.weight_bytes == 64 * 64 * 4  # one packed copy for both uses
    xs = randn(rng, 2, 64)
    np.testing.assert_allclose(
        lib(xs)[0], (xs @ g.value("w").producer.data.T) @ g.value("w").producer.data.T, rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((3, 4, 5), (5, 6)),
        ((2, 3, 4, 5), (2, 1, 5, 7)),
        ((4,), (4, 3)),
        ((3, 4), (4,)),
        ((2, 33, 70), (2, 70, 45)),
        ((1, 8, 16), (3, 16, 9)),
    ],
)
def test_matmul_broadcasting(tmp_path, rng, a, b):
    g = Graph("mm")
    x, y = g.add_input("a", tensor(a)), g.add_input("b", tensor(b))
    g.set_outputs([g.add("matmul", [x, y])])
    check_native(g, tmp_path, randn(rng, *a), randn(rng, *b))


def test_matmul_with_constant_rhs(tmp_path, rng):
    g = Graph("mmc")
    x = g.add_input("a", tensor([3, 7, 20]))
    g.set_outputs([g.add("relu", [g.add("matmul", [x, g.const("b", randn(rng, 20, 50))])])])
    check_native(g, tmp_path, randn(rng, 3, 7, 20))


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 4))
    cout = groups * draw(st.integers(1, 5))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 14))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 14))
    attrs = {"stride": [sh, sw], "padding": [ph, pw], "dilation": [dh, dw], "groups": groups}
    return (draw(st.integers(1, 3)), cin, h, w), (cout, cin // groups, kh, kw), attrs, draw(st.booleans())


@settings(max_examples=15)
@given(case=conv_cases())
def test_conv2d_random_attributes(tmp_path_factory, case):
    xs, ws, attrs, bias = case
    rng = np.random.default_rng(sum(xs) + sum(ws))
    g = Graph("conv")
    x = g.add_input("x", tensor(xs))
    ops = [x, g.const("w", randn(rng, *ws))] + ([g.const("b", randn(rng, ws[0]))] if bias else [])
    g.set_outputs([g.add("relu", [g.add("conv2d", ops, attrs)])])
    check_native(g, tmp_path_factory.mktemp("conv"), randn(rng, *xs))


@pytest.mark.parametrize(
    ("xs", "ws", "attrs"),
    [
        ((1, 3, 32, 32), (32, 3, 3, 3), {"padding": [1, 1]}),
        ((2, 64, 16, 16), (128, 64, 3, 3), {"padding": [1, 1]}),
        ((1, 16, 9, 9), (16, 1, 3, 3), {"padding": [1, 1], "groups": 16}),
        ((1, 8, 10, 10), (24, 8, 1, 1), {}),
    ],
)
def test_conv2d_model_shapes(tmp_path, rng, xs, ws, attrs):
    g = Graph("convm")
    x = g.add_input("x", tensor(xs))
    g.set_outputs(
        [g.add("conv2d", [x, g.const("w", randn(rng, *ws, scale=0.2)), g.const("b", randn(rng, ws[0]))], attrs)]
    )
    check_native(g, tmp_path, randn(rng, *xs))


@settings(max_examples=12)
@given(
    kind=st.sampled_from(["max_pool2d", "avg_pool2d"]),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    p=st.integers(0, 1),
    ceil=st.booleans(),
    incl=st.booleans(),
    h=st.integers(3, 11),
    w=st.integers(3, 11),
)
def test_pooling_random_attributes(tmp_path_factory, kind, k, s, p, ceil, incl, h, w):
    p = min(p, k // 2)
    attrs = {"kernel": [k, k + 1 if w > k + 1 else k], "stride": [s, s], "padding": [p, p], "ceil_mode": ceil}
    if kind == "avg_pool2d":
        attrs["count_include_pad"] = incl
    else:
        attrs["dilation"] = [1, 2] if w > 2 * (k + 1) else [1, 1]
    rng = np.random.default_rng(h * 31 + w)
    g = Graph("pool")
    x = g.add_input("x", tensor([2, 3, h, w]))
    g.set_outputs([g.add(kind, [x], attrs)])
    check_native(g, tmp_path_factory.mktemp("pool"), randn(rng, 2, 3, h, w))


def test_avg_pool_divisor_and_adaptive(tmp_path, rng):
    g = Graph("apool")
    x = g.add_input("x", tensor([2, 3, 10, 7]))
    g.set_outputs(
        [
            g.add("avg_pool2d", [x], {"kernel": [2, 2], "stride": [2, 2], "divisor": 3}),
            g.add("adaptive_avg_pool2d", [x], {"output_size": [3, 4]}),
            g.add("adaptive_avg_pool2d", [x], {"output_size": [1, 1]}),
        ]
    )
    check_native(g, tmp_path, randn(rng, 2, 3, 10, 7))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    ("xs", "ws", "attrs"),
    [
        ((1, 3, 3, 70), (5, 3, 3, 3), {"padding": [1, 1]}),  # rows wider than a panel: per-element im2col
        ((2, 4, 10, 10), (6, 4, 3, 3), {"padding": [1, 1]}),  # rows crossing panel boundaries
        ((1, 8, 9, 9), (8, 2, 3, 3), {"padding": [1, 1], "groups": 4, "stride": [2, 2]}),  # grouped GEMM
    ],
)
def test_conv2d_im2col_paths_on_each_target(tmp_path, rng, target, xs, ws, attrs):
    # run-time weights: the im2col paths (constant weights of unit-stride convs take the implicit GEMM)
    g = Graph("convp")
    x, w = g.add_input("x", tensor(xs)), g.add_input("w", tensor(ws))
    y = g.add("conv2d", [x, w, g.const("b", randn(rng, ws[0]))], attrs)
    g.set_outputs([g.add("relu", [y])])
    check_native(g, tmp_path, randn(rng, *xs), randn(rng, *ws), target=target)
