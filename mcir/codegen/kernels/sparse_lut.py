"""``linear`` with f32 activations and a ``#sparse_codebook`` weight (Deep Compression's storage).

``y[m, n] = sum over the non-zeros (n, k) of x[m, k] · c[code] + b[n]``. The kernel walks the
entries once, in storage order, whatever the batch: per entry it reads a B-bit code and a
G-bit gap from the two bit streams (one unaligned 16-bit load and a shift each, B, G <= 8),
advances the flat cursor (a filler only moves it), splits the position into (row, column) by
the constant K (a multiply-shift, not a division) and looks the centroid up in the table:

    pos = p + g;  if g != 2^G - 1:  acc[row(pos), :] += c[code] · xT[col(pos), :];  p = pos + (g != 2^G - 1)

For a batch of M rows x is first transposed into the scratch (``xT[K, M]``) so that one
decoded weight feeds M contiguous FMAs (16 at a time), the accumulators ``acc[N, M]`` live in
the scratch too, and the epilogue (bias, fused activation) writes them back as ``y[M, N]``.
At batch 1 x is read in place.

Library layout (``_pack``): ``centroids f32[2^B]`` | ``codes`` + 1 zero byte | ``gaps`` + 1
zero byte; the padding byte lets the last 16-bit load stay inside the global. The streams
are the stored ones: about ``(B + G)/8`` bytes per non-zero plus fillers.

Numerics: each output is an f32 sum in entry (column) order, against the interpreter's f64
sums: within the backend's ``1e-5 × max|reference|``.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, I16, I32, I64, const, i64
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.target import Target
from mcir.encodings.sparse_codebook import SparseCodebook, stream_bytes
from mcir.ir import Op
from mcir.types import TensorType

LANES = 16
V16F = ir.VectorType(F32, LANES)


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
    codes, gaps = em.byte_offset(w, codes_at), em.byte_offset(w, gaps_at)
    filler = i64(2**enc.gap_bits - 1)
    full = m // LANES
    with em.loop_carried(enc.entries, [i64(0)], name="e") as lp:
        (p,) = lp.values
        g = _read_bits(k, gaps, lp.index, enc.gap_bits)
        pos = b.add(p, g)
        real = b.icmp_unsigned("!=", g, filler)
        with b.if_then(real):
            code = _read_bits(k, codes, lp.index, enc.bits)
            wv = em.load(w, code, F32)
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
    with em.loop(n, name="n") as row:
        bv = em.load(bias, row, F32) if bias is not None else None
        with em.loop(m, name="r") as r:
            s = em.load(acc, b.add(b.mul(row, i64(m)), r), F32)
            if bv is not None:
                s = b.fadd(s, bv)
            em.store(k.apply_epilogue(s), y, b.add(b.mul(r, i64(n)), row))


kernel(
    "linear",
    ("f32", "f32#sparse_codebook", "f32?"),
    pack=_pack,
    scratch=_scratch,
    epilogue=True,
    result="f32",
    constant=(1,),
)(_linear_sparse_lut)
