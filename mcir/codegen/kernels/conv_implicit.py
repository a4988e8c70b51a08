"""Implicit-GEMM fp32 convolution: the GEMM's B operand read straight from the (zero-padded) image.

For a unit-stride convolution whose output rows are whole vectors (``OW % lanes == 0``), the
im2col column of output pixels ``[ox0, ox0 + lanes)`` of row ``oy`` at tap ``(c, i, j)`` is one
contiguous run of the padded input::

    cols[(c, i, j), oy*OW + ox0 + l] = xpad[c, oy + i*dh, ox0 + j*dw + l]     l < lanes

so the micro-tile loads it with one unaligned vector load at a per-tap offset instead of reading
it from im2col panels: no im2col pass (which wrote and re-read ``C*kh*kw`` floats per output
pixel, ~12 % of a batch-32 32->64 3x3 convolution). Padding becomes a copy of the image into a
zero-bordered buffer (``C*(H+2ph)*(W+2pw)`` floats, a small fraction of the im2col columns), or
nothing when the convolution has no padding.

The tile is the GEMM's: ``MR`` output channels (A = the weights, pre-packed in the same row
panels ``[ceil(O/MR)][C*kh*kw][MR]`` as the im2col path) x ``NV`` output vectors (a "panel" is
``NV`` consecutive vectors of the image in row-major pixel order). The k loop runs over input
channels with the ``kh*kw`` taps unrolled; each output element is one FMA chain in
``(c, i, j)`` order, so it differs from the im2col path (which sums K chunks separately) only
by float reassociation. Loop order: panels outside, row tiles inside, so the input rows a panel
reads (``C x (rows + kh - 1) x Wp`` floats) stay in L1 while every row tile of weights passes.
"""

from __future__ import annotations

import math

import llvmlite.ir as ir

from mcir.codegen.emit import F32, Emitter, const, i64, vec
from mcir.codegen.kernels.gemm_f32 import HALF_STORAGE, Tiling, load_b


def implicit_ok(g: dict[str, int], t: Tiling) -> bool:
    """True if the implicit-GEMM path computes this convolution (``conv.geometry`` sizes).

    Unit stride, one group, whole-vector output rows on a vector target. Strided and grouped
    convolutions, and rows that would need masked loads, keep im2col."""
    return g["groups"] == 1 and g["sh"] == g["sw"] == 1 and t.lanes > 1 and g["ow"] % t.lanes == 0


def padded_shape(g: dict[str, int]) -> tuple[int, int]:
    """(rows, columns) of one channel of the zero-padded input."""
    return g["h"] + 2 * g["ph"], g["w"] + 2 * g["pw"]


def padded_bytes(g: dict[str, int]) -> int:
    """Scratch bytes of one image's padded copy (0 without padding: the input is read in place)."""
    if g["ph"] == g["pw"] == 0:
        return 0
    hp, wp = padded_shape(g)
    return -(-(g["c"] * hp * wp * 4) // 64) * 64


def panel_count(g: dict[str, int], t: Tiling) -> int:
    """Panels (``NV`` output vectors each, the last maybe fewer) of one image."""
    return math.ceil(g["oh"] * g["ow"] // t.lanes / t.nv)


def emit_pad(em: Emitter, g: dict[str, int], x: ir.Value, dst: ir.Value) -> None:
    """Copy image ``x`` (``[C][H][W]``) into ``dst`` with ``ph``/``pw`` rows/columns of zeros around it."""
    b = em.b
    hp, wp = padded_shape(g)
    h, w, ph, pw = g["h"], g["w"], g["ph"], g["pw"]
    zero = const(F32, 0.0)
    with em.loop(g["c"], name="pc") as c:
        src_plane = b.mul(c, i64(h * w))
        dst_plane = b.mul(c, i64(hp * wp))
        # the top and bottom border rows are contiguous runs of zeros
        for lo, hi in ((0, ph * wp), ((ph + h) * wp, hp * wp)):
            if hi > lo:
                with em.loop(hi, name="pz", start=lo) as z:
                    em.store(zero, dst, b.add(dst_plane, z))
        with em.loop(h, name="py") as y:
            row = b.add(dst_plane, b.mul(b.add(y, i64(ph)), i64(wp)))
            for lo, hi in ((0, pw), (pw + w, wp)):
                for col in range(lo, hi):
                    em.store(zero, dst, b.add(row, i64(col)))
            src = b.add(src_plane, b.mul(y, i64(w)))
            with em.loop(w, name="px") as xx:
                em.store(em.load(x, b.add(src, xx), F32), dst, b.add(row, b.add(xx, i64(pw))))


def emit_implicit_conv(
    em: Emitter,
    g: dict[str, int],
    t: Tiling,
    a: ir.Value,
    a_dtype: str,
    xpad: ir.Value,
    out: ir.Value,
    bias: ir.Value | None,
    epilogue,
    panels: tuple[ir.Value, ir.Value] | None = None,
) -> None:
    """``out[o, p] = bias[o] + sum_k A[o, k] * cols[k, p]`` for one image, the epilogue applied.

    ``a``: the packed weights; ``xpad``: the image, padded (``emit_pad``) unless there is no
    padding; ``out``: the image's ``[O][OH*OW]`` result. ``panels`` = (lo, hi) restricts it to
    those panels (one task of a threaded single-image convolution); each output element gets the
    same instructions whatever the range."""
    b = em.b
    hp, wp = padded_shape(g)
    o, pix = g["o"], g["oh"] * g["ow"]
    vpr = g["ow"] // t.lanes  # vectors per output row
    vectors = g["oh"] * vpr
    full, tail = divmod(vectors, t.nv)
    m_main, m_tail = o - o % t.mr, o % t.mr
    # k = (c, i, j) reads the padded input at c*Hp*Wp + i*dh*Wp + j*dw (plus the vector's offset)
    table = em.i64_table(
        [
            c * hp * wp + i * g["dh"] * wp + j * g["dw"]
            for c in range(g["c"])
            for i in range(g["kh"])
            for j in range(g["kw"])
        ],
        "conv.taps",
    )

    def panel(p: ir.Value, nvec: int) -> None:
        # vector v is pixels [u*lanes, (u+1)*lanes) with u = p*NV + v: output row u // vpr
        xoff, coff = [], []
        for v in range(nvec):
            u = b.add(b.mul(p, i64(t.nv)), i64(v))
            oy, ox0 = b.udiv(u, i64(vpr)), b.mul(b.urem(u, i64(vpr)), i64(t.lanes))
            xoff.append(b.add(b.mul(oy, i64(wp)), ox0))
            coff.append(b.mul(u, i64(t.lanes)))
        if m_main:
            with em.loop(m_main, name="r", step=t.mr) as row:
                _tile(em, g, t, a, a_dtype, xpad, out, bias, epilogue, row, t.mr, xoff, coff, table, pix)
        if m_tail:
            _tile(em, g, t, a, a_dtype, xpad, out, bias, epilogue, i64(m_main), m_tail, xoff, coff, table, pix)

    if panels is None:
        if full:
            with em.loop(full, name="p") as p:
                panel(p, t.nv)
        if tail:
            panel(i64(full), tail)
        return
    lo, hi = panels
    if full:
        end = b.select(b.icmp_signed("<", hi, i64(full)), hi, i64(full))
        with em.loop(end, name="p", start=lo) as p:
            panel(p, t.nv)
    if tail:
        with b.if_then(b.icmp_signed(">", hi, i64(full))):
            panel(i64(full), tail)


def _tile(
    em: Emitter,
    g: dict[str, int],
    t: Tiling,
    a: ir.Value,
    a_dtype: str,
    xpad: ir.Value,
    out: ir.Value,
    bias: ir.Value | None,
    epilogue,
    row: ir.Value,
    mr: int,
    xoff: list[ir.Value],
    coff: list[ir.Value],
    tap_offsets: ir.Value,
    pix: int,
) -> None:
    """An ``mr x len(xoff)``-vector tile of output channels ``row..row+mr`` over all of K."""
    b = em.b
    vt = vec(F32, t.lanes)
    nvec = len(xoff)
    taps = g["kh"] * g["kw"]
    a_elem = HALF_STORAGE.get(a_dtype, F32)
    a_tile = em.gep(a, b.mul(row, i64(taps * g["c"])), a_elem)  # A[row + r, k] at a_tile[k * MR + r]
    n_acc = mr * nvec
    # one k per iteration, its input offset from the table: the GEMM's loop shape. (Channels in a
    # loop with the kh*kw taps unrolled let LLVM hoist the loads of several taps at once, and the
    # 6 x 4 tile spilled accumulators to the stack.)
    with em.loop_carried(g["c"] * taps, [const(vt, 0.0)] * n_acc, name="k") as lp:
        acc = list(lp.values)
        x_k = em.gep(xpad, em.load(tap_offsets, lp.index, ir.IntType(64)), F32)
        # unaligned: a tap's run starts anywhere in the padded row
        bv = [em.load(x_k, xoff[v], vt, align=4) for v in range(nvec)]
        a_k = b.mul(lp.index, i64(t.mr))
        for r in range(mr):
            av = em.splat(load_b(em, a_tile, b.add(a_k, i64(r)), 1, a_dtype), t.lanes)
            for v in range(nvec):
                acc[r * nvec + v] = em.fma(av, bv[v], acc[r * nvec + v])
        lp.next(acc)
    acc = list(lp.results)
    for r in range(mr):
        ch = b.add(row, i64(r))
        bias_v = em.splat(em.load(bias, ch, F32), t.lanes) if bias is not None else None
        for v in range(nvec):
            val = acc[r * nvec + v]
            if bias_v is not None:
                val = b.fadd(val, bias_v)
            if epilogue is not None:
                val = epilogue(em, val)
            em.store(val, out, b.add(b.mul(ch, i64(pix)), coff[v]), align=4)
