"""2-D convolution.

``groups == 1``: per image, im2col writes the input patches straight into the GEMM's
packed panel layout (``[ceil(P/NR)][C*kh*kw][NR]``, P = output pixels), then the fp32
micro-kernel computes ``out[O, P] = W[O, C*kh*kw] @ cols`` with the weights as A, one
bias per row and the following activation fused into the store. The output lands in
NCHW order directly.

``groups > 1`` (depthwise and grouped): a direct loop nest per output channel, the
window taps unrolled, the output row the vectorised inner loop.
"""

from __future__ import annotations

import llvmlite.ir as ir

from mcir.codegen.emit import F32, Emitter, const, i64
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels.gemm_f32 import GemmArgs, choose_tiling, emit_gemm, packed_b_bytes
from mcir.codegen.target import Target
from mcir.ir import Op
from mcir.ops.nn import conv_out


def _geometry(op: Op) -> dict[str, int]:
    n, c, h, w = op.operands[0].type.shape
    o, cg, kh, kw = op.operands[1].type.shape
    (sh, sw), (ph, pw), (dh, dw) = op.attrs["stride"], op.attrs["padding"], op.attrs["dilation"]
    oh, ow = conv_out(h, kh, sh, ph, dh), conv_out(w, kw, sw, pw, dw)
    return dict(
        n=n,
        c=c,
        h=h,
        w=w,
        o=o,
        cg=cg,
        kh=kh,
        kw=kw,
        sh=sh,
        sw=sw,
        ph=ph,
        pw=pw,
        dh=dh,
        dw=dw,
        oh=oh,
        ow=ow,
        groups=op.attrs["groups"],
    )


def _tiling(op: Op, target: Target):
    g = _geometry(op)
    return choose_tiling(g["o"], g["oh"] * g["ow"], g["c"] * g["kh"] * g["kw"], target)


def _scratch(op: Op, target: Target) -> int:
    g = _geometry(op)
    if g["groups"] != 1:
        return 0
    return packed_b_bytes(g["c"] * g["kh"] * g["kw"], g["oh"] * g["ow"], _tiling(op, target).nr)


def emit_im2col(em: Emitter, x: ir.Value, g: dict[str, int], nr: int, dst: ir.Value) -> None:
    """cols[kidx, p] for kidx = (c, i, j), p = (oy, ox), in packed panels of NR columns."""
    if nr % g["ow"] == 0:
        _im2col_rows(em, x, g, nr, dst)
    else:
        _im2col_general(em, x, g, nr, dst)


def _im2col_rows(em: Emitter, x: ir.Value, g: dict[str, int], nr: int, dst: ir.Value) -> None:
    """im2col when every output row lies inside one panel (NR a multiple of OW, the common case).

    Then each (channel, tap, output row) is one contiguous run in the panel, and the
    columns a tap reads inside the image form a static range: zero the edges, copy the
    middle with unit stride (vectorised for stride-1 convolutions). No per-element checks.
    """
    b = em.b
    ck = g["c"] * g["kh"] * g["kw"]
    ow, sw, pw, dw = g["ow"], g["sw"], g["pw"], g["dw"]
    zero = const(F32, 0.0)

    def fill(d: ir.Value, lo: int, hi: int) -> None:
        if hi > lo:
            with em.loop(hi, name="z", start=lo) as ox:
                em.store(zero, dst, b.add(d, ox))

    with em.loop(g["c"], name="ic") as c, em.loop(g["kh"], name="ki") as i, em.loop(g["oh"], name="oy") as oy:
        iy = b.add(b.sub(b.mul(oy, i64(g["sh"])), i64(g["ph"])), b.mul(i, i64(g["dh"])))
        row_ok = b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, i64(g["h"])))
        p0 = b.mul(oy, i64(ow))
        base = b.add(b.mul(b.udiv(p0, i64(nr)), i64(ck * nr)), b.urem(p0, i64(nr)))
        src_row = b.mul(b.add(b.mul(c, i64(g["h"])), iy), i64(g["w"]))
        for j in range(g["kw"]):
            kidx = b.add(b.mul(b.add(b.mul(c, i64(g["kh"])), i), i64(g["kw"])), i64(j))
            d = b.add(base, b.mul(kidx, i64(nr)))
            # ox reads column ox*sw - pw + j*dw: inside the image for ox in [lo, hi)
            off = j * dw - pw
            lo = min(ow, max(0, -(off // sw) if off < 0 else 0))
            while lo < ow and lo * sw + off < 0:
                lo += 1
            hi = lo
            while hi < ow and hi * sw + off < g["w"]:
                hi += 1
            with b.if_else(row_ok) as (inside, outside):
                with inside:
                    fill(d, 0, lo)
                    if hi > lo:
                        with em.loop(hi, name="cp", start=lo) as ox:
                            v = em.load(x, b.add(src_row, b.add(b.mul(ox, i64(sw)), i64(off))), F32)
                            em.store(v, dst, b.add(d, ox))
                    fill(d, hi, ow)
                with outside:
                    fill(d, 0, ow)


def _im2col_general(em: Emitter, x: ir.Value, g: dict[str, int], nr: int, dst: ir.Value) -> None:
    b = em.b
    ck = g["c"] * g["kh"] * g["kw"]
    zero = const(F32, 0.0)
    with em.loop(g["c"], name="ic") as c, em.loop(g["kh"], name="ki") as i, em.loop(g["kw"], name="kj") as j:
        kidx = b.add(b.mul(b.add(b.mul(c, i64(g["kh"])), i), i64(g["kw"])), j)
        with em.loop(g["oh"], name="oy") as oy:
            iy = b.add(b.sub(b.mul(oy, i64(g["sh"])), i64(g["ph"])), b.mul(i, i64(g["dh"])))
            row_ok = b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, i64(g["h"])))
            src_row = b.mul(b.add(b.mul(c, i64(g["h"])), iy), i64(g["w"]))
            with em.loop(g["ow"], name="ox") as ox:
                ix = b.add(b.sub(b.mul(ox, i64(g["sw"])), i64(g["pw"])), b.mul(j, i64(g["dw"])))
                ok = b.and_(row_ok, b.and_(b.icmp_signed(">=", ix, i64(0)), b.icmp_signed("<", ix, i64(g["w"]))))
                v = em.load(x, b.select(ok, b.add(src_row, ix), i64(0)), F32)
                p = b.add(b.mul(oy, i64(g["ow"])), ox)
                panel, lane = b.udiv(p, i64(nr)), b.urem(p, i64(nr))
                off = b.add(b.mul(panel, i64(ck * nr)), b.add(b.mul(kidx, i64(nr)), lane))
                em.store(b.select(ok, v, zero), dst, off)


def _conv_gemm(k: KernelContext) -> None:
    em, b = k.em, k.em.b
    g = _geometry(k.op)
    t = _tiling(k.op, k.target)
    ck = g["c"] * g["kh"] * g["kw"]
    pix = g["oh"] * g["ow"]
    bias = k.args[2] if len(k.args) > 2 else None
    with em.loop(g["n"], name="img") as n:
        emit_im2col(em, em.gep(k.args[0], b.mul(n, i64(g["c"] * g["h"] * g["w"])), F32), g, t.nr, k.scratch)
        out = em.gep(k.out, b.mul(n, i64(g["o"] * pix)), F32)
        emit_gemm(
            em,
            GemmArgs(
                g["o"], pix, ck, k.args[1], ck, 1, k.scratch, out, pix, bias, bias_per_row=True, epilogue=k.epilogue
            ),
            t,
        )


def _conv_direct(k: KernelContext) -> None:
    """Grouped/depthwise convolution as a direct loop nest."""
    em, b = k.em, k.em.b
    g = _geometry(k.op)
    og = g["o"] // g["groups"]
    x, w = k.args[0], k.args[1]
    bias = k.args[2] if len(k.args) > 2 else None
    with em.loop(g["n"], name="img") as n, em.loop(g["o"], name="oc") as o:
        grp = b.udiv(o, i64(og))
        out_base = b.mul(b.add(b.mul(n, i64(g["o"])), o), i64(g["oh"] * g["ow"]))
        b0 = em.load(bias, o, F32) if bias is not None else const(F32, 0.0)
        with em.loop(g["oh"], name="oy") as oy, em.loop(g["ow"], name="ox") as ox:
            # channels of the group: a loop; window taps: unrolled
            with em.loop_carried(g["cg"], [b0], name="cc") as lp:
                acc = lp.values[0]
                ch = b.add(b.mul(grp, i64(g["cg"])), lp.index)
                plane = b.mul(b.add(b.mul(n, i64(g["c"])), ch), i64(g["h"] * g["w"]))
                wrow = b.mul(b.add(b.mul(o, i64(g["cg"])), lp.index), i64(g["kh"] * g["kw"]))
                for i in range(g["kh"]):
                    iy = b.add(b.mul(oy, i64(g["sh"])), i64(i * g["dh"] - g["ph"]))
                    row_ok = b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, i64(g["h"])))
                    for j in range(g["kw"]):
                        ix = b.add(b.mul(ox, i64(g["sw"])), i64(j * g["dw"] - g["pw"]))
                        ok = b.and_(
                            row_ok, b.and_(b.icmp_signed(">=", ix, i64(0)), b.icmp_signed("<", ix, i64(g["w"])))
                        )
                        v = em.load(x, b.select(ok, b.add(plane, b.add(b.mul(iy, i64(g["w"])), ix)), i64(0)), F32)
                        wv = em.load(w, b.add(wrow, i64(i * g["kw"] + j)), F32)
                        acc = em.fma(b.select(ok, v, const(F32, 0.0)), wv, acc)
                lp.next([acc])
            acc = lp.results[0]
            em.store(k.apply_epilogue(acc), k.out, b.add(out_base, b.add(b.mul(oy, i64(g["ow"])), ox)))


def _conv(k: KernelContext) -> None:
    """conv2d: im2col + register-blocked GEMM (groups == 1) or a direct loop nest (grouped)."""
    if k.op.attrs["groups"] == 1:
        _conv_gemm(k)
    else:
        _conv_direct(k)


kernel("conv2d", ("f32", "f32", "f32"), scratch=_scratch, epilogue=True)(_conv)
kernel("conv2d", ("f32", "f32"), scratch=_scratch, epilogue=True)(_conv)
