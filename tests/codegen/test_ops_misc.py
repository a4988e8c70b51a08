"""Data movement, normalisation, reductions, embedding and attention against the
interpreter (tolerance: see helpers.RTOL), and the coverage of the kernel registry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcir.codegen.kernels import registered
from mcir.ir import Graph
from mcir.ops import all_ops
from mcir.ops.registry import ops_with
from mcir.ops.traits import SOURCE, VIEW
from mcir.types import tensor

from .helpers import check_native, randn


def test_every_registered_op_has_a_native_lowering():
    # views share their operand's storage and sources are data: neither runs a kernel
    missing = set(all_ops()) - set(registered()) - ops_with(VIEW) - ops_with(SOURCE)
    assert not missing, f"ops without a kernel generator: {sorted(missing)}"


def test_movement_ops_in_one_library(tmp_path, rng):
    g = Graph("move")
    x = g.add_input("x", tensor([2, 3, 4, 5]))
    y = g.add_input("y", tensor([2, 5, 4, 5], "i64"))
    outs = [
        g.add("permute", [x], {"dims": [3, 1, 0, 2]}),
        g.add("slice", [x], {"axis": 3, "start": 1, "end": 5, "step": 2}),
        g.add("slice", [x], {"axis": -2, "start": -3}),
        g.add("select", [x], {"axis": 1, "index": -1}),
        g.add("expand", [g.add("select", [x], {"axis": 0, "index": 1})], {"shape": [2, 2, 3, 4, 5]}),
        g.add("concat", [x, x], {"axis": 1}),
        g.add("pad", [x], {"pads": [0, 1, 1, 0, -1, 2, 2, -2], "value": 1.5}),
        g.add("permute", [y], {"dims": [0, 2, 1, 3]}),
        g.add("pad", [y], {"pads": [0, 0, 1, 1, 0, 0, 0, 0], "value": 7.0}),
        g.add("reshape", [g.add("permute", [x], {"dims": [0, 2, 1, 3]})], {"shape": [8, 15]}),
    ]
    g.set_outputs(outs)
    check_native(g, tmp_path, randn(rng, 2, 3, 4, 5), rng.integers(-9, 9, (2, 5, 4, 5)))


@settings(max_examples=10)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), data=st.data())
def test_reductions_random_axes(tmp_path_factory, shape, data):
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), max_size=rank, unique_by=lambda a: a % rank))
    keep = data.draw(st.booleans())
    axis = data.draw(st.integers(-rank, rank - 1))
    rng = np.random.default_rng(len(shape))
    g = Graph("red")
    x = g.add_input("x", tensor(shape))
    xi = g.add_input("xi", tensor(shape, "i32"))
    x8 = g.add_input("x8", tensor(shape, "i8"))
    attrs = {"axes": axes, "keepdim": keep}
    g.set_outputs(
        [
            g.add("sum", [x], attrs),
            g.add("mean", [x], attrs),
            g.add("amax", [x], attrs),
            g.add("sum", [xi], attrs),
            g.add("amax", [xi], attrs),
            g.add("argmax", [x], {"axis": axis, "keepdim": keep}),
            g.add("argmax", [xi], {"axis": axis}),
            g.add("sum", [x8], attrs),
            g.add("amax", [x8], attrs),
        ]
    )
    check_native(
        g,
        tmp_path_factory.mktemp("red"),
        randn(rng, *shape),
        rng.integers(-5, 5, shape).astype(np.int32),
        rng.integers(-128, 127, shape).astype(np.int8),
    )


def test_argmax_ties_and_nan_follow_numpy(tmp_path):
    g = Graph("am")
    x = g.add_input("x", tensor([3, 4]))
    g.set_outputs([g.add("argmax", [x], {"axis": 1})])
    check_native(g, tmp_path, np.array([[1, 3, 3, 0], [np.nan, 1, np.nan, 2], [0, 5, 1, np.nan]], np.float32))


@pytest.mark.parametrize(("shape", "axis"), [((3, 37), -1), ((3, 5, 7), 1), ((4, 6, 2), 0), ((2, 4, 128), 2)])
def test_softmax_and_log_softmax(tmp_path, rng, shape, axis):
    g = Graph("sm")
    x = g.add_input("x", tensor(shape))
    g.set_outputs([g.add("softmax", [x], {"axis": axis}), g.add("log_softmax", [x], {"axis": axis})])
    xs = randn(rng, *shape, scale=4.0)
    xs.flat[0] = -np.inf
    check_native(g, tmp_path, xs)


@pytest.mark.parametrize(
    ("shape", "dims", "affine"), [((5, 33), 1, 2), ((4, 256), 1, 2), ((2, 3, 4, 5), 2, 1), ((3, 16), 1, 0)]
)
def test_layer_norm(tmp_path, rng, shape, dims, affine):
    g = Graph("ln")
    x = g.add_input("x", tensor(shape))
    norm = shape[len(shape) - dims :]
    params = [g.const(n, randn(rng, *norm)) for n in ("w", "b")[:affine]]
    g.set_outputs([g.add("layer_norm", [x, *params], {"dims": dims, "eps": 1e-5})])
    check_native(g, tmp_path, randn(rng, *shape, scale=3.0) + np.float32(2.0))


def test_batch_norm_with_fused_relu(tmp_path, rng):
    g = Graph("bn")
    x = g.add_input("x", tensor([2, 4, 3, 3]))
    ps = [g.const(n, (rng.random(4) + 0.5).astype(np.float32)) for n in ("w", "b", "mean", "var")]
    g.set_outputs([g.add("relu", [g.add("batch_norm", [x, *ps])])])
    check_native(g, tmp_path, randn(rng, 2, 4, 3, 3))


@pytest.mark.parametrize("idx_dtype", ["i64", "i32"])
def test_embedding(tmp_path, rng, idx_dtype):
    g = Graph("emb")
    i = g.add_input("ids", tensor([2, 5], idx_dtype))
    g.set_outputs([g.add("embedding", [i, g.const("table", randn(rng, 11, 6))])])
    check_native(g, tmp_path, rng.integers(0, 11, (2, 5)).astype(np.int64 if idx_dtype == "i64" else np.int32))


@pytest.mark.parametrize(
    ("q", "k", "v", "mask", "attrs"),
    [
        ((2, 4, 128, 64), (2, 4, 128, 64), (2, 4, 128, 64), None, {}),
        ((3, 7, 5), (3, 9, 5), (3, 9, 6), None, {"is_causal": True}),
        ((2, 3, 7, 5), (2, 3, 9, 5), (2, 3, 9, 6), ((7, 9), "bool"), {"scale": 0.3}),
        ((2, 3, 7, 5), (2, 3, 9, 5), (2, 3, 9, 6), ((2, 1, 7, 9), "f32"), {}),
        ((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8), ((1, 1, 1, 4), "bool"), {}),
        # key rows of at least one vector: the vectorised mask pass, then its scalar tail
        ((1, 2, 20, 8), (1, 2, 37, 8), (1, 2, 37, 8), ((1, 1, 20, 37), "bool"), {}),
        ((1, 2, 20, 8), (1, 2, 37, 8), (1, 2, 37, 8), ((1, 1, 1, 37), "bool"), {}),
        ((2, 20, 8), (2, 32, 8), (2, 32, 8), ((2, 20, 32), "f32"), {}),
    ],
)
def test_scaled_dot_product_attention(tmp_path, rng, q, k, v, mask, attrs):
    g = Graph("sdpa")
    ins = [g.add_input(n, tensor(s)) for n, s in zip("qkv", (q, k, v))]
    data = [randn(rng, *s) for s in (q, k, v)]
    if mask is not None:
        ins.append(g.add_input("mask", tensor(mask[0], mask[1])))
        m = rng.random(mask[0]) > 0.3 if mask[1] == "bool" else randn(rng, *mask[0])
        if mask[1] == "bool" and len(mask[0]) == 4 and mask[0][-1] == 4:
            m[..., 0] = False  # a key masked everywhere; rows stay partly visible
        data.append(m)
    g.set_outputs([g.add("scaled_dot_product_attention", ins, attrs)])
    check_native(g, tmp_path, *data)


def test_fully_masked_attention_row_gives_zeros_like_torch(tmp_path, rng):
    g = Graph("sdpa_nan")
    ins = [g.add_input(n, tensor([1, 3, 4])) for n in "qkv"] + [g.add_input("m", tensor([3, 3], "bool"))]
    g.set_outputs([g.add("scaled_dot_product_attention", ins)])
    m = np.ones((3, 3), bool)
    m[1] = False
    check_native(g, tmp_path, *(randn(rng, 1, 3, 4) for _ in range(3)), m)


def test_rank0_tensors(tmp_path):
    g = Graph("scalar")
    x = g.add_input("x", tensor([]))
    outs = [g.add("sum", [x]), g.add("mean", [x], {"axes": [0]}), g.add("amax", [x], {"axes": [-1], "keepdim": True})]
    outs += [
        g.add("argmax", [x]),
        g.add("pad", [x], {"pads": []}),
        g.add("gelu", [x]),
        g.add("reshape", [x], {"shape": [1]}),
    ]
    g.set_outputs(outs)
    check_native(g, tmp_path, np.array(-1.25, np.float32))
