"""AMX int8 GEMM for batched int8 ``linear`` (u8 activations x s8 weights -> s32), Linux x86-64.

``C[M,N] = requant( offset[n] + sum_k A[m,k] * W[n,k] )`` with the sums from AMX tiles:

* **Tiles** (palette 1, all eight ``tmm`` 16 rows x 64 bytes, one ``ldtilecfg`` per task):
  A tiles hold 16 rows x 64 K bytes (u8); B tiles 16 K-groups x 16 columns x 4 bytes (s8),
  i.e. the VNNI layout with 4 consecutive K per int32 lane; C tiles 16 x 16 int32.
  ``tdpbusd`` adds 16 x 16 x 64 products per instruction. A 2 x 2 block of C tiles
  (32 rows x 32 columns: ``tmm0..3``) takes two A tiles (``tmm4, 5``) and two B tiles
  (``tmm6, 7``) per 64-wide K step; edge blocks use 1 x 2, 2 x 1 or 1 x 1.
* **Weights** are packed at compile time as ``[ceil(N/16)][K64/4][16][4]`` (K zero padded to
  a multiple of 64, N to 16), exactly the bytes one B tile load reads with a 64-byte stride.
* **A** is copied into scratch with rows padded to ``K64`` bytes and rows to a multiple of 16
  (zeros): tile loads never read past the caller's buffer, and zero bytes times zero-padded
  weights add nothing. The tiles' int32 sums go to a scratch ``C32`` ``[M16][N16]``; the
  epilogue adds the per-channel offset and requantises (or scales to f32) exactly as the VNNI
  kernel does, so int8 results are identical to it (integer sums, in any order, are exact).
* **Permission**: Linux hands out the 8 KiB tile state only after
  ``arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18)``; the library has no
  libc, so it makes the system call itself (inline ``syscall``, number 158), once per library,
  caching the answer in an internal global. If the kernel refuses, the same packed weights go
  through a VNNI ``vpdpbusd`` micro-kernel (16-column panels) instead: slower, same results.
* **Threads**: the column-panel pairs are split through the parallel hook like every GEMM;
  each task loads the tile configuration itself (it is per-thread state) and releases the
  tiles (``tilerelease``) when done.

Chosen for ``linear`` with ``M >= 16`` rows when the target lists ``amx-int8`` (``native`` on a
Sapphire Rapids-class Xeon); batch-1 GEMV stays on the VNNI kernel, which is bound by the weight
stream anyway. Emitted as inline assembly with fixed tile registers: the tile intrinsics of
LLVM (``*.internal`` with a configuration pass) are not needed for this fixed blocking.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, I8, I32, I64, Emitter, i64
from mcir.codegen.memory_plan import ALIGN, align_up
from mcir.codegen.target import Target

TILE_K = 64  # bytes of K per A-tile row (and 16 groups of 4 per B tile)
TILE_ROWS = 16
TILE_COLS = 16  # int32 columns of a C tile
GROUP = 4
ARCH_PRCTL = 158
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18

#: tests set this to compile the run-time fallback as if the kernel had refused the permission
FORCE_FALLBACK = False


def amx_applies(m: int, target: Target) -> bool:
    """Whether a u8 x s8 ``linear`` with ``m`` rows uses AMX tiles on ``target``."""
    return m >= TILE_ROWS and target.is_x86 and target.has("amx-int8") and "linux" in target.triple


def padded_k(k: int) -> int:
    return math.ceil(k / TILE_K) * TILE_K


def pack_weights(w_nk: np.ndarray) -> np.ndarray:
    """``W[N,K]`` (s8) as B tiles: ``[ceil(N/16)][K64/4][16][4]``, zero padded."""
    n, k = w_nk.shape
    p, kp = math.ceil(n / TILE_COLS), padded_k(k)
    padded = np.zeros((p * TILE_COLS, kp), w_nk.dtype)
    padded[:n, :k] = w_nk
    return np.ascontiguousarray(padded.reshape(p, TILE_COLS, kp // GROUP, GROUP).transpose(0, 2, 1, 3))


def weight_bytes(n: int, k: int) -> int:
    return math.ceil(n / TILE_COLS) * TILE_COLS * padded_k(k)


def scratch_bytes(m: int, n: int, k: int) -> int:
    """The padded copy of A, then the int32 sums."""
    m16 = math.ceil(m / TILE_ROWS) * TILE_ROWS
    return align_up(m16 * padded_k(k), ALIGN) + m16 * math.ceil(n / TILE_COLS) * TILE_COLS * 4


# -- inline assembly -------------------------------------------------------------------------------


def _asm(em: Emitter, text: str, constraints: str, args: list[ir.Value], ret: ir.Type | None = None) -> ir.Value:
    fnty = ir.FunctionType(ret or ir.VoidType(), [a.type for a in args])
    return em.b.asm(fnty, text, constraints, args, side_effect=True)


def _tile_config(module: ir.Module) -> ir.GlobalVariable:
    """The 64-byte configuration: palette 1, tmm0..7 all 16 rows x 64 bytes."""
    name = "mcir.amx.config"
    if name in module.globals:
        return module.globals[name]
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    cfg[16:32].view(np.uint16)[:8] = TILE_K
    cfg[48:56] = TILE_ROWS
    arr = ir.ArrayType(I8, 64)
    gv = ir.GlobalVariable(module, arr, name)
    gv.linkage = "internal"
    gv.global_constant = True
    gv.align = 64
    gv.initializer = ir.Constant(arr, bytearray(cfg.tobytes()))
    return gv


def _permission(em: Emitter) -> ir.Value:
    """i1: AMX may be used in this process (asked once; the answer is cached in a global)."""
    module, b = em.module, em.b
    name = "mcir.amx.state"  # 0 not asked yet, 1 granted, 2 refused
    if name in module.globals:
        state = module.globals[name]
    else:
        state = ir.GlobalVariable(module, I32, name)
        state.linkage = "internal"
        state.initializer = ir.Constant(I32, 2 if FORCE_FALLBACK else 0)
    known = b.load(state, typ=I32)
    with b.if_then(b.icmp_signed("==", known, ir.Constant(I32, 0))):
        # raw arch_prctl: the kernel clobbers rcx and r11; rax returns 0 or -errno
        r = _asm(
            em,
            "syscall",
            "={rax},{rax},{rdi},{rsi},~{rcx},~{r11},~{memory},~{flags}",
            [i64(ARCH_PRCTL), i64(ARCH_REQ_XCOMP_PERM), i64(XFEATURE_XTILEDATA)],
            I64,
        )
        granted = b.icmp_signed("==", r, i64(0))
        b.store(b.select(granted, ir.Constant(I32, 1), ir.Constant(I32, 2)), state)
    return b.icmp_signed("==", b.load(state, typ=I32), ir.Constant(I32, 1))


# -- the kernel ------------------------------------------------------------------------------------


def emit_pad_a(em: Emitter, a: ir.Value, m: int, k: int, dst: ir.Value) -> None:
    """A[M,K] into ``dst`` as [M16][K64] bytes, zero padded (rows and K)."""
    b = em.b
    kp = padded_k(k)
    m16 = math.ceil(m / TILE_ROWS) * TILE_ROWS
    with em.loop(m16, name="ar") as r:
        row_in = b.icmp_signed("<", r, i64(m))
        with em.loop(kp, name="ak") as kk:
            inside = b.and_(row_in, b.icmp_signed("<", kk, i64(k)))
            at = b.select(inside, b.add(b.mul(r, i64(k)), kk), i64(0))
            v = b.select(inside, em.load(a, at, I8), ir.Constant(I8, 0))
            em.store(v, dst, b.add(b.mul(r, i64(kp)), kk))


def emit_tiles(em: Emitter, a_pad: ir.Value, w: ir.Value, c32: ir.Value, m: int, n: int, k: int, lo, hi) -> None:
    """The int32 sums of column-panel pairs ``[lo, hi)`` (pairs of 16-column panels) into ``c32``."""
    b = em.b
    kp = padded_k(k)
    panels = math.ceil(n / TILE_COLS)
    npad = panels * TILE_COLS
    m16 = math.ceil(m / TILE_ROWS) * TILE_ROWS
    panel_stride = kp // GROUP * TILE_COLS * GROUP  # bytes of one B panel
    _asm(em, "ldtilecfg ($0)", "r,~{memory}", [_tile_config(em.module)])

    def block(row: ir.Value, mt: int, panel: ir.Value, nt: int) -> None:
        """C rows [row, row + 16 mt) x panels [panel, panel + nt) over all of K."""
        for i in range(mt):
            for j in range(nt):
                _asm(em, f"tilezero %tmm{2 * i + j}", "~{memory}", [])
        with em.loop(kp // TILE_K, name="kb") as kb:
            for i in range(mt):
                at = b.add(b.mul(b.add(row, i64(16 * i)), i64(kp)), b.mul(kb, i64(TILE_K)))
                _asm(em, f"tileloadd ($0,$1,1), %tmm{4 + i}", "r,r,~{memory}", [em.byte_offset(a_pad, at), i64(kp)])
            for j in range(nt):
                at = b.add(b.mul(b.add(panel, i64(j)), i64(panel_stride)), b.mul(kb, i64(TILE_K * TILE_COLS)))
                _asm(em, f"tileloadd ($0,$1,1), %tmm{6 + j}", "r,r,~{memory}", [em.byte_offset(w, at), i64(64)])
            for i in range(mt):
                for j in range(nt):
                    _asm(em, f"tdpbusd %tmm{6 + j}, %tmm{4 + i}, %tmm{2 * i + j}", "~{memory}", [])
        for i in range(mt):
            for j in range(nt):
                at = b.mul(
                    b.add(b.mul(b.add(row, i64(16 * i)), i64(npad)), b.mul(b.add(panel, i64(j)), i64(16))), i64(4)
                )
                _asm(
                    em,
                    f"tilestored %tmm{2 * i + j}, ($0,$1,1)",
                    "r,r,~{memory}",
                    [em.byte_offset(c32, at), i64(4 * npad)],
                )

    def rows(panel: ir.Value, nt: int) -> None:
        pairs, odd = divmod(m16 // TILE_ROWS, 2)
        if pairs:
            with em.loop(pairs * 32, name="rb", step=32) as row:
                block(row, 2, panel, nt)
        if odd:
            block(i64(pairs * 32), 1, panel, nt)

    full, single = divmod(panels, 2)
    if full:
        end = b.select(b.icmp_signed("<", hi, i64(full)), hi, i64(full))
        with em.loop(end, name="pq", start=lo) as q:
            rows(b.mul(q, i64(2)), 2)
    if single:
        with b.if_then(b.icmp_signed(">", hi, i64(full))):
            rows(i64(panels - 1), 1)
    _asm(em, "tilerelease", "~{memory}", [])


def emit_epilogue(em: Emitter, g, c32: ir.Value, lo, hi, requantize: Callable) -> None:
    """Offset + requantisation (or f32 scale and fused activation) of columns of panel pairs
    ``[lo, hi)``, for every row: the arithmetic of ``gemm_i8._tile``'s stores (``requantize`` is
    ``gemm_i8.requantize``, passed in: this module is imported by gemm_i8, never the reverse)."""
    b = em.b
    lanes = TILE_COLS
    panels = math.ceil(g.n / TILE_COLS)
    npad = panels * TILE_COLS
    vi32 = ir.VectorType(I32, lanes)
    tab = [em.byte_offset(g.table, 4 * g.table_count * i) for i in range(3)]
    p0 = b.mul(lo, i64(2))
    p1 = b.mul(hi, i64(2))
    p1 = b.select(b.icmp_signed("<", p1, i64(panels)), p1, i64(panels))
    full = g.n // lanes

    def column(r: ir.Value, p: ir.Value, valid: int) -> None:
        col = b.mul(p, i64(lanes))
        v = b.add(em.load(c32, b.add(b.mul(r, i64(npad)), col), vi32, align=64), em.load(tab[0], col, vi32, align=4))
        if g.rq.out == "f32":
            y = b.fmul(b.sitofp(v, ir.VectorType(F32, lanes)), em.load(tab[1], col, ir.VectorType(F32, lanes), align=4))
            if g.epilogue is not None:
                y = g.epilogue(em, y)
        else:
            y = requantize(em, v, em.load(tab[1], col, vi32, align=4), em.load(tab[2], col, vi32, align=4), g.rq)
        off = b.add(b.mul(r, i64(g.c_rs)), col)
        if valid == lanes:
            em.store(y, g.c, off)
        else:
            em.masked_store(y, g.c, off, valid)

    with em.loop(g.m, name="er") as r:
        end = b.select(b.icmp_signed("<", p1, i64(full)), p1, i64(full))
        with em.loop(end, name="ep", start=p0) as p:
            column(r, p, lanes)
        if g.n % lanes:
            with b.if_then(b.icmp_signed(">", p1, i64(full))):
                column(r, i64(full), g.n % lanes)


def emit_linear(em: Emitter, g, a_pad: ir.Value, c32: ir.Value, requantize: Callable, fallback: Callable) -> None:
    """The whole AMX linear for ``g`` (a ``gemm_i8.IntGemm``): pad A, then per task (panel pairs)
    tiles + epilogue; if the permission is refused, ``fallback(em, gemm, lo, hi)`` (gemm_i8's VNNI
    kernel on 16-column panels) over the same packed weights, A padded to ``K64``."""
    from mcir.codegen.parallel import parallel_for

    b = em.b
    m, n, k = g.m, g.n, g.k
    kp = padded_k(k)
    emit_pad_a(em, g.a, m, k, a_pad)
    pairs = math.ceil(math.ceil(n / TILE_COLS) / 2)
    macs = m * n * k
    with b.if_else(_permission(em)) as (amx, vnni):
        with amx:

            def tiles(tem: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
                emit_tiles(tem, p[0], p[1], p[2], m, n, k, lo, hi)
                emit_epilogue(tem, replace(g, c=p[3], table=p[4]), p[2], lo, hi, requantize)

            parallel_for(em, "linear_amx", pairs, macs, [a_pad, g.b_packed, c32, g.c, g.table], tiles)
        with vnni:
            # the AMX weight layout is the VNNI panel layout with 16 columns and K padded to 64
            padded = replace(g, a=a_pad, a_rs=kp, k=kp, a_kpad=True)

            def dots(tem: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
                fallback(tem, replace(padded, a=p[0], b_packed=p[1], c=p[2], table=p[3]), lo, hi)

            parallel_for(em, "linear_amx_fallback", math.ceil(n / 16), macs, [a_pad, g.b_packed, g.c, g.table], dots)
