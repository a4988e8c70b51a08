"""A pooling op after an f32 GEMM convolution (and its fused activation) runs inside the conv kernel.

Specification: ``conv2d -> [relu] -> max_pool2d | avg_pool2d`` whose pooling windows all lie inside
the conv's result (no padding, no ceil_mode overhang, stride <= 4) compiles to one kernel that pools
each image while its result is in cache; the unpooled tensor is never stored. The result equals the
interpreter within the backend's f32 tolerance (helpers.RTOL: max |native - reference| <= 1e-5 x
max |reference|) and is bit-identical to the unfused kernels (the same GEMM, then the same pooling
code), for batch 1 and 3, groups, stride 2, odd sizes, and 1, 2 or 3 threads. Pools the conv cannot
fuse (padding, a conv result that is also read elsewhere, depthwise convs) keep their own kernel.
"""

from __future__ import annotations

import numpy as np
import pytest

from mcir.codegen.lowering import build_steps
from mcir.codegen.target import resolve
from mcir.interp import interpret
from mcir.ir import Graph
from mcir.types import tensor

from .helpers import assert_close, build, check_native, randn


def conv_pool(
    rng: np.random.Generator,
    xs: tuple[int, int, int, int],
    ws: tuple[int, int, int, int],
    conv: dict,
    pool: str = "max_pool2d",
    pool_attrs: dict | None = None,
    act: str | None = "relu",
) -> Graph:
    g = Graph("convpool")
    x = g.add_input("x", tensor(list(xs)))
    y = g.add("conv2d", [x, g.const("w", randn(rng, *ws, scale=0.3)), g.const("b", randn(rng, ws[0]))], conv)
    if act:
        y = g.add(act, [y])
    g.set_outputs([g.add(pool, [y], pool_attrs or {"kernel": [2, 2], "stride": [2, 2]})])
    return g


def kernel_ops(g: Graph) -> list[str]:
    """The ops that get a kernel of their own (fused ones are absorbed into their producer's)."""
    return [step.op.name for step, _ in build_steps(g, resolve("native"))]


@pytest.mark.parametrize(
    ("xs", "ws", "conv", "pool_attrs"),
    [
        ((1, 3, 32, 32), (32, 3, 3, 3), {"padding": [1, 1]}, None),  # the benchmark CNN's first layer, batch 1
        ((3, 16, 16, 16), (24, 16, 3, 3), {"padding": [1, 1]}, None),  # batch 3: image tasks
        ((2, 5, 11, 13), (7, 5, 3, 3), {"padding": [1, 1]}, None),  # odd sizes: the pool floors 11x13 to 5x6
        ((2, 4, 15, 15), (6, 4, 3, 3), {"padding": [1, 1], "stride": [2, 2]}, None),  # stride-2 conv
        ((1, 6, 9, 9), (6, 2, 3, 3), {"padding": [1, 1], "groups": 3}, None),  # grouped GEMM, 3 groups
        ((2, 4, 12, 12), (8, 4, 3, 3), {"dilation": [2, 2]}, {"kernel": [3, 3], "stride": [3, 3]}),
        ((2, 4, 10, 10), (8, 4, 1, 1), {}, {"kernel": [3, 2], "stride": [1, 2]}),  # overlapping windows
    ],
)
@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
def test_fused_pool_matches_the_interpreter(tmp_path, rng, xs, ws, conv, pool_attrs, pool):
    g = conv_pool(rng, xs, ws, conv, pool, pool_attrs)
    assert kernel_ops(g) == ["conv2d"]  # relu and the pool run inside the conv kernel
    check_native(g, tmp_path, randn(rng, *xs))


def test_fused_pool_without_activation(tmp_path, rng):
    g = conv_pool(rng, (2, 3, 8, 8), (4, 3, 3, 3), {"padding": [1, 1]}, act=None)
    assert kernel_ops(g) == ["conv2d"]
    check_native(g, tmp_path, randn(rng, 2, 3, 8, 8))


def test_fused_pool_is_bit_identical_to_the_separate_kernels(tmp_path, rng):
    xs = (3, 8, 16, 16)
    fused = conv_pool(rng, xs, (16, 8, 3, 3), {"padding": [1, 1]})
    # the same layers with the unpooled result also an output: there the pool keeps its own kernel
    conv = next(op for op in fused.ops if op.name == "conv2d")
    g = Graph("unfused")
    x = g.add_input("x", tensor(list(xs)))
    w, b = g.const("w", conv.operands[1].producer.data), g.const("b", conv.operands[2].producer.data)
    relu = g.add("relu", [g.add("conv2d", [x, w, b], {"padding": [1, 1]})])
    g.set_outputs([g.add("max_pool2d", [relu], {"kernel": [2, 2], "stride": [2, 2]}), relu])
    assert kernel_ops(g) == ["conv2d", "max_pool2d"]
    data = randn(rng, *xs)
    np.testing.assert_array_equal(build(fused, tmp_path)(data)[0], build(g, tmp_path)(data)[0])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fused_pool_is_bit_identical_for_1_2_3_threads(tmp_path, rng, threads):
    xs = (5, 16, 16, 16)  # 5 images over up to 3 threads: uneven image groups
    g = conv_pool(rng, xs, (32, 16, 3, 3), {"padding": [1, 1]})
    x = randn(rng, *xs)
    lib = build(g, tmp_path)
    one = lib(x)[0]
    lib.set_threads(threads)
    np.testing.assert_array_equal(lib(x)[0], one)
    assert_close(one, interpret(g, x)[0])


def test_nan_and_infinities_pass_through_the_fused_pool(tmp_path, rng):
    g = conv_pool(rng, (1, 2, 6, 6), (3, 2, 1, 1), {}, act=None)
    x = randn(rng, 1, 2, 6, 6)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 4, 4] = np.inf
    out = check_native(g, tmp_path, x)[0]
    assert np.isnan(out[0, :, 0, 0]).all()


@pytest.mark.parametrize(
    ("xs", "ws", "conv", "pool_attrs"),
    [
        ((2, 4, 8, 8), (6, 4, 3, 3), {"padding": [1, 1]}, {"kernel": [2, 2], "stride": [2, 2], "padding": [1, 1]}),
        ((1, 4, 9, 9), (6, 4, 3, 3), {}, {"kernel": [2, 2], "stride": [2, 2], "ceil_mode": True}),  # overhang
        ((2, 8, 8, 8), (8, 1, 3, 3), {"padding": [1, 1], "groups": 8}, None),  # depthwise: direct rows
    ],
)
def test_pools_the_conv_cannot_fuse_keep_their_kernel(tmp_path, rng, xs, ws, conv, pool_attrs):
    g = conv_pool(rng, xs, ws, conv, "max_pool2d", pool_attrs)
    assert kernel_ops(g) == ["conv2d", "max_pool2d"]
    check_native(g, tmp_path, randn(rng, *xs))


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel": [2, 2], "stride": [2, 2]},  # one load per window row, taps picked from it
        {"kernel": [3, 2], "stride": [1, 3], "dilation": [1, 2]},  # also: a gap between a window's columns
        {"kernel": [3, 3], "stride": [1, 1]},  # overlapping windows: one load per tap
    ],
)
def test_row_max_pool_propagates_nan_and_infinities_like_numpy(tmp_path, rng, attrs):
    g = Graph("maxnan")
    x = g.add_input("x", tensor([2, 3, 9, 40]))
    g.set_outputs([g.add("max_pool2d", [x], attrs)])
    data = randn(rng, 2, 3, 9, 40)
    data.reshape(-1)[rng.choice(data.size, 40, replace=False)] = np.nan
    data.reshape(-1)[rng.choice(data.size, 40, replace=False)] = np.inf
    data.reshape(-1)[rng.choice(data.size, 40, replace=False)] = -np.inf
    data[1, 2] = -np.inf  # whole windows of -inf
    out = check_native(g, tmp_path, data)[0]  # NaN and infinities in the same places as numpy's
    assert np.isnan(out).any() and np.isposinf(out).any() and np.isneginf(out).any()
