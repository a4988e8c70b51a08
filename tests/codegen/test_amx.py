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


def test_amx_linear_threads_give_identical_outputs(tmp_path, rng):
    g, xs = qlinear(rng, (32,), 1000, 200, out="u8")  # 32 panels of 16 -> 16 pairs, above the split threshold
    lib = build(g, tmp_path)
    results = []
    for threads in (1, 2, 3):
        lib.set_threads(threads)
        results.append(lib(xs)[0])
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_refused_permission_falls_back_to_vnni_with_identical_results(tmp_path, rng, monkeypatch):
    """The fallback path (VNNI over the AMX weight layout), compiled as if arch_prctl had refused."""
    g, xs = qlinear(rng, (33,), 150, 300, out="u8")
    amx = build(g, tmp_path)
    monkeypatch.setattr(gemm_amx, "FORCE_FALLBACK", True)
    refused = build(g, tmp_path)
    for threads in (1, 2):
        refused.set_threads(threads)
        np.testing.assert_array_equal(refused(xs)[0], amx(xs)[0])
