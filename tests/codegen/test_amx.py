"""AMX int8 GEMM (``kernels/gemm_amx.py``) for batched int8 ``linear`` on CPUs with AMX tiles.

Specification: with ``M >= 16`` rows on a target listing ``amx-int8``, the kernel uses ``tdpbusd``
tiles; its outputs are *identical* to the VNNI kernel's (same target without ``amx-int8``: integer
sums are exact), for ragged M, N and K, quantised and f32 results, with 1, 2 and 3 threads, and on
the run-time fallback taken when Linux refuses the tile permission. Skipped where the CPU has no AMX.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mcir.codegen.kernels import gemm_amx
from mcir.codegen.lowering import lower
from mcir.codegen.target import resolve
from mcir.interp import interpret

from .helpers import build
from .test_int8_gemm import qlinear


def _host_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_int8" in flags and "amx_tile" in flags and resolve("native").has("amx-int8")


pytestmark = pytest.mark.skipif(
    not _host_has_amx(), reason="this CPU has no AMX-INT8 tiles (amx_int8 in /proc/cpuinfo)"
)


def amx_and_vnni(tmp_path, g):
    return build(g, tmp_path), build(g, tmp_path, features="-amx-int8")


@pytest.mark.parametrize(
    ("m", "n", "k", "out", "act"),
    [
        (16, 16, 64, "u8", None),  # exactly one tile of each
        (17, 33, 130, "u8", None),  # one row past a tile, a single last panel, K not a multiple of 4
        (33, 700, 257, "i8", None),  # odd row blocks and panel pairs
        (48, 96, 64, "f32", "relu"),  # f32 result with a fused activation
        (32, 50, 1000, "f32", None),
        (40, 80, 128, "u8", None),  # K a multiple of 64: full row tiles read in place, an 8-row tail tile copied
        (48, 47, 192, "f32", "relu"),  # in place, an odd row tile, a pair of a full and a ragged panel
        (1030, 40, 1024, "u8", None),  # A over 1 MiB: row blocks outer; a 6-row tail tile
        (1100, 33, 1000, "i8", None),  # A over 1 MiB and K not a multiple of 64: the padded copy, rows outer
    ],
)
def test_amx_linear_is_identical_to_the_vnni_kernel(tmp_path, rng, m, n, k, out, act):
    g, xs = qlinear(rng, (m,), n, k, out=out, act=act)
    amx, vnni = amx_and_vnni(tmp_path, g)
    got, want = amx(xs)[0], vnni(xs)[0]
    np.testing.assert_array_equal(got, want)
    ref = interpret(g, xs)[0]
    if out == "f32":
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
    else:  # the int8 contract: within 1 LSB of the interpreter
        assert np.abs(got.astype(np.int32) - ref.astype(np.int32)).max() <= 1


def test_amx_is_used_only_for_batches_of_16_rows_or_more(rng):
    native = resolve("native")
    big, _ = qlinear(rng, (16,), 64, 64)
    small, _ = qlinear(rng, (15,), 64, 64)
    assert "tdpbusd" in lower(big, native, "big").ir_text
    assert "syscall" not in lower(small, native, "small").ir_text
    assert "tdpbusd" not in lower(small, native, "small").ir_text
    assert "tdpbusd" not in lower(big, resolve("native", features="-amx-int8"), "big").ir_text


@pytest.mark.parametrize(
    ("m", "n", "k"),
    [
        (32, 1000, 200),  # 63 panels of 16 (the last ragged) -> 32 pairs, above the split threshold
        (37, 600, 256),  # in place with a 5-row tail tile
        (1030, 90, 1024),  # rows outer: every task walks all row blocks over its own panels
    ],
)
def test_amx_linear_threads_give_identical_outputs(tmp_path, rng, m, n, k):
    g, xs = qlinear(rng, (m,), n, k, out="u8")
    lib = build(g, tmp_path)
    results = []
    for threads in (1, 2, 3):
        lib.set_threads(threads)
        results.append(lib(xs)[0])
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    ref = interpret(g, xs)[0]
    assert np.abs(results[0].astype(np.int32) - ref.astype(np.int32)).max() <= 1


def test_loop_order_and_in_place_reads_follow_the_shape():
    assert gemm_amx.reads_a_in_place(256) and not gemm_amx.reads_a_in_place(200)
    assert gemm_amx.padded_rows(32, 256) == 0  # whole tiles, read where they are
    assert gemm_amx.padded_rows(33, 256) == 16  # only the tail tile is copied
    assert gemm_amx.padded_rows(33, 200) == 48  # every row, padded to K64
    assert gemm_amx.panels_outer(32, 4096)  # a batch-32 layer: A is 128 KiB, the weights stream once
    assert not gemm_amx.panels_outer(4096, 1024)  # the encoder's FFN: A is 4 MiB


@pytest.mark.parametrize(("m", "k"), [(33, 300), (40, 256)])  # A padded; A read in place
def test_refused_permission_falls_back_to_vnni_with_identical_results(tmp_path, rng, monkeypatch, m, k):
    """The fallback path (VNNI over the AMX weight layout), compiled as if arch_prctl had refused."""
    g, xs = qlinear(rng, (m,), 150, k, out="u8")
    amx = build(g, tmp_path)
    monkeypatch.setattr(gemm_amx, "FORCE_FALLBACK", True)
    refused = build(g, tmp_path)
    for threads in (1, 2):
        refused.set_threads(threads)
        np.testing.assert_array_equal(refused(xs)[0], amx(xs)[0])
