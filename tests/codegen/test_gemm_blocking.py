"""The fp32 GEMM's blocking edges and thread splits (``mcir/codegen/kernels/gemm_f32.py``, docs/codegen.md).

Specification:

* every blocking edge is exact to the contract: M, N and K at 1, one below, at and one above the tile
  (MR rows, NR = panel columns, KC = K chunk) and at an odd size spanning several tiles, native
  against the interpreter within ``1e-5 x max |reference|``, on ``native`` and the x86-64 levels;
* the K chunking, the next-panel prefetch and the row/panel splits really happen for the shapes
  that should get them (checked on the tiling and the emitted IR, so the edge cases mean something);
* a threaded GEMM gives bit-identical outputs for 1, 2 and 3 workers whether it is split by B panels,
  by row tiles or (a batched convolution) by images, and a single image's convolution likewise.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from mcir.codegen.kernels.gemm_f32 import (
    LARGE_M_PANEL_CHUNK_BYTES,
    LARGE_M_ROWS,
    PANEL_CHUNK_BYTES,
    choose_split,
    choose_tiling,
)
from mcir.codegen.parallel import MIN_PARALLEL_MACS
from mcir.codegen.target import resolve
from mcir.interp import interpret
from mcir.ir import Graph
from mcir.types import tensor

from .helpers import assert_close, build, randn, runnable_targets
from .test_threads import outputs_for_each_thread_count

NATIVE = resolve("native")


def edges(tile: int, large: int) -> list[int]:
    """1, tile - 1, tile, tile + 1 and an odd size over several tiles (duplicates and 0 dropped)."""
    return sorted({v for v in (1, tile - 1, tile, tile + 1, large) if v >= 1})


def max_mr(target) -> int:
    """The row tile the target gets when M does not ask for a smaller one."""
    return choose_tiling(1000, 1000, 1000, target).mr


def many_linears(rng, m: int, ns: list[int], ks: list[int]) -> tuple[Graph, list[np.ndarray]]:
    """One graph holding a linear (with bias, ReLU) per (N, K): one compile covers many shapes."""
    g = Graph(f"edges{m}")
    outs, xs = [], []
    for n in ns:
        for k in ks:
            x = g.add_input(f"x_{n}_{k}", tensor([m, k]))
            w = g.const(f"w_{n}_{k}", randn(rng, n, k, scale=k**-0.5))
            outs.append(g.add("relu", [g.add("linear", [x, w, g.const(f"b_{n}_{k}", randn(rng, n))])]))
            xs.append(randn(rng, m, k))
    g.set_outputs(outs)
    return g, xs


@pytest.mark.parametrize(
    "target", [t if t == "native" else pytest.param(t, marks=pytest.mark.slow) for t in runnable_targets()]
)
def test_linear_is_exact_at_every_blocking_edge(tmp_path, rng, target):
    t = resolve(target)
    probe = choose_tiling(64, 4096, 4096, t)
    nr, kc = probe.nr, probe.kc
    assert kc < 4096 and kc * nr * 4 <= PANEL_CHUNK_BYTES  # K is chunked, a chunk of a panel fits L1
    ms = edges(max_mr(t), 29)
    ns = edges(nr, 2 * nr + 5)
    ks = edges(kc, 2 * kc + 3)
    for m in ms:
        g, xs = many_linears(rng, m, ns, ks)
        lib = build(g, tmp_path, target=target)
        for got, want, x in zip(lib(*xs), interpret(g, *xs), xs):
            assert_close(got, want, what=f"{target} linear M={m} K={x.shape[1]} N={want.shape[1]}")


def test_many_rows_take_longer_k_chunks_exactly_at_their_edges(tmp_path, rng):
    """M >= LARGE_M_ROWS chunks K by LARGE_M_PANEL_CHUNK_BYTES (fewer passes over C), fewer rows by
    PANEL_CHUNK_BYTES; the long chunks at K one above two of them and a ragged last row tile match the
    interpreter, bit-identical for 1, 2 and 3 threads."""
    few, many = choose_tiling(LARGE_M_ROWS - 1, 4096, 4096, NATIVE), choose_tiling(LARGE_M_ROWS, 4096, 4096, NATIVE)
    assert few.kc * few.nr * 4 <= PANEL_CHUNK_BYTES < many.kc * many.nr * 4 <= LARGE_M_PANEL_CHUNK_BYTES
    m, k = LARGE_M_ROWS + many.mr + 1, 2 * many.kc + 1
    g, xs = many_linears(rng, m, [many.nr + 3], [k])
    t = choose_tiling(m, many.nr + 3, k, NATIVE)
    assert t.kc < k and t.kc * t.nr * 4 > PANEL_CHUNK_BYTES  # really several long chunks (equal: 3 x 683)
    results = outputs_for_each_thread_count(build(g, tmp_path), *xs)
    assert_close(results[0][0], interpret(g, *xs)[0], what=f"linear M={m} K={k}")
    for res in results[1:]:
        np.testing.assert_array_equal(res[0], results[0][0])


def test_edge_shapes_take_the_paths_they_name():
    """The edge sizes above are edges of what the kernel does: a tile of MR rows, panels of NR columns,
    K chunks of KC, and a single-tile or GEMV shape that is not chunked."""
    t = choose_tiling(47, 200, 1000, NATIVE)
    assert t.kc < 1000 and 47 % t.mr != 0  # several chunks, a ragged row tile
    assert choose_tiling(1, 4096, 4096, NATIVE).kc == 4096  # GEMV: no reuse of B, no chunks
    assert choose_tiling(3, 4096, 4096, NATIVE).kc == 4096  # one row tile: no reuse either
    # equal chunks: K = 3 x KC + 1 is cut into 4 nearly equal chunks, not 3 full ones and a sliver
    kc = choose_tiling(64, 4096, 4096, NATIVE).kc
    k = 3 * kc + 1
    assert choose_tiling(64, 4096, k, NATIVE).kc == -(-k // 4)


def test_large_weights_are_prefetched_and_small_ones_not():
    """The next panel's K chunk is prefetched when B is too big for L2 (the weights stream from
    memory); not for small B, where it would only cost issue slots, nor for a GEMV."""
    from mcir.codegen.lowering import lower

    def ir_of(m: int, n: int, k: int) -> str:
        g = Graph("pf")
        g.set_outputs([g.add("linear", [g.add_input("x", tensor([m, k])), g.const("w", np.ones((n, k), np.float32))])])
        return lower(g, NATIVE, "pf").ir_text

    assert "llvm.prefetch" in ir_of(32, 1024, 1024)  # 4 MiB of weights
    assert "llvm.prefetch" not in ir_of(32, 128, 256)  # 128 KiB
    assert "llvm.prefetch" not in ir_of(1, 1024, 1024)  # GEMV


def test_split_takes_the_axis_with_more_units():
    t = choose_tiling(32, 4096, 4096, NATIVE)
    assert not choose_split(32, 4096, t).rows  # Linear 4096 at batch 32: 64 panels
    t = choose_tiling(128, 64, 576, NATIVE)
    split = choose_split(128, 64, t)  # a conv of 128 channels on an 8x8 image: one panel
    assert split.rows and split.units == -(-128 // t.mr)


def _assert_thread_invariant(g: Graph, lib, *xs: np.ndarray) -> None:
    results = outputs_for_each_thread_count(lib, *xs)
    for res in results[1:]:
        np.testing.assert_array_equal(res[0], results[0][0])
    assert_close(results[0][0], interpret(g, *xs)[0])


@pytest.mark.parametrize(("m", "n", "k"), [(200, 40, 300), (47, 70, 700)])
def test_linear_split_by_row_tiles_is_bit_identical(tmp_path, rng, m, n, k):
    """Few panels, many row tiles (a ragged one last): the split goes by rows."""
    t = choose_tiling(m, n, k, NATIVE)
    assert choose_split(m, n, t).rows and m * n * k >= MIN_PARALLEL_MACS
    g = Graph("rows")
    x = g.add_input("x", tensor([m, k]))
    w, b = g.const("w", randn(rng, n, k, scale=k**-0.5)), g.const("b", randn(rng, n))
    g.set_outputs([g.add("relu", [g.add("linear", [x, w, b])])])
    _assert_thread_invariant(g, build(g, tmp_path), randn(rng, m, k))


def conv_graph(rng, xs: tuple[int, ...], cout: int, runtime_weight: bool = False) -> Graph:
    g = Graph("convs")
    x = g.add_input("x", tensor(list(xs)))
    if runtime_weight:  # weights computed at run time: the im2col path (the implicit GEMM needs packed weights)
        w = g.add_input("w", tensor([cout, xs[1], 3, 3]))
    else:
        w = g.const("w", randn(rng, cout, xs[1], 3, 3, scale=0.1))
    y = g.add("conv2d", [x, w, g.const("b", randn(rng, cout))], {"padding": [1, 1]})
    g.set_outputs([g.add("relu", [y])])
    return g


@pytest.mark.parametrize(
    ("xs", "cout", "runtime_weight", "kind"),
    [
        ((5, 16, 12, 12), 24, False, "conv_images"),  # a batch: whole images per task (5 units for 3 threads)
        ((1, 16, 32, 32), 32, False, "conv_implicit"),  # one image, implicit GEMM: split by its 16 panels
        ((5, 16, 12, 12), 24, True, "conv_images"),  # the same batch through im2col
        ((1, 64, 8, 8), 128, True, "conv_gemm"),  # one image, one 64-pixel im2col panel: split by row tiles
        ((1, 16, 32, 32), 32, True, "conv_gemm"),  # one image, 16 im2col panels: split by panels
    ],
)
def test_conv_splits_are_bit_identical(tmp_path, rng, xs, cout, runtime_weight, kind):
    from mcir.codegen.lowering import lower

    g = conv_graph(rng, xs, cout, runtime_weight)
    assert re.search(rf"define internal void @\"?{kind}\.task", lower(g, NATIVE, "c").ir_text)
    inputs = [randn(rng, *xs)] + ([randn(rng, cout, xs[1], 3, 3, scale=0.1)] if runtime_weight else [])
    _assert_thread_invariant(g, build(g, tmp_path), *inputs)


@pytest.mark.parametrize("target", runnable_targets())
def test_im2col_vector_rows_match_the_element_loops(tmp_path, rng, target):
    """The masked-vector im2col (unit stride, rows tiling a panel: OW 8, 16, 32 with 64-column panels
    on AVX-512, 16 on AVX2) and the element loops (OW 10, stride 2; every shape on SSE) against the
    interpreter, with padding on every side and dilation. The weights are a run-time input: constant
    weights would take the implicit GEMM (test_conv_implicit.py) for all but the strided shape."""
    for xs, attrs in [
        ((2, 3, 16, 16), {"padding": [1, 1]}),
        ((1, 4, 8, 8), {"padding": [2, 2], "dilation": [2, 2]}),
        ((1, 2, 9, 32), {"padding": [0, 1]}),
        ((1, 3, 10, 10), {"padding": [1, 1]}),
        ((1, 3, 20, 20), {"padding": [1, 1], "stride": [2, 2]}),
    ]:
        g = Graph("i2c")
        x = g.add_input("x", tensor(list(xs)))
        w = g.add_input("w", tensor([8, xs[1], 3, 3]))
        g.set_outputs([g.add("conv2d", [x, w, g.const("b", randn(rng, 8))], attrs)])
        xv, wv = randn(rng, *xs), randn(rng, 8, xs[1], 3, 3, scale=0.2)
        native = build(g, tmp_path, target=target)(xv, wv)[0]
        assert_close(native, interpret(g, xv, wv)[0], what=f"{target} conv {xs} {attrs}")
