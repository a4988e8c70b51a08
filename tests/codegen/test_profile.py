"""Per-kernel profile of a compiled library (``compile(..., profile=True)``, ``mcir bench --per-op``).

Specification: a profiled library computes the same outputs bit for bit; it counts, per kernel
call, the x86 time-stamp counter ticks around the call, plus the ticks of whole runs and the number
of runs. ``Library.profile()`` lists one row per kernel (op, result, generator, fused ops, ticks per
run, share of the runs' ticks) and a row for the time between kernels; the shares add up to 1.
``reset_profile()`` zeroes the counters. A library compiled without profiling, and a non-x86 target
asked to profile, are refused with errors that say what to do.
"""

from __future__ import annotations

import numpy as np
import pytest

from mcir.cli import main
from mcir.codegen import compile as compile_graph
from mcir.errors import CodegenError, RuntimeCallError
from mcir.ir import Graph
from mcir.types import tensor

from .helpers import build, randn


def small_cnn(rng) -> Graph:
    g = Graph("pcnn")
    x = g.add_input("x", tensor([2, 3, 8, 8]))
    y = g.add("conv2d", [x, g.const("w", randn(rng, 4, 3, 3, 3)), g.const("b", randn(rng, 4))], {"padding": [1, 1]})
    y = g.add("max_pool2d", [g.add("relu", [y])], {"kernel": [2, 2], "stride": [2, 2]})
    y = g.add("reshape", [y], {"shape": [2, 64]})
    g.set_outputs([g.add("linear", [y, g.const("fc", randn(rng, 5, 64))])])
    return g


def test_profiled_library_counts_each_kernel_call(tmp_path, rng):
    g = small_cnn(rng)
    plain, profiled = build(g, tmp_path), build(g, tmp_path, profile=True)
    x = randn(rng, 2, 3, 8, 8)
    profiled.reset_profile()
    for _ in range(5):
        np.testing.assert_array_equal(profiled(x)[0], plain(x)[0])
    rows = profiled.profile()
    assert [(r.op, r.kernel, r.fused) for r in rows[:-1]] == [
        ("conv2d", "_conv", ["relu", "max_pool2d"]),
        ("linear", "linear", []),
    ]
    assert rows[-1].op == "(between kernels)"
    assert all(r.ticks > 0 for r in rows[:-1])
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    profiled.reset_profile()
    assert all(r.ticks == 0 for r in profiled.profile())
    header = profiled.path.with_suffix(".h").read_text()
    assert f"uint64_t *mcir_{profiled.name}_profile(void);" in header
    assert "_profile(void)" not in plain.path.with_suffix(".h").read_text()


def test_unprofiled_library_says_how_to_profile(tmp_path, rng):
    lib = build(small_cnn(rng), tmp_path)
    with pytest.raises(RuntimeCallError, match="profile=True"):
        lib.profile()


def test_profiling_needs_an_x86_cycle_counter(tmp_path, rng):
    with pytest.raises(CodegenError, match="rdtsc"):
        compile_graph(small_cnn(rng), tmp_path / "arm", triple="aarch64-linux-gnu", profile=True)


def test_bench_per_op_prints_a_row_per_kernel(tmp_path, rng, capsys):
    lib = build(small_cnn(rng), tmp_path, profile=True)
    assert main(["bench", str(lib.path), "--runs", "20", "--warmup", "2", "--per-op"]) == 0
    text = capsys.readouterr().out
    assert "_conv +relu +max_pool2d" in text and "linear" in text and "(between kernels)" in text
    assert "share" in text and "ticks/run" in text
