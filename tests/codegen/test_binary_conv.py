"""conv2d with bit-packed weights, native against the interpreter, over random shapes,
strides, padding, dilation and groups (exactness contract: see test_binary.py).

Zero padding is the subtle part: the interpreter pads the *decoded* input (β·(±1))
with 0.0, so a tap outside the image contributes nothing, not ±β.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mcir
from mcir.ir import Graph
from mcir.types import tensor

from .helpers import build, check_native, randn
from .test_binary import assert_ulps, binarize_input, packed_weight, pow2_signs


def conv_graph(rng, geo: dict, weights: str, act_binary: bool, bias: bool, pow2: bool = False, act=None) -> Graph:
    n, c, h, w, o, kh, kw, groups = (geo[k] for k in ("n", "c", "h", "w", "o", "kh", "kw", "groups"))
    g = Graph("bconv")
    x = g.add_input("x", tensor([n, c, h, w]))
    xin = binarize_input(g, x) if act_binary else x
    ops = [xin, packed_weight(g, rng, (o, c // groups, kh, kw), weights, pow2)]
    if bias:
        ops.append(g.const("b", rng.integers(-8, 9, size=o).astype(np.float32) if pow2 else randn(rng, o)))
    attrs = {k: geo[k] for k in ("stride", "padding", "dilation", "groups")}
    y = g.add("conv2d", ops, attrs)
    g.set_outputs([g.add(act, [y]) if act else y])
    return g


@st.composite
def geometries(draw) -> dict:
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cg = draw(st.sampled_from([1, 2, 5, 16, 30, 64, 70]))
    og = draw(st.integers(1, 12))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, (kh - 1) * dh + 1 - 2 * ph), 9))
    w = draw(st.integers(max(1, (kw - 1) * dw + 1 - 2 * pw), 9))
    return {
        "n": draw(st.integers(1, 2)),
        "c": cg * groups,
        "h": h,
        "w": w,
        "o": og * groups,
        "kh": kh,
        "kw": kw,
        "stride": [draw(st.integers(1, 2)), draw(st.integers(1, 2))],
        "padding": [ph, pw],
        "dilation": [dh, dw],
        "groups": groups,
    }


@settings(max_examples=25)
@given(geo=geometries(), weights=st.sampled_from(["binary", "ternary"]), bias=st.booleans(), seed=st.integers(0, 99))
def test_xnor_conv_bit_exact(tmp_path_factory, geo, weights, bias, seed):
    """α, β powers of two, integer biases: native == interpreter bit for bit, padding included."""
    rng = np.random.default_rng(seed)
    g = conv_graph(rng, geo, weights, act_binary=True, bias=bias, pow2=True)
    xs = pow2_signs(rng, (geo["n"], geo["c"], geo["h"], geo["w"]))
    (native,) = build(g, tmp_path_factory.mktemp("c"))(xs)
    np.testing.assert_array_equal(native, mcir.interpret(g, xs)[0])


@settings(max_examples=15)
@given(geo=geometries(), weights=st.sampled_from(["binary", "ternary"]), bias=st.booleans(), seed=st.integers(0, 99))
def test_xnor_conv_general_scales_within_one_ulp(tmp_path_factory, geo, weights, bias, seed):
    rng = np.random.default_rng(seed)
    g = conv_graph(rng, geo, weights, act_binary=True, bias=bias)
    xs = randn(rng, geo["n"], geo["c"], geo["h"], geo["w"])
    (native,) = build(g, tmp_path_factory.mktemp("c"))(xs)
    assert_ulps(native, mcir.interpret(g, xs)[0], 1)


@settings(max_examples=15)
@given(geo=geometries(), weights=st.sampled_from(["binary", "ternary"]), bias=st.booleans(), seed=st.integers(0, 99))
def test_decoded_conv_float_activations(tmp_path_factory, geo, weights, bias, seed):
    rng = np.random.default_rng(seed)
    g = conv_graph(rng, geo, weights, act_binary=False, bias=bias, act="relu")
    check_native(g, tmp_path_factory.mktemp("f"), randn(rng, geo["n"], geo["c"], geo["h"], geo["w"]))


@pytest.mark.parametrize("weights", ["binary", "ternary"])
def test_padding_contributes_zero_not_minus_beta(tmp_path, rng, weights):
    """A 1x1 kernel with padding 2: the outer ring of outputs sees only padding, so it is the bias alone."""
    geo = dict(n=1, c=3, h=4, w=4, o=5, kh=1, kw=1, stride=[1, 1], padding=[2, 2], dilation=[1, 1], groups=1)
    g = conv_graph(rng, geo, weights, act_binary=True, bias=True)
    xs = randn(rng, 1, 3, 4, 4)
    (native,) = build(g, tmp_path)(xs)
    bias = g.value("b").producer.data
    ring = np.ones((8, 8), bool)
    ring[2:6, 2:6] = False
    np.testing.assert_array_equal(native[0][:, ring], np.repeat(bias[:, None], ring.sum(), axis=1))
    assert_ulps(native, mcir.interpret(g, xs)[0], 1)


@pytest.mark.parametrize(
    ("c", "k", "h"),
    [
        (130, 3, 11),  # > 64 channels per tap (3 words), K % 64 != 0, several pixel panels
        (130, 5, 6),  # 25 taps x 3 words: the im2col ORs into memory instead of registers
    ],
)
def test_xnor_conv_wide_channels_and_fused_relu(tmp_path, rng, c, k, h):
    geo = dict(n=1, c=c, h=h, w=h + 2, o=37, kh=k, kw=k, stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1)
    g = conv_graph(rng, geo, "binary", act_binary=True, bias=True, act="relu")
    xs = randn(rng, 1, c, h, h + 2)
    (native,) = build(g, tmp_path)(xs)
    assert_ulps(native, mcir.interpret(g, xs)[0], 1)


@settings(max_examples=200)
@given(
    size=st.integers(1, 12),
    k=st.integers(1, 4),
    stride=st.integers(1, 3),
    pad=st.integers(0, 3),
    dil=st.integers(1, 3),
)
def test_interior_outputs_are_exactly_those_with_every_tap_inside(size, k, stride, pad, dil):
    """The bit im2col skips bounds tests and masks on the interior range: it must be exact."""
    from mcir.codegen.kernels.binary_conv import interior
    from mcir.ops.nn import conv_out

    n_out = conv_out(size, k, stride, pad, dil)
    if n_out < 1:
        return
    lo, hi = interior(n_out, size, k, stride, pad, dil)
    inside = [all(0 <= o * stride - pad + t * dil < size for t in range(k)) for o in range(n_out)]
    assert inside == [lo <= o < hi for o in range(n_out)]
