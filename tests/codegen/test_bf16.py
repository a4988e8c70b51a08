"""bf16 ``linear`` kernels (``kernels/gemm_bf16.py``) and the f32 <-> bf16 conversions of ``#round``.

Specification. Every path computes ``y = b + sum_k x̂[m,k] ŵ[n,k]`` with x̂, ŵ the bf16 values of
the operands and f32 additions in some order. Against the reference that emulates exactly that
(x̂ and ŵ in float64, exact products, one rounding at the end) each output must satisfy the
standard bound of a K-term f32 sum:

    |y - y_ref| <= gamma_{K+1} * (sum_k |x̂ ŵ| + |b|),    gamma_n = n u / (1 - n u), u = 2^-24

(the products of two bf16 numbers are exact in f32, so only the additions round). The reference
without the input rounding (f32 x) is *outside* that bound on the same data: the tests can tell
a kernel that forgot to round x. Paths, each run here whenever the CPU has it:

* ``amx``: native with AMX-BF16 and M >= 16 (``tdpbf16ps`` tiles);
* ``refused``: native with AMX but the permission refused (``gemm_amx.FORCE_FALLBACK``): the vector
  path over the AMX weight layout (K padded to 32);
* ``dot``: ``-amx-bf16`` (``vdpbf16ps``);
* ``widen``: ``-amx-bf16,-avx512bf16`` (bf16 -> f32 by shifts, FMA), ``x86-64-v3`` (256-bit) and
  ``x86-64`` (SSE2: 128-bit, multiply + add); the same IR is what other architectures compile
  (aarch64 objects are built by ``test_other_architectures_compile``, not run here).

The conversion kernels are bit-exact against ml_dtypes (round to nearest even, NaN stays NaN).
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import mcir
from mcir import dtypes
from mcir.codegen.kernels import gemm_amx, gemm_bf16
from mcir.codegen.lowering import lower
from mcir.codegen.target import resolve
from mcir.encodings import Round
from mcir.encodings.round import round_bf16
from mcir.types import TensorType

from .helpers import build, runnable_targets

U = 2.0**-24
FLAGS = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
HAS_AMX = "amx_bf16" in FLAGS and resolve("native").has("amx-bf16")
HAS_DOT = "avx512_bf16" in FLAGS and resolve("native").has("avx512bf16")

#: path -> compile options and what must be true of the machine
PATHS = {
    "amx": ({}, HAS_AMX),
    "refused": ({}, HAS_AMX),
    "dot": ({"features": "-amx-bf16"}, HAS_DOT),
    "widen": ({"features": "-amx-bf16,-avx512bf16"}, True),
    "x86-64-v3": ({"target": "x86-64-v3"}, "x86-64-v3" in runnable_targets()),
    "x86-64": ({"target": "x86-64"}, resolve("x86-64").native),  # SSE2 only: 128-bit vectors, no FMA
}


def bf16_linear(rng, m: int, n: int, k: int, bias: bool = True, act: str | None = None) -> mcir.Graph:
    """``quantize(x) : bf16 #round`` -> ``linear`` with bf16 weights (what the bf16 pass builds)."""
    g = mcir.Graph(f"bf{m}x{n}x{k}")
    x = g.add_input("x", TensorType((m, k), dtypes.f32))
    xb = g.add("quantize", [x], type=TensorType((m, k), dtypes.bf16, Round()), result="x.bf")
    w = g.const("w", rng.standard_normal((n, k)).astype(ml_dtypes.bfloat16), TensorType((n, k), dtypes.bf16))
    operands = [xb, w]
    if bias:
        operands.append(g.const("b", rng.standard_normal(n).astype(np.float32)))
    y = g.add("linear", operands, result="y")
    if act:
        y = g.add(act, [y], result="act")
    g.set_outputs([y])
    return g


def reference(g: mcir.Graph, x: np.ndarray, round_x: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(y in float64 from bf16 inputs, the bound's scale sum_k |x̂ ŵ| + |b|) of the graph's linear."""
    consts = {op.result.name: op.data for op in g.ops if op.name == "const"}
    w = np.asarray(consts["w"]).astype(np.float64)
    b = np.asarray(consts.get("b", np.zeros(w.shape[0])), np.float64)
    xh = (round_bf16(x) if round_x else x).astype(np.float64)
    return xh @ w.T + b, np.abs(xh) @ np.abs(w).T + np.abs(b)


def assert_within_f32_sum_bound(got: np.ndarray, g: mcir.Graph, x: np.ndarray, act: str | None = None) -> None:
    ref, scale = reference(g, x)
    k = x.shape[-1]
    gamma = (k + 1) * U / (1 - (k + 1) * U)
    if act == "relu":  # relu is 1-Lipschitz: the bound carries over
        ref = np.maximum(ref, 0)
    err = np.abs(got.astype(np.float64) - ref)
    worst = float((err / (gamma * scale + 1e-30)).max())
    assert worst <= 1.0, f"error {worst:.2f}x the f32 summation bound"


def compile_path(g: mcir.Graph, tmp_path: Path, path: str, monkeypatch):
    options, available = PATHS[path]
    if not available:
        pytest.skip(f"this machine cannot run the {path} path")
    if path == "refused":
        monkeypatch.setattr(gemm_amx, "FORCE_FALLBACK", True)
    return build(g, tmp_path, **options)


SHAPES = [
    (1, 40, 64),  # batch 1: the GEMV
    (1, 300, 4099),  # batch 1, odd K (the row copy), a ragged panel
    (5, 70, 33),  # a row tail under the 4-row block, odd K
    (16, 16, 32),  # exactly one AMX tile of each
    (17, 33, 131),  # one row past a tile, ragged panel, K not a multiple of 32 (padded copy)
    (48, 47, 192),  # AMX: rows read in place, an odd row tile, a full and a ragged panel
    (33, 200, 100),  # several panel groups and pairs
    (9, 40, 520),  # vector paths: K in 3-5 chunks, partial sums kept in C between them
]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
def test_every_path_is_within_the_f32_summation_bound_of_bf16_inputs(tmp_path, rng, monkeypatch, path, m, n, k):
    if path in ("amx", "refused") and m < 16:
        pytest.skip("AMX applies from 16 rows")
    g = bf16_linear(rng, m, n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    got = compile_path(g, tmp_path, path, monkeypatch)(x)[0]
    assert_within_f32_sum_bound(got, g, x)
    np.testing.assert_allclose(got, mcir.interpret(g, x)[0], rtol=0, atol=1e-5 * float(np.abs(got).max()))


def test_forgetting_to_round_the_input_would_break_the_bound(rng):
    """The bound is tight enough to catch a kernel that multiplies f32 x by bf16 w."""
    g = bf16_linear(rng, 4, 64, 512)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    unrounded, _ = reference(g, x, round_x=False)
    with pytest.raises(AssertionError, match="summation bound"):
        assert_within_f32_sum_bound(unrounded.astype(np.float32), g, x)


@pytest.mark.parametrize("path", ["amx", "dot", "widen"])
def test_fused_relu_and_no_bias(tmp_path, rng, monkeypatch, path):
    g = bf16_linear(rng, 32, 50, 600, bias=False, act="relu")  # several K chunks: relu only after the last
    x = rng.standard_normal((32, 600)).astype(np.float32)
    got = compile_path(g, tmp_path, path, monkeypatch)(x)[0]
    assert (got >= 0).all()
    assert_within_f32_sum_bound(got, g, x, act="relu")


@pytest.mark.parametrize("path", ["amx", "refused", "dot", "widen"])
def test_rows_outer_for_an_a_over_1_mib(tmp_path, rng, monkeypatch, path):
    """1100 rows x 500 K: A is 1.1 MB (AMX: its padded copy), so row blocks go outside the panels."""
    assert not gemm_amx.panels_outer(1100, 2 * 512) and gemm_bf16.rows_outer(1100, 500)
    assert not gemm_bf16.rows_outer(1000, 500)
    g = bf16_linear(rng, 1100, 40, 500)
    x = rng.standard_normal((1100, 500)).astype(np.float32)
    assert_within_f32_sum_bound(compile_path(g, tmp_path, path, monkeypatch)(x)[0], g, x)


@pytest.mark.parametrize("path", ["amx", "refused", "dot"])
@pytest.mark.parametrize(("m", "n", "k"), [(32, 1000, 200), (1, 2048, 512), (8, 300, 1000)])
def test_threads_give_identical_outputs(tmp_path, rng, monkeypatch, path, m, n, k):
    if path in ("amx", "refused") and m < 16:
        pytest.skip("AMX applies from 16 rows")
    g = bf16_linear(rng, m, n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    lib = compile_path(g, tmp_path, path, monkeypatch)
    results = []
    for threads in (1, 2, 3):
        lib.set_threads(threads)
        results.append(lib(x)[0])
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    assert_within_f32_sum_bound(results[0], g, x)


def test_each_target_gets_its_instruction(rng):
    big, small = bf16_linear(rng, 16, 32, 64), bf16_linear(rng, 15, 32, 64)
    native, no_amx = resolve("native"), resolve("native", features="-amx-bf16")
    widen = resolve("native", features="-amx-bf16,-avx512bf16")
    if HAS_AMX:
        assert "tdpbf16ps" in lower(big, native, "a").ir_text
        assert "tdpbf16ps" not in lower(small, native, "a").ir_text
    for t in (no_amx, resolve("x86-64-v4")):
        assert "tdpbf16ps" not in lower(big, t, "a").ir_text
    if HAS_DOT:
        assert "dpbf16ps.512" in lower(big, no_amx, "a").ir_text
    for t in (widen, resolve("x86-64-v3")):
        text = lower(big, t, "a").ir_text
        assert "dpbf16ps" not in text and "fmuladd" in text


def test_the_kernel_table_names_the_path():
    assert gemm_bf16.path_name(resolve("x86-64-v3")) == "bf16 -> f32 shift + FMA"
    if HAS_DOT:
        assert gemm_bf16.path_name(resolve("native", features="-amx-bf16")) == "vdpbf16ps x16"
    if HAS_AMX:
        assert gemm_bf16.path_name(resolve("native")).startswith("AMX tdpbf16ps for M >= 16")


def test_weights_embed_half_the_f32_bytes(tmp_path, rng):
    """[N/16][K/2][16][2] bf16: exactly N*K*2 bytes when N is a multiple of 16 and K of 2 (32 with AMX)."""
    g = bf16_linear(rng, 1, 256, 512, bias=False)
    lib = build(g, tmp_path)
    assert lib.weight_bytes == 256 * 512 * 2
    assert mcir.stats(g).weight_bytes == lib.weight_bytes


def _special_values() -> np.ndarray:
    bits = np.array(
        [
            0x3F808000,  # a tie between two bf16: rounds to the even one (down)
            0x3F818000,  # a tie: rounds up to the even one
            0x3F808001,  # just above a tie: up
            0x7F7FFFFF,  # the largest f32: rounds to +inf
            0xFF7FFFFF,
            0x00000001,  # the smallest subnormal: rounds to +0
            0x00018000,  # a subnormal tie
            0x807FFFFF,
            0x7F800000,  # +inf
            0xFF800000,
            0x7FC00000,  # quiet NaN
            0x7F800001,  # signalling NaN: must not turn into inf
            0x80000000,  # -0
        ],
        np.uint32,
    )
    return bits.view(np.float32)


def test_quantize_and_dequantize_of_round_are_bit_exact(tmp_path, rng):
    count = 13 + 16 * 3 + 5  # whole vectors and a masked tail
    x = np.concatenate([_special_values(), rng.standard_normal(count - 13).astype(np.float32) * 1e3])[None, :]
    g = mcir.Graph("conv")
    v = g.add_input("x", TensorType(x.shape, dtypes.f32))
    q = g.add("quantize", [v], type=TensorType(x.shape, dtypes.bf16, Round()), result="q")
    g.set_outputs([g.add("dequantize", [q], result="y")])
    got = build(g, tmp_path)(x)[0]
    with np.errstate(invalid="ignore"):  # ml_dtypes warns on casting NaN
        want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), np.flatnonzero(~same)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x))


def test_k_is_chunked_only_when_several_row_blocks_reuse_the_panels():
    """The (9, 40, 520) case above runs 5 chunks of 64 pairs with vdpbf16ps (4 x 4 blocks: 16 KiB of
    panels per chunk), 3 chunks of 128 widening (4 x 2 blocks); a GEMV streams all of K at once."""
    dot, widen = resolve("native", features="-amx-bf16"), resolve("native", features="-amx-bf16,-avx512bf16")
    if HAS_DOT:
        assert gemm_bf16.k_chunk(9, 260, dot) == 64
    assert gemm_bf16.k_chunk(9, 260, widen) == 128
    assert gemm_bf16.k_chunk(1, 2048, widen) == 2048
    assert gemm_bf16.k_chunk(4, 260, widen) == 260  # a single row block


def test_other_architectures_compile(rng):
    """aarch64 gets the widening path's IR (no x86 intrinsic, no inline assembly) and LLVM builds an object."""
    import llvmlite.binding as llvm

    from mcir.codegen.lowering import optimize

    g = bf16_linear(rng, 8, 40, 65)
    t = resolve("aarch64")
    text = lower(g, t, "a").ir_text
    assert "llvm.x86" not in text and "asm" not in text
    module = llvm.parse_assembly(text)
    machine = t.machine()
    optimize(module, machine)
    assert len(machine.emit_object(module)) > 0
