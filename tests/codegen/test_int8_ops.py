"""The ops around int8 layers on quantised u8/i8 tensors, native against the interpreter:
quantize / requantize / dequantize, add, max/avg/adaptive pooling, mean and data
movement (contract: see test_int8_gemm; most of these are bit exact)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mcir
from mcir import dtypes
from mcir.encodings import Quant
from mcir.errors import CodegenError
from mcir.ir import Graph
from mcir.types import TensorType, tensor

from .helpers import build
from .test_int8_gemm import TARGETS, check_int8

QA = Quant(scale=0.05, zero_point=120)
QB = Quant(scale=0.031, zero_point=7)
QS = Quant(scale=0.04, zero_point=-3)


def q8(shape, enc=QA, dtype="u8") -> TensorType:
    return TensorType(tuple(shape), dtypes.by_name(dtype), enc)


def rand_q(rng, shape, dtype="u8") -> np.ndarray:
    info = np.iinfo(dtypes.by_name(dtype).np)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtypes.by_name(dtype).np)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # the interpreter on NaN
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("dtype", "enc"), [("u8", QA), ("i8", QS)])
def test_quantize_dequantize_requantize(tmp_path, rng, target, dtype, enc):
    g = Graph("qdq")
    x = g.add_input("x", tensor([3, 67]))
    q = g.add("quantize", [x], type=q8((3, 67), enc, dtype))
    r = g.add("quantize", [q], type=q8((3, 67), QB, "u8"))  # requantise to another scale and zero point
    g.set_outputs([q, r, g.add("dequantize", [r], type=tensor([3, 67]))])
    xs = (rng.standard_normal((3, 67)) * 4).astype(np.float32)  # wide enough to saturate both ends
    xs[0, :3] = [np.nan, np.inf, -np.inf]
    q_n, r_n, d_n = build(g, tmp_path, target=target)(xs)
    # bit exact: the same f32 arithmetic as the interpreter
    q_r, r_r, d_r = mcir.interpret(g, xs)
    np.testing.assert_array_equal(q_n, q_r)
    np.testing.assert_array_equal(r_n, r_r)
    np.testing.assert_array_equal(d_n, d_r)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("sa", "sb"), [((2, 5, 33), (2, 5, 33)), ((4, 16, 3, 3), (16, 1, 1)), ((7,), (3, 7))])
@pytest.mark.parametrize("out", ["u8", "f32"])
def test_add(tmp_path, rng, target, sa, sb, out):
    g = Graph("qadd")
    a = g.add_input("a", q8(sa, QA))
    b = g.add_input("b", q8(sb, QB))
    shape = np.broadcast_shapes(sa, sb)
    t = q8(shape, Quant(scale=0.07, zero_point=100)) if out == "u8" else None
    g.set_outputs([g.add("add", [a, b], type=t)])
    check_int8(g, tmp_path, rand_q(rng, sa), rand_q(rng, sb), target=target)


@settings(max_examples=25)
@given(
    kind=st.sampled_from(["max_pool2d", "avg_pool2d"]),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    p=st.integers(0, 1),
    ceil=st.booleans(),
    include_pad=st.booleans(),
    divisor=st.sampled_from([None, None, 5]),
    h=st.integers(3, 11),
    w=st.integers(3, 11),
    requant=st.booleans(),
)
def test_pooling_random(tmp_path_factory, kind, k, s, p, ceil, include_pad, divisor, h, w, requant):
    p = min(p, k // 2)
    g = Graph("qpool")
    x = g.add_input("x", q8((2, 3, h, w)))
    attrs = {"kernel": [k, k], "stride": [s, s], "padding": [p, p], "ceil_mode": ceil}
    if kind == "avg_pool2d":
        attrs |= {"count_include_pad": include_pad, "divisor": divisor}
    y = g.add(kind, [x], attrs)
    t = q8(y.type.shape, QB if requant else QA)
    g.ops[-1].result.type = t  # the pool's result: same quantisation (or another one: requantised)
    g.set_outputs([y])
    check_int8(g, tmp_path_factory.mktemp("qpool"), rand_q(np.random.default_rng(h * w), (2, 3, h, w)))


@pytest.mark.parametrize("out", [(1, 1), (3, 2), (4, 4)])
def test_adaptive_avg_pool(tmp_path, rng, out):
    g = Graph("qap")
    x = g.add_input("x", q8((2, 5, 7, 6)))
    y = g.add("adaptive_avg_pool2d", [x], {"output_size": list(out)}, type=q8((2, 5, *out), QB))
    g.set_outputs([y])
    check_int8(g, tmp_path, rand_q(rng, (2, 5, 7, 6)))


@pytest.mark.parametrize(("axes", "keepdim"), [([1], False), ([0, 2], True), ([], False), ([-1], False)])
@pytest.mark.parametrize("out", ["u8", "f32"])
def test_mean(tmp_path, rng, axes, keepdim, out):
    g = Graph("qmean")
    x = g.add_input("x", q8((3, 12, 20)))
    y = g.add("mean", [x], {"axes": axes, "keepdim": keepdim})
    if out == "u8":
        y.type = q8(y.type.shape, QB)
    else:
        y.type = tensor(y.type.shape)
    g.set_outputs([y])
    check_int8(g, tmp_path, rand_q(rng, (3, 12, 20)))


def _moved(g: Graph, name: str, operands, attrs) -> object:
    """A data-movement op on quantised values: inferred shape, the operand's dtype and encoding."""
    v = g.add(name, operands, attrs)
    x = operands[0].type
    v.type = TensorType(v.type.shape, x.dtype, x.encoding)
    return v


def test_data_movement_keeps_stored_values(tmp_path, rng):
    g = Graph("qmove")
    x = g.add_input("x", q8((2, 3, 4, 5), QS, "i8"))
    p = _moved(g, "permute", [x], {"dims": [0, 2, 3, 1]})
    s = _moved(g, "slice", [p], {"axis": 1, "start": 1, "end": 4, "step": 2})
    sel = _moved(g, "select", [x], {"axis": 1, "index": -1})
    cat = _moved(g, "concat", [x, x], {"axis": 3})
    r = _moved(g, "reshape", [cat], {"shape": [2, 3, 40]})
    e = _moved(g, "expand", [_moved(g, "reshape", [sel], {"shape": [2, 1, 4, 5]})], {"shape": [2, 3, 4, 5]})
    g.set_outputs([s, sel, r, e])
    xs = rand_q(rng, (2, 3, 4, 5), "i8")
    outs = check_int8(g, tmp_path, xs)
    np.testing.assert_array_equal(outs[0], xs.transpose(0, 2, 3, 1)[:, 1:4:2])


def test_movement_that_changes_quantisation_raises(tmp_path):
    g = Graph("bad")
    x = g.add_input("x", q8((2, 3)))
    g.set_outputs([g.add("permute", [x], {"dims": [1, 0]}, type=q8((3, 2), QB))])
    with pytest.raises(CodegenError, match="must have the operand's type encoding"):
        build(g, tmp_path)
