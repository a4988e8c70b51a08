"""INT8 conv2d (u8 activations, int8 weights) native against the interpreter: random
geometry (stride, padding, dilation, groups incl. depthwise), per-channel and
per-tensor weights, with and without bias, u8 and f32 results, on every dot
instruction (contract: see test_int8_gemm)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcir import dtypes
from mcir.codegen.kernels import conv_i8, gemm_i8
from mcir.encodings import Quant
from mcir.ir import Graph
from mcir.ops.nn import conv_out
from mcir.types import TensorType

from .test_int8_gemm import TARGETS, _portable, affine, check_int8, int8_weight, int32_bias


def qconv(
    rng,
    n: int,
    c: int,
    o: int,
    hw: tuple[int, int],
    ks: tuple[int, int],
    *,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
    groups=1,
    per_axis=True,
    bias=True,
    out="u8",
    zx=128,
    act=None,
) -> tuple[Graph, np.ndarray]:
    """conv2d(u8 x, i8 w, i32 b) with an f32 or quantised result; returns (graph, a u8 input)."""
    import torch  # the float reference for choosing the output range

    g = Graph("qconv")
    xq = Quant(scale=0.03, zero_point=zx)
    x = g.add_input("x", TensorType((n, c, *hw), dtypes.u8, xq))
    xs = rng.integers(0, 256, (n, c, *hw)).astype(np.uint8)
    w, sw = int8_weight(g, "w", rng, (o, c // groups, *ks), per_axis)
    wq = w.producer.data["data"] if per_axis else w.producer.data
    ops = [x, w]
    b_real = None
    if bias:
        bv, b_real = int32_bias(g, "b", rng, (np.float64(xq.scale) * sw).astype(np.float32))
        ops.append(bv)
    attrs = {"stride": list(stride), "padding": list(padding), "dilation": list(dilation), "groups": groups}
    real = torch.nn.functional.conv2d(
        torch.from_numpy((xs.astype(np.float64) - zx) * xq.scale),
        torch.from_numpy(wq.astype(np.float64) * sw.astype(np.float64).reshape(-1, 1, 1, 1)),
        None if b_real is None else torch.from_numpy(b_real),
        stride,
        padding,
        dilation,
        groups,
    ).numpy()
    if out == "f32":
        y = g.add("conv2d", ops, attrs)
        if act:
            y = g.add(act, [y])
    else:
        t = TensorType(real.shape, dtypes.by_name(out), affine(real.min(), real.max(), out))
        y = g.add("conv2d", ops, attrs, type=t)
    g.set_outputs([y])
    return g, xs


@st.composite
def geometries(draw):
    depthwise = draw(st.booleans())
    c = draw(st.integers(1, 9))
    if depthwise:
        groups, o = c, c * draw(st.integers(1, 2))
    else:
        groups = draw(st.sampled_from([d for d in (1, 2, 3) if c % d == 0]))
        o = groups * draw(st.integers(1, 7))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = draw(st.integers(max(1, (kh - 1) * dil[0] + 1 - 2 * pad[0]), 12))
    w = draw(st.integers(max(1, (kw - 1) * dil[1] + 1 - 2 * pad[1]), 12))
    return dict(c=c, o=o, hw=(h, w), ks=(kh, kw), stride=stride, padding=pad, dilation=dil, groups=groups)


@settings(max_examples=30)
@given(
    geo=geometries(),
    n=st.integers(1, 2),
    per_axis=st.booleans(),
    bias=st.booleans(),
    out=st.sampled_from(["u8", "f32"]),
    zx=st.integers(0, 255),
)
def test_conv_random(tmp_path_factory, geo, n, per_axis, bias, out, zx):
    rng = np.random.default_rng(geo["c"] * 1009 + geo["o"] * 13 + zx)
    geo = dict(geo)
    c, o, hw, ks = geo.pop("c"), geo.pop("o"), geo.pop("hw"), geo.pop("ks")
    g, xs = qconv(rng, n, c, o, hw, ks, per_axis=per_axis, bias=bias, out=out, zx=zx, **geo)
    check_int8(g, tmp_path_factory.mktemp("qconv"), xs)


CASES = [
    # (n, c, o, hw, ks, attrs): the benchmark CNN's layers, a strided one, depthwise, a ragged panel
    (1, 3, 32, (32, 32), (3, 3), {"padding": (1, 1)}),
    (2, 32, 64, (16, 16), (3, 3), {"padding": (1, 1)}),
    (1, 64, 128, (8, 8), (3, 3), {"padding": (1, 1)}),
    (1, 16, 24, (15, 13), (3, 3), {"stride": (2, 2), "padding": (1, 1)}),
    (2, 16, 16, (8, 8), (3, 3), {"padding": (1, 1), "groups": 16}),
    (1, 8, 20, (7, 9), (1, 1), {}),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("n", "c", "o", "hw", "ks", "attrs"), CASES)
@pytest.mark.parametrize("out", ["u8", "f32"])
def test_conv_on_each_target(tmp_path, target, n, c, o, hw, ks, attrs, out):
    rng = np.random.default_rng(c + o)
    g, xs = qconv(rng, n, c, o, hw, ks, out=out, zx=99, act="relu" if out == "f32" else None, **attrs)
    check_int8(g, tmp_path, xs, target=target)


@pytest.mark.parametrize(("n", "c", "o", "hw", "ks", "attrs"), CASES[3:])
def test_conv_portable_path_runs_here(tmp_path, monkeypatch, n, c, o, hw, ks, attrs):
    monkeypatch.setattr(gemm_i8, "dot_isa", _portable)
    monkeypatch.setattr(conv_i8, "dot_isa", _portable)
    rng = np.random.default_rng(1)
    g, xs = qconv(rng, n, c, o, hw, ks, zx=3, **attrs)
    check_int8(g, tmp_path, xs)


def test_padding_is_the_real_zero(tmp_path):
    """An all-zero-point image convolved with padding gives exactly the bias everywhere."""
    rng = np.random.default_rng(0)
    g, _ = qconv(rng, 1, 4, 8, (5, 5), (3, 3), padding=(2, 2), out="f32", zx=200)
    xs = np.full((1, 4, 5, 5), 200, np.uint8)
    (y,) = check_int8(g, tmp_path, xs)
    assert y.shape == (1, 8, conv_out(5, 3, 1, 2, 1), conv_out(5, 3, 1, 2, 1))
    # every output of a channel is that channel's bias
    assert np.allclose(y, y[:, :, :1, :1], rtol=0, atol=1e-6)
