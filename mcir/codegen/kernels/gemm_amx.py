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


def reads_a_in_place(k: int) -> bool:
    """Whether A's rows can be tile-loaded where they are (K a whole number of 64-byte tile rows);
    then only the last ``M % 16`` rows are copied, else all of A is copied with rows padded to K64."""
    return k % TILE_K == 0


def padded_rows(m: int, k: int) -> int:
    """Rows of A copied into the scratch (zero padded to whole tiles)."""
    if reads_a_in_place(k):
        return TILE_ROWS if m % TILE_ROWS else 0
    return math.ceil(m / TILE_ROWS) * TILE_ROWS


def scratch_bytes(m: int, n: int, k: int) -> int:
    """The padded rows of A (see ``padded_rows``)."""
    return align_up(padded_rows(m, k) * padded_k(k), ALIGN)


def panels_outer(m: int, k: int) -> bool:
    """Loop order: column-panel pairs outer (a pair's B tiles stay in L1/L2 while every row block
    passes, A is re-read per pair) when A fits comfortably in L2, else row blocks outer (a row
    block's A tiles stay in L1 while the task's panels stream from L2)."""
    return m * padded_k(k) <= A_IN_L2


#: bytes of A re-read from L2 per panel pair in the panels-outer order (half this CPU class's 2 MiB L2)
A_IN_L2 = 1 << 20


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


def emit_pad_a(em: Emitter, a: ir.Value, m: int, k: int, dst: ir.Value, first_row: int = 0) -> None:
    """Rows ``[first_row, m)`` of A[M,K] into ``dst`` as [16-row tiles][K64] bytes, zero padded
    (rows past M and K)."""
    b = em.b
    kp = padded_k(k)
    rows = math.ceil((m - first_row) / TILE_ROWS) * TILE_ROWS
    with em.loop(rows, name="ar") as r:
        src_row = b.add(r, i64(first_row))
        row_in = b.icmp_signed("<", src_row, i64(m))
        with em.loop(kp, name="ak") as kk:
            inside = b.and_(row_in, b.icmp_signed("<", kk, i64(k)))
            at = b.select(inside, b.add(b.mul(src_row, i64(k)), kk), i64(0))
            v = b.select(inside, em.load(a, at, I8), ir.Constant(I8, 0))
            em.store(v, dst, b.add(b.mul(r, i64(kp)), kk))


def _entry_alloca(em: Emitter, nbytes: int) -> ir.Value:
    """A 64-byte aligned stack buffer, allocated once in the function's entry block (a kernel may
    be emitted inside loops)."""
    b = em.b
    here = b.block
    b.position_at_start(b.function.entry_basic_block)
    buf = b.alloca(I8, size=i64(nbytes))
    buf.align = 64
    b.position_at_end(here)
    return buf


def emit_tiles(em: Emitter, g, a: ir.Value, a_tail: ir.Value, lo: ir.Value, hi: ir.Value, requantize: Callable) -> None:
    """Panel pairs ``[lo, hi)`` (pairs of 16-column panels) of ``C = requant(offset + A @ W^T)``.

    The tile loop is ``emit_tile_blocks`` with ``tdpbusd``; each 32 x 32 block of int32 sums is
    finished here (offset, requantisation or f32 scale and fused activation), straight into C.
    """
    b = em.b
    lanes = TILE_COLS
    vi32, vf32 = ir.VectorType(I32, lanes), ir.VectorType(F32, lanes)
    tab = [em.byte_offset(g.table, 4 * g.table_count * i) for i in range(3)]
    last_cols = g.n - TILE_COLS * (math.ceil(g.n / TILE_COLS) - 1)

    def finish(row0: ir.Value, tile_rows: list[int], panel: ir.Value, nt: int, ragged: bool, buf: ir.Value) -> None:
        """The epilogue of a block from ``buf``: ``tile_rows[i]`` valid rows in row tile i."""
        for j in range(nt):
            col = b.add(b.mul(panel, i64(TILE_COLS)), i64(j * TILE_COLS))
            valid = last_cols if ragged and j == nt - 1 else lanes
            off = em.load(tab[0], col, vi32, align=4)
            if g.rq.out == "f32":
                scale = em.load(tab[1], col, vf32, align=4)
            else:
                m0, shift = em.load(tab[1], col, vi32, align=4), em.load(tab[2], col, vi32, align=4)
            for i, rows in enumerate(tile_rows):
                with em.loop(rows, name="er") as r:
                    br = b.add(r, i64(i * TILE_ROWS))
                    v = b.add(em.load(buf, b.add(b.mul(br, i64(BLOCK_COLS)), i64(j * lanes)), vi32, align=64), off)
                    if g.rq.out == "f32":
                        y = b.fmul(b.sitofp(v, vf32), scale)
                        if g.epilogue is not None:
                            y = g.epilogue(em, y)
                    else:
                        y = requantize(em, v, m0, shift, g.rq)
                    at = b.add(b.mul(b.add(row0, br), i64(g.c_rs)), col)
                    if valid == lanes:
                        em.store(y, g.c, at)
                    else:
                        em.masked_store(y, g.c, at, valid)

    a_rs = g.k if reads_a_in_place(g.k) else padded_k(g.k)
    emit_tile_blocks(em, g.m, g.n, padded_k(g.k), a, a_rs, a_tail, g.b_packed, lo, hi, "tdpbusd", finish)


#: columns of the 32 x 32 block buffer ``emit_tile_blocks`` hands to its ``finish`` (4-byte elements)
BLOCK_COLS = 2 * TILE_COLS


def emit_tile_blocks(
    em: Emitter,
    m: int,
    n: int,
    kp: int,
    a: ir.Value,
    a_rs: int,
    a_tail: ir.Value,
    b_packed: ir.Value,
    lo: ir.Value,
    hi: ir.Value,
    instruction: str,
    finish: Callable,
) -> None:
    """The tile loop shared by the int8 (``tdpbusd``) and bf16 (``tdpbf16ps``) kernels.

    ``kp`` is the bytes of one padded row of A (a multiple of 64), ``a_rs`` the byte stride of
    the full 16-row tiles read from ``a``; the last ``M % 16`` rows come from ``a_tail`` (rows
    ``kp`` bytes apart). B panels are ``16 * kp`` bytes, each 64-byte K step one 16-row B tile.
    Panel pairs ``[lo, hi)``: each 32 x 32 block (2 x 2 C tiles; 1 x 2, 2 x 1, 1 x 1 at the
    edges) sums all of K in tiles, is stored to a 4 KiB stack buffer (rows ``BLOCK_COLS`` 4-byte
    elements apart) and handed to ``finish(row0, tile_rows, panel, nt, ragged, buf)`` while it is
    in L1. Both instructions accumulate 4-byte elements (int32, f32), so one configuration
    (palette 1, all tiles 16 rows x 64 bytes) serves both.
    """
    b = em.b
    full_tiles, tail_rows = divmod(m, TILE_ROWS)
    panels = math.ceil(n / TILE_COLS)
    full_pairs = (n // TILE_COLS) // 2  # pairs of two complete panels
    tail_panels = panels - 2 * full_pairs  # 0, 1 or 2 panels in the last pair (the last may be ragged)
    last_cols = n - TILE_COLS * (panels - 1)
    panel_stride = kp * TILE_COLS  # bytes of one B panel
    buf = _entry_alloca(em, 2 * TILE_ROWS * BLOCK_COLS * 4)  # a 32 x 32 block of 4-byte sums
    _asm(em, "ldtilecfg ($0)", "r,~{memory}", [_tile_config(em.module)])

    def block(row0: ir.Value, srcs: list[ir.Value], tile_rows: list[int], panel: ir.Value, nt: int, ragged: bool):
        """C rows from ``row0`` (row tile i read from ``srcs[i]``) x panels ``[panel, panel + nt)``."""
        mt = len(srcs)
        for i in range(mt):
            for j in range(nt):
                _asm(em, f"tilezero %tmm{2 * i + j}", "~{memory}", [])
        stride = [a_rs if src is not a_tail else kp for src in srcs]
        with em.loop(kp // TILE_K, name="kb") as kb:
            for i in range(mt):
                at = b.mul(kb, i64(TILE_K))
                _asm(
                    em,
                    f"tileloadd ($0,$1,1), %tmm{4 + i}",
                    "r,r,~{memory}",
                    [em.byte_offset(srcs[i], at), i64(stride[i])],
                )
            for j in range(nt):
                at = b.add(b.mul(b.add(panel, i64(j)), i64(panel_stride)), b.mul(kb, i64(TILE_K * TILE_COLS)))
                _asm(em, f"tileloadd ($0,$1,1), %tmm{6 + j}", "r,r,~{memory}", [em.byte_offset(b_packed, at), i64(64)])
            for i in range(mt):
                for j in range(nt):
                    _asm(em, f"{instruction} %tmm{6 + j}, %tmm{4 + i}, %tmm{2 * i + j}", "~{memory}", [])
        for i in range(mt):
            for j in range(nt):
                at = 4 * (i * TILE_ROWS * BLOCK_COLS + j * TILE_COLS)
                _asm(
                    em,
                    f"tilestored %tmm{2 * i + j}, ($0,$1,1)",
                    "r,r,~{memory}",
                    [em.byte_offset(buf, at), i64(4 * BLOCK_COLS)],
                )
        finish(row0, tile_rows, panel, nt, ragged, buf)

    def row_blocks(each: Callable) -> None:
        """``each(row0, srcs, tile_rows)`` for every block of one or two 16-row tiles."""
        pairs, odd = divmod(full_tiles, 2)
        if pairs:
            with em.loop(pairs * 32, name="rb", step=32) as row:
                src = em.byte_offset(a, b.mul(row, i64(a_rs)))
                each(row, [src, em.byte_offset(src, 16 * a_rs)], [TILE_ROWS, TILE_ROWS])
        last = pairs * 32
        srcs, tile_rows = [], []
        if odd:
            srcs.append(em.byte_offset(a, i64(last * a_rs)))
            tile_rows.append(TILE_ROWS)
        if tail_rows:
            srcs.append(a_tail)
            tile_rows.append(tail_rows)
        if srcs:
            each(i64(last), srcs, tile_rows)

    def pair_range(each: Callable) -> None:
        """``each(panel, nt, ragged)`` for the task's panel pairs."""
        if full_pairs:
            end = b.select(b.icmp_signed("<", hi, i64(full_pairs)), hi, i64(full_pairs))
            with em.loop(end, name="pq", start=lo) as q:
                each(b.mul(q, i64(2)), 2, False)
        if tail_panels:
            with b.if_then(b.icmp_signed(">", hi, i64(full_pairs))):
                each(i64(2 * full_pairs), tail_panels, last_cols != TILE_COLS)

    if m * kp <= A_IN_L2:  # panels outer (see ``panels_outer``)
        pair_range(lambda p, nt, rg: row_blocks(lambda r0, srcs, tr: block(r0, srcs, tr, p, nt, rg)))
    else:
        row_blocks(lambda r0, srcs, tr: pair_range(lambda p, nt, rg: block(r0, srcs, tr, p, nt, rg)))
    _asm(em, "tilerelease", "~{memory}", [])


def emit_linear(em: Emitter, g, scratch: ir.Value, requantize: Callable, fallback: Callable) -> None:
    """The whole AMX linear for ``g`` (a ``gemm_i8.IntGemm``): copy the rows of A tiles cannot read
    in place (``padded_rows``), then per task (panel pairs) tiles with the fused epilogue; if the
    permission is refused, ``fallback(em, gemm, lo, hi)`` (gemm_i8's VNNI kernel on 16-column
    panels) over the same packed weights and A rows of ``K64`` bytes."""
    from mcir.codegen.parallel import parallel_for

    b = em.b
    m, n, k = g.m, g.n, g.k
    kp = padded_k(k)
    in_place = reads_a_in_place(k)
    if in_place:
        if m % TILE_ROWS:
            emit_pad_a(em, g.a, m, k, scratch, first_row=m - m % TILE_ROWS)
        a_full = g.a
        a_tail = scratch if m % TILE_ROWS else g.a  # no tail: no scratch, and the pointer is never read
    else:
        emit_pad_a(em, g.a, m, k, scratch)
        a_full = scratch
        a_tail = em.byte_offset(scratch, (m - m % TILE_ROWS) * kp)
    pairs = math.ceil(math.ceil(n / TILE_COLS) / 2)
    macs = m * n * k
    with b.if_else(_permission(em)) as (amx, vnni):
        with amx:

            def tiles(tem: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
                emit_tiles(tem, replace(g, b_packed=p[2], c=p[3], table=p[4]), p[0], p[1], lo, hi, requantize)

            parallel_for(em, "linear_amx", pairs, macs, [a_full, a_tail, g.b_packed, g.c, g.table], tiles)
        with vnni:
            # the AMX weight layout is the VNNI panel layout with 16 columns and K padded to 64;
            # in place, K is already a multiple of 64 and A is read where it is
            padded = replace(g, a=a_full, a_rs=kp, k=kp, a_kpad=True)

            def dots(tem: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
                fallback(tem, replace(padded, a=p[0], b_packed=p[1], c=p[2], table=p[3]), lo, hi)

            parallel_for(em, "linear_amx_fallback", math.ceil(n / 16), macs, [a_full, g.b_packed, g.c, g.table], dots)
