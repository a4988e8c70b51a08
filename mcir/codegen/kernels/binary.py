"""Bit-packed kernels for binary (``b1 #binary``) and ternary (``t2 #ternary``) layers.

``linear`` with packed weights, four operand combinations:

* binary weights x binary activations (XNOR-Net): with ``s = ±1`` signs,
  ``Σ_k s_w s_x = K - 2·popcount(bits_w XOR bits_x)``, so
  ``y[m,n] = α_n β_m (K - 2c) + b_n``. Padding bits past K are zero in both operands,
  so their XOR is zero and they never count.
* ternary weights x binary activations: a weight is 0 where its ``nonzero`` bit is
  clear, else its ``sign`` bit says negative; the product with ``s_x`` is +1 exactly
  where ``nonzero & (sign XOR bits_x)``, so ``Σ = 2·popcount(nz & (sign ^ x)) - nnz_n``
  (``nnz_n``, the row's nonzero count, is packed with the weights).
* binary weights x float activations (sign-select): ``Σ_k s_k x_k = 2·Σ_{bit=1} x_k - Σ_k x_k``,
  one masked add per f32 vector (the weight bits are the lane mask) plus one sum of x
  per row shared by every output.
* ternary weights x float activations: add x where positive, subtract where negative.

The popcount kernels are a register-blocked "GEMM" like the fp32 one: weights are
re-packed at compile time into panels of NR = nv·lanes output rows (``RowPanels``:
``[N/NR][W][planes][NR]`` u64, the planes of one word side by side, the last partial
word of each row stored as u16/u32, no padding rows), so a micro-tile streams them
linearly and keeps ``mr x nv`` vectors of 64-bit counts in registers; batch 1 splits K
over two accumulator sets instead. ``llvm.ctpop`` on a u64 vector becomes ``vpopcntq``
where AVX512-VPOPCNTDQ exists and LLVM's portable nibble-table popcount elsewhere.
The sign-select kernel streams panels of 8 rows and loads each 16-bit lane mask
straight from them (``kmovw k, m16``), one merge-masked ``vaddps`` per 16 weights.

Float epilogue, in double: ``(α_n·β_m)·S`` with S the exact integer sum, ``+ b_n``,
rounded once to f32. The interpreter computes the same sum of ±α·β products in float64,
so native and reference f32 outputs agree to the last bit except where float64
rounding of the two orders straddles an f32 rounding boundary (≈1e-9 per element;
the tests allow one ulp and check exact equality when α and β are powers of two).

The run-time form of a ``b1 #binary`` activation (``quantize``'s result) is its
components in order: ``bits`` u64[N, W] then ``alpha`` (β) f32[N], N = the size of axis 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, F64, I1, I64, Emitter, const, i64, vec
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.memory_plan import view_root
from mcir.codegen.target import Target
from mcir.encodings.bits import words
from mcir.errors import CodegenError
from mcir.ir import Op, Value

# -- shared helpers ------------------------------------------------------------------------


def u64_lanes(target: Target) -> int:
    """64-bit lanes of one vector register."""
    return max(2, target.vector_bits // 64)


def popcount_variant(target: Target) -> str:
    """The code path of the XNOR kernels on ``target``, for the kernel table."""
    native = target.is_x86 and target.has("avx512vpopcntdq")
    return f"xnor+popcount {u64_lanes(target)}x64-bit" + (" (vpopcntq)" if native else "")


def ctpop(em: Emitter, v: ir.Value) -> ir.Value:
    """Bits set in each lane (``vpopcntq`` on AVX512-VPOPCNTDQ, a nibble table otherwise)."""
    return em.b.call(em.intrinsic("llvm.ctpop", [v.type], v.type, [v.type]), [v])


def slices(v: Value) -> tuple[int, int]:
    """(slices along axis 0, elements per slice) of a packed value."""
    shape = v.type.shape
    return shape[0], math.prod(shape[1:])


def check_packed_operand(op: Op, v: Value) -> None:
    """Refuse a packed activation that reaches ``op`` through a view that regroups its slices.

    Views (reshape) share storage, but a packed value's scale is per slice along axis 0:
    a view that changes that axis would need new scales, which no kernel computes.
    """
    root = view_root(v)
    if root is not v and slices(root) != slices(v):
        raise CodegenError(
            f"{op.where()} reads %{v.name}: {v.type}, a view of %{root.name}: {root.type} that regroups its "
            "per-slice scales; quantize after the reshape instead"
        )


def need_constant_weight(k: KernelContext) -> None:
    """CodegenError unless the packed weight (operand 1) is a constant, re-packable at compile time."""
    if not view_root(k.op.operands[1]).is_constant:
        raise CodegenError(
            f"{k.op.where()}: packed {k.operand_types[1]} weights must be constants (they are re-packed "
            "at compile time); this graph computes them at run time"
        )


def tail_mask(bits: int) -> int:
    """u64 with the low ``bits`` bits set (all 64 for bits == 64)."""
    return (1 << bits) - 1 if bits < 64 else (1 << 64) - 1


def as_mask(em: Emitter, word: ir.Value, lo: int, lanes: int) -> ir.Value:
    """Bits [lo, lo + lanes) of an i64 as a <lanes x i1> lane mask."""
    b = em.b
    if lo:
        word = b.lshr(word, i64(lo))
    return b.bitcast(b.trunc(word, ir.IntType(lanes)), ir.VectorType(I1, lanes))


def to_double(em: Emitter, v: ir.Value) -> ir.Value:
    """f32 scalar or vector widened to f64 (the epilogues compute in double)."""
    t = v.type
    lanes = t.count if isinstance(t, ir.VectorType) else 1
    return em.b.fpext(v, vec(F64, lanes))


def store_lanes(em: Emitter, v: ir.Value, ptr: ir.Value, index: ir.Value, lanes: int) -> None:
    """Store the first ``lanes`` lanes of ``v`` at ``ptr[index]``."""
    if lanes == v.type.count:
        em.store(v, ptr, index)
    else:
        em.masked_store(v, ptr, index, lanes)


def load_lanes(em: Emitter, ptr: ir.Value, index: ir.Value, ty: ir.VectorType, lanes: int) -> ir.Value:
    """Load the first ``lanes`` lanes at ``ptr[index]`` (zeros elsewhere, nothing read past them)."""
    if lanes == ty.count:
        return em.load(ptr, index, ty)
    return em.masked_load(ptr, index, ty, lanes)


def reads_alpha_at(bits_words: int) -> int:
    """Byte offset of β (alpha) in a run-time binary activation of ``bits_words`` words."""
    return bits_words * 8


# -- binary activations: where the bits of row m live --------------------------------------


@dataclass(frozen=True)
class BitRows:
    """Rows of a ``b1 #binary`` activation used as a [M, K] matrix (linear's x).

    Its slices (axis 0, one β each) may hold several rows: x: b1[B, S, K] has B slices of
    S·K bits. Row m is slice m // S, bit offset (m % S)·K in it: word aligned when
    S == 1 or K % 64 == 0, else the kernel first copies the rows to scratch, each starting
    on a word (the padding bits zeroed), so the popcount loop always reads whole words.
    """

    m: int
    k: int
    slices: int
    slice_bits: int

    @property
    def per_slice(self) -> int:
        return self.slice_bits // self.k

    @property
    def slice_words(self) -> int:
        return words(self.slice_bits)

    @property
    def row_words(self) -> int:
        return words(self.k)

    @property
    def aligned(self) -> bool:
        return self.per_slice == 1 or self.k % 64 == 0

    @property
    def repack_bytes(self) -> int:
        return 0 if self.aligned else self.m * self.row_words * 8

    def alpha_ptr(self, em: Emitter, x: ir.Value) -> ir.Value:
        return em.byte_offset(x, reads_alpha_at(self.slices * self.slice_words))

    def slice_of(self, em: Emitter, row: ir.Value) -> ir.Value:
        return row if self.per_slice == 1 else em.b.udiv(row, i64(self.per_slice))

    def row_offset(self, em: Emitter, row: ir.Value) -> ir.Value:
        """Word index of row ``row`` in the activation (aligned case)."""
        b = em.b
        if self.per_slice == 1:
            return b.mul(row, i64(self.slice_words))
        s = b.udiv(row, i64(self.per_slice))
        r = b.urem(row, i64(self.per_slice))
        return b.add(b.mul(s, i64(self.slice_words)), b.mul(r, i64(self.k // 64)))


def bit_rows(x: Value, k: int) -> BitRows:
    """How the rows of K elements of binary activation ``x`` sit in its slices."""
    n, per = slices(x)
    return BitRows(x.type.numel // k, k, n, per)


def emit_repack_rows(em: Emitter, x: ir.Value, rows: BitRows, dst: ir.Value) -> None:
    """Copy every row of ``x`` to ``dst`` starting on a word boundary: dst[m, w] (funnel shifts)."""
    b = em.b
    rw = rows.row_words
    last_bits = rows.k - 64 * (rw - 1)
    with em.loop(rows.m, name="rr") as m:
        s = b.udiv(m, i64(rows.per_slice))
        r = b.urem(m, i64(rows.per_slice))
        start = b.add(b.mul(s, i64(rows.slice_words * 64)), b.mul(r, i64(rows.k)))  # first bit of the row
        with em.loop(rw, name="rw") as w:
            bit = b.add(start, b.mul(w, i64(64)))
            word, sh = b.lshr(bit, i64(6)), b.and_(bit, i64(63))
            lo = em.load(x, word, I64)
            # the next word exists unless this row ends inside `word`: the last row of a slice may
            # end in the slice's last word; a select keeps the load in bounds
            nxt = b.add(word, i64(1))
            end_word = b.lshr(b.add(start, i64(rows.k - 1)), i64(6))
            nxt = b.select(b.icmp_unsigned("<=", nxt, end_word), nxt, word)
            hi = em.load(x, nxt, I64)
            # (hi:lo) >> sh, 64 bits; fshr does it without the shift-by-64 corner case
            fshr = em.intrinsic("llvm.fshr", [I64], I64, [I64, I64, I64])
            v = b.call(fshr, [hi, lo, sh])
            keep = b.select(b.icmp_unsigned("==", w, i64(rw - 1)), i64(tail_mask(last_bits)), i64(-1))
            em.store(b.and_(v, keep), dst, b.add(b.mul(m, i64(rw)), w))


# -- compile-time packing --------------------------------------------------------------------


def panel_nv(n: int, lanes: int, target: Target) -> int:
    """Vectors per panel for N output rows (depends on N and the target only)."""
    nv_max = 4 if target.vector_registers >= 32 else 2
    return max(1, min(nv_max, math.ceil(n / lanes)))


def planes_of(stored: dict) -> list[np.ndarray]:
    """The weight's bit-planes as the popcount kernels use them: [bits] or [nonzero, sign & nonzero]."""
    if "bits" in stored:
        return [np.asarray(stored["bits"], np.uint64)]
    nz = np.asarray(stored["nonzero"], np.uint64)
    return [nz, np.asarray(stored["sign"], np.uint64) & nz]


def row_nnz(stored: dict) -> np.ndarray:
    """Nonzero weights per row of a ternary weight."""
    as_bytes = np.ascontiguousarray(np.asarray(stored["nonzero"], np.uint64)).view(np.uint8)
    return np.unpackbits(as_bytes.reshape(as_bytes.shape[0], -1), axis=1).sum(axis=1).astype(np.int64)


def blob(*parts: np.ndarray) -> np.ndarray:
    """Concatenate arrays into one byte array, each part starting on a 64-byte boundary."""
    chunks = []
    for p in parts:
        raw = np.ascontiguousarray(p).view(np.uint8).reshape(-1)
        chunks.append(raw)
        pad = -len(raw) % 64
        if pad:
            chunks.append(np.zeros(pad, np.uint8))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)


def part_offsets(*nbytes: int) -> list[int]:
    """Byte offsets of the parts of ``blob`` with the given sizes."""
    out, at = [], 0
    for n in nbytes:
        out.append(at)
        at += n + (-n % 64)
    return out


@dataclass(frozen=True)
class RowPanels:
    """The bit-planes of an [N, K] packed weight in the order a kernel streams them.

    Rows are grouped in panels of ``nr``; the last panel holds only the remaining rows
    (no padding rows are stored, its loads are masked). Four sections, each 64-byte aligned:

    A. per panel, its whole 64-bit words: ``[W_full][planes][rows]`` u64;
    B. the last, partial word of every row in the narrowest of u16/u32 holding its
       K % 64 bits, ``[panel][planes][rows]`` (empty when K % 64 is 0 or above 32: then
       that word is a whole word of A);
    C. alpha f32[N];  D. an optional i64[N] (a ternary row's nonzero count).

    So a binarised layer costs ceil(K/16)·2 bytes + 4 per row at worst: K = 784 takes
    102 bytes per row against 3136 in f32 (1/30.7).
    """

    n: int
    k: int
    nr: int
    planes: int
    extra: bool = False

    @property
    def tail_bits(self) -> int:
        r = self.k % 64
        return 0 if r == 0 or r > 32 else (16 if r <= 16 else 32)

    @property
    def wf(self) -> int:
        """Words per row in section A."""
        return words(self.k) - (1 if self.tail_bits else 0)

    @property
    def full_panels(self) -> int:
        return self.n // self.nr

    @property
    def tail_rows(self) -> int:
        return self.n % self.nr

    @property
    def offsets(self) -> list[int]:
        n, pl = self.n, self.planes
        return part_offsets(n * self.wf * pl * 8, n * pl * self.tail_bits // 8, n * 4, n * 8 if self.extra else 0)

    @property
    def nbytes(self) -> int:
        return self.offsets[-1] + (self.n * 8 if self.extra else 0)

    def a_index(self, em: Emitter, panel: ir.Value, kw: ir.Value, plane: int, row: int, rows: int) -> ir.Value:
        """u64 index in section A of word ``kw`` of row ``row`` of ``panel`` (which holds ``rows`` rows)."""
        b = em.b
        base = b.add(b.mul(panel, i64(self.wf * self.planes * self.nr)), b.mul(kw, i64(self.planes * rows)))
        return b.add(base, i64(plane * rows + row))

    def b_index(self, em: Emitter, panel: ir.Value, plane: int, row: int, rows: int) -> ir.Value:
        """Element index (of tail_bits bits) in section B of the last word of a row."""
        return em.b.add(em.b.mul(panel, i64(self.planes * self.nr)), i64(plane * rows + row))

    def pack(self, planes: list[np.ndarray], alpha: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """The blob: ``planes`` ([N, W] u64 each, IR order), ``alpha`` [N] and ``extra`` [N] in this layout."""
        n, nr, wf = self.n, self.nr, self.wf
        full = np.stack([np.asarray(p, np.uint64).reshape(n, -1) for p in planes])  # [planes, N, W]
        a_parts, b_parts = [], []
        for r0 in range(0, n, nr):
            blk = full[:, r0 : r0 + nr]
            a_parts.append(np.ascontiguousarray(blk[:, :, :wf].transpose(2, 0, 1)).reshape(-1))
            if self.tail_bits:
                b_parts.append(blk[:, :, wf].reshape(-1).astype(np.uint16 if self.tail_bits == 16 else np.uint32))
        parts = [
            np.concatenate(a_parts) if a_parts else np.zeros(0, np.uint64),
            np.concatenate(b_parts) if b_parts else np.zeros(0, np.uint16),
            np.asarray(alpha, np.float32).reshape(n),
        ]
        if self.extra:
            parts.append(np.asarray(extra, np.int64).reshape(n))
        return blob(*parts)


# -- XNOR / ternary popcount linear ----------------------------------------------------------


@dataclass(frozen=True)
class XnorLayout:
    """Packed weights of a popcount linear: panels of NR = nv·lanes rows (lanes of a u64 vector)."""

    n: int
    k: int
    lanes: int
    nv: int
    planes: int

    @property
    def nr(self) -> int:
        return self.nv * self.lanes

    @property
    def panels(self) -> RowPanels:
        return RowPanels(self.n, self.k, self.nr, self.planes, extra=self.planes == 2)


def xnor_layout(op: Op, target: Target) -> XnorLayout:
    """Panel layout of a popcount linear's weight (depends on its shape, kind and the target only)."""
    n, k = op.operands[1].type.shape
    lanes = u64_lanes(target)
    planes = 1 if op.operands[1].type.dtype.name == "b1" else 2
    return XnorLayout(n, k, lanes, panel_nv(n, lanes, target), planes)


def _pack_xnor(op: Op, index: int, data, target: Target):
    if index != 1:
        return None
    lay = xnor_layout(op, target)
    extra = row_nnz(data) if lay.planes == 2 else None
    return f"xnor:{lay.nr}", lay.panels.pack(planes_of(data), data["alpha"], extra)


def _xnor_scratch(op: Op, target: Target) -> int:
    k = op.operands[1].type.shape[1]
    return bit_rows(op.operands[0], k).repack_bytes


@dataclass(frozen=True)
class XnorTiling:
    """Register blocking of the popcount micro-kernel."""

    mr: int  # activation rows per micro-tile
    ku: int  # independent accumulator sets along K (hide the popcount/add latency)


def xnor_tiling(m: int, lay: XnorLayout, target: Target) -> XnorTiling:
    """Rows per tile and K splits for M activation rows, within the target's vector registers."""
    regs = target.vector_registers
    budget = regs - lay.nv * lay.planes - 3
    if m == 1:
        return XnorTiling(1, max(1, min(2 if lay.nv >= 4 else 4, budget // lay.nv)))
    mr = max(1, min(m, budget // lay.nv, 6))
    return XnorTiling(mr, 1)


def _xnor_linear(k: KernelContext) -> None:
    """Binary or ternary weights x binary activations: XNOR/AND + popcount, exact integer sums."""
    need_constant_weight(k)
    check_packed_operand(k.op, k.op.operands[0])
    em, b = k.em, k.em.b
    lay = xnor_layout(k.op, k.target)
    rp = lay.panels
    rows = bit_rows(k.op.operands[0], lay.k)
    if rows.slice_bits % lay.k:
        # a rank-1 x: each element is its own slice with its own β, no common scale to factor out
        raise CodegenError(
            f"{k.op.where()}: binary input {k.operand_types[0]} has one scale per element (a slice along axis "
            "0 of a rank-1 tensor), so the product is no XNOR sum; give the input a leading batch axis"
        )
    m = rows.m
    t = xnor_tiling(m, lay, k.target)
    x = k.args[0]
    if not rows.aligned:
        emit_repack_rows(em, x, rows, k.scratch)
        # The rows are read back from memory, not forwarded from the repack's stores: with the stores
        # forwarded, LLVM 22's AVX-512 lowering merged the splats of neighbouring rows (rows 4 and 5 of
        # a [2, 3, 1] ternary product came out equal; x86-64-v3 was right). An empty asm that may read
        # the scratch keeps the loads.
        fence = ir.FunctionType(ir.VoidType(), [k.scratch.type])
        b.asm(fence, "", "r,~{memory}", [k.scratch], side_effect=True)
        x_words, row_stride = k.scratch, None
    else:
        x_words, row_stride = x, rows
    beta = rows.alpha_ptr(em, x)
    wts = k.args[1]
    sec_b, alpha = em.byte_offset(wts, rp.offsets[1]), em.byte_offset(wts, rp.offsets[2])
    nnz = em.byte_offset(wts, rp.offsets[3]) if lay.planes == 2 else None
    bias = k.args[2] if len(k.args) > 2 else None
    vt = ir.VectorType(I64, lay.lanes)
    w_all = words(lay.k)

    def row_ptr(row: ir.Value) -> ir.Value:
        if row_stride is None:
            return em.gep(x_words, b.mul(row, i64(w_all)), I64)
        return em.gep(x_words, row_stride.row_offset(em, row), I64)

    def tile(row0: ir.Value, mr: int, panel: ir.Value, rows_p: int) -> None:
        nv = math.ceil(rows_p / lay.lanes)
        last_lanes = rows_p - (nv - 1) * lay.lanes
        lanes_of = [lay.lanes if v < nv - 1 else last_lanes for v in range(nv)]
        xrows = [row_ptr(b.add(row0, i64(r))) for r in range(mr)]
        zero = const(vt, 0)

        def combine(planes: list[list[ir.Value]], kw: ir.Value, accs: list[ir.Value]) -> list[ir.Value]:
            out = list(accs)
            for r in range(mr):
                xv = em.splat(em.load(xrows[r], kw, I64), lay.lanes)
                for v in range(nv):
                    if lay.planes == 1:
                        word = b.xor(planes[0][v], xv)
                    else:  # nonzero & (sign ^ x): the weight is nonzero and the signs agree
                        word = b.and_(planes[0][v], b.xor(planes[1][v], xv))
                    out[r * nv + v] = b.add(accs[r * nv + v], ctpop(em, word))
            return out

        def step(kw: ir.Value, accs: list[ir.Value]) -> list[ir.Value]:
            planes = [
                [
                    load_lanes(em, wts, rp.a_index(em, panel, kw, p, v * lay.lanes, rows_p), vt, lanes_of[v])
                    for v in range(nv)
                ]
                for p in range(lay.planes)
            ]
            return combine(planes, kw, accs)

        n_acc = mr * nv
        ku = max(1, min(t.ku, rp.wf))
        k_main = rp.wf - rp.wf % ku
        sets = [[zero] * n_acc for _ in range(ku)]
        if k_main:
            with em.loop_carried(k_main, [a for s in sets for a in s], name="kw", step=ku) as lp:
                flat, new = list(lp.values), []
                for u in range(ku):
                    new += step(b.add(lp.index, i64(u)), flat[u * n_acc : (u + 1) * n_acc])
                lp.next(new)
            sets = [list(lp.results[u * n_acc : (u + 1) * n_acc]) for u in range(ku)]
        for kk in range(k_main, rp.wf):
            sets[0] = step(i64(kk), sets[0])
        if rp.tail_bits:  # the narrow last word of every row (section B), widened to u64
            nt = ir.VectorType(ir.IntType(rp.tail_bits), lay.lanes)
            planes = [
                [
                    b.zext(load_lanes(em, sec_b, rp.b_index(em, panel, p, v * lay.lanes, rows_p), nt, lanes_of[v]), vt)
                    for v in range(nv)
                ]
                for p in range(lay.planes)
            ]
            sets[0] = combine(planes, i64(rp.wf), sets[0])
        acc = sets[0]
        for s in sets[1:]:
            acc = [b.add(p, q) for p, q in zip(acc, s)]

        # y = (α_n β_m) · S + b_n in double, S = K - 2c (binary) or 2c - nnz_n (ternary)
        dv = ir.VectorType(F64, lay.lanes)
        fv = ir.VectorType(F32, lay.lanes)
        col0 = b.mul(panel, i64(lay.nr))
        for r in range(mr):
            row = b.add(row0, i64(r))
            bd = em.splat(b.fpext(em.load(beta, rows.slice_of(em, row), F32), F64), lay.lanes)
            for v in range(nv):
                col = b.add(col0, i64(v * lay.lanes))
                c = acc[r * nv + v]
                if lay.planes == 1:
                    s = b.sub(const(vt, lay.k), b.shl(c, const(vt, 1)))
                else:
                    s = b.sub(b.shl(c, const(vt, 1)), load_lanes(em, nnz, col, vt, lanes_of[v]))
                scale = b.fmul(b.fpext(load_lanes(em, alpha, col, fv, lanes_of[v]), dv), bd)
                y = b.fmul(b.sitofp(s, dv), scale)
                if bias is not None:
                    y = b.fadd(y, b.fpext(load_lanes(em, bias, col, fv, lanes_of[v]), dv))
                out = k.apply_epilogue(b.fptrunc(y, fv))
                store_lanes(em, out, k.out, b.add(b.mul(row, i64(lay.n)), col), lanes_of[v])

    m_main, m_tail = m - m % t.mr, m % t.mr

    def all_rows(panel: ir.Value, rows_p: int) -> None:
        if m_main:
            with em.loop(m_main, name="mt", step=t.mr) as row0:
                tile(row0, t.mr, panel, rows_p)
        if m_tail:
            tile(i64(m_main), m_tail, panel, rows_p)

    # panels outer, rows inner: one panel (W·NR words) stays in L1 while every row passes over it
    if rp.full_panels:
        with em.loop(rp.full_panels, name="pn") as p:
            all_rows(p, lay.nr)
    if rp.tail_rows:
        all_rows(i64(rp.full_panels), rp.tail_rows)


for _w in ("b1#binary", "t2#ternary"):
    kernel(
        "linear",
        ("b1#binary", _w, "f32?"),
        constant=(1,),
        variant=popcount_variant,
        pack=_pack_xnor,
        scratch=_xnor_scratch,
        epilogue=True,
    )(_xnor_linear)


# -- sign-select linear: packed weights x float activations ---------------------------------


@dataclass(frozen=True)
class SelectLayout:
    """Packed weights of a sign-select linear: panels of R rows (see RowPanels).

    Binary: one plane (the sign bits). Ternary: planes ``pos = nz & ~sign`` and
    ``neg = nz & sign``, the masks of the adds and of the subtractions.
    """

    n: int
    k: int
    r: int
    planes: int
    f32_lanes: int

    @property
    def panels(self) -> RowPanels:
        return RowPanels(self.n, self.k, self.r, self.planes)


def select_layout(op: Op, target: Target) -> SelectLayout:
    """Panel layout of a sign-select linear's weight: 8 rows per panel with 32 vector registers, else 4."""
    n, k = op.operands[1].type.shape
    r = 8 if target.vector_registers >= 32 else 4
    planes = 1 if op.operands[1].type.dtype.name == "b1" else 2
    return SelectLayout(n, k, r, planes, target.f32_lanes)


def _pack_select(op: Op, index: int, data, target: Target):
    if index != 1:
        return None
    lay = select_layout(op, target)
    if lay.planes == 1:
        planes = [np.asarray(data["bits"], np.uint64)]
    else:
        nz = np.asarray(data["nonzero"], np.uint64)
        neg = np.asarray(data["sign"], np.uint64) & nz
        planes = [nz & ~neg, neg]
    return f"select:{lay.r}", lay.panels.pack(planes, data["alpha"])


def _select_scratch(op: Op, target: Target) -> int:
    if op.operands[1].type.dtype.name != "b1":
        return 0  # ternary needs no Σx
    k = op.operands[1].type.shape[1]
    return op.operands[0].type.numel // k * 4


def _select_linear(k: KernelContext) -> None:
    """Binary or ternary weights x float activations: masked adds of x selected by the weight bits."""
    need_constant_weight(k)
    em, b = k.em, k.em.b
    lay = select_layout(k.op, k.target)
    rp = lay.panels
    m = k.op.operands[0].type.numel // lay.k
    fl = lay.f32_lanes
    fv = ir.VectorType(F32, fl)
    mask_t = ir.IntType(fl)
    x, wts = k.args[0], k.args[1]
    sec_b, alpha = em.byte_offset(wts, rp.offsets[1]), em.byte_offset(wts, rp.offsets[2])
    bias = k.args[2] if len(k.args) > 2 else None
    binary = lay.planes == 1
    mr = 1 if m == 1 else 2
    k_full = lay.k // 64  # whole words of x
    k_last = lay.k - 64 * k_full  # elements in the last, partial word

    sums = k.scratch
    if binary:  # Σ_k x[m, k] once per row: y = α(2·Σ_{bit} x - Σ x)
        with em.loop(m, name="sx") as row:
            base = b.mul(row, i64(lay.k))
            with em.loop_carried(lay.k, [const(F32, 0.0)], name="sk") as lp:
                lp.next([b.fadd(lp.values[0], em.load(x, b.add(base, lp.index), F32), flags=("reassoc",))])
            em.store(lp.results[0], sums, row)

    def chunk_mask(word_byte_ptr: ir.Value, lo: int) -> ir.Value:
        """Bits [lo, lo + fl) of the word at ``word_byte_ptr`` as a lane mask, loaded straight
        from memory (kmovw k, m16 on AVX-512: no shifting of a 64-bit mask in registers)."""
        if fl >= 8:
            bits = em.load(em.byte_offset(word_byte_ptr, lo // 8), 0, mask_t)
        else:  # 4 lanes (SSE): half a byte
            byte = em.load(em.byte_offset(word_byte_ptr, lo // 8), 0, ir.IntType(8))
            bits = b.trunc(b.lshr(byte, ir.Constant(ir.IntType(8), lo % 8)), mask_t)
        return b.bitcast(bits, ir.VectorType(I1, fl))

    def tile(row0: ir.Value, mr: int, panel: ir.Value, rows_p: int) -> None:
        xrows = [em.gep(x, b.mul(b.add(row0, i64(r)), i64(lay.k)), F32) for r in range(mr)]

        def step(kw: ir.Value, accs: list[ir.Value], valid: int, tail: bool) -> list[ir.Value]:
            out = list(accs)
            parts = [(q * fl, min(fl, valid - q * fl)) for q in range(math.ceil(valid / fl))]
            xs = [
                [load_lanes(em, xrows[r], b.add(b.mul(kw, i64(64)), i64(lo)), fv, n) for lo, n in parts]
                for r in range(mr)
            ]
            for j in range(rows_p):
                if tail:
                    ptrs = [
                        em.byte_offset(sec_b, b.mul(rp.b_index(em, panel, p, j, rows_p), i64(rp.tail_bits // 8)))
                        for p in range(lay.planes)
                    ]
                else:
                    ptrs = [em.gep(wts, rp.a_index(em, panel, kw, p, j, rows_p), I64) for p in range(lay.planes)]
                for q, (lo, _) in enumerate(parts):
                    masks = [chunk_mask(ptr, lo) for ptr in ptrs]
                    for r in range(mr):
                        # select(mask, acc + x, acc): one merge-masked vaddps on AVX-512
                        at = r * rows_p + j
                        a = out[at]
                        a = b.select(masks[0], b.fadd(a, xs[r][q], flags=("reassoc",)), a)
                        if not binary:
                            a = b.select(masks[1], b.fsub(a, xs[r][q], flags=("reassoc",)), a)
                        out[at] = a
            return out

        accs = [const(fv, 0.0)] * (mr * rows_p)
        if k_full:  # whole words: always section A
            with em.loop_carried(k_full, accs, name="kw") as lp:
                lp.next(step(lp.index, list(lp.values), 64, False))
            accs = list(lp.results)
        if k_last:  # the partial last word: section B when narrow, else the last word of A
            accs = step(i64(k_full), accs, k_last, bool(rp.tail_bits))

        dv = ir.VectorType(F64, lay.r)
        rv = ir.VectorType(F32, lay.r)
        col = b.mul(panel, i64(lay.r))
        a_d = to_double(em, load_lanes(em, alpha, col, rv, rows_p))
        for r in range(mr):
            row = b.add(row0, i64(r))
            tot = const(rv, 0.0)
            for j in range(rows_p):
                tot = b.insert_element(tot, em.hsum(accs[r * rows_p + j]), ir.Constant(ir.IntType(32), j))
            td = to_double(em, tot)
            if binary:
                sx = em.splat(b.fpext(em.load(sums, row, F32), F64), lay.r)
                td = b.fsub(b.fmul(td, const(dv, 2.0)), sx)
            y = b.fmul(td, a_d)
            if bias is not None:
                y = b.fadd(y, to_double(em, load_lanes(em, bias, col, rv, rows_p)))
            out = k.apply_epilogue(b.fptrunc(y, rv))
            store_lanes(em, out, k.out, b.add(b.mul(row, i64(lay.n)), col), rows_p)

    m_main, m_tail = m - m % mr, m % mr

    def all_rows(panel: ir.Value, rows_p: int) -> None:
        if m_main:
            with em.loop(m_main, name="mt", step=mr) as row0:
                tile(row0, mr, panel, rows_p)
        if m_tail:
            tile(i64(m_main), m_tail, panel, rows_p)

    if rp.full_panels:
        with em.loop(rp.full_panels, name="gr") as g:
            all_rows(g, lay.r)
    if rp.tail_rows:
        all_rows(i64(rp.full_panels), rp.tail_rows)


for _w in ("b1#binary", "t2#ternary"):
    kernel("linear", ("f32", _w, "f32?"), constant=(1,), pack=_pack_select, scratch=_select_scratch, epilogue=True)(
        _select_linear
    )


# -- quantize f32 -> b1 #binary and dequantize back -------------------------------------------


@kernel("quantize", ("f32",), result="b1#binary")
def quantize_binary(k: KernelContext) -> None:
    """β = mean|x| per slice (summed in double, like the reference), bits = x >= 0, 64 per word."""
    em, b = k.em, k.em.b
    n, per = slices(k.op.result)
    w = words(per)
    x = k.args[0]
    alpha = em.byte_offset(k.out, reads_alpha_at(n * w))
    full, last = divmod(per, 64)
    v64 = ir.VectorType(F32, 64)
    with em.loop(n, name="qs") as s:
        base = b.mul(s, i64(per))
        with em.loop_carried(per, [const(F64, 0.0)], name="qa") as lp:
            v = em.call_unary("fabs", em.load(x, b.add(base, lp.index), F32))
            lp.next([b.fadd(lp.values[0], b.fpext(v, F64), flags=("reassoc",))])
        beta = b.fptrunc(b.fdiv(lp.results[0], const(F64, float(per))), F32)
        em.store(beta, alpha, s)
        out = b.mul(s, i64(w))

        def word(kw: ir.Value, valid: int) -> ir.Value:
            v = load_lanes(em, x, b.add(base, b.mul(kw, i64(64))), v64, valid)
            # ordered >=: NaN gives 0 (-1), as numpy's x >= 0 does
            bits = b.bitcast(b.fcmp_ordered(">=", v, const(v64, 0.0)), I64)
            return bits if valid == 64 else b.and_(bits, i64(tail_mask(valid)))

        if full:
            with em.loop(full, name="qw") as kw:
                em.store(word(kw, 64), k.out, b.add(out, kw))
        if last:
            em.store(word(i64(full), last), k.out, b.add(out, i64(full)))


def _pack_canonical(op: Op, index: int, data, target: Target):
    """A packed constant read in its IR layout: the components one after another."""
    if not isinstance(data, dict):
        return None
    names = ["bits", "alpha"] if "bits" in data else ["nonzero", "sign", "alpha"]
    return "components", np.concatenate([np.ascontiguousarray(data[c]).view(np.uint8).reshape(-1) for c in names])


@kernel("dequantize", ("b1#binary",), result="f32", pack=_pack_canonical)
def dequantize_binary(k: KernelContext) -> None:
    """x = α (bit ? +1 : -1), α per slice."""
    _dequantize_packed(k, planes=1)


@kernel("dequantize", ("t2#ternary",), result="f32", pack=_pack_canonical)
def dequantize_ternary(k: KernelContext) -> None:
    """x = α (nonzero ? (sign ? -1 : +1) : 0), α per slice."""
    _dequantize_packed(k, planes=2)


def _dequantize_packed(k: KernelContext, planes: int) -> None:
    check_packed_operand(k.op, k.op.operands[0])
    n, per = slices(k.op.operands[0])
    emit_decode(k.em, k.args[0], n, per, planes, k.out)


def emit_decode(em: Emitter, src: ir.Value, n: int, per: int, planes: int, dst: ir.Value) -> None:
    """Decode packed components at ``src`` (bits, or nonzero and sign planes, then alpha[n])
    into f32 ``dst[n, per]``: α·(±1), or α·{-1, 0, +1}, 16 lanes at a time."""
    b = em.b
    w = words(per)
    alpha = em.byte_offset(src, planes * n * w * 8)
    fl = 16
    fv = ir.VectorType(F32, fl)
    zero = const(fv, 0.0)
    full, last = divmod(per, fl)
    with em.loop(n, name="ds") as s:
        a = em.splat(em.load(alpha, s, F32), fl)
        neg_a = b.fneg(a)

        def chunk(e0: ir.Value, valid: int) -> None:
            # 16-element chunks never straddle a word: 64 % 16 == 0 and each slice starts on a word
            wi = b.add(b.mul(s, i64(w)), b.lshr(e0, i64(6)))
            lo = b.and_(e0, i64(63))
            first = b.lshr(em.load(src, wi, I64), lo)
            if planes == 1:
                v = b.select(as_mask(em, first, 0, fl), a, neg_a)
            else:
                sign = b.lshr(em.load(src, b.add(wi, i64(n * w)), I64), lo)
                v = b.select(as_mask(em, first, 0, fl), b.select(as_mask(em, sign, 0, fl), neg_a, a), zero)
            store_lanes(em, v, dst, b.add(b.mul(s, i64(per)), e0), valid)

        if full:
            with em.loop(full, name="dc") as c:
                chunk(b.mul(c, i64(fl)), fl)
        if last:
            chunk(i64(full * fl), last)
