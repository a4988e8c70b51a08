"""conv2d with bit-packed weights: XNOR/popcount for binary activations, decode + fp32
GEMM for float activations.

**Binary activations** (``b1 #binary`` input, binary or ternary weights): per image,
the input bits (IR layout: one slice per image, bit ``(c·H + y)·W + x``) are transposed
into the scratch as ``xt[group][y][x][CW]`` words, CW = ceil(channels per group / 64):
the channels of one pixel side by side, zero past the group's channels. The weights
are re-packed at compile time to the same tap-major order, ``[group][panel][tap][CW]
[planes][NR]`` (NR output channels per panel, as in the linear popcount kernel), so one
tap of one pixel is CW words of x against CW·NR words of weights and

    Σ_k s_w s_x over valid taps = cg·(valid taps) - 2·popcount(w XOR x)      (binary)
    Σ_k t_w s_x over valid taps = 2·popcount(nz & (sign XOR x)) - popcount(nz)  (ternary)

A tap outside the image is *zero padding* in the reference (it pads the decoded
input with 0.0), so it must contribute 0, not ±β: its words are masked out of the
popcounts and it is not counted as valid. The float epilogue is the linear kernel's:
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
    reads_alpha_at,
    slices,
    store_lanes,
    tail_mask,
    u64_lanes,
)
from mcir.codegen.kernels.conv import _conv, _scratch
from mcir.codegen.memory_plan import align_up
from mcir.codegen.target import Target
from mcir.ir import Op
from mcir.ops.nn import conv_out
from mcir.packed import pack_bits, unpack_bits, words


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

    def scratch_parts(self) -> list[int]:
        """Bytes of: transposed input bits, im2col bits, im2col masks, valid bits per pixel."""
        g = self.g
        cols = self.col_panels * (self.wk + 1) * self.nr * 8
        return [g.groups * g.h * g.w * g.cw * 8, cols, cols, self.col_panels * self.nr * 8]


def conv_plan(op: Op, target: Target) -> ConvPlan:
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


def emit_transpose(em: Emitter, src: ir.Value, g: Geometry, dst: ir.Value) -> None:
    """One image's bits, (c, y, x) order -> xt[group][y][x][CW] words (channels of a pixel together)."""
    b = em.b
    hw = g.h * g.w
    last_bits = g.cg - 64 * (g.cw - 1)
    with em.loop(g.groups, name="tg") as grp, em.loop(hw, name="tp") as p:
        out = b.mul(b.add(b.mul(grp, i64(hw)), p), i64(g.cw))
        for wd in range(g.cw):
            c0 = b.add(b.mul(grp, i64(g.cg)), i64(64 * wd))
            nbits = 64 if wd < g.cw - 1 else last_bits
            with em.loop_carried(nbits, [i64(0)], name="tc") as lp:
                bit = b.add(b.mul(b.add(c0, lp.index), i64(hw)), p)
                word = em.load(src, b.lshr(bit, i64(6)), I64)
                one = b.and_(b.lshr(word, b.and_(bit, i64(63))), i64(1))
                lp.next([b.or_(lp.values[0], b.shl(one, lp.index))])
            em.store(lp.results[0], dst, b.add(out, i64(wd)))


def emit_bit_im2col(em: Emitter, plan: ConvPlan, xt: ir.Value, cols: ir.Value, masks: ir.Value, kv: ir.Value) -> None:
    """Columns of one group: per output pixel, its taps' channel bits back to back (tap-major,
    K = taps·cg bits), the matching mask (ones where the tap is inside the image) and the
    number of valid bits. Pixels are laid out in panels of NR lanes; padding pixels stay zero."""
    b = em.b
    g = plan.g
    stride = plan.wk + 1  # words per pixel row, with the spill word
    total = plan.col_panels * stride * plan.nr
    with em.loop(total, name="cz") as i:  # zero: the rows are built with ORs
        em.store(i64(0), cols, i)
        em.store(i64(0), masks, i)
    with em.loop(plan.col_panels * plan.nr, name="kz") as i:
        em.store(i64(0), kv, i)
    last_bits = g.cg - 64 * (g.cw - 1)
    with em.loop(g.oh, name="cy") as oy, em.loop(g.ow, name="cx") as ox:
        p = b.add(b.mul(oy, i64(g.ow)), ox)
        row0 = b.add(b.mul(b.udiv(p, i64(plan.nr)), i64(stride * plan.nr)), b.urem(p, i64(plan.nr)))
        with em.loop_carried(g.taps, [i64(0)], name="ct") as lp:
            t = lp.index
            i, j = b.udiv(t, i64(g.kw)), b.urem(t, i64(g.kw))
            iy = b.add(b.mul(oy, i64(g.sh)), b.sub(b.mul(i, i64(g.dh)), i64(g.ph)))
            ix = b.add(b.mul(ox, i64(g.sw)), b.sub(b.mul(j, i64(g.dw)), i64(g.pw)))
            ok = b.and_(
                b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, i64(g.h))),
                b.and_(b.icmp_signed(">=", ix, i64(0)), b.icmp_signed("<", ix, i64(g.w))),
            )
            with b.if_then(ok):
                src = b.mul(b.add(b.mul(iy, i64(g.w)), ix), i64(g.cw))
                for wd in range(g.cw):
                    nbits = 64 if wd < g.cw - 1 else last_bits
                    off = b.add(b.mul(t, i64(g.cg)), i64(64 * wd))  # first bit of these channels in the row
                    at = b.add(row0, b.mul(b.lshr(off, i64(6)), i64(plan.nr)))
                    lo = b.and_(off, i64(63))
                    for dst, v in ((cols, em.load(xt, b.add(src, i64(wd)), I64)), (masks, i64(tail_mask(nbits)))):
                        # bits [lo, 64) of word `at`, the rest (if any) low in the next word; v >> (64 - lo)
                        # is written (v >> 1) >> (63 - lo) so that lo = 0 never shifts by 64
                        spill = b.lshr(b.lshr(v, i64(1)), b.sub(i64(63), lo))
                        em.store(b.or_(em.load(dst, at, I64), b.shl(v, lo)), dst, at)
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
        emit_transpose(em, em.gep(x, b.mul(n, i64(sample_words)), I64), g, xt)
        bd = b.fpext(em.load(beta, n, F32), F64)
        with em.loop(g.groups, name="grp") as grp:
            plane = em.gep(xt, b.mul(grp, i64(g.h * g.w * g.cw)), I64)
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
    kernel("conv2d", ("b1#binary", _w, "f32"), pack=_pack_xnor_conv, scratch=_xnor_scratch, epilogue=True)(_xnor_conv)
    kernel("conv2d", ("b1#binary", _w), pack=_pack_xnor_conv, scratch=_xnor_scratch, epilogue=True)(_xnor_conv)


# -- float activations: decode the weights, then the fp32 convolution ------------------------------


def _decoded_bytes(op: Op) -> int:
    return align_up(op.operands[1].type.numel * 4)


def _decode_scratch(op: Op, target: Target) -> int:
    return _decoded_bytes(op) + _scratch(op, target)


def _decode_conv(k: KernelContext) -> None:
    """Binary or ternary weights x float activations: weights decoded to f32 into scratch, fp32 conv."""
    need_constant_weight(k)
    w = k.op.operands[1]
    o, per = slices(w)
    planes = 1 if w.type.dtype.name == "b1" else 2
    emit_decode(k.em, k.args[1], o, per, planes, k.scratch)
    rest = _scratch(k.op, k.target)
    inner = k.em.byte_offset(k.scratch, _decoded_bytes(k.op)) if rest else None
    _conv(dataclasses.replace(k, args=[k.args[0], k.scratch, *k.args[2:]], scratch=inner))


for _w in ("b1#binary", "t2#ternary"):
    kernel("conv2d", ("f32", _w, "f32"), pack=_pack_canonical, scratch=_decode_scratch, epilogue=True)(_decode_conv)
    kernel("conv2d", ("f32", _w), pack=_pack_canonical, scratch=_decode_scratch, epilogue=True)(_decode_conv)
