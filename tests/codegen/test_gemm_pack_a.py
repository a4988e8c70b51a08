"""Packing A block by block in the single-threaded fp32 GEMM (``gemm_f32.packs_a``, docs/codegen.md "fp32 GEMM").

Specification:

* a product packs its strided A when many B panels reuse it (``PACK_A_MIN_PANELS``), its rows are a
  page apart and a block's K chunk of it exceeds L1; a GEMV, a narrow N, a short K and a few-row A
  do not (checked on the predicate and on the emitted IR, so the cases below take the packed path);
* packing is lossless: the packed single-threaded product is bit-identical to the threaded one,
  whose tasks read A in place, for 1, 2 and 3 threads, and it matches the interpreter within
  ``1e-5 x max |reference|``, at the edges of the blocking the packed path can meet: a ragged last
  row tile, several row blocks (M > MC) with and without a short tail tile in a block of its own,
  K in equal chunks, N a multiple of the panel width and N with a partial last panel, bias and ReLU;
* ``matmul`` packs alike: 2-D and batched A, against a constant B and a run-time B;
* a C larger than L2 updated over several K chunks is prefetched for writing (``prefetchw`` into L2)
  before each tile's k loop; a small C, or a single K chunk, is not.
"""

from __future__ import annotations

import numpy as np
import pytest

from mcir.codegen.kernels.gemm_f32 import PACK_A_MIN_PANELS, choose_tiling, packed_a_bytes, packs_a
from mcir.codegen.lowering import lower
from mcir.codegen.target import resolve
from mcir.interp import interpret
from mcir.ir import Graph
from mcir.types import tensor

from .helpers import assert_close, build, randn, runnable_targets
from .test_threads import outputs_for_each_thread_count

NATIVE = resolve("native")


def packed(m: int, n: int, k: int, target=NATIVE) -> bool:
    return packs_a(m, n, k, choose_tiling(m, n, k, target))


def linear_ir(m: int, n: int, k: int) -> str:
    g = Graph("pa")
    x = g.add_input("x", tensor([m, k]))
    g.set_outputs([g.add("linear", [x, g.const("w", np.ones((n, k), np.float32))])])
    return lower(g, NATIVE, "pa").ir_text


def test_large_products_pack_a_and_small_ones_do_not():
    t = choose_tiling(512, 2048, 2048, NATIVE)
    assert packed(512, 2048, 2048) and packed(1024, 1024, 1024) and packed(2048, 2048, 2048)
    assert not packed(1, 4096, 4096)  # GEMV: one row, nothing to reuse
    assert not packed(t.mr, 4096, 4096)  # a single row tile
    assert not packed(32, 4096, 4096)  # 32 rows x KC of A: 16 KiB, in L1 as it is
    assert not packed(512, (PACK_A_MIN_PANELS - 1) * t.nr, 2048)  # too few panels reuse A
    assert not packed(512, 2048, 512)  # rows 2 KiB apart: the hardware prefetchers cope
    big = choose_tiling(2048, 2048, 2048, NATIVE)  # several row blocks of nearly equal size, no sliver
    blocks = -(-2048 // big.mc)
    assert blocks > 1 and 2048 // big.mr * big.mr - (blocks - 1) * big.mc >= big.mc // 2
    assert "pack_a_k" in linear_ir(256, 1024, 1024)
    assert "pack_a_k" not in linear_ir(1, 1024, 1024)
    # the buffer holds one row block's K chunk: a KC x MR panel per tile, the tail tile included
    assert packed_a_bytes(1024, t) == (t.mc // t.mr + 1) * t.kc * t.mr * 4
    assert packed_a_bytes(7, t) == 2 * t.kc * t.mr * 4


@pytest.mark.parametrize(
    "target", [t if t == "native" else pytest.param(t, marks=pytest.mark.slow) for t in runnable_targets()]
)
def test_packed_linear_is_exact_and_bit_identical_to_threads_at_every_edge(tmp_path, rng, target):
    tgt = resolve(target)
    t = choose_tiling(1000, 1000, 1000, tgt)
    mr, nr = t.mr, t.nr
    k_blocks = 1030  # equal chunks, none a multiple of 8 columns
    mc = choose_tiling(2 * mr, 16 * nr, k_blocks, tgt).mc  # the most rows a block holds (one block)
    shapes = [
        (131, 16 * nr + 17, 1024),  # ragged last row tile, partial last panel
        (mc + 2 * mr + 1, 16 * nr + 3, k_blocks),  # two row blocks, the short tail tile with the last
        (mc + 2 * mr, 16 * nr, k_blocks),  # two row blocks, no tail
    ]
    g = Graph("packa")
    xs, outs = [], []
    for i, (m, n, k) in enumerate(shapes):
        assert packed(m, n, k, tgt), (m, n, k)
        x = g.add_input(f"x{i}", tensor([m, k]))
        w = g.const(f"w{i}", randn(rng, n, k, scale=k**-0.5))
        outs.append(g.add("relu", [g.add("linear", [x, w, g.const(f"b{i}", randn(rng, n))])]))
        xs.append(randn(rng, m, k))
    g.set_outputs(outs)
    assert shapes[1][0] > choose_tiling(*shapes[1], tgt).mc  # really several row blocks
    lib = build(g, tmp_path, target=target)
    results = outputs_for_each_thread_count(lib, *xs)  # 1 thread packs, 2 and 3 threads read A in place
    refs = interpret(g, *xs)
    for i, (m, n, k) in enumerate(shapes):
        for res in results[1:]:
            np.testing.assert_array_equal(res[i], results[0][i], err_msg=f"linear M={m} N={n} K={k}")
        assert_close(results[0][i], refs[i], what=f"linear M={m} N={n} K={k}")


def test_packed_matmul_matches_the_interpreter_and_is_bit_identical_to_threads(tmp_path, rng):
    """2-D and batched A against a constant shared B and a run-time (per-batch) B. The batch indices
    split across threads, each task packing A (and a per-index B) into its own scratch slot: 1, 2
    and 3 threads give the same bits."""
    t = choose_tiling(1000, 1000, 1000, NATIVE)
    m, n, k = 21 * t.mr + 3, 16 * t.nr + 5, 1024
    assert packed(m, n, k)
    g = Graph("packmm")
    a2 = g.add_input("a2", tensor([m, k]))
    a3 = g.add_input("a3", tensor([3, m, k]))
    b3 = g.add_input("b3", tensor([3, k, n]))
    w = g.const("w", randn(rng, k, n, scale=k**-0.5))
    g.set_outputs([g.add("matmul", [a2, w]), g.add("matmul", [a3, w]), g.add("matmul", [a3, b3])])
    xs = [randn(rng, m, k), randn(rng, 3, m, k), randn(rng, 3, k, n, scale=k**-0.5)]
    lib = build(g, tmp_path)
    assert "pack_a_k" in lib_ir(g)
    results = outputs_for_each_thread_count(lib, *xs)
    names = ("2-D", "batched, constant B", "batched, run-time B")
    for got, want, name in zip(results[0], interpret(g, *xs), names):
        assert_close(got, want, what=f"matmul {name}")
    for res in results[1:]:
        for got, first, name in zip(res, results[0], names):
            np.testing.assert_array_equal(got, first, err_msg=f"matmul {name}")


def lib_ir(g: Graph) -> str:
    return lower(g, NATIVE, g.name).ir_text


def test_large_c_is_prefetched_for_writing_before_each_chunk():
    write_prefetch = "i32 1, i32 2, i32 1)"  # llvm.prefetch(ptr, rw = write, locality = L2, data)
    assert write_prefetch in linear_ir(512, 1024, 4096)  # 2 MiB of C, 4 K chunks (of 1024: many rows)
    assert write_prefetch in linear_ir(128, 4096, 1024)  # 2 MiB of C, 8 K chunks (of 128: few rows)
    assert write_prefetch not in linear_ir(64, 1024, 1024)  # 256 KiB of C stays in L2
    assert write_prefetch not in linear_ir(512, 1024, 64)  # one K chunk: C is only written once
    assert write_prefetch not in linear_ir(512, 1024, 1024)  # many rows: K = 1024 is one long chunk
