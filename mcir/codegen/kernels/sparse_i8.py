"""Sparse int8 kernels: ``linear`` and ``conv2d`` with ``#csr`` / ``#nm`` int8 weights
(per-row scales, from ``prune,quant8``) on u8 activations.

``acc[n] = sum_k q_w[n, k] * q_x[k] + offset[n]``, ``y = float(acc) * mult[n] (+ fbias[n])``,
then the result type: f32 (with a fused activation) or requantised
``clamp(rint(y / s_y) + z_y)``. ``offset = q_b - z_x * sum_k q_w`` folds the integer bias
and the zero point of x at compile time; ``mult = s_x * s_w[n]`` is the bias's own scale,
so the sum is exact in int32 and results match the interpreter within 1 LSB (u8) / the f32
contract. The weights use the compact ``gap`` layout (``sparse_pack``: 13 bits per entry,
about 1.75 bytes per non-zero at 90 % sparsity) on every path:

* **batch 1 on AVX-512 VBMI + VNNI**: a slot gives 16 rows 4 entries each. ``vpermb`` +
  ``vpmultishiftqb`` unpack the 5-bit gaps; two byte shifts and adds turn them into
  positions relative to the slot's window start R, all in bytes; two ``vpermi2b`` on the
  256 bytes of x at R fetch the 64 activations and one ``vpdpbusd`` multiplies and sums
  them into the 16 row accumulators. About 20 vector instructions per 64 entries, no
  gathers (``vpgatherdd`` costs ~25 cycles on this CPU class).
* **everything else** (a batch of rows, convolutions, other targets): each row's
  entries are decoded once into (x row, value) pairs in scratch, then every non-zero is
  broadcast against a row of ``x^T[K][M]`` (x transposed, a 1x1 convolution's image, or
  any other convolution's im2col patches with the zero point in the padding, converted to
  f32) with FMAs; runs of 512 products sum exactly in f32 (integers below
  2^24) before they join the int32 accumulator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import llvmlite.ir as ir
import numpy as np

from mcir import dtypes
from mcir.codegen.emit import F32, I8, I16, I32, I64, Emitter, const, i64, storage_type, vec
from mcir.codegen.kernels import KernelContext, kernel, math_approx
from mcir.codegen.kernels import sparse_pack as sp
from mcir.codegen.kernels.sparse import (
    BATCH_MIN,
    Product,
    copy_padded,
    emit_patches,
    emit_window_gemv,
    field,
    load_part,
    part_ptr,
    product,
    store_part,
    tiles,
    transpose_in,
    transpose_out,
    window_shape,
)
from mcir.codegen.memory_plan import align_up, view_root
from mcir.codegen.target import Target
from mcir.encodings import Quant
from mcir.encodings.quant import bias_accumulator_units
from mcir.errors import CodegenError
from mcir.ir import Op

SPARSE_I8 = "i8#csr|i8#nm"
V64 = ir.VectorType(I8, 64)
V16I32 = ir.VectorType(I32, 16)


def _x_quant(op: Op) -> Quant:
    enc = op.operands[0].type.encoding
    if not isinstance(enc, Quant) or enc.axis is not None:
        raise CodegenError(f"{op.where()}: sparse int8 kernels need a per-tensor quantised u8 input")
    return enc


def _result_quant(op: Op) -> Quant | None:
    t = op.result.type
    if t.encoding is None and t.dtype == dtypes.f32:
        return None
    if isinstance(t.encoding, Quant) and t.encoding.axis is None and t.dtype in (dtypes.u8, dtypes.i8):
        return t.encoding
    raise CodegenError(f"{op.where()}: sparse int8 kernels write f32 or per-tensor quantised u8/i8 results, not {t}")


def vector_gemv(target: Target) -> bool:
    """The batch-1 kernel needs byte permutes (VBMI), vpmultishiftqb (VBMI) and vpdpbusd (VNNI)."""
    return (
        target.is_x86
        and target.vector_bits == 512
        and all(target.has(f) for f in ("avx512bw", "avx512vbmi", "avx512vnni"))
    )


def vector_decode(target: Target) -> bool:
    """Slots can be decoded with VBMI byte shuffles (the batched kernel's fast path)."""
    return target.is_x86 and target.vector_bits == 512 and target.has("avx512bw") and target.has("avx512vbmi")


#: rows of x from which the batched int8 kernel beats one batch-1 kernel call per row: 1024 x 1024
#: at 10 % density, 7 us per row against ~85 us for up to 32 rows (Zen 4)
BATCH_MIN_I8 = 12


def _uses_vector(p: Product, target: Target) -> bool:
    return not p.conv and p.m < BATCH_MIN_I8 and vector_gemv(target)


def _variant(target: Target) -> str:
    """The code paths ``target`` gets, for the kernel table: batch 1 (linear), then batched."""
    if vector_gemv(target):
        one = "gemv vpermi2b+vpdpbusd"
    elif window_shape(target) is not None:
        one = f"window {window_shape(target).isa}"
    else:
        one = "batched"
    return f"batch 1: {one}; batched: {'vbmi slots' if vector_decode(target) else 'scalar decode'}"


def _uses_window(p: Product, target: Target) -> bool:
    """Batch 1 on AVX-512 without VBMI/VNNI, or AVX2: the f32 window kernel on int8 values."""
    return not p.conv and p.m < BATCH_MIN and not vector_gemv(target) and window_shape(target) is not None


def lanes_of(target: Target) -> int:
    """int32 lanes of the batched kernel."""
    return max(4, target.vector_bits // 32)


# -- compile time: per-row constants and the gap layout ----------------------------------------------


def row_constants(op: Op, q: np.ndarray, w_scale: np.ndarray, bias) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offset i32, mult f32, fbias f32) per output row; see the module docstring."""
    xq = _x_quant(op)
    # the same f32 product quantize() gives the bias scale, so an int bias folds exactly
    mult = (np.float32(xq.scale) * np.asarray(w_scale, np.float32)).astype(np.float32)
    offset = -int(xq.zero_point) * q.astype(np.int64).sum(axis=1)
    # the bias is rounded to accumulator units like every int8 layer's (bias_accumulator_units: the
    # interpreter does the same), so fbias stays zero; the layout keeps the part for other producers
    fbias = np.zeros(q.shape[0], np.float32)
    if bias is not None:
        offset = offset + bias_accumulator_units(op.operands[2].type, bias, mult)
    worst = 255 * np.abs(q.astype(np.int64)).sum(axis=1) + np.abs(offset)
    if worst.size and worst.max() >= 2**31:
        raise CodegenError(f"{op.where()}: int32 accumulators could overflow (rows of {q.shape[1]} int8 weights)")
    return offset.astype(np.int32), mult, fbias


def _bias_data(op: Op):
    if len(op.operands) < 3:
        return None
    b = view_root(op.operands[2])
    if not b.is_constant or b.producer.data is None:
        raise CodegenError(f"{op.where()}: the bias of a sparse int8 layer must be a constant")
    return b.producer.data


def _pack_i8(op: Op, index: int, data, target: Target):
    if index == 2:
        return "folded", np.zeros(0, np.uint8)  # lives in the weight's per-row constants
    if index != 1:
        return None
    q, w_scale = sp.dense_int8(op.operands[1].type, data)
    offset, mult, fbias = row_constants(op, q, w_scale, _bias_data(op))
    # the same weight with another input scale or bias needs its own constants
    digest = hashlib.sha1(offset.tobytes() + mult.tobytes() + fbias.tobytes()).hexdigest()[:16]
    if _uses_window(product(op), target):
        shape = window_shape(target)
        has_fbias = bool(np.any(fbias != 0))
        per_row = (offset.astype(np.int32), mult, fbias if has_fbias else np.zeros(0, np.float32))
        blob = sp.pack_window(q, shape.lanes, shape.width, shape.group, (int(has_fbias),), per_row)
        return f"{shape.key}i8:{digest}", blob
    return f"gap:{digest}", sp.pack_gap(q, offset, mult, fbias)


def _scratch_i8(op: Op, target: Target) -> int:
    p = product(op)
    if _uses_vector(p, target):
        return align_up(p.k + sp.GAP_WINDOW + 64)
    if _uses_window(p, target):
        return align_up((p.k + window_shape(target).width) * 4)  # x as f32, then zeros
    lanes = lanes_of(target)
    # one row's decoded entries (x^T row offset i32, value f32), or one slot's and a 16 x 32 tile
    decoded = max(align_up((p.k + 1) * 8), 2560)
    mpad = max(lanes, -(-p.block_columns // lanes) * lanes)
    xt = align_up(p.k * mpad * 4)  # x^T as f32 (a block of patches for a convolution)
    return decoded + xt + (0 if p.conv else align_up(p.n * mpad * 4))


# -- emission -------------------------------------------------------------------------------------------


class _Rows:
    """Pointers to the per-row parts of a gap blob and the ``y = float(acc + offset) * mult + fbias`` step."""

    def __init__(self, em: Emitter, blob: ir.Value) -> None:
        self.em = em
        self.blocks_slots = part_ptr(em, blob, 2)
        self.deltas = part_ptr(em, blob, 3)
        self.gaps = part_ptr(em, blob, 4)
        self.vals = part_ptr(em, blob, 5)
        self.perm = part_ptr(em, blob, 6)
        self.offset = part_ptr(em, blob, 7)
        self.mult = part_ptr(em, blob, 8)
        # without a float bias its part is empty (but followed by 64 zero bytes): never add it
        self.has_fbias = em.b.icmp_signed("!=", field(em, blob, 1), i64(0))
        self.fbias = part_ptr(em, blob, 9)

    def slots(self, block: ir.Value) -> tuple[ir.Value, ir.Value]:
        b = self.em.b
        s0 = b.sext(self.em.load(self.blocks_slots, block, I32), I64)
        s1 = b.sext(self.em.load(self.blocks_slots, b.add(block, i64(1)), I32), I64)
        return s0, s1

    def _fbias(self, row: ir.Value, ty: ir.Type) -> ir.Value:
        b = self.em.b
        return b.select(
            self.has_fbias, self.em.load(self.fbias, b.select(self.has_fbias, row, i64(0)), ty), const(ty, 0)
        )

    def finish_lanes(self, acc: ir.Value, row: ir.Value) -> ir.Value:
        """Float results of a 16-lane accumulator holding sorted rows ``row .. row + 15``."""
        em, b = self.em, self.em.b
        ft = vec(F32, acc.type.count)
        y = b.sitofp(b.add(acc, em.load(self.offset, row, acc.type)), ft)
        return b.fadd(b.fmul(y, em.load(self.mult, row, ft)), self._fbias(row, ft))

    def finish_row(self, acc: ir.Value, row: ir.Value) -> ir.Value:
        """Float results of an accumulator holding batch columns of sorted row ``row``."""
        em, b = self.em, self.em.b
        lanes = acc.type.count
        ft = vec(F32, lanes)
        y = b.sitofp(b.add(acc, em.splat(em.load(self.offset, row, I32), lanes)), ft)
        y = b.fmul(y, em.splat(em.load(self.mult, row, F32), lanes))
        return b.fadd(y, em.splat(self._fbias(row, F32), lanes))


def encode(em: Emitter, x: ir.Value, q: Quant, dtype) -> ir.Value:
    """``clamp(rint(x / s) + z)`` into the integer storage of ``dtype`` (as the quantize kernel does)."""
    b = em.b
    info = np.iinfo(dtype.np)
    t = x.type
    y = b.fdiv(x, const(t, q.scale))  # a division, as the reference: bit-equal results
    r = b.fadd(math_approx.rint(em, y), const(t, float(q.zero_point)))
    big = b.fcmp_ordered(">=", em.call_unary("fabs", y), const(t, 4194304.0))  # beyond the rint trick
    r = b.select(big, b.fadd(y, const(t, float(q.zero_point))), r)
    r = em.fmin(em.fmax(r, const(t, float(info.min))), const(t, float(info.max)))
    r = b.select(b.fcmp_unordered("uno", r, r), const(t, 0.0), r)
    # through i32: fptosi straight to i8 is poison for 128..255 (u8)
    return b.trunc(b.fptosi(r, vec(I32, t.count)), vec(storage_type(dtype), t.count))


def _output(k: KernelContext) -> Callable[[ir.Value], ir.Value]:
    """Float result vector -> what the result type stores (after the fused epilogue)."""
    rq = _result_quant(k.op)
    if rq is None:
        return k.apply_epilogue
    dt = k.result_type.dtype
    return lambda y: encode(k.em, y, rq, dt)


class _SlotDecoder:
    """The VBMI decode of one slot: byte positions of its 64 entries relative to the window start.

    ``rel`` byte ``4j + t`` is the position of row j's entry t minus R (modulo 256: exact for
    every non-zero entry); the carried state is the bytes ``base`` (each row's last position
    minus R) and R itself.
    """

    def __init__(self, em: Emitter, rows: _Rows) -> None:
        self.em, self.rows = em, rows
        # bit offset of gap field i within its qword
        self.shifts = ir.Constant(V64, [ir.Constant(I8, 5 * (i % 8)) for i in range(64)])
        self.mshift = em.intrinsic("llvm.x86.avx512.pmultishift.qb.512", [], V64, [V64, V64])
        idx = ir.VectorType(I32, 64)
        # 40 bytes of gaps -> 8 bytes per qword (5 used): byte 8q+i takes byte 5q+i
        self.spread = ir.Constant(idx, [5 * (i // 8) + min(i % 8, 4) for i in range(64)])
        self.last = ir.Constant(idx, [4 * (i // 4) + 3 for i in range(64)])  # byte 4j+3 to all of lane j

    @staticmethod
    def start() -> list[ir.Value]:
        return [const(V64, -1), i64(0)]  # positions start at -1, R at 0

    def decode(self, s: ir.Value, base: ir.Value, r: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(rel, next base, R) of slot ``s``."""
        em, b = self.em, self.em.b
        d = b.zext(em.load(self.rows.deltas, s, I8), I64)
        r = b.add(r, d)
        raw = em.load(self.rows.gaps, b.mul(s, i64(sp.GAP_SLOT_BYTES)), V64, align=1)
        g = b.call(self.mshift, [self.shifts, b.shuffle_vector(raw, ir.Constant(V64, None), self.spread)])
        g = b.and_(g, const(V64, sp.GAP_MAX))
        # prefix sums of the 4 gaps of each row (bytes; at most 4 * 31, no carries)
        g = b.add(g, b.bitcast(b.shl(b.bitcast(g, V16I32), const(V16I32, 8)), V64))
        g = b.add(g, b.bitcast(b.shl(b.bitcast(g, V16I32), const(V16I32, 16)), V64))
        rel = b.add(b.sub(base, em.splat(b.trunc(d, I8), 64)), g)
        return rel, b.shuffle_vector(rel, ir.Constant(V64, None), self.last), r


def _emit_vector_gemv(k: KernelContext, rows: _Rows, n: int, xs: ir.Value, y: ir.Value) -> None:
    """The batch-1 VBMI + VNNI kernel over all blocks of 16 sorted rows (module docstring)."""
    em, b = k.em, k.em.b
    permi2b = em.intrinsic("llvm.x86.avx512.vpermi2var.qi.512", [], V64, [V64, V64, V64])
    dot = em.intrinsic("llvm.x86.avx512.vpdpbusd.512", [], V16I32, [V16I32, V64, V64])
    dec = _SlotDecoder(em, rows)
    store = _output(k)

    def block(blk: ir.Value, valid: int) -> None:
        s0, s1 = rows.slots(blk)
        with em.loop_carried(s1, [ir.Constant(V16I32, None), *dec.start()], name="s", start=s0) as lp:
            acc, base, r = lp.values
            s = lp.index
            rel, base, r = dec.decode(s, base, r)
            window = em.byte_offset(xs, r)
            tables = [em.load(window, 64 * i, V64, align=1) for i in range(4)]
            lo = b.call(permi2b, [tables[0], rel, tables[1]])
            hi = b.call(permi2b, [tables[2], rel, tables[3]])
            xv = b.select(b.icmp_signed("<", rel, const(V64, 0)), hi, lo)  # bit 7: the upper 128 bytes
            w = em.load(rows.vals, b.mul(s, i64(64)), V64, align=64)
            lp.next([b.call(dot, [acc, xv, w]), base, r])
        row = b.mul(blk, i64(sp.GAP_LANES))
        out = store(rows.finish_lanes(lp.results[0], row))
        for lane in range(valid):
            n_idx = b.zext(em.load(rows.perm, b.add(row, i64(lane)), I16), I64)
            em.store(b.extract_element(out, ir.Constant(I32, lane)), y, n_idx)

    full, rest = divmod(n, sp.GAP_LANES)
    if full:
        with em.loop(full, name="blk") as blk:
            block(blk, sp.GAP_LANES)
    if rest:
        block(i64(full), rest)


#: windows summed in f32 per run of the int8 window kernel: one product per row per window
WINDOW_RUN = 512


def _emit_window_i8(k: KernelContext, p: Product, x: ir.Value, y: ir.Value) -> None:
    """Batch 1 without VBMI/VNNI: the f32 window GEMV (``sparse.emit_window_gemv``) on int8
    values and x converted to f32, exact in runs of ``WINDOW_RUN`` windows (int32 across)."""
    em, b = k.em, k.em.b
    shape = window_shape(k.target)
    lanes = shape.lanes
    vt, it, bt = vec(F32, lanes), vec(I32, lanes), vec(I8, lanes)
    blob, xs = k.args[1], k.scratch

    def convert(start: ir.Value, width: int) -> None:
        store_part(em, b.uitofp(load_part(em, x, start, bt, width), vt), xs, start, width)

    tiles(em, p.k, lanes, convert, "cx")
    zero = const(vt, 0.0)
    tiles(em, shape.width, lanes, lambda start, width: store_part(em, zero, xs, b.add(start, i64(p.k)), width), "cz")
    offset, mult = part_ptr(em, blob, 6), part_ptr(em, blob, 7)
    has_fbias = b.icmp_signed("!=", field(em, blob, 1), i64(0))
    fbias = part_ptr(em, blob, 8)
    out = _output(k)

    def finish(acc: ir.Value, row: ir.Value, live: int) -> None:
        v = b.sitofp(b.add(acc, load_part(em, offset, row, it, live)), vt)
        v = b.fmul(v, load_part(em, mult, row, vt, live))
        fb = load_part(em, fbias, b.select(has_fbias, row, i64(0)), vt, live)
        store_part(em, out(b.fadd(v, b.select(has_fbias, fb, zero))), y, row, live)

    emit_window_gemv(em, blob, shape, p.n, xs, finish, first_part=2, values=I8, run=WINDOW_RUN)


#: slots summed in f32 per run of the slot-major batched kernel: 4 entries of a row per slot,
#: 512 products of u8 x i8 (each < 2^15) per row stay exact integers below 2^24
RUN_SLOTS = 128


def _emit_batched_slots(
    k: KernelContext,
    rows: _Rows,
    n: int,
    xt: ir.Value,
    ldx: int,
    kdim: int,
    m: int,
    buf: ir.Value,
    store: Callable[[ir.Value, ir.Value, ir.Value, int], None],
) -> None:
    """Batched product with VBMI decoding: slots are decoded 64 entries at a time and each
    entry's value is broadcast against its x^T row into f32 accumulators, 16 of them: 16 rows x
    16 batch columns, or 8 rows x 32 columns (one offset and value load then serve two vectors).
    Sums run exactly for ``RUN_SLOTS`` slots, then join int32 totals in ``buf`` (64-byte aligned
    scratch: one slot's offsets and values, then a 16 x 32 int32 tile)."""
    em, b = k.em, k.em.b
    lanes = 16
    vt, it = vec(F32, lanes), vec(I32, lanes)
    bt16 = ir.VectorType(I8, 16)
    dec = _SlotDecoder(em, rows)
    offs, vals, tile = buf, em.byte_offset(buf, 256), em.byte_offset(buf, 512)
    block_rows = sp.GAP_LANES

    def block(blk: ir.Value, valid: int) -> None:
        s0, s1 = rows.slots(blk)
        row0 = b.mul(blk, i64(block_rows))

        def chunk(c0: ir.Value, width: int) -> None:
            nv = -(-width // lanes)
            widths = [min(lanes, width - v * lanes) for v in range(nv)]
            per_pass = block_rows // nv
            for h in range(0, min(valid, block_rows), per_pass):
                pass_rows = range(h, min(h + per_pass, valid))
                for j in pass_rows:
                    for v in range(nv):
                        em.store(ir.Constant(it, None), tile, (j * 2 + v) * lanes)
                runs = b.udiv(b.add(b.sub(s1, s0), i64(RUN_SLOTS - 1)), i64(RUN_SLOTS))
                with em.loop_carried(runs, dec.start(), name="run") as lr:
                    rs = b.add(s0, b.mul(lr.index, i64(RUN_SLOTS)))
                    re = b.add(rs, i64(RUN_SLOTS))
                    re = b.select(b.icmp_signed("<", re, s1), re, s1)
                    nacc = len(pass_rows) * nv
                    init = [const(vt, 0.0)] * nacc + list(lr.values)
                    with em.loop_carried(re, init, name="s", start=rs) as lp:
                        accs, (base, r) = list(lp.values[:nacc]), lp.values[nacc:]
                        s = lp.index
                        rel, base, r = dec.decode(s, base, r)
                        for q in range(4):  # entries of rows 4q..4q+3, 16 per vector
                            if not any(4 * q <= j < 4 * q + 4 for j in pass_rows):
                                continue
                            sel = ir.Constant(it, list(range(16 * q, 16 * q + 16)))
                            pos = b.add(
                                b.zext(b.shuffle_vector(rel, ir.Constant(V64, None), sel), it),
                                em.splat(b.trunc(r, I32), lanes),
                            )
                            # entries of value 0 (escapes, stalls, padding) may point past the end: clamp
                            pos = b.select(b.icmp_unsigned("<", pos, const(it, kdim - 1)), pos, const(it, kdim - 1))
                            em.store(b.mul(pos, const(it, ldx)), offs, 16 * q)
                            w = em.load(rows.vals, b.add(b.mul(s, i64(64)), i64(16 * q)), bt16, align=16)
                            em.store(b.sitofp(w, vt), vals, 16 * q)
                        for a, j in enumerate(pass_rows):
                            for t in range(sp.GAP_PER_LANE):
                                e = sp.GAP_PER_LANE * j + t
                                off = b.add(b.sext(em.load(offs, e, I32), I64), c0)
                                val = em.splat(em.load(vals, e, F32), lanes)
                                for v in range(nv):
                                    xv = load_part(em, xt, b.add(off, i64(v * lanes)), vt, widths[v])
                                    accs[a * nv + v] = em.fma(val, xv, accs[a * nv + v])
                        lp.next(accs + [base, r])
                    for a, j in enumerate(pass_rows):
                        for v in range(nv):
                            at = (j * 2 + v) * lanes
                            em.store(b.add(em.load(tile, at, it), b.fptosi(lp.results[a * nv + v], it)), tile, at)
                    lr.next(list(lp.results[nacc:]))
                for j in pass_rows:
                    row = b.add(row0, i64(j))
                    orig = b.zext(em.load(rows.perm, row, I16), I64)
                    for v in range(nv):
                        acc = em.load(tile, (j * 2 + v) * lanes, it)
                        store(rows.finish_row(acc, row), orig, b.add(c0, i64(v * lanes)), widths[v])

        tiles(em, m, 2 * lanes, chunk, "mc")

    full, rest = divmod(n, block_rows)
    if full:
        with em.loop(full, name="blk") as blk:
            block(blk, block_rows)
    if rest:
        block(i64(full), rest)


#: entries summed in f32 before moving to the int32 accumulator: products of u8 and i8 are at
#: most 255 * 127, so 512 of them stay below 2^24 and every f32 partial sum is an exact integer
EXACT_RUN = 512


def _emit_batched(
    k: KernelContext,
    rows: _Rows,
    n: int,
    xt: ir.Value,
    ldx: int,
    m: int,
    decoded: ir.Value,
    lanes: int,
    store: Callable[[ir.Value, ir.Value, ir.Value, int], None],
) -> None:
    """For every sorted row: decode its entries into ``decoded`` (x row, value) pairs, then
    ``store(y_vector, original_row, c0, live)`` for the columns ``c0 ..`` of ``xt[K][ldx]``.

    ``xt`` holds the u8 inputs as f32: the multiply-adds run on the FMA units (two per
    non-zero for 32 columns, like the f32 kernel), in runs of ``EXACT_RUN`` entries whose
    sums are exact integers, each run then added to an int32 accumulator.
    """
    em, b = k.em, k.em.b
    vt = vec(F32, lanes)
    it = vec(I32, lanes)
    chunk = 2 * lanes

    def one_row(blk: ir.Value, lane: ir.Value) -> None:
        s0, s1 = rows.slots(blk)
        # pass 1: the row's non-zeros as (x row, value), compacted branch-free: a zero entry
        # (escape, stall, padding) is written and then overwritten by the next one
        with em.loop_carried(s1, [i64(-1), i64(0)], name="s", start=s0) as lp:
            cur, cnt = lp.values
            s = lp.index
            gaps = em.gep(rows.gaps, b.mul(s, i64(sp.GAP_SLOT_BYTES)), I8)
            for t in range(sp.GAP_PER_LANE):
                f = b.add(b.mul(lane, i64(sp.GAP_PER_LANE)), i64(t))
                bit = b.mul(f, i64(sp.GAP_BITS))
                pair = b.zext(em.load(em.gep(gaps, b.lshr(bit, i64(3)), I8), 0, I16, align=1), I64)
                gap = b.and_(b.lshr(pair, b.and_(bit, i64(7))), i64(sp.GAP_MAX))
                cur = b.add(cur, gap)
                v = em.load(rows.vals, b.add(b.mul(s, i64(64)), f), I8)
                slot = em.gep(decoded, b.mul(cnt, i64(2)), I32)
                em.store(b.trunc(b.mul(cur, i64(ldx)), I32), slot, 0)  # offset of the x^T row
                em.store(b.sitofp(v, F32), slot, 1)
                cnt = b.add(cnt, b.zext(b.icmp_signed("!=", v, ir.Constant(I8, 0)), I64))
            lp.next([cur, cnt])
        count = lp.results[1]
        row = b.add(b.mul(blk, i64(sp.GAP_LANES)), lane)
        orig = b.zext(em.load(rows.perm, row, I16), I64)

        def columns(c0: ir.Value, width: int) -> None:
            nv = -(-width // lanes)
            widths = [min(lanes, width - j * lanes) for j in range(nv)]
            runs = b.udiv(b.add(count, i64(EXACT_RUN - 1)), i64(EXACT_RUN))
            with em.loop_carried(runs, [ir.Constant(it, None)] * nv, name="run") as lr:
                e0 = b.mul(lr.index, i64(EXACT_RUN))
                e1 = b.add(e0, i64(EXACT_RUN))
                e1 = b.select(b.icmp_signed("<", e1, count), e1, count)
                zero = const(vt, 0.0)
                with em.loop_carried(e1, [zero] * (2 * nv), name="e", start=e0) as le:
                    accs = list(le.values)
                    pair = em.gep(decoded, b.mul(le.index, i64(2)), I32)
                    xrow = b.add(b.sext(em.load(pair, 0, I32), I64), c0)
                    v = em.splat(em.load(pair, 1, F32), lanes)
                    new = [
                        em.fma(v, load_part(em, xt, b.add(xrow, i64(j * lanes)), vt, widths[j]), accs[j])
                        for j in range(nv)
                    ]
                    le.next(accs[nv:] + new)  # two accumulator sets: more FMAs in flight
                sums = le.results
                exact = [b.fptosi(b.fadd(sums[j], sums[nv + j]), it) for j in range(nv)]
                lr.next([b.add(a, e) for a, e in zip(lr.values, exact)])
            for j, acc in enumerate(lr.results):
                store(rows.finish_row(acc, row), orig, b.add(c0, i64(j * lanes)), widths[j])

        tiles(em, m, chunk, columns, "mc")

    def block(blk: ir.Value, valid: int) -> None:
        with em.loop(valid, name="lane") as lane:
            one_row(blk, lane)

    full, rest = divmod(n, sp.GAP_LANES)
    if full:
        with em.loop(full, name="blk") as blk:
            block(blk, sp.GAP_LANES)
    if rest:
        block(i64(full), rest)


def _u8_as_f32(em: Emitter, lanes: int):
    """``load_row`` for transpose_in: u8 lanes loaded and converted to f32."""

    def load(em: Emitter, ptr: ir.Value, index: ir.Value, live: int) -> ir.Value:
        return em.b.uitofp(load_part(em, ptr, index, vec(I8, lanes), live), vec(F32, lanes))

    return load


def _sparse_i8(k: KernelContext) -> None:
    em, b = k.em, k.em.b
    p = product(k.op)
    _x_quant(k.op)
    _result_quant(k.op)
    x, out = k.args[0], k.out
    rows = _Rows(em, k.args[1])
    out_dt = k.result_type.dtype
    out_ty = storage_type(out_dt)
    if _uses_vector(p, k.target):
        xs = k.scratch
        for r in range(p.m):
            copy_padded(em, em.gep(x, i64(r * p.k), I8), xs, p.k, sp.GAP_WINDOW + 64, I8, 64)
            _emit_vector_gemv(k, rows, p.n, xs, em.gep(out, i64(r * p.n), out_ty))
        return
    if _uses_window(p, k.target):
        for r in range(p.m):
            _emit_window_i8(k, p, em.gep(x, i64(r * p.k), I8), em.gep(out, i64(r * p.n), out_ty))
        return
    lanes = lanes_of(k.target)
    decoded = k.scratch
    finish = _output(k)
    mpad = max(lanes, -(-p.block_columns // lanes) * lanes)  # a block of patches for a convolution
    xt = em.byte_offset(k.scratch, max(align_up((p.k + 1) * 8), 2560))

    def batched(xt: ir.Value, m: int, store, ld: int = mpad) -> None:
        if vector_decode(k.target):
            _emit_batched_slots(k, rows, p.n, xt, ld, p.k, m, decoded, store)
        else:
            _emit_batched(k, rows, p.n, xt, ld, m, decoded, lanes, store)

    if p.conv:
        hw = p.m
        zx = _x_quant(k.op).zero_point
        with em.loop(p.images, name="img") as img:
            xi = em.gep(x, b.mul(img, i64(p.x_image)), I8)
            yi = em.gep(out, b.mul(img, i64(p.n * hw)), out_ty)
            if p.patches is not None:
                ow = p.patches["ow"]

                def block(oy0: ir.Value, nrows: int, xi=xi, yi=yi) -> None:
                    # im2col, padding taps at the zero point (they decode to 0, as the folded offset assumes)
                    emit_patches(em, xi, p.patches, xt, mpad, I8, lambda v: b.uitofp(v, F32), float(zx), oy0, nrows)
                    p0 = b.mul(oy0, i64(ow))

                    def store_block(y: ir.Value, orig: ir.Value, c0: ir.Value, live: int) -> None:
                        store_part(em, finish(y), yi, b.add(b.mul(orig, i64(hw)), b.add(p0, c0)), live)

                    batched(xt, nrows * ow, store_block)

                tiles(em, p.patches["oh"], p.block_rows, block, "blk")
            else:
                # the image [C][H*W] is x^T already: only converted to f32 (rows padded to mpad)
                load = _u8_as_f32(em, lanes)

                def convert(r0: ir.Value, nr: int, xi=xi) -> None:
                    def cols(c0: ir.Value, nc: int) -> None:
                        v = load(em, xi, b.add(b.mul(r0, i64(hw)), c0), nc)
                        em.store(v, xt, b.add(b.mul(r0, i64(mpad)), c0))

                    tiles(em, hw, lanes, cols, "cc")

                tiles(em, p.k, 1, convert, "cr")

                def store_image(y: ir.Value, orig: ir.Value, c0: ir.Value, live: int, yi=yi) -> None:
                    store_part(em, finish(y), yi, b.add(b.mul(orig, i64(hw)), c0), live)

                batched(xt, hw, store_image)
        return
    yt = em.byte_offset(xt, align_up(p.k * mpad * 4))
    transpose_in(em, x, p.m, p.k, xt, mpad, lanes, _u8_as_f32(em, lanes))

    def store_t(y: ir.Value, orig: ir.Value, c0: ir.Value, live: int) -> None:
        store_part(em, y, yt, b.add(b.mul(orig, i64(mpad)), c0), live)

    batched(xt, p.m, store_t)
    transpose_out(em, yt, mpad, p.m, p.n, lanes, lambda y, i, live: store_part(em, finish(y), out, i, live))


def _gen(text: str) -> Callable[[KernelContext], None]:
    def gen(k: KernelContext) -> None:
        _sparse_i8(k)

    gen.__name__ = f"sparse_i8_{text.split()[0]}"
    gen.__doc__ = text
    return gen


_BIAS = "i32#quant|f32?"
_ENTRY = dict(
    result="u8#quant|i8#quant|f32", constant=(1, 2), pack=_pack_i8, scratch=_scratch_i8, epilogue=True, variant=_variant
)
kernel("linear", ("u8#quant", SPARSE_I8, _BIAS), **_ENTRY)(
    _gen("linear with a #csr/#nm int8 weight on u8 activations: compact gap layout, VBMI+VNNI at batch 1")
)
kernel("conv2d", ("u8#quant", SPARSE_I8, _BIAS), **_ENTRY)(
    _gen("conv2d with a #csr/#nm int8 weight on u8 activations: per image, im2col (unless 1x1), a batched product")
)
