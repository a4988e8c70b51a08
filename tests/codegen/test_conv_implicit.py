"""Implicit-GEMM f32 convolution (kernels/conv_implicit.py): B read from kw column-shifted image copies.

Specification: an ungrouped conv2d with unit row stride and constant weights takes the implicit
path on a vector target; row-strided, grouped and runtime-weight convolutions keep im2col. Either
way the result equals the interpreter within the backend's f32 tolerance (helpers.RTOL:
max |native - reference| <= 1e-5 x max |reference|; the implicit path sums each output in
(c, i, j) order, im2col in K chunks: float reassociation only). Edges covered: batch 1 and 3,
padding 0/1/2 and unequal, dilation, column stride 2, 1x1/3x1/5x5 kernels, odd sizes, output rows
shorter and longer than a vector, a partial last vector (alone in its panel, or ending a full
one), ragged channel tiles, each x86 target level, and 1/2/3 threads bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest

from mcir.codegen.kernels.conv import _implicit, _tiling, geometry
from mcir.codegen.kernels.conv_implicit import channel_chunks
from mcir.codegen.target import resolve
from mcir.interp import interpret
from mcir.ir import Graph
from mcir.types import tensor

from .helpers import assert_close, build, check_native, randn, runnable_targets

LANES = resolve("native").f32_lanes


def conv_graph(rng, xs, ws, attrs, runtime_weight: bool = False) -> Graph:
    g = Graph("convi")
    x = g.add_input("x", tensor(list(xs)))
    w = g.add_input("w", tensor(list(ws))) if runtime_weight else g.const("w", randn(rng, *ws, scale=0.3))
    y = g.add("conv2d", [x, w, g.const("b", randn(rng, ws[0]))], attrs)
    g.set_outputs([g.add("relu", [y])])
    return g


def conv_op(g: Graph):
    return next(op for op in g.ops if op.name == "conv2d")


@pytest.mark.parametrize(
    ("xs", "ws", "attrs", "implicit"),
    [
        ((1, 3, 32, 32), (32, 3, 3, 3), {"padding": [1, 1]}, True),
        ((2, 4, 9, 7), (5, 4, 1, 1), {}, True),
        ((1, 3, 8, 9), (4, 3, 3, 3), {"padding": [1, 1], "stride": [1, 2]}, True),  # column stride only
        ((1, 3, 32, 32), (32, 3, 3, 3), {"padding": [1, 1], "stride": [2, 2]}, False),  # row stride
        ((1, 4, 8, 16), (4, 2, 3, 3), {"padding": [1, 1], "groups": 2}, False),  # grouped
    ],
)
def test_which_convolutions_take_the_implicit_path(rng, xs, ws, attrs, implicit):
    assert _implicit(conv_op(conv_graph(rng, xs, ws, attrs)), resolve("native")) is implicit


def test_runtime_weights_keep_im2col(tmp_path, rng):
    g = conv_graph(rng, (1, 3, 6, 10), (4, 3, 3, 3), {"padding": [1, 1]}, runtime_weight=True)
    assert not _implicit(conv_op(g), resolve("native"))
    check_native(g, tmp_path, randn(rng, 1, 3, 6, 10), randn(rng, 4, 3, 3, 3))


@pytest.mark.parametrize(
    ("xs", "ws", "attrs"),
    [
        ((1, 3, 32, 32), (32, 3, 3, 3), {"padding": [1, 1]}),  # the CNN's first layer at batch 1
        ((3, 32, 16, 16), (64, 32, 3, 3), {"padding": [1, 1]}),  # its second layer, batch 3: image tasks
        ((2, 64, 8, 8), (128, 64, 3, 3), {"padding": [1, 1]}),  # its third: two output rows a vector
        ((2, 5, 7, LANES), (13, 5, 3, 3), {"padding": [1, 1]}),  # odd height, 13 channels: ragged row tile
        ((1, 2, 5, 3 * LANES), (6, 2, 3, 3), {"padding": [1, 1]}),  # rows of 3 vectors
        ((2, 3, 9, 2 * LANES + 3), (7, 3, 5, 5), {"padding": [2, 2]}),  # rows end mid-vector
        ((1, 4, 11, 13), (8, 4, 3, 3), {"padding": [2, 1], "dilation": [2, 1]}),  # unequal padding
        ((2, 3, 12, 21), (9, 3, 3, 3), {"padding": [1, 0], "dilation": [1, 2]}),
        ((1, 3, 7, 19), (5, 3, 3, 3), {"padding": [1, 1], "stride": [1, 2]}),  # column stride 2
        ((1, 6, 6, 11), (10, 6, 3, 1), {"padding": [1, 0]}),  # 3x1: no column padding
        ((3, 1, 4, 5), (1, 1, 1, 1), {}),  # one channel in and out, 20 pixels: one partial vector
        ((1, 2, 4, 4 * LANES - 1), (3, 2, 1, 1), {}),  # 4 vectors, the last partial, in one full panel
    ],
)
def test_implicit_conv_matches_the_interpreter(tmp_path, rng, xs, ws, attrs):
    g = conv_graph(rng, xs, ws, attrs)
    assert _implicit(conv_op(g), resolve("native"))
    check_native(g, tmp_path, randn(rng, *xs))


def test_many_input_channels_run_in_l1_sized_chunks(tmp_path, rng):
    # 150 channels x 3 copies x (4 vectors + 2 rows) of 16-float rows: several channel chunks, whose
    # partial sums are added in the output before the bias and the activation of the last chunk
    g = conv_graph(rng, (2, 150, 8, 16), (7, 150, 3, 3), {"padding": [1, 1]})
    op = conv_op(g)
    chunks = channel_chunks(geometry(op), _tiling(op, resolve("native")))
    assert len(chunks) >= 3 and chunks[0][0] == 0 and chunks[-1][1] == 150
    check_native(g, tmp_path, randn(rng, 2, 150, 8, 16))


@pytest.mark.parametrize("target", runnable_targets())
def test_implicit_conv_on_each_target(tmp_path, rng, target):
    g = conv_graph(rng, (2, 3, 9, 13), (11, 3, 3, 3), {"padding": [1, 1]})
    check_native(g, tmp_path, randn(rng, 2, 3, 9, 13), target=target)


@pytest.mark.parametrize(("batch", "c", "o"), [(1, 32, 64), (5, 16, 48)])
def test_implicit_conv_is_bit_identical_for_1_2_3_threads(tmp_path, rng, batch, c, o):
    # batch 1 splits the image's panels across threads, batch 5 splits images (unevenly)
    xs = (batch, c, 16, 2 * LANES + 5)
    g = conv_graph(rng, xs, (o, c, 3, 3), {"padding": [1, 1]})
    x = randn(rng, *xs)
    lib = build(g, tmp_path)
    one = lib(x)[0]
    for threads in (2, 3):
        lib.set_threads(threads)
        np.testing.assert_array_equal(lib(x)[0], one)
    assert_close(one, interpret(g, x)[0])
