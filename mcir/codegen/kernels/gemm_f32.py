"""fp32 GEMM/GEMV: a register-blocked micro-kernel over pre-packed B panels.

``C[M,N] = A[M,K] @ B[K,N] (+ bias) (then a fused activation)``

* B is packed in panels of ``NR = nv * lanes`` columns: ``[ceil(N/NR)][K][NR]``, zero
  padded, so the micro-kernel streams it with aligned full-vector loads. Constant
  weights are packed at compile time (``linear``'s ``[N,K]`` weight is transposed in
  the process); a runtime B (``matmul`` of activations, attention) is packed into the
  op's scratch.
* The micro-kernel keeps an ``MR x nv`` tile of C in vector registers (6 x 4 zmm on
  AVX-512: 24 accumulators, 4 B loads and 6 A broadcasts per 24 FMAs); batch-1 GEMV
  (M = 1) instead splits K over ``ku`` accumulator sets to hide the FMA latency, and is
  bound by the weight stream, which the panel layout makes one linear read.
* Cache blocking, outer to inner: rows in blocks of ``MC`` (an A block stays in L2 while
  every panel passes over it), K in chunks of ``KC`` (a panel's chunk fits L1), panels,
  row tiles. So every row tile of a block re-reads a panel chunk from L1 and a large
  weight streams from memory once per row block; the tiles prefetch the next panel's
  chunk into L2 when B is too big to be there already. Edges are static: the last rows
  use a smaller MR, the last panel masked loads and stores; nothing outside A, B, C and
  the bias is read or written.
* Threads: a task computes a range of panels or of row tiles (``choose_split``), every C
  element by the same instructions whatever the range (bit-identical for any thread count).

A is addressed with strides (``A[m,k] = a[m*a_rs + k*a_cs]``), or, when it is a
constant (convolution weights), pre-packed in row panels ``[ceil(M/MR)][K][MR]`` so
the MR broadcasts of one k come from one cache line (``pack_a``). A large run-time A
that many panels reuse is packed the same way block by block (``MC`` rows x ``KC``) into
the op's scratch by a single-threaded product (``packs_a``, ``emit_gemm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, Emitter, const, i64, vec
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.memory_plan import align_up, view_root
from mcir.codegen.parallel import MIN_PARALLEL_MACS, parallel_for
from mcir.codegen.target import Target
from mcir.ir import Op


@dataclass(frozen=True)
class Tiling:
    """Register and cache blocking of one GEMM, chosen from its shape and the target."""

    mr: int  # rows of C per micro-tile
    nv: int  # vectors of C per micro-tile row
    lanes: int  # f32 lanes per vector
    ku: int  # independent accumulator sets along K (latency hiding when mr is small)
    kc: int  # K chunk
    mc: int  # rows per cache block

    @property
    def nr(self) -> int:
        return self.nv * self.lanes


def panel_width(n: int, target: Target) -> tuple[int, int]:
    """(nv, lanes) of the B panels for N columns: depends on N and the target only, so a
    weight shared by several ops is packed once."""
    lanes = target.f32_lanes
    nv_max = 4 if target.vector_registers >= 32 else 2
    return max(1, min(nv_max, math.ceil(n / lanes))), lanes


# The K chunk of a B panel (KC x NR floats) that every row tile of a block re-reads should stay in
# L1: 32 KiB is the L1d of Zen 4 and two thirds of Sapphire Rapids' 48 KiB. (A 64 KiB chunk, the
# previous KC = 256 at NR = 64, measured 5-10 % slower on Linear 4096 at batch 32, loaded machine.)
PANEL_CHUNK_BYTES = 32 * 1024
# With many rows (M >= LARGE_M_ROWS) every K chunk of a panel is re-read by many row tiles, from L2 just
# as well as from L1 (a 6 x 4 tile needs a third of a cache line per cycle), and longer chunks cut the
# read-modify-write of C between chunks 8-fold: 4096x1024x256 measured 61-64 % -> 74-76 % of the measured
# FMA peak, 1024^3 65-74 % -> 76-77 %, 512x2048^2 67-74 % -> 74-76 % (interleaved runs, CPU time, quiet
# machine; docs/benchmarks.md "Longer K chunks for many rows"). Few rows (M = 32-64: batch 32) stay at
# 32 KiB: there B streams from memory once and longer chunks measured 5-13 % slower on Linear 4096.
# Below this many rows the row tile prefers a height that divides M (choose_tiling)
FEW_ROWS = 24
LARGE_M_PANEL_CHUNK_BYTES = 256 * 1024
LARGE_M_ROWS = 256
# Below this size B (or C) is expected in L2 already (im2col columns, small weights), where the
# hardware prefetchers keep up and software prefetches would only cost issue slots.
PREFETCH_ABOVE_BYTES = 1 << 20
# An A block (MC x KC floats) reused by every panel should stay in L2 (1-2 MiB per core here).
A_BLOCK_BYTES = 512 * 1024
# A strided A is packed into row panels when at least this many B panels reuse it, its rows are at
# least a page apart and a block's K chunk of it is larger than L1 (measured, loaded machine: packing
# cost 1-3 % on 256x512x256 and 32x1024x784, whose A is near or in L1, and gained 5-10 points of
# peak on 512x2048x2048 and 1024^3).
PACK_A_MIN_PANELS = 16
PACK_A_MIN_ROW_BYTES = 4096
PACK_A_ABOVE_BYTES = 64 * 1024
# A tile prefetches its C lines before a k loop of at least this many steps (a shorter one would not
# hide the latency, and the prefetches would only cost issue slots).
C_PREFETCH_MIN_K = 32


def choose_tiling(m: int, n: int, k: int, target: Target) -> Tiling:
    """Blocking for an M x N x K product on ``target``.

    MR x NV: as many rows of accumulators as fit beside NV B vectors and one broadcast A value
    (6 x 4 zmm on AVX-512, 6 x 2 ymm on AVX2 with 16 registers), fewer when that divides M more
    evenly (a short tail tile wastes a tile's worth of loads on few rows)."""
    nv, lanes = panel_width(n, target)
    regs = target.vector_registers
    budget = regs - nv - 2  # accumulators that fit beside the B vectors and an A broadcast
    if m == 1:
        mr, ku = 1, max(1, min(4, budget // nv))
        ku = min(ku, 2) if nv >= 4 else ku
    else:
        mr = max(1, min(m, budget // nv, 8))
        ku = 1
        if m < FEW_ROWS:
            # very few row tiles: a ragged last tile costs a lot, so prefer a row count that divides M
            # (4 x 4 zmm still keeps 16 FMAs in flight, enough to cover the FMA latency). From 24 rows
            # on the full tile wins even with a ragged tail: at M = 32, 6 + 6 + 6 + 6 + 6 + 2 rows ran
            # 5-15 % faster than 8 x 4 rows (each tile re-reads the panel chunk; fewer tiles, fewer reads)
            lowest = min(mr, max(3, mr // 2))
            mr = min(range(mr, lowest - 1, -1), key=lambda r: (-(-m // r) * r - m, -r))
    nr = nv * lanes
    chunk = LARGE_M_PANEL_CHUNK_BYTES if m >= LARGE_M_ROWS else PANEL_CHUNK_BYTES
    if m <= mr or k * nr * 4 <= chunk:
        kc = k  # no reuse of B across row tiles (GEMV), or the whole panel already fits the chunk
    else:
        kc = max(64, chunk // (nr * 4))
        kc = math.ceil(k / math.ceil(k / kc))  # equal chunks: no short last chunk
    mc = max(mr, (A_BLOCK_BYTES // (kc * 4)) // mr * mr)
    # equal row blocks (2046 rows as 684 + 684 + 678, not 1020 + 1020 + 6): every block streams all
    # of B, so a sliver of a block would cost a whole pass over B for a few rows
    tiles = m // mr
    blocks = math.ceil(tiles * mr / mc)
    if blocks > 1:
        per = math.ceil(tiles / blocks)
        # ceil rounding can still leave a sliver (341 tiles in blocks of 21: 16 x 21 + 5): take fewer
        # tiles per block until the last block holds at least half of one (341 = 17 x 19 + 18)
        while per > 1 and 2 * (tiles - (math.ceil(tiles / per) - 1) * per) < per:
            per -= 1
        mc = per * mr
    return Tiling(mr, nv, lanes, ku, kc, mc)


def pack_b(b_kn: np.ndarray, nr: int) -> np.ndarray:
    """``B[K,N]`` as zero-padded panels ``[ceil(N/NR)][K][NR]``."""
    k, n = b_kn.shape
    p, full = math.ceil(n / nr), n // nr
    # one strided copy straight into the panels (b_kn is usually W.T, a view): a zero-padded
    # intermediate and a second transposing copy made this 10x slower on BERT-sized weights
    out = np.empty((p, k, nr), np.float32)
    out[:full] = b_kn[:, : full * nr].reshape(k, full, nr).transpose(1, 0, 2)
    if full < p:
        out[full:] = 0.0
        out[full, :, : n - full * nr] = b_kn[:, full * nr :]
    return out


def pack_a(a_mk: np.ndarray, mr: int) -> np.ndarray:
    """``A[M,K]`` as zero-padded row panels ``[ceil(M/MR)][K][MR]``."""
    m, k = a_mk.shape
    p = math.ceil(m / mr)
    padded = np.zeros((p * mr, k), np.float32)
    padded[:m] = a_mk
    return np.ascontiguousarray(padded.reshape(p, mr, k).transpose(0, 2, 1))


def packed_b_bytes(k: int, n: int, nr: int) -> int:
    return math.ceil(n / nr) * k * nr * 4


def packs_a(m: int, n: int, k: int, t: Tiling) -> bool:
    """Whether a single-threaded product packs its strided A, block by block, into row panels.

    Every row tile reads its ``MR x KC`` piece of A once per B panel; from row-major A those are MR
    runs a whole row apart (as many pages and prefetch streams per tile), from a packed panel one
    contiguous run in L2. Packing costs one pass over A (written to an L2-sized buffer, so it adds
    no memory traffic), so it is done only where the strided reads measurably cost more: many
    panels reuse A, its rows are pages apart and a block's K chunk of it does not fit in L1."""
    return (
        m > t.mr
        and panel_count(n, t) >= PACK_A_MIN_PANELS
        and k * 4 >= PACK_A_MIN_ROW_BYTES
        and min(m, t.mc) * t.kc * 4 > PACK_A_ABOVE_BYTES
    )


def packed_a_bytes(m: int, t: Tiling) -> int:
    """Scratch for the packed A of one row block and K chunk: a ``KC x MR`` panel per row tile of
    the block (the short last tile included), in whole cache lines."""
    tiles = min(math.ceil(m / t.mr), t.mc // t.mr + 1)
    return -(-tiles * t.kc * t.mr * 4 // 64) * 64


def emit_pack_b(em: Emitter, src: ir.Value, b_rs: int, b_cs: int, k: int, n: int, nr: int, dst: ir.Value) -> None:
    """Runtime packing of ``B[k, n] = src[k*b_rs + n*b_cs]`` into panels at ``dst``.

    Full panels are plain strided copies (contiguous, so vectorised, when ``b_cs == 1``);
    only the last, partial panel checks columns and writes zero padding.
    """
    b = em.b
    p_full, tail = divmod(n, nr)
    zero = const(F32, 0.0)

    def panel(p: ir.Value, width: int) -> None:
        pan = b.mul(p, i64(k * nr))
        with em.loop(k, name="pk") as kk:
            row = b.add(pan, b.mul(kk, i64(nr)))
            srow = b.add(b.mul(kk, i64(b_rs)), b.mul(p, i64(nr * b_cs)))
            if width:
                with em.loop(width, name="pj") as j:
                    em.store(em.load(src, b.add(srow, b.mul(j, i64(b_cs))), F32), dst, b.add(row, j))
            if width < nr:
                with em.loop(nr, name="pz", start=width) as j:
                    em.store(zero, dst, b.add(row, j))

    if p_full:
        with em.loop(p_full, name="pp") as p:
            panel(p, nr)
    if tail:
        panel(i64(p_full), tail)


@dataclass
class GemmArgs:
    """One product ``C = A @ B (+ bias)``: pointers, strides and the fused epilogue."""

    m: int
    n: int
    k: int
    a: ir.Value
    a_rs: int
    a_cs: int
    b_packed: ir.Value
    c: ir.Value
    c_rs: int
    bias: ir.Value | None = None
    bias_per_row: bool = False  # conv: one bias per output channel (a row of C)
    a_packed: bool = False  # A in row panels of the tiling's MR (see pack_a)
    epilogue: object = None  # Callable[[Emitter, ir.Value], ir.Value] | None
    b_dtype: str = "f32"  # storage of the B panels: f32, or f16 / bf16 widened to f32 as they are loaded
    a_dtype: str = "f32"  # storage of A (convolution weights): f32, f16 or bf16
    # scratch (``packed_a_bytes``) into which a single-threaded product packs each row block's K chunk
    # of a strided f32 A (``packs_a``); a task of a threaded split reads A in place
    a_buffer: ir.Value | None = None


def panel_count(n: int, t: Tiling) -> int:
    """B panels of an N-column product (the last may be partial)."""
    return math.ceil(n / t.nr)


def row_tile_count(m: int, t: Tiling) -> int:
    """Row tiles of an M-row product (the last may be shorter than MR)."""
    return math.ceil(m / t.mr)


@dataclass(frozen=True)
class Split:
    """How a threaded GEMM is cut into units: its B panels, or its row tiles when N has too few
    panels to share (a convolution's 64-pixel image, a narrow layer). Either way every C element
    is computed by one task with the same instructions, so results do not depend on the split."""

    rows: bool  # True: units are row tiles; False: units are B panels
    units: int


def choose_split(m: int, n: int, t: Tiling) -> Split:
    """Split along the axis with more units (panels on ties: then each task streams only its
    share of B, which matters when B is a large weight read from memory)."""
    panels, tiles = panel_count(n, t), row_tile_count(m, t)
    return Split(True, tiles) if tiles > panels else Split(False, panels)


def emit_gemm(
    em: Emitter,
    g: GemmArgs,
    t: Tiling,
    panel_range: tuple[ir.Value, ir.Value] | None = None,
    row_range: tuple[ir.Value, ir.Value] | None = None,
) -> None:
    """Emit the blocked loops and micro-tiles of one GEMM.

    Loop order (outer to inner): row blocks of ``MC`` -> K chunks of ``KC`` (-> pack A's block,
    see below) -> B panels -> row tiles of ``MR`` -> k. A panel's K chunk (``KC x NR``, sized for
    L1) is read from memory once per row block and then served from cache to every row tile of
    the block, while the tiles prefetch the next panel's chunk into L2; the block of A
    (``MC x KC``) stays in L2 while all panels pass over it. So a large constant B (the weights) is
    streamed once per row block, not once per row tile.

    With ``g.a_buffer`` (and no range: the single-threaded product) each row block's K chunk of A
    is first copied into row panels there (``KC x MR`` per tile), and the tiles broadcast from that
    contiguous copy; the FMAs are the same, so the results are bit-identical to reading A in place.

    ``panel_range`` = (lo, hi) restricts it to the columns of panels ``[lo, hi)``, ``row_range`` to
    the rows of row tiles ``[lo, hi)`` (one task of a threaded GEMM, see ``choose_split`` and
    ``mcir.codegen.parallel``); each C element gets the same operations in the same order whatever
    the range, so any split gives bit-identical results.
    """
    b = em.b
    p_full, n_tail = divmod(g.n, t.nr)
    m_main = g.m - g.m % t.mr
    m_tail = g.m % t.mr
    tiles_main = m_main // t.mr
    chunks = _k_chunks(g.k, t.kc)
    nv_t = math.ceil(n_tail / t.lanes)
    tail_lanes = n_tail - (nv_t - 1) * t.lanes
    n_panels = panel_count(g.n, t)
    b_bytes = n_panels * t.nr * g.k * (2 if g.b_dtype in HALF_STORAGE else 4)

    def panels(tiles, lo: ir.Value, hi: ir.Value, kstart: ir.Value, klen: int, first: bool, last: bool) -> None:
        """``tiles(panel, nv, last_lanes, ...)`` for the panels ``[lo, hi)`` over one K chunk (the
        full ones in a loop, the partial last one, if the range reaches it, with its own masks)."""
        if isinstance(lo, ir.Constant) and isinstance(hi, ir.Constant) and (lo.constant, hi.constant) == (0, n_panels):
            if p_full:
                with em.loop(p_full, name="p") as p:
                    tiles(p, t.nv, t.lanes, kstart, klen, first, last, hi)
            if n_tail:
                tiles(i64(p_full), nv_t, tail_lanes, kstart, klen, first, last, hi)
            return
        if p_full:
            end = b.select(b.icmp_signed("<", hi, i64(p_full)), hi, i64(p_full))
            with em.loop(end, name="p", start=lo) as p:
                tiles(p, t.nv, t.lanes, kstart, klen, first, last, hi)
        if n_tail:
            with b.if_then(b.icmp_signed(">", hi, i64(p_full))):
                tiles(i64(p_full), nv_t, tail_lanes, kstart, klen, first, last, hi)

    def chunk_passes(body) -> None:
        """body(kstart, klen, first, last) for every K chunk: static first/last, a loop between."""
        if len(chunks) == 1:
            body(i64(0), chunks[0], True, True)
            return
        body(i64(0), chunks[0], True, False)
        if len(chunks) > 2:
            with em.loop(len(chunks) - 1, name="kb", start=1) as kb:
                body(b.mul(kb, i64(t.kc)), t.kc, False, False)
        body(i64((len(chunks) - 1) * t.kc), chunks[-1], False, True)

    pack = g.a_buffer is not None and panel_range is None and row_range is None and not g.a_packed

    def pack_a(r0: ir.Value, r1: ir.Value, n_tiles: int, tail: bool, kstart: ir.Value, klen: int) -> None:
        """The block's rows [r0, r1) (and the tail rows) of A's K chunk into the buffer, one
        ``klen x MR`` panel per row tile at ``tile_no * KC * MR``: ``A[row + r, kstart + k]`` at
        ``[k * MR + r]`` of its tile's panel, so the tile's broadcasts walk one contiguous run."""

        def panel(row: ir.Value, tile_no: ir.Value, rows: int) -> None:
            dst = em.gep(g.a_buffer, b.mul(tile_no, i64(t.kc * t.mr)), F32)
            src = em.gep(g.a, b.add(b.mul(row, i64(g.a_rs)), b.mul(kstart, i64(g.a_cs))), F32)
            with em.loop(klen, name="pack_a_k") as kk:
                col = b.mul(kk, i64(g.a_cs))
                out = b.mul(kk, i64(t.mr))
                for r in range(rows):
                    em.store(em.load(src, b.add(col, i64(r * g.a_rs)), F32), dst, b.add(out, i64(r)))

        if tiles_main:
            with em.loop(r1, name="pack_a_row", start=r0, step=t.mr) as row:
                panel(row, b.udiv(b.sub(row, r0), i64(t.mr)), t.mr)
        if tail:
            panel(i64(m_main), i64(n_tiles - 1), m_tail)

    def block(r0: ir.Value, r1: ir.Value, n_tiles: int, tail: ir.Value | bool) -> None:
        """Main row tiles at rows [r0, r1), then the short tail tile if ``tail`` (static or run-time)."""

        def a_panel(tile_no: ir.Value) -> ir.Value | None:
            return em.gep(g.a_buffer, b.mul(tile_no, i64(t.kc * t.mr)), F32) if pack else None

        def tiles(panel, nv, last_lanes, kstart, klen, first, last, end) -> None:
            pf = None
            if n_tiles >= 2 and b_bytes > PREFETCH_ABOVE_BYTES:
                # while the row tiles reuse this panel's K chunk from cache, they prefetch the next
                # panel's chunk into L2 (clamped to this panel at the end of the range: never past B)
                nxt = b.add(panel, i64(1))
                nxt = b.select(b.icmp_signed("<", nxt, end), nxt, panel)
                pf = _Prefetch(nxt, n_tiles)

            def tile(row: ir.Value, rows: int, tile_no: ir.Value) -> None:
                _tile(
                    em, g, t, row, rows, panel, nv, last_lanes, kstart, klen, first, last, pf, tile_no, a_panel(tile_no)
                )

            if tiles_main:
                with em.loop(r1, name="r", start=r0, step=t.mr) as row:
                    tile(row, t.mr, b.udiv(b.sub(row, r0), i64(t.mr)))
            if tail is True or (tail is not False and m_tail):

                def tail_tile() -> None:
                    tile(i64(m_main), m_tail, i64(n_tiles - 1))

                if tail is True:
                    tail_tile()
                else:
                    with b.if_then(tail):
                        tail_tile()

        def chunk(lo: ir.Value, hi: ir.Value, ks: ir.Value, kl: int, f: bool, la: bool) -> None:
            if pack:
                pack_a(r0, r1, n_tiles, tail is True and m_tail > 0, ks, kl)
            panels(tiles, lo, hi, ks, kl, f, la)

        all_panels = panel_range if panel_range is not None else (i64(0), i64(n_panels))
        chunk_passes(lambda ks, kl, f, la: chunk(*all_panels, ks, kl, f, la))

    n_tiles = tiles_main + (m_tail > 0)
    if row_range is not None:
        # one task's row tiles; the tail tile (index tiles_main) belongs to whichever task reaches it
        lo, hi = row_range
        hi_main = b.select(b.icmp_signed("<", hi, i64(tiles_main)), hi, i64(tiles_main))
        tail = b.icmp_signed(">", hi, i64(tiles_main)) if m_tail else False
        block(b.mul(lo, i64(t.mr)), b.mul(hi_main, i64(t.mr)), n_tiles, tail)
        return
    nblocks = math.ceil(m_main / t.mc) if m_main else 0
    if nblocks <= 1:
        # the short tail tile rides along with the block's panels (each panel chunk read once)
        block(i64(0), i64(m_main), n_tiles, m_tail > 0)
        return
    # all blocks but the last in a loop; the last (up to MC rows) takes the short tail tile along
    with em.loop(nblocks - 1, name="mb") as mb:
        r0 = b.mul(mb, i64(t.mc))
        block(r0, b.add(r0, i64(t.mc)), t.mc // t.mr, False)
    r_last = (nblocks - 1) * t.mc
    block(i64(r_last), i64(m_main), (m_main - r_last) // t.mr + (m_tail > 0), m_tail > 0)


def emit_split_gemm(em: Emitter, g: GemmArgs, t: Tiling, split: Split, lo: ir.Value, hi: ir.Value) -> None:
    """The units ``[lo, hi)`` of ``split`` (one task of a ``parallel_for``, or all of them inline)."""
    if isinstance(lo, ir.Constant) and isinstance(hi, ir.Constant) and (lo.constant, hi.constant) == (0, split.units):
        emit_gemm(em, g, t)  # the whole product on one thread: the usual row blocking
    elif split.rows:
        emit_gemm(em, g, t, row_range=(lo, hi))
    else:
        emit_gemm(em, g, t, panel_range=(lo, hi))


HALF_STORAGE = {"f16": ir.HalfType(), "bf16": ir.IntType(16)}


def load_b(em: Emitter, ptr: ir.Value, index: ir.Value, lanes: int, dtype: str) -> ir.Value:
    """``lanes`` B values at ``ptr[index]`` as f32: a plain load, or a half-width load widened on the fly.

    f16 -> f32 is ``fpext`` (``vcvtph2ps`` with F16C / AVX-512); bf16 is the top half of an f32,
    so it is a zero-extend and a shift by 16 (exact, any target)."""
    b = em.b
    if dtype == "f32":
        return em.load(ptr, index, vec(F32, lanes), align=4 * lanes)
    elem = HALF_STORAGE[dtype]
    raw = em.load(ptr, index, vec(elem, lanes), align=2 * lanes)
    if dtype == "f16":
        return b.fpext(raw, vec(F32, lanes))
    wide = b.shl(b.zext(raw, vec(ir.IntType(32), lanes)), const(vec(ir.IntType(32), lanes), 16))
    return b.bitcast(wide, vec(F32, lanes))


def half_panels(panels: np.ndarray, dtype: str) -> np.ndarray:
    """f32 panels stored as f16 (round to nearest even) or as the bf16 bits of the values."""
    if dtype == "f16":
        return panels.astype(np.float16)
    import ml_dtypes

    return panels.astype(ml_dtypes.bfloat16).view(np.uint16)


def check_half_target(op: Op, dtype: str, target: Target) -> None:
    """f16 -> f32 needs F16C on x86 (else LLVM calls a libgcc helper, and the object must stay freestanding)."""
    if dtype == "f16" and target.is_x86 and not target.has("f16c"):
        from mcir.errors import CodegenError

        raise CodegenError(
            f"{op.where()}: f16 weights need a target with F16C (x86-64-v3 or later) to convert them; "
            "use bf16 storage (`half(dtype=bf16)`), which converts with integer shifts on any target"
        )


@dataclass(frozen=True)
class _Prefetch:
    """Software prefetch of the next panel's K chunk, shared out over the row tiles of a block."""

    panel: ir.Value  # the panel to prefetch (same K range as the tile's)
    tiles: int  # row tiles that share the work: tile i prefetches the cache lines i, i + tiles, ...


def _k_chunks(k: int, kc: int) -> list[int]:
    n = max(1, math.ceil(k / kc))
    return [kc] * (n - 1) + [k - (n - 1) * kc]


def _tile(
    em: Emitter,
    g: GemmArgs,
    t: Tiling,
    row: ir.Value,
    mr: int,
    panel: ir.Value,
    nv: int,
    last_lanes: int,
    kstart: ir.Value,
    klen: int,
    first: bool,
    last: bool,
    prefetch: _Prefetch | None = None,
    tile_no: ir.Value | None = None,
    a_panel: ir.Value | None = None,
) -> None:
    """One MR x (nv vectors) tile of C over K range [kstart, kstart + klen).

    With ``prefetch``, the k loop also prefetches (into L2) its share of the cache lines of the
    next panel's rows ``[kstart, kstart + klen)``: one ``prefetcht1`` per k per line it owns."""
    b = em.b
    vt = vec(F32, t.lanes)
    zero = const(vt, 0.0)
    a_elem = HALF_STORAGE.get(g.a_dtype, F32)
    if a_panel is not None:  # this K chunk of the tile packed by emit_gemm: A[row + r, kstart + k] at [k * MR + r]
        a_row, a_rs, a_cs = a_panel, 1, t.mr
    elif g.a_packed:  # panel of the tile: A[row + r, k] at a[row * K + k * MR + r]
        a_row = em.gep(g.a, b.mul(row, i64(g.k)), a_elem)
        a_rs, a_cs = 1, t.mr
    else:
        a_row = em.gep(g.a, b.mul(row, i64(g.a_rs)), a_elem)
        a_rs, a_cs = g.a_rs, g.a_cs
    b_elem = HALF_STORAGE.get(g.b_dtype, F32)
    b_pan = em.gep(g.b_packed, b.add(b.mul(panel, i64(g.k * t.nr)), b.mul(kstart, i64(t.nr))), b_elem)
    a_k0 = i64(0) if a_panel is not None else b.mul(kstart, i64(a_cs))
    ku = min(t.ku, max(1, klen))

    pf_lines: list[ir.Value] = []
    if prefetch is not None:
        esize = 2 if g.b_dtype in HALF_STORAGE else 4
        row_lines = math.ceil(t.nr * esize / 64)  # cache lines per panel row
        per_tile = math.ceil(row_lines / min(prefetch.tiles, row_lines))
        pf_base = em.gep(g.b_packed, b.add(b.mul(prefetch.panel, i64(g.k * t.nr)), b.mul(kstart, i64(t.nr))), b_elem)
        for j in range(per_tile):
            line = b.urem(b.add(b.mul(tile_no, i64(per_tile)), i64(j)), i64(row_lines))
            pf_lines.append(em.gep(pf_base, b.mul(line, i64(64 // esize)), b_elem))

    col0 = b.mul(panel, i64(t.nr))
    width = (nv - 1) * t.lanes + last_lanes  # columns of C this tile owns
    if not first and klen >= C_PREFETCH_MIN_K and g.m * g.n * 4 > PREFETCH_ABOVE_BYTES:
        # the tile adds into C after its k loop; a C too large for L2 was last touched a whole K chunk
        # ago and sits in L3, so ask for the tile's lines (owned, it will write them) now: they arrive
        # in L2 during the k loop. One address per 16 floats of a row, and its last column (a row need
        # not start on a cache line); none outside the tile.
        offsets = sorted(set(range(0, width, 16)) | {width - 1})
        for r in range(mr):
            c_row = b.add(b.mul(b.add(row, i64(r)), i64(g.c_rs)), col0)
            for o in offsets:
                em.prefetch(em.gep(g.c, b.add(c_row, i64(o)), F32), level=2, write=True)

    def step(kk: ir.Value, accs: list[ir.Value]) -> list[ir.Value]:
        for pl in pf_lines:
            em.prefetch(em.gep(pl, b.mul(kk, i64(t.nr)), b_elem), level=2)
        bv = [load_b(em, b_pan, b.add(b.mul(kk, i64(t.nr)), i64(j * t.lanes)), t.lanes, g.b_dtype) for j in range(nv)]
        out = list(accs)
        a_k = b.add(a_k0, b.mul(kk, i64(a_cs)))
        for r in range(mr):
            av = em.splat(load_b(em, a_row, b.add(a_k, i64(r * a_rs)), 1, g.a_dtype), t.lanes)
            for j in range(nv):
                out[r * nv + j] = em.fma(av, bv[j], accs[r * nv + j])
        return out

    n_acc = mr * nv
    k_main = klen - klen % ku
    sets = [[zero] * n_acc for _ in range(ku)]
    if k_main:
        with em.loop_carried(k_main, [a for s in sets for a in s], name="k", step=ku) as lp:
            flat = list(lp.values)
            new = []
            for u in range(ku):
                new += step(b.add(lp.index, i64(u)), flat[u * n_acc : (u + 1) * n_acc])
            lp.next(new)
        sets = [list(lp.results[u * n_acc : (u + 1) * n_acc]) for u in range(ku)]
    for kk in range(k_main, klen):
        sets[0] = step(i64(kk), sets[0])
    acc = sets[0]
    for s in sets[1:]:
        acc = [b.fadd(x, y, flags=("reassoc", "contract")) for x, y in zip(acc, s)]

    for r in range(mr):
        c_off = b.add(b.mul(b.add(row, i64(r)), i64(g.c_rs)), col0)
        for j in range(nv):
            lanes = t.lanes if j < nv - 1 else last_lanes
            off = b.add(c_off, i64(j * t.lanes))
            v = acc[r * nv + j]
            if not first:
                prev = em.load(g.c, off, vt) if lanes == t.lanes else em.masked_load(g.c, off, vt, lanes)
                v = b.fadd(v, prev)
            if last:
                if g.bias is not None:
                    if g.bias_per_row:
                        bias = em.splat(em.load(g.bias, b.add(row, i64(r)), F32), t.lanes)
                    else:
                        boff = b.add(col0, i64(j * t.lanes))
                        bias = (
                            em.load(g.bias, boff, vt) if lanes == t.lanes else em.masked_load(g.bias, boff, vt, lanes)
                        )
                    v = b.fadd(v, bias)
                if g.epilogue is not None:
                    v = g.epilogue(em, v)
            if lanes == t.lanes:
                em.store(v, g.c, off)
            else:
                em.masked_store(v, g.c, off, lanes)


# -- linear -------------------------------------------------------------------------------


def _linear_dims(op: Op) -> tuple[int, int, int]:
    x, w = op.operands[0].type, op.operands[1].type
    n, k = w.shape
    return x.numel // k, n, k


def _pack_linear(op: Op, index: int, data, target: Target):
    if index != 1:
        return None
    _, n, k = _linear_dims(op)
    nv, lanes = panel_width(n, target)
    dtype = op.operands[1].type.dtype.name
    w = np.asarray(data).astype(np.float32, copy=False).reshape(n, k)  # f16/bf16 values are exact in f32
    panels = pack_b(w.T, nv * lanes)
    if dtype == "f32":
        return f"gemm_b_t:{nv * lanes}", panels
    return f"gemm_b_t:{nv * lanes}:{dtype}", half_panels(panels, dtype)


def _linear_scratch_parts(op: Op, target: Target) -> tuple[int, int]:
    """Bytes of the op's scratch: a run-time W packed into panels, then the packed A of one block."""
    m, n, k = _linear_dims(op)
    t = choose_tiling(m, n, k, target)
    b_bytes = 0 if view_root(op.operands[1]).is_constant else packed_b_bytes(k, n, t.nr)
    a_bytes = packed_a_bytes(m, t) if packs_a(m, n, k, t) else 0
    return -(-b_bytes // 64) * 64, a_bytes


def _linear_scratch(op: Op, target: Target) -> int:
    return sum(_linear_scratch_parts(op, target))


def _a_buffer(k: KernelContext) -> ir.Value | None:
    """Where the product packs blocks of x (after the packed W in the scratch), if it does."""
    b_bytes, a_bytes = _linear_scratch_parts(k.op, k.target)
    return k.em.gep(k.scratch, i64(b_bytes // 4), F32) if a_bytes else None


@kernel("linear", ("f32", "f32", "f32?"), pack=_pack_linear, scratch=_linear_scratch, epilogue=True)
def linear(k: KernelContext) -> None:
    """y = x @ W^T + b: W pre-packed into panels at compile time (or at run time if not constant);
    a large x that many panels reuse is packed block by block into row panels (``packs_a``).

    Column panels are split across the host's threads when a parallel hook is installed (packing
    a run-time W happens first, on the calling thread; the tasks read x in place)."""
    m, n, kk = _linear_dims(k.op)
    t = choose_tiling(m, n, kk, k.target)
    w = k.args[1]
    if not view_root(k.op.operands[1]).is_constant:
        emit_pack_b(k.em, w, 1, kk, kk, n, t.nr, k.scratch)  # B[k, n] = W[n, k]
        w = k.scratch
    a_buf = _a_buffer(k)
    has_bias = len(k.args) > 2
    pointers = [k.args[0], w, k.out] + k.args[2:3] + ([a_buf] if a_buf else [])
    split = choose_split(m, n, t)

    def body(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
        bias = p[3] if has_bias else None
        g = GemmArgs(m, n, kk, p[0], kk, 1, p[1], p[2], n, bias, epilogue=k.epilogue, a_buffer=p[-1] if a_buf else None)
        emit_split_gemm(em, g, t, split, lo, hi)

    parallel_for(k.em, f"linear{m}x{n}x{kk}", split.units, m * n * kk, pointers, body)


@kernel("linear", ("f32", "f16|bf16", "f32?"), pack=_pack_linear, scratch=_linear_scratch, epilogue=True)
def linear_half(k: KernelContext) -> None:
    """y = x @ W^T + b with W stored in f16/bf16 panels (half the bytes), widened to f32 as it streams."""
    m, n, kk = _linear_dims(k.op)
    dtype = k.op.operands[1].type.dtype.name
    check_half_target(k.op, dtype, k.target)
    if not view_root(k.op.operands[1]).is_constant:
        from mcir.errors import CodegenError

        raise CodegenError(f"{k.op.where()}: {dtype} weights computed at run time have no kernel; cast them to f32")
    t = choose_tiling(m, n, kk, k.target)
    a_buf = _a_buffer(k)
    split = choose_split(m, n, t)

    def body(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
        bias = p[3] if has_bias else None
        g = GemmArgs(m, n, kk, p[0], kk, 1, p[1], p[2], n, bias, epilogue=k.epilogue, b_dtype=dtype)
        g.a_buffer = p[-1] if a_buf else None
        emit_split_gemm(em, g, t, split, lo, hi)

    has_bias = len(k.args) > 2
    pointers = [k.args[0], k.args[1], k.out] + k.args[2:3] + ([a_buf] if a_buf else [])
    parallel_for(k.em, f"linear_{dtype}", split.units, m * n * kk, pointers, body)


# -- matmul ---------------------------------------------------------------------------------


def batch_strides(shape: tuple[int, ...], batch: tuple[int, ...]) -> list[int]:
    """Element strides of an operand's batch axes against the broadcast batch shape."""
    mat = shape[-2:] if len(shape) >= 2 else shape
    own = shape[: len(shape) - len(mat)]
    full = (1,) * (len(batch) - len(own)) + tuple(own)
    step = math.prod(mat)
    out = [0] * len(batch)
    for d in range(len(batch) - 1, -1, -1):
        out[d] = 0 if full[d] == 1 else step
        step *= full[d]
    return out


def _matmul_dims(op: Op) -> tuple[tuple[int, ...], int, int, int]:
    a, b = op.operands[0].type.shape, op.operands[1].type.shape
    out = op.result.type.shape
    m = a[-2] if len(a) >= 2 else 1
    k = a[-1]
    n = b[-1] if len(b) >= 2 else 1
    batch = out[: len(out) - (len(a) >= 2) - (len(b) >= 2)]
    return batch, m, n, k


def _b_is_shared(op: Op) -> bool:
    batch, *_ = _matmul_dims(op)
    return not any(batch_strides(op.operands[1].type.shape, batch))


def _pack_matmul(op: Op, index: int, data, target: Target):
    if index != 1 or not _b_is_shared(op):
        return None
    _, _, n, k = _matmul_dims(op)
    nv, lanes = panel_width(n, target)
    return f"gemm_b:{nv * lanes}", pack_b(np.asarray(data, np.float32).reshape(k, n), nv * lanes)


# Scratch copies of a per-batch-index packed B: at most this many tasks run one matmul's batch indices
MATMUL_SLOTS = 8


def _matmul_slots(op: Op) -> int:
    """Private scratch copies: one per task when the batch indices split, else one."""
    batch, m, n, k = _matmul_dims(op)
    total = math.prod(batch)
    if not batch or total < 2 or total * m * n * k < MIN_PARALLEL_MACS:
        return 1
    return min(MATMUL_SLOTS, total)


def _matmul_scratch_parts(op: Op, target: Target) -> tuple[int, int, int]:
    """(slots, packed-B bytes, packed-A bytes) of the op's scratch: each slot holds B packed into panels
    (unless it is a shared constant, or a shared run-time B packed once into slot 0), then the packed A
    of one block; a task of a batch split uses its own slot."""
    _, m, n, k = _matmul_dims(op)
    t = choose_tiling(m, n, k, target)
    b_bytes = 0 if view_root(op.operands[1]).is_constant and _b_is_shared(op) else packed_b_bytes(k, n, t.nr)
    a_bytes = packed_a_bytes(m, t) if packs_a(m, n, k, t) else 0
    return _matmul_slots(op), align_up(b_bytes), align_up(a_bytes)


def _matmul_scratch(op: Op, target: Target) -> int:
    slots, b_bytes, a_bytes = _matmul_scratch_parts(op, target)
    if not a_bytes and _b_is_shared(op):
        return b_bytes  # a shared B is packed once, into slot 0, and nothing else is private
    return slots * (b_bytes + a_bytes)


@kernel("matmul", ("f32", "f32"), pack=_pack_matmul, scratch=_matmul_scratch, epilogue=True)
def matmul(k: KernelContext) -> None:
    """y = a @ b with batch broadcasting: one GEMM per batch index, B packed once when shared.

    Threads: without batch axes the one GEMM splits like ``linear`` (B packed first, on the calling
    thread); with them the batch indices split, each task packing its own B into its own scratch copy
    when B differs per index."""
    em = k.em
    batch, m, n, kk = _matmul_dims(k.op)
    t = choose_tiling(m, n, kk, k.target)
    sa = batch_strides(k.op.operands[0].type.shape, batch)
    sb = batch_strides(k.op.operands[1].type.shape, batch)
    b_const = view_root(k.op.operands[1]).is_constant and not any(sb)
    b_rs = n if len(k.op.operands[1].type.shape) >= 2 else 1
    _, b_bytes, a_bytes = _matmul_scratch_parts(k.op, k.target)
    slot_bytes = b_bytes + a_bytes
    if not b_const and not any(sb):
        emit_pack_b(em, k.args[1], b_rs, 1, kk, n, t.nr, k.scratch)  # shared B: packed once, before any split
    shared = k.args[1] if b_const else k.scratch

    if not batch:
        split = choose_split(m, n, t)

        a_buf = em.byte_offset(k.scratch, i64(b_bytes)) if a_bytes else None

        def part(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
            a_buffer = p[3] if a_buf else None  # used only when one task runs the whole product
            g = GemmArgs(m, n, kk, p[0], kk, 1, p[1], p[2], n, epilogue=k.epilogue, a_buffer=a_buffer)
            emit_split_gemm(em, g, t, split, lo, hi)

        pointers = [k.args[0], shared, k.out] + ([a_buf] if a_buf else [])
        parallel_for(em, f"matmul{m}x{n}x{kk}", split.units, m * n * kk, pointers, part)
        return

    def indices(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value, slot: ir.Value) -> None:
        """Batch indices ``[lo, hi)``; a per-index B is packed into scratch copy ``slot``."""
        b = em.b
        a_ptr, b_ptr, out, scratch = p
        packed = b_ptr if b_const else scratch
        # this task's slot (no scratch at all for a shared constant B and an A read in place)
        mine = em.byte_offset(scratch, b.mul(slot, i64(slot_bytes))) if any(sb) or a_bytes else None
        if any(sb):
            packed = mine
        a_buffer = em.byte_offset(mine, i64(b_bytes)) if a_bytes else None
        # one flat loop over the batch; each operand's offset from the unravelled index
        with em.loop(hi, name="bt", start=lo) as i:
            a_off, b_off = em.batch_offsets(i, batch, [sa, sb])
            if any(sb):
                emit_pack_b(em, em.gep(b_ptr, b_off, F32), b_rs, 1, kk, n, t.nr, packed)
            c = em.gep(out, b.mul(i, i64(m * n)), F32)
            a = em.gep(a_ptr, a_off, F32)
            emit_gemm(em, GemmArgs(m, n, kk, a, kk, 1, packed, c, n, epilogue=k.epilogue, a_buffer=a_buffer), t)

    total = math.prod(batch)
    pointers = [k.args[0], k.args[1], k.out, k.scratch]  # a NULL scratch when B is a shared constant
    slots = _matmul_slots(k.op)
    parallel_for(em, "matmul_f32", total, total * m * n * kk, pointers, indices, slots=slots)
