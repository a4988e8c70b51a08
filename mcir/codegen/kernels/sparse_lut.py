"""``linear`` with f32 activations and a ``#sparse_codebook`` weight (Deep Compression's storage).

``y[m, n] = sum over the non-zeros (n, k) of x[m, k] · c[code] + b[n]``. The kernel walks the
entries once, in storage order, whatever the batch: per entry it reads a B-bit code and a
G-bit gap from the two bit streams (one unaligned 16-bit load and a shift each, B, G <= 8),
advances the flat cursor (a filler only moves it), splits the position into (row, column) by
the constant K (a multiply-shift, not a division) and looks the centroid up in the table:

    pos = p + g;  if g != 2^G - 1:  acc[row(pos), :] += c[code] · xT[col(pos), :];  p = pos + (g != 2^G - 1)

*Batch 1* decodes 16 entries per step (``_gemv_chunks``): 16 entries start on a byte boundary
of each stream, so each lane's two bytes and shift are constants (one masked load, one byte
shuffle, one variable shift per stream); positions are a prefix sum of the steps; centroids come
from zmm registers (``vpermps``/``vpermi2ps``, B <= 5) or a gather, activations from a masked
gather; a chunk inside the current row adds into one vector accumulator, one that crosses rows
adds lane by lane. The last E mod 16 entries run one at a time.

*Batches of M rows*: x is first transposed into the scratch (``xT[K, M]``) so that one decoded
weight feeds M contiguous FMAs (16 at a time); the accumulators ``acc[N, M]`` live in the
scratch too, and the epilogue (bias, fused activation) writes them back as ``y[M, N]``.

Library layout (``_pack``): ``centroids f32[2^B]`` | ``codes`` + 1 zero byte | ``gaps`` + 1
zero byte; the padding byte lets the last 16-bit load stay inside the global. The streams
are the stored ones: about ``(B + G)/8`` bytes per non-zero plus fillers.

Numerics: each output is an f32 sum (in entry order, or per lane at batch 1), against the
interpreter's f64 sums: within the backend's ``1e-5 × max|reference|``.
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, I8, I16, I32, I64, PTR, Emitter, const, i64
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.target import Target
from mcir.encodings.sparse_codebook import SparseCodebook, stream_bytes
from mcir.ir import Op
from mcir.types import TensorType

LANES = 16
V16F = ir.VectorType(F32, LANES)
V16I = ir.VectorType(I32, LANES)
V32B = ir.VectorType(I8, 32)


def layout(t: TensorType) -> tuple[int, int, int]:
    """(byte offset of the codes, of the gaps, total bytes) of the library layout of weight ``t``."""
    enc: SparseCodebook = t.encoding
    codes = 4 * 2**enc.bits
    gaps = codes + stream_bytes(enc.entries, enc.bits) + 1
    return codes, gaps, gaps + stream_bytes(enc.entries, enc.gap_bits) + 1


def _pack(op: Op, index: int, data, target: Target):
    if index != 1:
        return None
    t = op.operands[1].type
    codes_at, gaps_at, total = layout(t)
    buf = np.zeros(total, np.uint8)
    buf[:codes_at] = np.asarray(data["centroids"], "<f4").view(np.uint8)
    codes, gaps = np.asarray(data["codes"], np.uint8), np.asarray(data["gaps"], np.uint8)
    buf[codes_at : codes_at + codes.size] = codes
    buf[gaps_at : gaps_at + gaps.size] = gaps
    return "sparse_lut", buf


def _shape(op: Op) -> tuple[int, int, int]:
    """(M batch rows, N outputs, K inputs)."""
    n, k = op.operands[1].type.shape
    return op.operands[0].type.numel // max(k, 1), n, k


def _scratch(op: Op, target: Target) -> int:
    m, n, k = _shape(op)
    return 4 * (n * m + (k * m if m > 1 else 0))


def _read_bits(k: KernelContext, base: ir.Value, entry: ir.Value, bits: int) -> ir.Value:
    """Entry ``entry`` of a little-endian bit stream of ``bits``-bit values (bits <= 8), as i64."""
    b = k.em.b
    at = b.mul(entry, i64(bits))
    word = b.load(k.em.byte_offset(base, b.lshr(at, i64(3))), typ=I16, align=1)
    shifted = b.lshr(b.zext(word, I32), b.trunc(b.and_(at, i64(7)), I32))
    return b.zext(b.and_(shifted, ir.Constant(I32, 2**bits - 1)), I64)


def _linear_sparse_lut(k: KernelContext) -> None:
    """linear with f32 x and a #sparse_codebook weight: bit-stream decode, centroid lookup, FMA per batch row."""
    em, b = k.em, k.em.b
    t = k.operand_types[1]
    enc: SparseCodebook = t.encoding
    m, n, kk = _shape(k.op)
    codes_at, gaps_at, _ = layout(t)
    x, w, y = k.args[0], k.args[1], k.out
    bias = k.args[2] if len(k.args) > 2 else None
    acc = k.scratch
    xt = x if m == 1 else em.byte_offset(k.scratch, 4 * n * m)
    if m > 1:  # xT[kk, m]: one decoded weight then meets M contiguous activations
        with em.loop(m, name="tm") as r, em.loop(kk, name="tk") as c:
            em.store(em.load(x, b.add(b.mul(r, i64(kk)), c), F32), xt, b.add(b.mul(c, i64(m)), r))
    with em.loop(n * m, name="z") as i:
        em.store(const(F32, 0.0), acc, i)
    streams = em.byte_offset(w, codes_at), em.byte_offset(w, gaps_at)
    first, p = 0, i64(0)
    if m == 1 and enc.entries >= LANES and n * kk < 2**31:
        first, p = _gemv_chunks(k, streams, acc)
    _entries(k, streams, acc, xt, first, p)
    with em.loop(n, name="n") as row:
        bv = em.load(bias, row, F32) if bias is not None else None
        with em.loop(m, name="r") as r:
            s = em.load(acc, b.add(b.mul(row, i64(m)), r), F32)
            if bv is not None:
                s = b.fadd(s, bv)
            em.store(k.apply_epilogue(s), y, b.add(b.mul(r, i64(n)), row))


def _entries(
    k: KernelContext, streams: tuple[ir.Value, ir.Value], acc: ir.Value, xt: ir.Value, first: int, p0: ir.Value
) -> None:
    """Entries ``first``..E one at a time, cursor starting at ``p0``: ``acc[row, :] += c[code] · xT[col, :]``."""
    em, b = k.em, k.em.b
    enc: SparseCodebook = k.operand_types[1].encoding
    m, _, kk = _shape(k.op)
    codes, gaps = streams
    filler = i64(2**enc.gap_bits - 1)
    full = m // LANES
    with em.loop_carried(enc.entries, [p0], name="e", start=first) as lp:
        (p,) = lp.values
        g = _read_bits(k, gaps, lp.index, enc.gap_bits)
        pos = b.add(p, g)
        real = b.icmp_unsigned("!=", g, filler)
        with b.if_then(real):
            code = _read_bits(k, codes, lp.index, enc.bits)
            wv = em.load(k.args[1], code, F32)
            row = b.udiv(pos, i64(kk))  # K is a constant: a multiply and shifts
            col = b.sub(pos, b.mul(row, i64(kk)))
            arow, xrow = b.mul(row, i64(m)), b.mul(col, i64(m))
            if full:
                wsplat = em.splat(wv, LANES)
                with em.loop(full * LANES, name="v", step=LANES) as j:
                    at = b.add(arow, j)
                    em.store(em.fma(wsplat, em.load(xt, b.add(xrow, j), V16F), em.load(acc, at, V16F)), acc, at)
            if m % LANES:
                with em.loop(m, name="s", start=full * LANES) as j:
                    at = b.add(arow, j)
                    em.store(em.fma(wv, em.load(xt, b.add(xrow, j), F32), em.load(acc, at, F32)), acc, at)
        lp.next([b.add(pos, b.zext(real, I64))])


def _lanes(k: KernelContext, base: ir.Value, chunk: ir.Value, bits: int) -> ir.Value:
    """The 16 ``bits``-bit values of entries 16·chunk .. 16·chunk + 15 as <16 x i32>: 16 entries
    start on a byte (16·B bits), so each lane's byte and shift are constants (one shuffle, one shift)."""
    em, b = k.em, k.em.b
    window = em.masked_load(em.byte_offset(base, b.mul(chunk, i64(2 * bits))), 0, V32B, 2 * bits + 1)
    picks = [v for lane in range(LANES) for v in ((lane * bits) >> 3, ((lane * bits) >> 3) + 1)]
    pairs = b.shuffle_vector(window, ir.Constant(V32B, None), ir.Constant(ir.VectorType(I32, 32), picks))
    words = b.zext(b.bitcast(pairs, ir.VectorType(I16, LANES)), V16I)
    shifted = b.lshr(words, ir.Constant(V16I, [(lane * bits) & 7 for lane in range(LANES)]))
    return b.and_(shifted, const(V16I, 2**bits - 1))


def _gemv_chunks(k: KernelContext, streams: tuple[ir.Value, ir.Value], acc: ir.Value) -> tuple[int, ir.Value]:
    """Batch 1, 16 entries at a time: decode codes and gaps in lanes, positions by a prefix sum,
    centroids from registers (B <= 5 with AVX-512) or a gather, activations by a gather; while
    the 16 stay in the current row their products add into one vector accumulator, a chunk that
    crosses rows adds lane by lane. Returns (entries done, cursor) for ``_entries``'s tail."""
    em, b = k.em, k.em.b
    enc: SparseCodebook = k.operand_types[1].encoding
    _, _, kk = _shape(k.op)
    codes, gaps = streams
    x, w = k.args[0], k.args[1]
    chunks = enc.entries // LANES
    zero = const(V16F, 0.0)
    lookup = _register_table(k)
    with em.loop_carried(chunks, [i64(0), i64(0), zero], name="c") as lp:
        p, cur, accv = lp.values
        g = _lanes(k, gaps, lp.index, enc.gap_bits)
        code = _lanes(k, codes, lp.index, enc.bits)
        real = b.icmp_unsigned("!=", g, const(V16I, 2**enc.gap_bits - 1))
        step = b.add(g, b.zext(real, V16I))
        cum = step
        for shift in (1, 2, 4, 8):  # inclusive prefix sum of the steps across the lanes
            moved = b.shuffle_vector(
                cum, const(V16I, 0), ir.Constant(V16I, [LANES + 0 if i < shift else i - shift for i in range(LANES)])
            )
            cum = b.add(cum, moved)
        pos = b.add(b.sub(cum, b.zext(real, V16I)), em.splat(b.trunc(p, I32), LANES))
        rows = b.udiv(pos, const(V16I, kk))
        cols = b.sub(pos, b.mul(rows, const(V16I, kk)))
        wv = lookup(code) if lookup is not None else _gather(k, w, code, real)
        xv = _gather(k, x, cols, real)
        prod = b.fmul(wv, xv)  # 0 on fillers (both gathers give 0 there)
        r0 = b.zext(b.extract_element(rows, ir.Constant(I32, 0)), I64)
        r15 = b.zext(b.extract_element(rows, ir.Constant(I32, LANES - 1)), I64)
        same = b.and_(b.icmp_unsigned("==", r0, cur), b.icmp_unsigned("==", r15, cur))
        fast = b.append_basic_block("c.same_row")
        slow = b.append_basic_block("c.rows")
        join = b.append_basic_block("c.join")
        b.cbranch(same, fast, slow)
        b.position_at_end(fast)
        fast_acc = b.fadd(accv, prod)
        b.branch(join)
        b.position_at_end(slow)
        _add_to(em, acc, cur, em.hsum(accv))
        for lane in range(LANES):  # a row boundary inside the chunk (once per row, or per empty stretch)
            li = ir.Constant(I32, lane)
            _add_to(em, acc, b.zext(b.extract_element(rows, li), I64), b.extract_element(prod, li))
        b.branch(join)
        b.position_at_end(join)
        acc_next = b.phi(V16F)
        acc_next.add_incoming(fast_acc, fast)
        acc_next.add_incoming(zero, slow)
        cur_next = b.phi(I64)
        cur_next.add_incoming(cur, fast)
        cur_next.add_incoming(r15, slow)
        p_next = b.add(p, b.zext(b.extract_element(cum, ir.Constant(I32, LANES - 1)), I64))
        lp.next([p_next, cur_next, acc_next])
    p_end, cur_end, acc_end = lp.results
    _add_to(em, acc, cur_end, em.hsum(acc_end))
    return chunks * LANES, p_end


def _register_table(k: KernelContext) -> Callable[[ir.Value], ir.Value] | None:
    """With AVX-512 and B <= 5: a function looking codes up in the centroids held in one or two zmm
    registers (``vpermps`` / ``vpermi2ps``), instead of a gather from memory; else None."""
    em, b = k.em, k.em.b
    bits = k.operand_types[1].encoding.bits
    if not k.target.has("avx512f") or bits > 5:
        return None
    w = k.args[1]
    if bits <= 4:  # vpermps reads the low 4 bits of each lane: codes < 2^B index the (zero-padded) table
        table = em.masked_load(w, 0, V16F, 2**bits)
        fn = em.intrinsic("llvm.x86.avx512.permvar.sf.512", [], V16F, [V16F, V16I])
        return lambda code: b.call(fn, [table, code])
    lo, hi = em.load(w, 0, V16F), em.load(w, LANES, V16F)
    fn2 = em.intrinsic("llvm.x86.avx512.vpermi2var.ps.512", [], V16F, [V16F, V16I, V16F])
    return lambda code: b.call(fn2, [lo, code, hi])


def _add_to(em: Emitter, acc: ir.Value, row: ir.Value, value: ir.Value) -> None:
    """``acc[row] += value`` (f32)."""
    em.store(em.b.fadd(em.load(acc, row, F32), value), acc, row)


def _gather(k: KernelContext, base: ir.Value, index: ir.Value, mask: ir.Value) -> ir.Value:
    """f32 ``base[index[l]]`` where ``mask[l]``, 0.0 elsewhere."""
    em, b = k.em, k.em.b
    v64 = ir.VectorType(I64, LANES)
    offs = b.shl(b.zext(index, v64), const(v64, 2))
    ptrs = b.inttoptr(b.add(em.splat(b.ptrtoint(base, I64), LANES), offs), ir.VectorType(PTR, LANES))
    fn = em.intrinsic("llvm.masked.gather", [V16F, ir.VectorType(PTR, LANES)], V16F, [ptrs.type, I32, mask.type, V16F])
    return b.call(fn, [ptrs, ir.Constant(I32, 4), mask, const(V16F, 0.0)])


kernel(
    "linear",
    ("f32", "f32#sparse_codebook", "f32?"),
    pack=_pack,
    scratch=_scratch,
    epilogue=True,
    result="f32",
    constant=(1,),
)(_linear_sparse_lut)
