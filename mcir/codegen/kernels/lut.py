"""Table-lookup ``linear``: f32 activations against ``#codebook``, ``#int4``/``#int2`` and ``#pow2`` weights.

``y[m, n] = sum_k x[m, k] · T_n[idx[n, k]] + b[n]``: every weight is a B-bit index into a
small table of f32 values, which lives in vector registers while it is used:

* ``#codebook``: the centroids, one table per layer (loaded once) or per row;
* ``#int4`` / ``#int2``: ``scale[n, g] · [0, 1, .., 7, -8, .., -1]`` (the two's-complement
  codes), rebuilt with one multiply per group of weights;
* ``#pow2``: ``±2^(e - E)`` with ``offset[n] << 23`` added to the exponent field (an
  integer add per row; exact, the levels stay normal floats).

Per 16 weights the kernel widens 16 index bytes to i32 lanes (``vpmovzxbd``), shifts out the
plane it needs and looks the 16 values up with one ``vpermps`` (tables of <= 16 entries:
``vpermps`` reads only the low 4 bits of each lane) or a tree of ``vpermi2ps`` (32 entries,
two registers) and blends on the higher index bits (64..256 entries); then one FMA with 16
activations. The weight stream is B bits per weight (4 for B = 3, 8 for B >= 5), so at batch 1
the kernel reads 1/8 of the fp32 bytes and half of int8's for B = 4. Batches are tiled by
``MT`` rows, so each decoded vector feeds up to MT FMAs. Targets without AVX-512 store the
table to the stack and gather (correct, not tuned).

Numerics: the sum is an f32 FMA chain in a different order than the interpreter's f64 sums:
within the backend's ``1e-5 × max|reference|``; table values are exactly the decoded weights
(``#pow2``, ``#codebook``) or their f32 rounding (``scale·q``, exact in f64).
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, I1, I8, I32, I64, PTR, REASSOC, const, i64
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels import lut_pack as lp
from mcir.codegen.target import Target
from mcir.encodings import Codebook, Int2, Int4, Pow2
from mcir.encodings.pow2 import levels
from mcir.ir import Op

LANES = 16
V16F = ir.VectorType(F32, LANES)
V16I = ir.VectorType(I32, LANES)
#: rows of x sharing one decoded weight vector
MT = 4


def _scratch(op: Op, target: Target) -> int:
    # the gather path's table: up to 256 f32 entries
    return 0 if target.has("avx512f") else 4 * 2 ** op.operands[1].type.encoding.bits


def _pack(op: Op, index: int, data, target: Target):
    if index != 1:
        return None
    t = op.operands[1].type
    return "lut", lp.pack(t, data)


class _Tables:
    """Builds the lookup tables of one weight and looks indices up in them."""

    def __init__(self, k: KernelContext, lay: lp.LutLayout) -> None:
        self.k = k
        self.em = k.em
        self.lay = lay
        self.t = k.operand_types[1]
        self.enc = self.t.encoding
        self.avx512 = k.target.has("avx512f")
        self.tables_ptr = self.em.byte_offset(k.args[1], lay.index_bytes)
        self.vectors = max(1, lay.entries // LANES)
        self.stack = k.scratch  # without AVX-512 the table goes through memory and a gather

    # -- building tables -------------------------------------------------------------------
    def load_table(self, row: ir.Value | int) -> list[ir.Value]:
        """The codebook of ``row`` (channel scope) or the layer's: ``vectors`` x <16 x float>."""
        em, lay = self.em, self.lay
        base = row if isinstance(row, ir.Value) else i64(row)
        first = em.b.mul(base, i64(lay.entries))
        if lay.entries < LANES:
            return [em.masked_load(self.tables_ptr, first, V16F, lay.entries)]
        return [em.load(self.tables_ptr, em.b.add(first, i64(j * LANES)), V16F) for j in range(self.vectors)]

    def int_table(self, scale: ir.Value) -> list[ir.Value]:
        """``scale · signed(code)`` for every B-bit two's-complement code, padded with zeros."""
        bits = self.enc.bits
        codes = np.arange(LANES)
        signed = np.where(codes < 2 ** (bits - 1), codes, codes - 2**bits) * (codes < 2**bits)
        base = ir.Constant(V16F, [float(v) for v in signed])
        return [self.em.b.fmul(base, self.em.splat(scale, LANES))]

    def pow2_table(self, row: ir.Value) -> list[ir.Value]:
        """Row ``row``'s ±2^(offset + e - E): offset << 23 added to the exponent bits of the fixed levels."""
        b, em = self.em.b, self.em
        lv = np.zeros(LANES, np.float32)
        lv[: self.lay.entries] = levels(self.enc.bits).astype(np.float32)
        bits = lv.view(np.int32)
        base = ir.Constant(V16I, [int(v) for v in bits])
        nonzero = ir.Constant(V16I, [int(v != 0) * -1 for v in bits])  # zero codes stay +0.0
        off = b.sext(em.load(self.tables_ptr, row, I8), I32)
        shifted = b.and_(em.splat(b.shl(off, ir.Constant(I32, 23)), LANES), nonzero)
        return [b.bitcast(b.add(base, shifted), V16F)]

    # -- lookups -------------------------------------------------------------------------------
    def lookup(self, table: list[ir.Value], idx: ir.Value) -> ir.Value:
        """Lane l = table[idx[l]] (idx < entries; only its low ``bits`` bits are used)."""
        em, b = self.em, self.em.b
        if not self.avx512:
            return self._gather(table, idx)
        if len(table) == 1:  # <= 16 entries: vpermps reads the low 4 bits of each index
            fn = em.intrinsic("llvm.x86.avx512.permvar.sf.512", [], V16F, [V16F, V16I])
            return b.call(fn, [table[0], idx])
        fn = em.intrinsic("llvm.x86.avx512.vpermi2var.ps.512", [], V16F, [V16F, V16I, V16F])
        level = [b.call(fn, [table[2 * j], idx, table[2 * j + 1]]) for j in range(len(table) // 2)]
        bit = 5
        while len(level) > 1:  # pick between pairs on the next index bit (64..256 entries)
            hi = b.icmp_unsigned("!=", b.and_(idx, const(V16I, 1 << bit)), const(V16I, 0))
            level = [b.select(hi, level[2 * j + 1], level[2 * j]) for j in range(len(level) // 2)]
            bit += 1
        return level[0]

    def _gather(self, table: list[ir.Value], idx: ir.Value) -> ir.Value:
        em, b = self.em, self.em.b
        for j, v in enumerate(table):
            em.store(v, self.stack, j * LANES)
        idx = b.and_(idx, const(V16I, self.vectors * LANES - 1))
        # addresses as integers: llvmlite types a GEP with a vector index as a scalar pointer
        v64 = ir.VectorType(I64, LANES)
        offs = b.shl(b.zext(idx, v64), const(v64, 2))
        ptrs = b.inttoptr(b.add(em.splat(b.ptrtoint(self.stack, I64), LANES), offs), ir.VectorType(PTR, LANES))
        mask = const(ir.VectorType(I1, LANES), 1)
        sig = [ptrs.type, I32, mask.type, V16F]
        fn = em.intrinsic("llvm.masked.gather", [V16F, ir.VectorType(PTR, LANES)], V16F, sig)
        return b.call(fn, [ptrs, ir.Constant(I32, 4), mask, const(V16F, 0.0)])


def _linear_lut(k: KernelContext) -> None:
    """linear with f32 x and a table-lookup weight (codebook / int4 / int2 / pow2): vpermps decode + FMA."""
    em, b = k.em, k.em.b
    t = k.operand_types[1]
    enc = t.encoding
    lay = lp.layout(t)
    n, kk = lay.n, lay.k
    m = k.operand_types[0].numel // max(kk, 1)
    x, w, y = k.args[0], k.args[1], k.out
    bias = k.args[2] if len(k.args) > 2 else None
    tb = _Tables(k, lay)
    layer_table = tb.load_table(0) if isinstance(enc, Codebook) and enc.scope == "layer" else None
    groups = enc.components(t)["scale"][1][1] if isinstance(enc, Int4 | Int2) else 1
    gsize = enc.group_size(t) if isinstance(enc, Int4 | Int2) else kk
    mask = const(V16I, 2**lay.lib_bits - 1)

    def row_table(row: ir.Value) -> list[ir.Value] | None:
        if layer_table is not None:
            return layer_table
        if isinstance(enc, Codebook):
            return tb.load_table(row)
        if isinstance(enc, Pow2):
            return tb.pow2_table(row)
        if groups == 1:
            return tb.int_table(em.load(tb.tables_ptr, row, F32))
        return None  # per group: built per 16 weights

    def chunk_table(row: ir.Value, c: ir.Value) -> list[ir.Value]:
        g = b.udiv(b.mul(c, i64(LANES)), i64(gsize))
        return tb.int_table(em.load(tb.tables_ptr, b.add(b.mul(row, i64(groups)), g), F32))

    def rows_tile(m0: ir.Value, mt: int) -> None:
        # FMA latency (4 cycles) x 2 ports: about 8 independent chains keep the FMA units busy
        na = {1: 8, 2: 4}.get(mt, 2)
        full = kk // lay.block  # blocks whose activations are all inside K
        with em.loop(n, name="n") as row:
            table = row_table(row)
            wrow = em.byte_offset(w, b.mul(row, i64(lay.row_bytes)))
            zero = const(V16F, 0.0)

            def block(j: ir.Value, accs: list[ir.Value], tail: bool) -> list[ir.Value]:
                raw = em.load(wrow, b.mul(j, i64(16)), ir.VectorType(I8, LANES))
                wide = b.zext(raw, V16I)
                accs = list(accs)
                for p in range(lay.planes):
                    live = kk - full * lay.block - p * LANES if tail else LANES
                    if live <= 0:
                        continue  # a plane of padding: no table (its group may not exist), no FMA
                    idx = wide if p == 0 else b.lshr(wide, const(V16I, p * lay.lib_bits))
                    if p < lay.planes - 1 and not (tb.avx512 and lay.lib_bits == 4 and p == 0):
                        idx = b.and_(idx, mask)  # vpermps ignores the bits above 4 by itself
                    c = b.add(b.mul(j, i64(lay.planes)), i64(p))
                    tab = table if table is not None else chunk_table(row, c)
                    wv = tb.lookup(tab, idx)
                    k0 = b.mul(c, i64(LANES))
                    for r in range(mt):
                        xoff = b.add(b.mul(b.add(m0, i64(r)), i64(kk)), k0)
                        if live < LANES:
                            xv = em.masked_load(x, xoff, V16F, live)
                        else:
                            xv = em.load(x, xoff, V16F)
                        a = r * na + p % na
                        accs[a] = em.fma(wv, xv, accs[a])
                # rotate each row's accumulators: the next block's FMAs start fresh dependency chains
                shift = lay.planes % na
                return [
                    v for r in range(mt) for v in (accs[r * na + shift : (r + 1) * na] + accs[r * na : r * na + shift])
                ]

            with em.loop_carried(full, [zero] * (na * mt), name="blk") as lpc:
                lpc.next(block(lpc.index, lpc.values, False))
            accs = lpc.results
            if full * lay.block < kk:
                accs = block(i64(full), accs, True)
            for r in range(mt):
                part = accs[r * na : (r + 1) * na]
                while len(part) > 1:
                    part = [b.fadd(part[i], part[i + 1], flags=REASSOC) for i in range(0, len(part), 2)]
                s = em.hsum(part[0])
                if bias is not None:
                    s = b.fadd(s, em.load(bias, row, F32))
                s = k.apply_epilogue(s)
                em.store(s, y, b.add(b.mul(b.add(m0, i64(r)), i64(n)), row))

    full_tiles = m // MT
    if full_tiles:
        with em.loop(full_tiles * MT, name="m", step=MT) as m0:
            rows_tile(m0, MT)
    if m % MT:
        rows_tile(i64(full_tiles * MT), m % MT)


for _pattern in ("f32#codebook", "i8#int4", "i8#int2", "f32#pow2"):
    kernel(
        "linear", ("f32", _pattern, "f32?"), pack=_pack, scratch=_scratch, epilogue=True, result="f32", constant=(1,)
    )(_linear_lut)
