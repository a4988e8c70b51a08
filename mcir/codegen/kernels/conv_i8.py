"""INT8 2-D convolution on u8 activations and int8 weights (any stride, padding,
dilation and groups), with the zero-point correction, bias and requantisation fused.

Padding in the u8 domain is the zero point (the real value 0), so every image is first
copied into a scratch buffer with a border of ``z_x``; after that no kernel loop checks
bounds, and the zero-point correction ``-z_x * sum w`` is exact for every output.

``groups == 1``: im2col + the int8 GEMM of ``gemm_i8`` with the *weights as A* (each
K group of a weight row broadcast) and the *pixels as B columns*, so the accumulators
of one micro-tile are output channels x consecutive pixels and the result lands in NCHW
directly. K runs over ``(tap i, tap j, channel)`` with the channels padded to a multiple
of the dot group G, so the G bytes one int32 lane sums are G consecutive channels at
one tap: im2col gathers them from G planes and writes one G-byte word per pixel into the
panel layout ``[pixel panel][K group][NR][G]`` the micro-kernel streams. The weights
are reordered and padded the same way at compile time.

``groups > 1`` (depthwise, grouped): a direct loop nest accumulating a row of int32
outputs per output channel, tap by tap (the inner loop over output columns vectorises),
then requantised.

Threads: a batch is split by images through the parallel hook, each task with its own copy
of the scratch (padded image, im2col columns or accumulator row; ``SLOTS`` copies when the
op is large enough to split); a single image's GEMM is split by pixel panels after its
im2col (on the calling thread), and a single image of a grouped convolution by output
channels. Every output element is computed by the same instructions for any split.
"""

from __future__ import annotations

import math

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, I8, I16, I32, Emitter, i64
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels.gemm_i8 import (
    INT8_RESULT,
    IntGemm,
    IntTiling,
    activation_quant,
    choose_tiling,
    dot_isa,
    emit_gemm,
    isa_name,
    pack_weights_and_table,
    panel_bytes,
    requantize,
    result_requant,
    table_pointer,
    widen_a,
    widened_bytes,
)
from mcir.codegen.memory_plan import align_up
from mcir.codegen.parallel import MIN_PARALLEL_MACS, parallel_for
from mcir.codegen.target import Target
from mcir.ir import Op
from mcir.ops.nn import conv_out


class _Geom:
    """Shapes of one convolution and of its scratch buffers."""

    def __init__(self, op: Op, target: Target) -> None:
        self.n, self.c, self.h, self.w = op.operands[0].type.shape
        self.o, self.cg, self.kh, self.kw = op.operands[1].type.shape
        (self.sh, self.sw), (self.ph, self.pw), (self.dh, self.dw) = (
            op.attrs["stride"],
            op.attrs["padding"],
            op.attrs["dilation"],
        )
        self.groups = op.attrs["groups"]
        self.oh = conv_out(self.h, self.kh, self.sh, self.ph, self.dh)
        self.ow = conv_out(self.w, self.kw, self.sw, self.pw, self.dw)
        self.pix = self.oh * self.ow
        self.hp, self.wp = self.h + 2 * self.ph, self.w + 2 * self.pw
        if self.groups == 1:
            self.isa = dot_isa(target, a_signed=True, b_signed=False)
            g = self.isa.group
            self.cp = math.ceil(self.c / g) * g  # channels padded to whole dot groups
            self.kp = self.kh * self.kw * self.cp
            self.tiling: IntTiling | None = choose_tiling(self.o, self.pix, self.isa, target)
        else:
            self.cp = self.c
            self.kp = self.cg * self.kh * self.kw
            self.tiling = None
        # a padded copy is needed unless the image can be read in place as it is
        self.copy = bool(self.ph or self.pw or self.cp != self.c)
        self.padded_bytes = align_up(self.cp * self.hp * self.wp) if self.copy else 0

    def scratch(self) -> int:
        if self.groups == 1:
            t = self.tiling
            cols = align_up(panel_bytes(self.pix, self.kp, t.nr, t.isa.group))
            return self.padded_bytes + cols + widened_bytes(self.o, self.kp, t.isa)
        return self.padded_bytes + align_up(4 * self.ow)


# Scratch copies for concurrent tasks: at most this many tasks split one op's images
SLOTS = 8


def _macs(g: _Geom) -> int:
    return g.n * g.o * g.pix * (g.kp if g.groups == 1 else g.cg * g.kh * g.kw)


def _slots(g: _Geom) -> int:
    """Scratch copies: one per task when a batch of images is split, else one."""
    return min(SLOTS, g.n) if g.n > 1 and _macs(g) >= MIN_PARALLEL_MACS else 1


def _pack(op: Op, index: int, data, target: Target):
    g = _Geom(op, target)

    def reorder(w: np.ndarray) -> np.ndarray:
        """[O, cg*kh*kw] in (c, i, j) order -> the GEMM's A rows [O, Kp] in (i, j, c) order, C padded."""
        if g.groups != 1:
            return w
        a = np.zeros((g.o, g.kh, g.kw, g.cp), np.int8)
        a[..., : g.c] = w.reshape(g.o, g.c, g.kh, g.kw).transpose(0, 2, 3, 1)
        return a.reshape(g.o, g.kp)

    layout = f"i8conv:{g.isa.key}:cp{g.cp}" if g.groups == 1 else "i8dconv"
    return pack_weights_and_table(op, index, data, layout, reorder, g.o)


def _pad_image(em: Emitter, g: _Geom, x: ir.Value, dst: ir.Value, fill: int) -> None:
    """dst[c, y, x] (c < Cp, padded H/W) = the image with a border (and extra channels) of ``fill``."""
    b = em.b
    with em.loop(g.cp * g.hp * g.wp, name="fill") as i:
        em.store(ir.Constant(I8, fill), dst, i)
    with em.loop(g.c, name="pc") as c, em.loop(g.h, name="py") as y:
        src = b.mul(b.add(b.mul(c, i64(g.h)), y), i64(g.w))
        row = b.add(b.mul(b.add(b.mul(c, i64(g.hp)), b.add(y, i64(g.ph))), i64(g.wp)), i64(g.pw))
        with em.loop(g.w, name="px") as xx:
            em.store(em.load(x, b.add(src, xx), I8), dst, b.add(row, xx))


def _im2col(em: Emitter, g: _Geom, xp: ir.Value, cols: ir.Value) -> None:
    """cols[pixel panel][K group][NR][G] for K = (i, j, c): G channels of one tap per word."""
    b = em.b
    t = g.tiling
    grp = t.isa.group
    nr = t.nr
    cgroups = g.cp // grp
    kg_total = g.kh * g.kw * cgroups
    panel_stride = kg_total * nr * grp
    plane = g.hp * g.wp
    word = {4: I32, 2: I16, 1: I8}[grp]
    rows_fit = nr % g.ow == 0  # every output row lies inside one panel: contiguous words per row

    def gather(src: ir.Value) -> ir.Value:
        """The G channel bytes at ``src``, ``src + plane``, ... as one little-endian word."""
        if grp == 1:
            return em.load(xp, src, I8)
        acc = None
        for u in range(grp):
            v = b.zext(em.load(xp, b.add(src, i64(u * plane)), I8), word)
            v = v if u == 0 else b.shl(v, ir.Constant(word, 8 * u))
            acc = v if acc is None else b.or_(acc, v)
        return acc

    with em.loop(g.kh, name="ti") as i, em.loop(g.kw, name="tj") as j, em.loop(cgroups, name="cgp") as cq:
        kg = b.add(b.mul(b.add(b.mul(i, i64(g.kw)), j), i64(cgroups)), cq)
        kg_off = b.mul(kg, i64(nr * grp))
        chan = b.mul(b.mul(cq, i64(grp)), i64(plane))
        tap = b.add(b.mul(i, i64(g.dh * g.wp)), b.mul(j, i64(g.dw)))
        with em.loop(g.oh, name="oy") as oy:
            src_row = b.add(b.add(chan, tap), b.mul(oy, i64(g.sh * g.wp)))
            if rows_fit:
                p0 = b.mul(oy, i64(g.ow))
                base = b.add(
                    b.add(b.mul(b.udiv(p0, i64(nr)), i64(panel_stride)), kg_off), b.mul(b.urem(p0, i64(nr)), i64(grp))
                )
                for c0 in range(0, g.ow, _CHUNK):
                    w = min(_CHUNK, g.ow - c0)
                    dst = em.byte_offset(cols, b.add(base, i64(c0 * grp)))
                    _interleave_row(em, xp, b.add(src_row, i64(c0 * g.sw)), plane, w, g.sw, grp, dst)
            else:
                with em.loop(g.ow, name="ox") as ox:
                    p = b.add(b.mul(oy, i64(g.ow)), ox)
                    dst = b.add(
                        b.add(b.mul(b.udiv(p, i64(nr)), i64(panel_stride)), kg_off), b.mul(b.urem(p, i64(nr)), i64(grp))
                    )
                    v = gather(b.add(src_row, b.mul(ox, i64(g.sw))))
                    b.store(v, em.byte_offset(cols, dst), align=1)


_CHUNK = 16  # output pixels per vector step of im2col (one 64-byte store of 4-byte words)


def _interleave_row(
    em: Emitter, xp: ir.Value, src: ir.Value, plane: int, w: int, sw: int, grp: int, dst: ir.Value
) -> None:
    """Words of G channel bytes for ``w`` consecutive output pixels, as vectors.

    Each channel plane contributes one load covering the pixels' input bytes (every
    ``sw``-th byte is used; the load ends at the last one, so it never reads past the
    row); one shuffle interleaves the G rows into ``[pixel][channel]`` words.
    """
    b = em.b
    span = (w - 1) * sw + 1
    rows = []
    for u in range(grp):
        v = b.load(em.byte_offset(xp, b.add(src, i64(u * plane))), typ=ir.VectorType(I8, span), align=1)
        if sw != 1 or span != w:
            v = b.shuffle_vector(
                v, ir.Constant(v.type, None), ir.Constant(ir.VectorType(I32, w), [p * sw for p in range(w)])
            )
        rows.append(v)
    # concatenate the G rows, then interleave: out[p * G + u] = rows[u][p]
    while len(rows) > 1:
        n = rows[0].type.count
        mask = ir.Constant(ir.VectorType(I32, 2 * n), list(range(2 * n)))
        rows = [b.shuffle_vector(rows[i], rows[i + 1], mask) for i in range(0, len(rows), 2)]
    flat = rows[0]
    if grp > 1:
        order = [u * w + p for p in range(w) for u in range(grp)]
        flat = b.shuffle_vector(flat, ir.Constant(flat.type, None), ir.Constant(ir.VectorType(I32, w * grp), order))
    b.store(flat, dst, align=1)


def _conv_gemm(k: KernelContext, g: _Geom) -> None:
    em = k.em
    t = g.tiling
    xq = activation_quant(k.op)
    rq = result_requant(k.op)
    out_size = 4 if rq.out == "f32" else 1
    slot_bytes = g.scratch()
    table = table_pointer(k, g.o * g.kp)

    def gemm(out: ir.Value, cols: ir.Value, a: ir.Value, table: ir.Value) -> IntGemm:
        return IntGemm(
            g.o, g.pix, g.kp, a, a_rs, True, cols, False, out, g.pix, table, g.o, rq,
            per_row=True, a_kpad=True, epilogue=k.epilogue, a_wide=wide,
        )  # fmt: skip

    a, a_rs, wide = k.args[1], g.kp, False
    if t.isa.kind == "madd":  # the weights widened to int16 once per call (in slot 0), for every image
        dst = em.byte_offset(k.scratch, g.padded_bytes + align_up(panel_bytes(g.pix, g.kp, t.nr, t.isa.group)))
        w = widen_a(em, gemm(k.out, k.scratch, a, table), dst)
        a, a_rs, wide = w.a, w.a_rs, True
    macs = _macs(g)

    def out_of(em: Emitter, out: ir.Value, n: ir.Value) -> ir.Value:
        return em.byte_offset(out, em.b.mul(n, i64(g.o * g.pix * out_size)))

    if g.n == 1 and macs >= MIN_PARALLEL_MACS:
        # one image: im2col here, then its GEMM split by pixel panels
        cols = em.byte_offset(k.scratch, g.padded_bytes)
        _im2col(em, g, _image(em, g, k.args[0], i64(0), k.scratch, xq.zero_point), cols)

        def panels(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
            emit_gemm(em, gemm(p[2], p[1], p[0], p[3]), t, (lo, hi))

        parallel_for(em, "conv_i8_panels", math.ceil(g.pix / t.nr), macs, [a, cols, k.out, table], panels)
        return

    def images(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value, slot: ir.Value) -> None:
        """Images ``[lo, hi)`` in scratch copy ``slot``."""
        x, a, table, out, scratch = p
        base = em.byte_offset(scratch, em.b.mul(slot, i64(slot_bytes)))
        cols = em.byte_offset(base, g.padded_bytes)
        with em.loop(hi, name="img", start=lo) as n:
            _im2col(em, g, _image(em, g, x, n, base, xq.zero_point), cols)
            emit_gemm(em, gemm(out_of(em, out, n), cols, a, table), t)

    parallel_for(em, "conv_i8", g.n, macs, [k.args[0], a, table, k.out, k.scratch], images, slots=_slots(g))


def _image(em: Emitter, g: _Geom, x: ir.Value, n: ir.Value, xp_buf: ir.Value, zero_point: int) -> ir.Value:
    """Image ``n`` of the input ``x``, copied into ``xp_buf`` with zero-point padding when the geometry needs it."""
    x = em.byte_offset(x, em.b.mul(n, i64(g.c * g.h * g.w)))
    if not g.copy:
        return x
    _pad_image(em, g, x, xp_buf, zero_point)
    return xp_buf


def _conv_direct(k: KernelContext, g: _Geom) -> None:
    """Grouped/depthwise: int32 row accumulators, one tap at a time, then the epilogue."""
    xq = activation_quant(k.op)
    rq = result_requant(k.op)
    og = g.o // g.groups
    taps = g.kh * g.kw
    slot_bytes = g.scratch()
    table = table_pointer(k, g.o * g.kp)

    def channels(em: Emitter, xp: ir.Value, w: ir.Value, table: ir.Value, out: ir.Value, acc_row, n, lo, hi) -> None:
        """Output channels ``[lo, hi)`` of image ``n`` (already padded into ``xp``)."""
        b = em.b
        offsets, scales, shifts = (em.byte_offset(table, 4 * g.o * i) for i in range(3))
        with em.loop(hi, name="oc", start=lo) as o:
            grp = b.udiv(o, i64(og))
            off0 = em.load(offsets, o, I32)
            out_base = b.mul(b.add(b.mul(n, i64(g.o)), o), i64(g.pix))
            with em.loop(g.oh, name="oy") as oy:
                with em.loop(g.ow, name="ai") as ox:
                    em.store(off0, acc_row, ox)
                with em.loop(g.cg, name="cc") as cc:
                    ch = b.add(b.mul(grp, i64(g.cg)), cc)
                    src_row = b.add(b.mul(ch, i64(g.hp * g.wp)), b.mul(oy, i64(g.sh * g.wp)))
                    wrow = b.add(b.mul(o, i64(g.kp)), b.mul(cc, i64(taps)))
                    for ti in range(g.kh):
                        for tj in range(g.kw):
                            wv = b.sext(em.load(w, b.add(wrow, i64(ti * g.kw + tj)), I8), I32)
                            src = b.add(src_row, i64(ti * g.dh * g.wp + tj * g.dw))
                            with em.loop(g.ow, name="ax") as ox:
                                xv = b.zext(em.load(xp, b.add(src, b.mul(ox, i64(g.sw))), I8), I32)
                                prev = em.load(acc_row, ox, I32)
                                em.store(b.add(prev, b.mul(xv, wv)), acc_row, ox)
                row_out = b.add(out_base, b.mul(oy, i64(g.ow)))
                with em.loop(g.ow, name="ex") as ox:
                    acc = em.load(acc_row, ox, I32)
                    if rq.out == "f32":
                        y = b.fmul(b.sitofp(acc, F32), em.load(scales, o, F32))
                        y = y if k.epilogue is None else k.epilogue(em, y)
                    else:
                        y = requantize(em, acc, em.load(scales, o, I32), em.load(shifts, o, I32), rq)
                    em.store(y, out, b.add(row_out, ox))

    macs = _macs(g)
    if g.n == 1 and macs >= MIN_PARALLEL_MACS:
        # one image: padded here, its output channels split, each task with its own accumulator row
        xp = _image(k.em, g, k.args[0], i64(0), k.scratch, xq.zero_point)
        rows = k.em.byte_offset(k.scratch, g.padded_bytes)  # SLOTS accumulator rows (see _scratch)

        def split(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value, slot: ir.Value) -> None:
            acc_row = em.byte_offset(p[4], em.b.mul(slot, i64(align_up(4 * g.ow))))
            channels(em, p[0], p[1], p[2], p[3], acc_row, i64(0), lo, hi)

        parallel_for(k.em, "conv_i8_channels", g.o, macs, [xp, k.args[1], table, k.out, rows], split, slots=SLOTS)
        return

    def images(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value, slot: ir.Value) -> None:
        """Images ``[lo, hi)`` in scratch copy ``slot``."""
        x, w, table, out, scratch = p
        base = em.byte_offset(scratch, em.b.mul(slot, i64(slot_bytes)))
        acc_row = em.byte_offset(base, g.padded_bytes)
        with em.loop(hi, name="img", start=lo) as n:
            xp = _image(em, g, x, n, base, xq.zero_point)
            channels(em, xp, w, table, out, acc_row, n, i64(0), i64(g.o))

    parallel_for(k.em, "conv_i8", g.n, macs, [k.args[0], k.args[1], table, k.out, k.scratch], images, slots=_slots(g))


def _scratch(op: Op, target: Target) -> int:
    g = _Geom(op, target)
    if g.groups != 1 and g.n == 1 and _macs(g) >= MIN_PARALLEL_MACS:
        return g.padded_bytes + SLOTS * align_up(4 * g.ow)  # one image, channels split: an accumulator row per task
    return _slots(g) * g.scratch()


def _conv_i8(k: KernelContext) -> None:
    """conv2d on u8 activations and int8 weights: im2col + int8 GEMM (groups == 1) or direct (grouped)."""
    g = _Geom(k.op, k.target)
    if g.groups == 1:
        _conv_gemm(k, g)
    else:
        _conv_direct(k, g)


kernel(
    "conv2d",
    ("u8#quant", "i8#quant", "i32#quant|f32?"),
    result=INT8_RESULT,
    constant=(1, 2),
    pack=_pack,
    scratch=_scratch,
    epilogue=True,
    variant=isa_name,
)(_conv_i8)
