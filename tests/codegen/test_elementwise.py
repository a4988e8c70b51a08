"""Elementwise kernels against the interpreter: activations, broadcasting arithmetic,
comparisons, where, casts and per-tensor quantisation (tolerance: see helpers.RTOL)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcir import dtypes
from mcir.encodings import Quant
from mcir.ir import Graph
from mcir.types import TensorType, tensor

from .helpers import check_native, randn, runnable_targets

FLOAT_UNARY = [
    ("relu", {}),
    ("clamp", {"min": -0.5, "max": 0.75}),
    ("clamp", {"min": 0.0}),
    ("sigmoid", {}),
    ("tanh", {}),
    ("silu", {}),
    ("hardswish", {}),
    ("hardsigmoid", {}),
    ("gelu", {}),
    ("gelu", {"approximate": "tanh"}),
    ("exp", {}),
    ("neg", {}),
    ("abs", {}),
    ("erf", {}),
    ("pow", {"exponent": 2.0}),
    ("pow", {"exponent": 3.0}),
    ("pow", {"exponent": -1.0}),
]
POSITIVE_UNARY = [
    ("log", {}),
    ("sqrt", {}),
    ("rsqrt", {}),
    ("pow", {"exponent": 0.5}),
    ("pow", {"exponent": 1.7}),
    ("pow", {"exponent": -2.5}),
]


def test_every_float_unary_op_in_one_library(tmp_path, rng):
    g = Graph("unary")
    x = g.add_input("x", tensor([7, 67]))
    p = g.add_input("p", tensor([7, 67]))
    g.set_outputs([g.add(n, [x], a) for n, a in FLOAT_UNARY] + [g.add(n, [p], a) for n, a in POSITIVE_UNARY])
    xs = randn(rng, 7, 67, scale=3.0)
    xs[0, :6] = [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0]
    ps = np.abs(randn(rng, 7, 67, scale=5.0)) + np.float32(1e-3)
    check_native(g, tmp_path, xs, ps)


def test_pow_of_negative_base(tmp_path):
    g = Graph("pow")
    x = g.add_input("x", tensor([4]))
    g.set_outputs([g.add("pow", [x], {"exponent": e}) for e in (3.0, 4.0, 0.5, 1.5)])
    check_native(g, tmp_path, np.array([-2.0, -0.5, 0.0, 3.0], np.float32))


def test_gelu_relu_on_wide_ranges(tmp_path, rng):
    g = Graph("ranges")
    x = g.add_input("x", tensor([4096]))
    g.set_outputs([g.add("gelu", [x]), g.add("sigmoid", [x]), g.add("tanh", [x])])
    check_native(g, tmp_path, np.linspace(-30, 30, 4096, dtype=np.float32))


def _shapes_broadcasting():
    """Pairs of shapes that broadcast: start from an output shape, drop or set axes to 1."""

    @st.composite
    def pair(draw):
        rank = draw(st.integers(0, 4))
        out = draw(st.lists(st.integers(1, 6), min_size=rank, max_size=rank))

        def operand():
            keep = draw(st.integers(0, rank))
            dims = out[rank - keep :]
            return tuple(d if draw(st.booleans()) else 1 for d in dims)

        return operand(), operand()

    return pair()


@settings(max_examples=12)
@given(shapes=_shapes_broadcasting(), op=st.sampled_from(["add", "sub", "mul", "div", "maximum", "minimum"]))
def test_binary_float_broadcasting(tmp_path_factory, shapes, op):
    rng = np.random.default_rng(1)
    a, b = shapes
    g = Graph("bin")
    x, y = g.add_input("a", tensor(a)), g.add_input("b", tensor(b))
    g.set_outputs([g.add(op, [x, y]), g.add("lt", [x, y])])
    check_native(g, tmp_path_factory.mktemp("bin"), randn(rng, *a), randn(rng, *b) + np.float32(0.1))


@pytest.mark.parametrize("dt", ["i64", "i32", "i8", "u8"])
def test_integer_arithmetic_and_floor_division(tmp_path, dt):
    rng = np.random.default_rng(2)
    npdt = dtypes.by_name(dt).np
    lo, hi = (0, 50) if dt == "u8" else (-50, 50)
    a = rng.integers(lo, hi, (5, 9)).astype(npdt)
    b = rng.integers(lo, hi, (9,)).astype(npdt)
    b[:3] = 0  # x // 0 is 0 in numpy, and must not trap natively
    g = Graph("ints")
    x, y = g.add_input("a", tensor([5, 9], dt)), g.add_input("b", tensor([9], dt))
    outs = [g.add(op, [x, y]) for op in ("add", "sub", "mul", "div", "maximum", "minimum")]
    outs += [g.add(op, [x, y]) for op in ("eq", "ne", "lt", "le", "gt", "ge")]
    outs += [g.add("relu", [x]), g.add("abs", [x]), g.add("neg", [x]), g.add("clamp", [x], {"min": -3.5, "max": 7.2})]
    g.set_outputs(outs)
    with np.errstate(divide="ignore", over="ignore"):
        check_native(g, tmp_path, a, b)


def test_compare_where_and_logic_for_masks(tmp_path, rng):
    g = Graph("mask")
    s = g.add_input("scores", tensor([2, 1, 4, 6]))
    lengths = g.add_input("lengths", tensor([2, 1, 1, 1], "i64"))
    pos = g.const("pos", np.arange(6, dtype=np.int64))
    keep = g.add("lt", [pos, lengths])
    fill = g.const("fill", np.array([-1e9], np.float32))
    masked = g.add("where", [keep, s, fill])
    both = g.add("logical_and", [keep, g.add("gt", [s, g.const("z", np.array([0.0], np.float32))])])
    g.set_outputs([masked, both, g.add("logical_or", [keep, g.add("logical_not", [keep])]), keep])
    xs = randn(rng, 2, 1, 4, 6)
    xs[0, 0, 0, 0] = np.nan
    check_native(g, tmp_path, xs, np.array([3, 6], np.int64).reshape(2, 1, 1, 1))


def test_casts_between_all_dtypes(tmp_path):
    names = ["f32", "i64", "i32", "i16", "i8", "u8", "bool"]
    g = Graph("casts")
    xf = g.add_input("xf", tensor([8]))
    xi = g.add_input("xi", tensor([8], "i64"))
    xb = g.add_input("xb", tensor([8], "bool"))
    outs = []
    for src in (xf, xi, xb):
        for dst in names:
            if src.type.dtype.name == "f32" and dst in ("u8", "i8", "i16"):
                continue  # out-of-range float -> small int is undefined in numpy and C alike
            outs.append(g.add("cast", [src], {"dtype": dst}))
    g.set_outputs(outs)
    check_native(
        g,
        tmp_path,
        np.array([-2.7, -1.0, -0.5, 0.0, 0.4, 1.5, 3.9, 100.2], np.float32),
        np.array([-300, -129, -1, 0, 1, 127, 255, 70000], np.int64),
        np.array([0, 1, 1, 0, 1, 0, 0, 1], bool),
    )


@pytest.mark.parametrize("target", runnable_targets())
@pytest.mark.parametrize(("dt", "scale", "zp"), [("u8", 0.05, 128), ("i8", 0.02, -3), ("i32", 0.001, 0)])
def test_quantize_dequantize_per_tensor(tmp_path, dt, scale, zp, target):
    rng = np.random.default_rng(3)
    g = Graph("q")
    x = g.add_input("x", tensor([3, 50]))
    qt = TensorType((3, 50), dtypes.by_name(dt), Quant(scale=scale, zero_point=zp))
    q = g.add("quantize", [x], type=qt)
    g.set_outputs([q, g.add("dequantize", [q], type=tensor([3, 50]))])
    xs = randn(rng, 3, 50, scale=4.0)
    xs[0, :4] = [1e6, -1e6, np.float32(scale * 2.5), np.float32(scale * 3.5)]  # saturation, ties to even
    check_native(g, tmp_path, xs, target=target)
