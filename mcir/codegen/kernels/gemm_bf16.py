"""bf16 GEMM/GEMV: ``linear`` on bf16 inputs (``#round``) and bf16 weights, f32 sums, f32 result.

``y[m, n] = b[n] + sum_k x[m, k] * w[n, k]`` where ``x`` and ``w`` hold bf16 values; every
product of two bf16 numbers is exact in f32, so the only rounding is in the f32 additions
(their order differs between the paths below, so results differ in the last bits).

**Weights** are packed at compile time as ``[ceil(N/16)][Kp/2][16][2]`` bf16: 16-column panels
whose rows are *pairs* of consecutive K, i.e. one 64-byte row holds ``w[n, 2p], w[n, 2p+1]``
for 16 columns. That is the B-tile layout of AMX ``tdpbf16ps`` and exactly one zmm operand of
AVX-512 ``vdpbf16ps``, so every path streams the same bytes: half of f32's (plus the zero
padding of N to 16 and of K to ``Kp``: 32 with AMX, else 2).

Paths, chosen from the target (``native`` reads the host's CPUID through LLVM):

* **AMX-BF16** (``amx-bf16``, Linux, ``M >= 16``): 16 x 32 bf16 A tiles, 16 x 16 f32 C tiles,
  ``tdpbf16ps`` over 2 x 2 blocks of C tiles, the tile loop, configuration and the one-time
  ``arch_prctl`` permission shared with the int8 AMX kernel (``gemm_amx.py``). If the permission
  is refused at run time, the same packed weights go through the vector path below.
* **AVX-512 BF16** (``avx512bf16``): a register-blocked micro-kernel (up to 4 rows x 4 panels of
  16 f32 accumulators; 1 row x 8 panels at batch 1), one ``vdpbf16ps`` per (row, panel) per K pair
  with the row's pair broadcast from memory. At batch 1 it is bound by the weight stream.
* **Any other target** (x86-64 baseline, v3, v4 without BF16; other architectures build the same
  IR, e.g. aarch64, compiled by the tests but not run): the same blocking with each bf16 widened to
  f32 by a shift (``w << 16`` for even K, ``w & 0xffff0000`` for odd K) and two FMAs.

A row of bf16 inputs is read where it is when its pairs are aligned (K even; K a multiple of 32
for AMX tiles), else copied into scratch with zero padding; tail rows of AMX tiles are copied as
in the int8 kernel. Columns are split across the host's threads by 16-column panels (AMX: pairs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, I16, I32, Emitter, const, i64, vec
from mcir.codegen.kernels import KernelContext, gemm_amx, kernel
from mcir.codegen.memory_plan import ALIGN, align_up, view_root
from mcir.codegen.target import Target
from mcir.errors import CodegenError
from mcir.ir import Op

LANES = 16  # f32 accumulators per vector, columns per panel
V16F = vec(F32, LANES)
V16I = vec(I32, LANES)
HIGH_HALF = -65536  # 0xffff0000 as an i32: the odd-K bf16 of a pair, in place as an f32


class _BFloat(ir.Type):
    """LLVM's ``bfloat`` (llvmlite has no class for it): the element type of ``vdpbf16ps``'s operands."""

    def _to_string(self) -> str:
        return "bfloat"


V32BF = ir.VectorType(_BFloat(), 2 * LANES)


# -- which path ------------------------------------------------------------------------------------------


def amx_applies(m: int, target: Target) -> bool:
    """Whether a bf16 ``linear`` with ``m`` rows uses AMX tiles on ``target``."""
    return m >= gemm_amx.TILE_ROWS and target.is_x86 and target.has("amx-bf16") and "linux" in target.triple


def has_dot(target: Target) -> bool:
    """Whether ``target`` has AVX-512 BF16's ``vdpbf16ps`` on zmm registers."""
    return target.is_x86 and target.has("avx512bf16") and target.has("avx512f")


def path_name(target: Target) -> str:
    """The code path of the bf16 ``linear`` on ``target``, for the kernel table."""
    vector = "vdpbf16ps x16" if has_dot(target) else "bf16 -> f32 shift + FMA"
    if amx_applies(gemm_amx.TILE_ROWS, target):
        return f"AMX tdpbf16ps for M >= {gemm_amx.TILE_ROWS}, else {vector}"
    return vector


def blocking(m: int, target: Target) -> tuple[int, int]:
    """(rows, panels) of one register block of the vector paths.

    ``vdpbf16ps`` keeps 16 accumulators + 4 panel vectors + a broadcast in 32 zmm; batch 1 uses
    8 panels so 8 independent sums hide the instruction's latency while the weights stream. The
    widening path needs two f32 vectors per panel; on 256-bit targets every vector is two ymm."""
    if has_dot(target) or target.vector_bits >= 512:
        return (1, 8) if m == 1 else (4, 4) if has_dot(target) else (4, 2)
    return (1, 2) if m == 1 else (2, 2)


# -- shapes and packing ----------------------------------------------------------------------------------


def _dims(op: Op) -> tuple[int, int, int]:
    n, k = op.operands[1].type.shape
    return op.operands[0].type.numel // k, n, k


def padded_k(m: int, k: int, target: Target) -> int:
    """K of the packed weights: whole 32-element A-tile rows with AMX, else whole pairs."""
    step = 32 if amx_applies(m, target) else 2
    return math.ceil(k / step) * step


def pack_pairs(w_bits: np.ndarray, kp: int) -> np.ndarray:
    """``W[N,K]`` (bf16 bits as u16) as ``[ceil(N/16)][Kp/2][16][2]``, zero padded."""
    n, k = w_bits.shape
    p = math.ceil(n / LANES)
    padded = np.zeros((p * LANES, kp), np.uint16)
    padded[:n, :k] = w_bits
    return np.ascontiguousarray(padded.reshape(p, LANES, kp // 2, 2).transpose(0, 2, 1, 3))


def _pack(op: Op, index: int, data, target: Target):
    if index != 1:
        return None
    m, n, k = _dims(op)
    kp = padded_k(m, k, target)
    bits = np.asarray(data).reshape(n, k).view(np.uint16)
    return f"bf16pairs:{kp}", pack_pairs(bits, kp)


def _copies_rows(m: int, k: int, target: Target) -> bool:
    """Whether the vector path reads A from a zero-padded copy (odd K: a pair would cross rows)."""
    return not amx_applies(m, target) and k % 2 == 1


def _scratch(op: Op, target: Target) -> int:
    m, n, k = _dims(op)
    if amx_applies(m, target):
        return gemm_amx.scratch_bytes(m, n, 2 * k)  # the byte geometry of the int8 kernel, 2 bytes per K
    if _copies_rows(m, k, target):
        return align_up(m * (k + 1) * 2, ALIGN)
    return 0


# -- the vector paths --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Gemm:
    """One bf16 GEMM as the vector micro-kernel sees it (pointers may be a task's copies)."""

    m: int
    n: int
    pairs: int  # K pairs per row of A and per panel of B
    a: ir.Value  # bf16 rows, ``a_rs`` elements apart (even)
    a_rs: int
    b: ir.Value  # packed pairs
    c: ir.Value  # f32 [M, N]
    bias: ir.Value | None
    epilogue: Callable | None


def _dot(em: Emitter, acc: ir.Value, a_pair: ir.Value, b_pairs: ir.Value) -> ir.Value:
    """``acc[i] += a0 * b[i].0 + a1 * b[i].1`` for a broadcast pair ``a`` (``vdpbf16ps``)."""
    fn = em.intrinsic("llvm.x86.avx512bf16.dpbf16ps.512", [], V16F, [V16F, V32BF, V32BF])
    b = em.b
    return b.call(fn, [acc, b.bitcast(a_pair, V32BF), b.bitcast(b_pairs, V32BF)])


def _even_odd(em: Emitter, pairs: ir.Value) -> tuple[ir.Value, ir.Value]:
    """The f32 values of the even-K and odd-K bf16 of each 32-bit pair (exact: bf16 is f32's top half)."""
    b = em.b
    t = pairs.type
    even = b.bitcast(b.shl(pairs, const(t, 16)), vec(F32, t.count) if isinstance(t, ir.VectorType) else F32)
    odd = b.bitcast(b.and_(pairs, const(t, HIGH_HALF)), even.type)
    return even, odd


#: bytes of B panels one K chunk of a register block's panels may take (kept in L1 while every row block passes)
CHUNK_BYTES = 16 * 1024


def k_chunk(m: int, pairs: int, target: Target) -> int:
    """K pairs per chunk: all of K for a single row block (the weights stream once anyway), else
    as many as keep the block's panels in ``CHUNK_BYTES``."""
    mr, nr = blocking(m, target)
    if m <= mr:
        return pairs
    return min(pairs, max(16, CHUNK_BYTES // (nr * 4 * LANES)))


def rows_outer(m: int, a_rs: int) -> bool:
    """Loop order of the vector paths: row blocks outer when A (bf16 rows ``a_rs`` elements apart) is
    larger than ``gemm_amx.A_IN_L2`` (re-reading it per panel group would stream it from L3), else
    panel groups outer."""
    return m * a_rs * 2 > gemm_amx.A_IN_L2


def emit_vector(em: Emitter, g: _Gemm, lo: ir.Value, hi: ir.Value, target: Target) -> None:
    """Panels ``[lo, hi)`` of ``C = A @ W^T + b``: register blocks of up to MR rows x NR panels.

    Panels outer (``rows_outer`` false): per group of NR panels, K goes in chunks (``k_chunk``) and
    every row block runs over a chunk before the next, so the chunk's panels stay in L1; partial sums
    wait in C between chunks, the bias and the fused epilogue apply after the last one. Rows outer:
    each row block runs over all the task's panels with all of K."""
    b = em.b
    mr, nr = blocking(g.m, target)
    dot = has_dot(target)
    full = g.n // LANES
    ragged = g.n % LANES
    panel_i32 = g.pairs * LANES  # i32 elements of one packed panel
    kc = k_chunk(g.m, g.pairs, target)
    chunks = math.ceil(g.pairs / kc)

    def block(row0, rows: int, panel0, panels: int, last_cols: int, k0, count: int, first: bool, last: bool) -> None:
        """C rows ``[row0, row0 + rows)`` x panels ``[panel0, panel0 + panels)`` over K pairs
        ``[k0, k0 + count)``; the last panel has ``last_cols`` valid columns. ``first``: start from
        zero (else from the partial sums in C); ``last``: finish (bias, epilogue) into C."""
        cols = [b.mul(b.add(panel0, i64(j)), i64(LANES)) for j in range(panels)]
        valid = [last_cols if j == panels - 1 else LANES for j in range(panels)]
        at = [[b.add(b.mul(b.add(row0, i64(i)), i64(g.n)), cols[j]) for j in range(panels)] for i in range(rows)]

        def c_load(i: int, j: int) -> ir.Value:
            if valid[j] == LANES:
                return em.load(g.c, at[i][j], V16F, align=4)
            return em.masked_load(g.c, at[i][j], V16F, valid[j])

        init = [const(V16F, 0.0) if first else c_load(i, j) for i in range(rows) for j in range(panels)]
        bases = [b.add(b.mul(b.add(panel0, i64(j)), i64(panel_i32)), b.mul(k0, i64(LANES))) for j in range(panels)]
        a_rows = [b.add(b.mul(b.add(row0, i64(i)), i64(g.a_rs // 2)), k0) for i in range(rows)]
        with em.loop_carried(count, init, name="kp") as lp:
            p = lp.index
            off = b.mul(p, i64(LANES))
            bs = [em.load(g.b, b.add(base, off), V16I, align=64) for base in bases]
            wide = [] if dot else [_even_odd(em, v) for v in bs]
            accs = list(lp.values)
            for i in range(rows):
                pair = em.load(g.a, b.add(a_rows[i], p), I32, align=2)  # x[row, 2p] and x[row, 2p + 1]
                if dot:
                    splat = em.splat(pair, LANES)
                    for j in range(panels):
                        accs[i * panels + j] = _dot(em, accs[i * panels + j], splat, bs[j])
                else:
                    xe, xo = (em.splat(v, LANES) for v in _even_odd(em, pair))
                    for j in range(panels):
                        acc = em.fma(xe, wide[j][0], accs[i * panels + j])
                        accs[i * panels + j] = em.fma(xo, wide[j][1], acc)
            lp.next(accs)
        sums = lp.results
        for j in range(panels):
            bias = None
            if last and g.bias is not None:
                full_lanes = valid[j] == LANES
                bias = (
                    em.load(g.bias, cols[j], V16F, align=4)
                    if full_lanes
                    else em.masked_load(g.bias, cols[j], V16F, valid[j])
                )
            for i in range(rows):
                y = sums[i * panels + j]
                if bias is not None:
                    y = b.fadd(y, bias)
                if last and g.epilogue is not None:
                    y = g.epilogue(em, y)
                if valid[j] == LANES:
                    em.store(y, g.c, at[i][j], align=4)
                else:
                    em.masked_store(y, g.c, at[i][j], valid[j])

    blocks, tail = divmod(g.m, mr)

    def row_blocks(each: Callable) -> None:
        """``each(row0, rows)`` for every register block of rows."""
        if blocks:
            with em.loop(blocks * mr, name="rb", step=mr) as row0:
                each(row0, mr)
        if tail:
            each(i64(blocks * mr), tail)

    def panel_groups(each: Callable) -> None:
        """``each(panel0, panels, last_cols)`` for the task's panels in groups of NR (the group below
        NR sized at run time), then the ragged last panel if the task has it."""
        end = b.select(b.icmp_signed("<", hi, i64(full)), hi, i64(full))
        count = b.select(b.icmp_signed(">", end, lo), b.sub(end, lo), i64(0))
        groups = b.sdiv(count, i64(nr))
        with em.loop(groups, name="pg") as q:
            each(b.add(lo, b.mul(q, i64(nr))), nr, LANES)
        rest = b.sub(count, b.mul(groups, i64(nr)))
        start = b.add(lo, b.mul(groups, i64(nr)))
        for size in range(1, nr):
            with b.if_then(b.icmp_signed("==", rest, i64(size))):
                each(start, size, LANES)
        if ragged:
            with b.if_then(b.icmp_signed(">", hi, i64(full))):
                each(i64(full), 1, ragged)

    def k_chunks(each: Callable) -> None:
        """``each(k0, count, first, last)`` for the K chunks."""
        if chunks == 1:
            each(i64(0), g.pairs, True, True)
            return
        each(i64(0), kc, True, False)
        if chunks > 2:
            with em.loop((chunks - 1) * kc, name="kc", start=kc, step=kc) as k0:
                each(k0, kc, False, False)
        each(i64((chunks - 1) * kc), g.pairs - (chunks - 1) * kc, False, True)

    if rows_outer(g.m, g.a_rs):
        # a row block's pairs stay in L1 while the task's panels stream from L2, K in one go
        row_blocks(
            lambda r0, rows: panel_groups(
                lambda p0, panels, cols: block(r0, rows, p0, panels, cols, i64(0), g.pairs, True, True)
            )
        )
    else:
        # a group's panels (one K chunk of them) stay in L1 while every row block passes
        panel_groups(
            lambda p0, panels, cols: k_chunks(
                lambda k0, count, first, last: row_blocks(
                    lambda r0, rows: block(r0, rows, p0, panels, cols, k0, count, first, last)
                )
            )
        )


def _copy_rows(em: Emitter, a: ir.Value, m: int, k: int, dst: ir.Value) -> None:
    """A[M,K] (bf16) into ``dst`` with rows of K + 1 elements, the last one +0.0 (odd K)."""
    b = em.b
    with em.loop(m, name="cr") as r:
        with em.loop(k, name="ck") as kk:
            em.store(em.load(a, b.add(b.mul(r, i64(k)), kk), I16), dst, b.add(b.mul(r, i64(k + 1)), kk))
        em.store(ir.Constant(I16, 0), dst, b.add(b.mul(r, i64(k + 1)), i64(k)))


# -- the AMX path --------------------------------------------------------------------------------------------


def _amx_finish(em: Emitter, g: _Gemm) -> Callable:
    """The epilogue of one 32 x 32 block of f32 sums from the tiles: bias, fused activation, store."""
    b = em.b
    last_cols = g.n - LANES * (math.ceil(g.n / LANES) - 1)

    def finish(row0: ir.Value, tile_rows: list[int], panel: ir.Value, nt: int, ragged: bool, buf: ir.Value) -> None:
        for j in range(nt):
            col = b.add(b.mul(panel, i64(LANES)), i64(j * LANES))
            valid = last_cols if ragged and j == nt - 1 else LANES
            bias = None
            if g.bias is not None:
                bias = (
                    em.load(g.bias, col, V16F, align=4) if valid == LANES else em.masked_load(g.bias, col, V16F, valid)
                )
            for i, rows in enumerate(tile_rows):
                with em.loop(rows, name="er") as r:
                    br = b.add(r, i64(i * gemm_amx.TILE_ROWS))
                    y = em.load(buf, b.add(b.mul(br, i64(gemm_amx.BLOCK_COLS)), i64(j * LANES)), V16F, align=64)
                    if bias is not None:
                        y = b.fadd(y, bias)
                    if g.epilogue is not None:
                        y = g.epilogue(em, y)
                    at = b.add(b.mul(b.add(row0, br), i64(g.n)), col)
                    if valid == LANES:
                        em.store(y, g.c, at, align=4)
                    else:
                        em.masked_store(y, g.c, at, valid)

    return finish


def _emit_amx(k: KernelContext, m: int, n: int, kk: int) -> None:
    """Tiles when the process may use them, else the vector path over the same packed weights."""
    from mcir.codegen.parallel import parallel_for

    em, b = k.em, k.em.b
    kp = padded_k(m, kk, k.target)
    kp_bytes, k_bytes = 2 * kp, 2 * kk
    x = k.args[0]
    if gemm_amx.reads_a_in_place(k_bytes):
        if m % gemm_amx.TILE_ROWS:
            gemm_amx.emit_pad_a(em, x, m, k_bytes, k.scratch, first_row=m - m % gemm_amx.TILE_ROWS)
        a_full, a_rs = x, k_bytes
        a_tail = k.scratch if m % gemm_amx.TILE_ROWS else x  # no tail: the pointer is never read
    else:
        gemm_amx.emit_pad_a(em, x, m, k_bytes, k.scratch)
        a_full, a_rs = k.scratch, kp_bytes
        a_tail = em.byte_offset(k.scratch, (m - m % gemm_amx.TILE_ROWS) * kp_bytes)
    bias = k.args[2] if len(k.args) > 2 else None
    extra = [bias] if bias is not None else []
    macs = m * n * kk

    def gemm(p: list[ir.Value], a: ir.Value, first: int) -> _Gemm:
        """The GEMM with a task's pointers: ``p[first:]`` are B, C and the bias."""
        bias_p = p[first + 2] if bias is not None else None
        return _Gemm(m, n, kp // 2, a, kp, p[first], p[first + 1], bias_p, k.epilogue)

    with b.if_else(gemm_amx._permission(em)) as (amx, vector):
        with amx:

            def tiles(tem: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
                g = gemm(p, p[0], 2)
                finish = _amx_finish(tem, g)
                gemm_amx.emit_tile_blocks(tem, m, n, kp_bytes, p[0], a_rs, p[1], g.b, lo, hi, "tdpbf16ps", finish)

            pairs = math.ceil(math.ceil(n / LANES) / 2)
            parallel_for(em, "linear_bf16_amx", pairs, macs, [a_full, a_tail, k.args[1], k.out, *extra], tiles)
        with vector:
            # refused: A rows are K-padded in the copy (or K is a multiple of 32 in place), so rows are
            # ``kp`` elements apart and every pair of the padded weights has its zero partner in A

            def dots(tem: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
                emit_vector(tem, gemm(p, p[0], 1), lo, hi, k.target)

            panels = math.ceil(n / LANES)
            parallel_for(em, "linear_bf16_amx_fallback", panels, macs, [a_full, k.args[1], k.out, *extra], dots)


# -- the kernels ------------------------------------------------------------------------------------------


@kernel(
    "linear",
    ("bf16#round", "bf16", "f32?"),
    result="f32",
    constant=(1,),
    pack=_pack,
    scratch=_scratch,
    epilogue=True,
    variant=path_name,
)
def linear_bf16(k: KernelContext) -> None:
    """y = x @ W^T + b on bf16 inputs and bf16 weights with f32 sums (AMX / vdpbf16ps / widen + FMA)."""
    from mcir.codegen.parallel import parallel_for

    m, n, kk = _dims(k.op)
    if not view_root(k.op.operands[1]).is_constant:
        raise CodegenError(f"{k.op.where()}: bf16 weights computed at run time have no kernel; keep them constant")
    if amx_applies(m, k.target):
        _emit_amx(k, m, n, kk)
        return
    a, a_rs = k.args[0], kk
    if _copies_rows(m, kk, k.target):
        _copy_rows(k.em, a, m, kk, k.scratch)
        a, a_rs = k.scratch, kk + 1
    bias = k.args[2] if len(k.args) > 2 else None
    pointers = [a, k.args[1], k.out] + ([bias] if bias is not None else [])
    kp = padded_k(m, kk, k.target)

    def body(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
        g = _Gemm(m, n, kp // 2, p[0], a_rs, p[1], p[2], p[3] if bias is not None else None, k.epilogue)
        emit_vector(em, g, lo, hi, k.target)

    parallel_for(k.em, f"linear_bf16_{m}x{n}x{kk}", math.ceil(n / LANES), m * n * kk, pointers, body)


@kernel("quantize", ("f32",), result="bf16#round")
def quantize_bf16(k: KernelContext) -> None:
    """f32 -> bf16, round to nearest even (``(u + 0x7fff + ((u >> 16) & 1)) >> 16``; NaN stays a quiet NaN)."""
    em, b = k.em, k.em.b
    count = k.result_type.numel
    full, tail = divmod(count, LANES)
    v16s = vec(I16, LANES)

    def convert(at: ir.Value, live: int) -> None:
        if live == LANES:
            u = em.load(k.args[0], at, V16I, align=4)
        else:
            u = em.masked_load(k.args[0], at, V16I, live)
        lsb = b.and_(b.lshr(u, const(V16I, 16)), const(V16I, 1))
        rounded = b.lshr(b.add(b.add(u, const(V16I, 0x7FFF)), lsb), const(V16I, 16))
        x = b.bitcast(u, V16F)
        nan = b.fcmp_unordered("uno", x, x)
        quiet = b.or_(b.lshr(u, const(V16I, 16)), const(V16I, 0x40))
        bits = b.trunc(b.select(nan, quiet, rounded), v16s)
        if live == LANES:
            em.store(bits, k.out, at, align=2)
        else:
            em.masked_store(bits, k.out, at, live)

    with em.loop(full, name="q") as j:
        convert(b.mul(j, i64(LANES)), LANES)
    if tail:
        convert(i64(full * LANES), tail)


@kernel("dequantize", ("bf16#round",), result="f32")
def dequantize_bf16(k: KernelContext) -> None:
    """bf16 -> f32, exact: the bf16 bits are the top half of the f32."""
    em, b = k.em, k.em.b
    count = k.result_type.numel
    full, tail = divmod(count, LANES)
    v16s = vec(I16, LANES)

    def widen(at: ir.Value, live: int) -> None:
        bits = em.load(k.args[0], at, v16s, align=2) if live == LANES else em.masked_load(k.args[0], at, v16s, live)
        y = b.bitcast(b.shl(b.zext(bits, V16I), const(V16I, 16)), V16F)
        if live == LANES:
            em.store(y, k.out, at, align=4)
        else:
            em.masked_store(y, k.out, at, live)

    with em.loop(full, name="d") as j:
        widen(b.mul(j, i64(LANES)), LANES)
    if tail:
        widen(i64(full * LANES), tail)
