"""conv2d with bit-packed weights: XNOR/popcount for binary activations, decode + fp32
GEMM for float activations.

**Binary activations** (``b1 #binary`` input, binary or ternary weights): per image,
the input bits (IR layout: one slice per image, bit ``(c·H + y)·W + x``) are transposed
into scratch as ``xt[group][CW][y·W + x]``: the bits of up to 64 channels of one pixel in
one word, CW = ceil(channels per group / 64). A *bit im2col* then writes, per output
pixel, its K = kh·kw·cg bits in tap-major order (i, j, c) back to back, a mask with ones
where the tap lies inside the image, and the number of valid bits, in panels of NR
pixels. The weights are re-packed at compile time to the same K order (``RowPanels`` of
MR output channels: no padding between taps, so they stay ~1/32 of f32). A popcount
GEMM with pixels in the vector lanes and weight words broadcast gives, per (o, pixel),

    Σ s_w s_x = valid - 2·popcount((w XOR x) AND m)                        (binary)
    Σ t_w s_x = 2·popcount(nz AND m AND (sign XOR x)) - popcount(nz AND m)   (ternary)

and the outputs of MR channels x NR pixels are contiguous NCHW stores.

A tap outside the image is *zero padding* in the reference (it pads the decoded
input with 0.0), so it must contribute 0, not ±β: the mask removes its bits from the
popcounts and from the valid count. The float epilogue is the linear kernel's:
``(α_o·β_n)·S + b_o`` in double, rounded once.

**Float activations** (binary or ternary weights): a convolution is compute bound and a
sign-select add costs the same as an FMA, so the weights are decoded at run time
(O·C·kh·kw floats, negligible next to the convolution's O·C·kh·kw·OH·OW MACs) into
scratch and the fp32 convolution (im2col + register-blocked GEMM, or direct for groups)
runs on them. The library still stores only the packed bits.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from mcir import dtypes
from mcir.codegen.emit import F32, F64, I64, Emitter, const, i64
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels.binary import (
    RowPanels,
    _pack_canonical,
    check_packed_operand,
    ctpop,
    emit_decode,
    need_constant_weight,
    panel_nv,
    part_offsets,
    planes_of,
    popcount_variant,
    reads_alpha_at,
    slices,
    store_lanes,
    tail_mask,
    u64_lanes,
)
from mcir.codegen.kernels.conv import _conv, _scratch
from mcir.codegen.memory_plan import align_up
from mcir.codegen.target import Target
from mcir.encodings.bits import pack_bits, unpack_bits, words
from mcir.ir import Op, Value
from mcir.ops.nn import conv_out
from mcir.types import TensorType


@dataclass(frozen=True)
class Geometry:
    """Shapes and attributes of one conv2d."""

    n: int
    c: int
    h: int
    w: int
    o: int
    cg: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    oh: int
    ow: int
    groups: int

    @property
    def og(self) -> int:
        return self.o // self.groups

    @property
    def cw(self) -> int:
        """u64 words holding one pixel's channels of one group."""
        return words(self.cg)

    @property
    def taps(self) -> int:
        return self.kh * self.kw


def geometry(op: Op) -> Geometry:
    """The shapes and attributes of conv2d ``op``."""
    n, c, h, w = op.operands[0].type.shape
    o, cg, kh, kw = op.operands[1].type.shape
    (sh, sw), (ph, pw), (dh, dw) = op.attrs["stride"], op.attrs["padding"], op.attrs["dilation"]
    oh, ow = conv_out(h, kh, sh, ph, dh), conv_out(w, kw, sw, pw, dw)
    return Geometry(n, c, h, w, o, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, op.attrs["groups"])


# -- binary activations: XNOR / popcount -----------------------------------------------------------


@dataclass(frozen=True)
class ConvPlan:
    """Blocking of a popcount convolution.

    Weights: per group, RowPanels of ``mr`` output channels over K = taps·cg bits in
    tap-major order. Columns (im2col): panels of ``nr = nv·lanes`` output pixels,
    ``[P/nr][Wk + 1][nr]`` u64 for the x bits and again for the valid-tap mask (the
    extra word per row absorbs the spill of the last tap's bits; it is never read).
    """

    g: Geometry
    lanes: int
    nv: int
    mr: int
    planes: int

    @property
    def k(self) -> int:
        return self.g.taps * self.g.cg

    @property
    def wk(self) -> int:
        return words(self.k)

    @property
    def nr(self) -> int:
        return self.nv * self.lanes

    @property
    def pixels(self) -> int:
        return self.g.oh * self.g.ow

    @property
    def col_panels(self) -> int:
        return math.ceil(self.pixels / self.nr)

    @property
    def weights(self) -> RowPanels:
        return RowPanels(self.g.og, self.k, self.mr, self.planes)

    @property
    def group_bytes(self) -> int:
        return align_up(self.weights.nbytes)

    @property
    def hw_padded(self) -> int:
        """Pixels per plane of the transposed input, rounded up to 64 (whole source words)."""
        return align_up(self.g.h * self.g.w, 64)

    def scratch_parts(self) -> list[int]:
        """Bytes of: transposed input bits, im2col bits, im2col masks, valid bits per pixel."""
        g = self.g
        cols = self.col_panels * (self.wk + 1) * self.nr * 8
        return [g.groups * g.cw * self.hw_padded * 8, cols, cols, self.col_panels * self.nr * 8]


def conv_plan(op: Op, target: Target) -> ConvPlan:
    """Blocking of popcount convolution ``op`` on ``target`` (pixel vectors and channel rows per tile)."""
    g = geometry(op)
    lanes = u64_lanes(target)
    planes = 1 if op.operands[1].type.dtype.name == "b1" else 2
    nv = panel_nv(g.oh * g.ow, lanes, target)
    # accumulators (mr·nv, twice for ternary) beside nv x and nv mask vectors
    budget = target.vector_registers - 2 * nv - 3
    mr = max(1, min(g.og, 4, budget // (nv * planes)))
    return ConvPlan(g, lanes, nv, mr, planes)


def tap_major(plane: np.ndarray, g: Geometry) -> np.ndarray:
    """[O, W] bits in (c, i, j) order -> [O, words(taps·cg)] bits in (i, j, c) order."""
    k = g.cg * g.taps
    bits = unpack_bits(plane, k).reshape(g.o, g.cg, g.kh, g.kw).transpose(0, 2, 3, 1)
    return pack_bits(bits.reshape(g.o, k))


def _pack_xnor_conv(op: Op, index: int, data, target: Target):
    if index != 1:
        return None
    plan = conv_plan(op, target)
    g = plan.g
    planes = [tap_major(p, g) for p in planes_of(data)]
    alpha = np.asarray(data["alpha"], np.float32)
    groups = []
    for i in range(g.groups):
        rows = slice(i * g.og, (i + 1) * g.og)
        packed = plan.weights.pack([p[rows] for p in planes], alpha[rows])
        groups.append(np.concatenate([packed, np.zeros(plan.group_bytes - len(packed), np.uint8)]))
    return f"xnor_conv:{plan.mr}", np.concatenate(groups)


def _xnor_scratch(op: Op, target: Target) -> int:
    return sum(align_up(n) for n in conv_plan(op, target).scratch_parts())


def emit_transpose(em: Emitter, src: ir.Value, g: Geometry, plan: ConvPlan, dst: ir.Value) -> None:
    """One image's bits, (c, y, x) order, to ``xt[group][CW][pixel]``: for each pixel, the
    bits of up to 64 channels of its group in one word.

    Per channel, 64 pixels at a time: one (funnel-shifted) source word is spread over 8
    vectors of 8 lanes (lane p gets bit p) and ORed into the channel's word position.
    """
    b = em.b
    hw, hwp = g.h * g.w, plan.hw_padded
    vt = ir.VectorType(I64, 8)
    total = g.c * hw  # bits in the image
    last_word = words(total) - 1
    with em.loop(g.groups * g.cw * hwp, name="tz") as i:
        em.store(i64(0), dst, i)
    fshr = em.intrinsic("llvm.fshr", [I64], I64, [I64, I64, I64])
    chunks, tail = divmod(hw, 64)
    with em.loop(g.c, name="tc") as c:
        cl = b.urem(c, i64(g.cg))
        plane = b.mul(b.add(b.mul(b.udiv(c, i64(g.cg)), i64(g.cw)), b.lshr(cl, i64(6))), i64(hwp))
        bit = b.and_(cl, i64(63))

        def chunk(q: ir.Value, valid: int) -> None:
            start = b.add(b.mul(c, i64(hw)), b.mul(q, i64(64)))
            w0 = b.lshr(start, i64(6))
            w1 = b.add(w0, i64(1))
            w1 = b.select(b.icmp_unsigned("<=", w1, i64(last_word)), w1, w0)  # stay inside the image
            word = b.call(fshr, [em.load(src, w1, I64), em.load(src, w0, I64), b.and_(start, i64(63))])
            if valid < 64:
                word = b.and_(word, i64(tail_mask(valid)))  # the rest belongs to the next channel
            spread = em.splat(word, 8)
            base = b.add(plane, b.mul(q, i64(64)))
            for j in range(8):
                lane_bits = b.and_(
                    b.lshr(spread, ir.Constant(vt, [ir.Constant(I64, 8 * j + ln) for ln in range(8)])), const(vt, 1)
                )
                at = b.add(base, i64(8 * j))
                em.store(b.or_(em.load(dst, at, vt), b.shl(lane_bits, em.splat(bit, 8))), dst, at)

        if chunks:
            with em.loop(chunks, name="tq") as q:
                chunk(q, 64)
        if tail:
            chunk(i64(chunks), tail)


def emit_bit_im2col(em: Emitter, plan: ConvPlan, xt: ir.Value, cols: ir.Value, masks: ir.Value, kv: ir.Value) -> None:
    """Columns of one group: per output pixel, its taps' channel bits back to back (tap-major,
    K = taps·cg bits), the matching mask (ones where the tap is inside the image) and the
    number of valid bits, in panels of NR pixels (lanes of padding pixels are never stored).

    Small kernels (taps·CW <= 64) build each pixel's row in registers with static shifts;
    larger ones OR the taps into zeroed memory."""
    g = plan.g
    if g.taps * g.cw <= 64:
        _im2col_registers(em, plan, xt, cols, masks, kv)
    else:
        _im2col_memory(em, plan, xt, cols, masks, kv)


def _tap_inside(em: Emitter, g: Geometry, oy: ir.Value, ox: ir.Value, i, j) -> tuple[ir.Value, ir.Value]:
    """(inside the image, pixel index clamped to 0 when outside) of tap (i, j) for output (oy, ox)."""
    b = em.b
    iy = b.add(
        b.mul(oy, i64(g.sh)), b.sub(b.mul(i, i64(g.dh)), i64(g.ph)) if isinstance(i, ir.Value) else i64(i * g.dh - g.ph)
    )
    ix = b.add(
        b.mul(ox, i64(g.sw)), b.sub(b.mul(j, i64(g.dw)), i64(g.pw)) if isinstance(j, ir.Value) else i64(j * g.dw - g.pw)
    )
    ok = b.and_(
        b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, i64(g.h))),
        b.and_(b.icmp_signed(">=", ix, i64(0)), b.icmp_signed("<", ix, i64(g.w))),
    )
    return ok, b.select(ok, b.add(b.mul(iy, i64(g.w)), ix), i64(0))


def interior(n_out: int, size: int, k: int, stride: int, pad: int, dil: int) -> tuple[int, int]:
    """[lo, hi): the outputs along one axis whose every tap lies inside the image."""
    lo = min(n_out, -(-pad // stride))
    hi = (size - 1 + pad - (k - 1) * dil) // stride + 1
    return lo, max(lo, min(hi, n_out))


def _im2col_registers(em: Emitter, plan: ConvPlan, xt: ir.Value, cols: ir.Value, masks: ir.Value, kv: ir.Value) -> None:
    b = em.b
    g = plan.g
    stride = plan.wk + 1
    last_bits = g.cg - 64 * (g.cw - 1)
    true = ir.Constant(ir.IntType(1), 1)

    def pixel(oy: ir.Value, ox: ir.Value, checked: bool) -> None:
        """One pixel's row; unchecked pixels are interior: every tap is inside, the mask is
        all ones (constants LLVM folds) and no tap needs a bounds test."""
        p = b.add(b.mul(oy, i64(g.ow)), ox)
        row0 = b.add(b.mul(b.udiv(p, i64(plan.nr)), i64(stride * plan.nr)), b.urem(p, i64(plan.nr)))
        xw = [i64(0)] * plan.wk
        mw = [i64(0)] * plan.wk
        valid = i64(0)
        for t in range(g.taps):
            i, j = divmod(t, g.kw)
            if checked:
                ok, pix = _tap_inside(em, g, oy, ox, i, j)
            else:
                iy = b.add(b.mul(oy, i64(g.sh)), i64(i * g.dh - g.ph))
                ix = b.add(b.mul(ox, i64(g.sw)), i64(j * g.dw - g.pw))
                ok, pix = true, b.add(b.mul(iy, i64(g.w)), ix)
            for wd in range(g.cw):
                v = b.select(ok, em.load(xt, b.add(pix, i64(wd * plan.hw_padded)), I64), i64(0))
                m = b.select(ok, i64(tail_mask(64 if wd < g.cw - 1 else last_bits)), i64(0))
                idx, lo = divmod(t * g.cg + 64 * wd, 64)
                xw[idx] = b.or_(xw[idx], b.shl(v, i64(lo)))
                mw[idx] = b.or_(mw[idx], b.shl(m, i64(lo)))
                if lo and idx + 1 < plan.wk:  # the bits that spill into the next word
                    xw[idx + 1] = b.or_(xw[idx + 1], b.lshr(v, i64(64 - lo)))
                    mw[idx + 1] = b.or_(mw[idx + 1], b.lshr(m, i64(64 - lo)))
            valid = b.add(valid, b.zext(ok, I64))
        for w in range(plan.wk):
            at = b.add(row0, i64(w * plan.nr))
            em.store(xw[w], cols, at)
            em.store(mw[w], masks, at)
        em.store(b.mul(valid, i64(g.cg)), kv, p)

    y_lo, y_hi = interior(g.oh, g.h, g.kh, g.sh, g.ph, g.dh)
    x_lo, x_hi = interior(g.ow, g.w, g.kw, g.sw, g.pw, g.dw)

    def spans(lo: int, hi: int, n: int) -> list[tuple[int, int, bool]]:
        return [(a, c, chk) for a, c, chk in ((0, lo, True), (lo, hi, False), (hi, n, True)) if c > a]

    for y0, y1, y_checked in spans(y_lo, y_hi, g.oh):
        with em.loop(y1, name="cy", start=y0) as oy:
            for x0, x1, x_checked in spans(x_lo, x_hi, g.ow):
                with em.loop(x1, name="cx", start=x0) as ox:
                    pixel(oy, ox, y_checked or x_checked)


def _im2col_memory(em: Emitter, plan: ConvPlan, xt: ir.Value, cols: ir.Value, masks: ir.Value, kv: ir.Value) -> None:
    b = em.b
    g = plan.g
    stride = plan.wk + 1  # words per pixel row, with a spill word
    total = plan.col_panels * stride * plan.nr
    with em.loop(total, name="cz") as i:  # zero: the rows are built with ORs
        em.store(i64(0), cols, i)
        em.store(i64(0), masks, i)
    last_bits = g.cg - 64 * (g.cw - 1)
    with em.loop(g.oh, name="cy") as oy, em.loop(g.ow, name="cx") as ox:
        p = b.add(b.mul(oy, i64(g.ow)), ox)
        row0 = b.add(b.mul(b.udiv(p, i64(plan.nr)), i64(stride * plan.nr)), b.urem(p, i64(plan.nr)))
        with em.loop_carried(g.taps, [i64(0)], name="ct") as lp:
            t = lp.index
            ok, pix = _tap_inside(em, g, oy, ox, b.udiv(t, i64(g.kw)), b.urem(t, i64(g.kw)))
            with b.if_then(ok):
                for wd in range(g.cw):
                    nbits = 64 if wd < g.cw - 1 else last_bits
                    off = b.add(b.mul(t, i64(g.cg)), i64(64 * wd))  # first bit of these channels in the row
                    at = b.add(row0, b.mul(b.lshr(off, i64(6)), i64(plan.nr)))
                    lo = b.and_(off, i64(63))
                    v = em.load(xt, b.add(pix, i64(wd * plan.hw_padded)), I64)
                    for dst, val in ((cols, v), (masks, i64(tail_mask(nbits)))):
                        # bits [lo, 64) of word `at`, the rest (if any) low in the next word; val >> (64 - lo)
                        # is written (val >> 1) >> (63 - lo) so that lo = 0 never shifts by 64
                        spill = b.lshr(b.lshr(val, i64(1)), b.sub(i64(63), lo))
                        em.store(b.or_(em.load(dst, at, I64), b.shl(val, lo)), dst, at)
                        nxt = b.add(at, i64(plan.nr))
                        em.store(b.or_(em.load(dst, nxt, I64), spill), dst, nxt)
            lp.next([b.add(lp.values[0], b.zext(ok, I64))])
        em.store(b.mul(lp.results[0], i64(g.cg)), kv, p)


def _xnor_conv(k: KernelContext) -> None:
    """Binary or ternary weights x binary activations: bit im2col + popcount GEMM, padding masked."""
    need_constant_weight(k)
    check_packed_operand(k.op, k.op.operands[0])
    em, b = k.em, k.em.b
    plan = conv_plan(k.op, k.target)
    g, rp = plan.g, plan.weights
    x, wts = k.args[0], k.args[1]
    _, per = slices(k.op.operands[0])
    sample_words = words(per)
    beta = em.byte_offset(x, reads_alpha_at(g.n * sample_words))
    bias = k.args[2] if len(k.args) > 2 else None
    offs = part_offsets(*plan.scratch_parts())
    xt, cols, masks, kv = (em.byte_offset(k.scratch, o) for o in offs)
    vt = ir.VectorType(I64, plan.lanes)
    dv = ir.VectorType(F64, plan.lanes)
    fv = ir.VectorType(F32, plan.lanes)
    pix = plan.pixels
    stride = plan.wk + 1

    def tile(n, grp, o_panel, rows_p: int, c_panel, nv: int, last_lanes: int, bd) -> None:
        """rows_p output channels x nv pixel vectors of one image."""
        wg = em.byte_offset(wts, b.mul(grp, i64(plan.group_bytes)))
        sec_b, alpha = em.byte_offset(wg, rp.offsets[1]), em.byte_offset(wg, rp.offsets[2])
        cp = b.mul(c_panel, i64(stride * plan.nr))
        lanes_of = [plan.lanes if v < nv - 1 else last_lanes for v in range(nv)]

        def combine(kw: ir.Value, wwords: list[list[ir.Value]], accs: list[ir.Value]) -> list[ir.Value]:
            at = b.add(cp, b.mul(kw, i64(plan.nr)))
            xs = [em.load(cols, b.add(at, i64(v * plan.lanes)), vt) for v in range(nv)]
            ms = [em.load(masks, b.add(at, i64(v * plan.lanes)), vt) for v in range(nv)]
            out = list(accs)
            n_acc = rows_p * nv
            for r in range(rows_p):
                ws = [em.splat(wwords[p][r], plan.lanes) for p in range(plan.planes)]
                for v in range(nv):
                    a = r * nv + v
                    if plan.planes == 1:
                        out[a] = b.add(out[a], ctpop(em, b.and_(b.xor(ws[0], xs[v]), ms[v])))
                    else:
                        nz = b.and_(ws[0], ms[v])
                        out[a] = b.add(out[a], ctpop(em, b.and_(nz, b.xor(ws[1], xs[v]))))
                        out[n_acc + a] = b.add(out[n_acc + a], ctpop(em, nz))
            return out

        def step(kw: ir.Value, accs: list[ir.Value]) -> list[ir.Value]:
            wwords = [
                [em.load(wg, rp.a_index(em, o_panel, kw, p, r, rows_p), I64) for r in range(rows_p)]
                for p in range(plan.planes)
            ]
            return combine(kw, wwords, accs)

        accs = [const(vt, 0)] * (rows_p * nv * plan.planes)
        if rp.wf:
            with em.loop_carried(rp.wf, accs, name="kw") as lp:
                lp.next(step(lp.index, list(lp.values)))
            accs = list(lp.results)
        if rp.tail_bits:
            nt = ir.IntType(rp.tail_bits)
            wwords = [
                [
                    b.zext(
                        em.load(
                            em.byte_offset(sec_b, b.mul(rp.b_index(em, o_panel, p, r, rows_p), i64(rp.tail_bits // 8))),
                            0,
                            nt,
                        ),
                        I64,
                    )
                    for r in range(rows_p)
                ]
                for p in range(plan.planes)
            ]
            accs = combine(i64(rp.wf), wwords, accs)

        ch0 = b.add(b.mul(grp, i64(g.og)), b.mul(o_panel, i64(plan.mr)))
        p0 = b.mul(c_panel, i64(plan.nr))
        n_acc = rows_p * nv
        for r in range(rows_p):
            o_local = b.add(b.mul(o_panel, i64(plan.mr)), i64(r))
            scale = em.splat(b.fmul(b.fpext(em.load(alpha, o_local, F32), F64), bd), plan.lanes)
            bias_r = em.splat(b.fpext(em.load(bias, b.add(ch0, i64(r)), F32), F64), plan.lanes) if bias else None
            out_row = b.mul(b.add(b.mul(n, i64(g.o)), b.add(ch0, i64(r))), i64(pix))
            for v in range(nv):
                c = accs[r * nv + v]
                if plan.planes == 1:  # valid bits - 2·mismatches
                    kvalid = em.load(kv, b.add(p0, i64(v * plan.lanes)), vt)
                    s = b.sub(kvalid, b.shl(c, const(vt, 1)))
                else:
                    s = b.sub(b.shl(c, const(vt, 1)), accs[n_acc + r * nv + v])
                y = b.fmul(b.sitofp(s, dv), scale)
                if bias_r is not None:
                    y = b.fadd(y, bias_r)
                y = k.apply_epilogue(b.fptrunc(y, fv))
                store_lanes(em, y, k.out, b.add(out_row, b.add(p0, i64(v * plan.lanes))), lanes_of[v])

    c_full, c_tail = divmod(pix, plan.nr)
    with em.loop(g.n, name="img") as n:
        emit_transpose(em, em.gep(x, b.mul(n, i64(sample_words)), I64), g, plan, xt)
        bd = b.fpext(em.load(beta, n, F32), F64)
        with em.loop(g.groups, name="grp") as grp:
            plane = em.gep(xt, b.mul(grp, i64(g.cw * plan.hw_padded)), I64)
            emit_bit_im2col(em, plan, plane, cols, masks, kv)

            def pixels(c_panel, nv: int, last_lanes: int, n=n, grp=grp, bd=bd) -> None:
                # pixel panels outer, channel tiles inner: the panel's columns stay in L1 across every channel
                if rp.full_panels:
                    with em.loop(rp.full_panels, name="op") as op_:
                        tile(n, grp, op_, plan.mr, c_panel, nv, last_lanes, bd)
                if rp.tail_rows:
                    tile(n, grp, i64(rp.full_panels), rp.tail_rows, c_panel, nv, last_lanes, bd)

            if c_full:
                with em.loop(c_full, name="cpn") as cpn:
                    pixels(cpn, plan.nv, plan.lanes)
            if c_tail:
                nv_t = math.ceil(c_tail / plan.lanes)
                pixels(i64(c_full), nv_t, c_tail - (nv_t - 1) * plan.lanes)


for _w in ("b1#binary", "t2#ternary"):
    kernel(
        "conv2d",
        ("b1#binary", _w, "f32?"),
        constant=(1,),
        variant=popcount_variant,
        pack=_pack_xnor_conv,
        scratch=_xnor_scratch,
        epilogue=True,
    )(_xnor_conv)


# -- float activations: decode the weights, then the fp32 convolution ------------------------------


def _decoded_bytes(op: Op) -> int:
    return align_up(op.operands[1].type.numel * 4)


def _as_float_conv(op: Op) -> Op:
    """The same convolution with an f32 weight computed at run time (the decoded one).

    A detached op (never inserted in the graph, so no use lists change): the fp32 kernel
    reads its weight row-major from a pointer, as it does for any run-time weight,
    instead of expecting its own compile-time packing of a constant.
    """
    w = op.operands[1]
    decoded = Value(f"{w.name}.decoded", TensorType(w.type.shape, dtypes.f32))
    operands = [op.operands[0], decoded, *op.operands[2:]]
    return Op(op.name, operands, op.attrs, op.result.name, op.result.type, loc=op.loc)


def _decode_scratch(op: Op, target: Target) -> int:
    return _decoded_bytes(op) + _scratch(_as_float_conv(op), target)


def _decode_conv(k: KernelContext) -> None:
    """Binary or ternary weights x float activations: weights decoded to f32 into scratch, fp32 conv."""
    need_constant_weight(k)
    w = k.op.operands[1]
    o, per = slices(w)
    planes = 1 if w.type.dtype.name == "b1" else 2
    emit_decode(k.em, k.args[1], o, per, planes, k.scratch)
    float_op = _as_float_conv(k.op)
    rest = _scratch(float_op, k.target)
    inner = k.em.byte_offset(k.scratch, _decoded_bytes(k.op)) if rest else None
    _conv(dataclasses.replace(k, op=float_op, args=[k.args[0], k.scratch, *k.args[2:]], scratch=inner))


for _w in ("b1#binary", "t2#ternary"):
    kernel(
        "conv2d",
        ("f32", _w, "f32?"),
        constant=(1,),
        pack=_pack_canonical,
        scratch=_decode_scratch,
        epilogue=True,
    )(_decode_conv)
