"""Implicit-GEMM fp32 convolution: the GEMM's B operand read from kw column-shifted copies of the image.

For a convolution with unit row stride, the im2col column of tap ``(c, i, j)`` is, over the
output pixels ``p = oy*OW + ox`` in order, one contiguous run of a small copy of the image::

    X_j[c, y, ox] = x[c, y - ph, ox*sw + j*dw - pw]      (0 outside the image), y < H + 2ph
    cols[(c, i, j), p] = X_j[c, oy + i*dh, ox] = X_j_flat[c*Hp*OW + i*dh*OW + p]

because ``X_j`` has the output's row length: moving down ``i*dh`` input rows is moving ``i*dh*OW``
pixels. So the micro-tile loads the B vector of pixels ``[p0, p0 + lanes)`` at tap ``k`` with one
vector load at ``p0 + offset[k]`` (a table of ``C*kh*kw`` offsets): no im2col pass, which wrote
and re-read ``C*kh*kw`` floats per output pixel (~12 % of a batch-32 32->64 3x3 convolution).
The ``kw`` copies hold ``kw*C*(H+2ph)*OW`` floats, ``kh`` times fewer than the im2col columns;
when ``OW`` is a multiple of the vector width every B load is aligned.

The tile is the GEMM's: ``MR`` output channels (A = the weights, pre-packed in the same row
panels ``[ceil(O/MR)][C*kh*kw][MR]`` as the im2col path) x ``NV`` vectors of consecutive output
pixels (a panel); the last vector of an image may be partial: its loads read into the copies'
slack (unused lanes) and its store is masked. Each output element is one FMA chain in
``(c, i, j)`` order per input-channel chunk, so it differs from the im2col path (which sums K
chunks of other sizes) only by float reassociation. Loop order: panels, then channel chunks
(``channel_chunks``), then row tiles, so the copies' rows a panel reads over a chunk stay in L1
while every row tile of weights passes.
"""

from __future__ import annotations

import itertools
import math

import llvmlite.ir as ir

from mcir.codegen.emit import F32, Emitter, const, i64, vec
from mcir.codegen.kernels.gemm_f32 import HALF_STORAGE, Tiling, load_b


def implicit_ok(g: dict[str, int], t: Tiling) -> bool:
    """True if the implicit-GEMM path computes this convolution (``conv.geometry`` sizes): one group,
    unit row stride, a vector target. Row-strided and grouped convolutions keep im2col."""
    return g["groups"] == 1 and g["sh"] == 1 and t.lanes > 1


def _copy_floats(g: dict[str, int]) -> int:
    """Floats of one copy X_j: ``C x (H + 2ph) x OW``."""
    return g["c"] * (g["h"] + 2 * g["ph"]) * g["ow"]


def copies_bytes(g: dict[str, int], t: Tiling) -> int:
    """Scratch bytes of one image's kw copies plus a vector of slack (the partial last vector's
    loads), 64-byte aligned."""
    return -(-((g["kw"] * _copy_floats(g) + t.lanes) * 4) // 64) * 64


def panel_count(g: dict[str, int], t: Tiling) -> int:
    """Panels (``NV`` output vectors each, the last maybe fewer) of one image."""
    return math.ceil(math.ceil(g["oh"] * g["ow"] / t.lanes) / t.nv)


# The rows of the copies one panel reads over a channel chunk should stay in L1 while every row tile
# of weights passes (the GEMM's K chunk, gemm_f32.PANEL_CHUNK_BYTES): the CNN's 64-channel 8x8 layer
# reads 61 KiB a panel over all channels, more than the 48 KiB L1 of this Xeon.
CHUNK_BYTES = 32 * 1024


def channel_chunks(g: dict[str, int], t: Tiling) -> list[tuple[int, int]]:
    """Equal ranges of input channels whose panel rows fit ``CHUNK_BYTES`` (one range if all do)."""
    per_channel = g["kw"] * (t.nv * t.lanes + (g["kh"] - 1) * g["dh"] * g["ow"]) * 4
    n = max(1, math.ceil(g["c"] * per_channel / CHUNK_BYTES))
    n = min(n, g["c"])
    bounds = [g["c"] * i // n for i in range(n + 1)]
    return list(itertools.pairwise(bounds))


def tap_range(ow: int, sw: int, off: int, w: int) -> tuple[int, int]:
    """[lo, hi): output columns ox whose input column ox*sw + off lies inside [0, w)."""
    lo = 0
    while lo < ow and lo * sw + off < 0:
        lo += 1
    hi = lo
    while hi < ow and hi * sw + off < w:
        hi += 1
    return lo, hi


def emit_copies(em: Emitter, g: dict[str, int], x: ir.Value, dst: ir.Value) -> None:
    """Write the kw copies ``X_j`` of image ``x`` (``[C][H][W]``) to ``dst`` (see the module docstring)."""
    b = em.b
    hp, ow = g["h"] + 2 * g["ph"], g["ow"]
    h, w, ph, sw = g["h"], g["w"], g["ph"], g["sw"]
    zero = const(F32, 0.0)
    for j in range(g["kw"]):
        off = j * g["dw"] - g["pw"]
        lo, hi = tap_range(ow, sw, off, w)  # ox in [lo, hi) reads column ox*sw + off inside the image
        base = j * _copy_floats(g)
        with em.loop(g["c"], name="cc") as c:
            plane = b.add(i64(base), b.mul(c, i64(hp * ow)))
            # the top and bottom padding rows are contiguous runs of zeros
            for z0, z1 in ((0, ph * ow), ((ph + h) * ow, hp * ow)):
                if z1 > z0:
                    with em.loop(z1, name="cz", start=z0) as z:
                        em.store(zero, dst, b.add(plane, z))
            with em.loop(h, name="cy") as y:
                row = b.add(plane, b.mul(b.add(y, i64(ph)), i64(ow)))
                src = b.mul(b.add(b.mul(c, i64(h)), y), i64(w))
                for z0, z1 in ((0, lo), (hi, ow)):
                    with em.loop(z1, name="cx", start=z0) as ox:
                        em.store(zero, dst, b.add(row, ox))
                if hi > lo:
                    with em.loop(hi, name="cv", start=lo) as ox:
                        v = em.load(x, b.add(src, b.add(b.mul(ox, i64(sw)), i64(off))), F32)
                        em.store(v, dst, b.add(row, ox))


def emit_implicit_conv(
    em: Emitter,
    g: dict[str, int],
    t: Tiling,
    a: ir.Value,
    a_dtype: str,
    copies: ir.Value,
    out: ir.Value,
    bias: ir.Value | None,
    epilogue,
    panels: tuple[ir.Value, ir.Value] | None = None,
) -> None:
    """``out[o, p] = bias[o] + sum_k A[o, k] * cols[k, p]`` for one image, the epilogue applied.

    ``a``: the packed weights; ``copies``: the image's ``emit_copies``; ``out``: the image's
    ``[O][OH*OW]`` result. ``panels`` = (lo, hi) restricts it to those panels (one task of a
    threaded single-image convolution); each output element gets the same instructions whatever
    the range."""
    b = em.b
    hp = g["h"] + 2 * g["ph"]
    o, pix = g["o"], g["oh"] * g["ow"]
    vectors = math.ceil(pix / t.lanes)
    last_lanes = pix - (vectors - 1) * t.lanes
    full, tail = divmod(vectors, t.nv)
    if last_lanes < t.lanes and not tail:  # the partial vector ends a full panel: make that panel the tail
        full, tail = full - 1, t.nv
    m_main, m_tail = o - o % t.mr, o % t.mr
    taps = g["kh"] * g["kw"]
    # k = (c, i, j) reads copy j at c*Hp*OW + i*dh*OW (plus the vector's first pixel)
    copy = _copy_floats(g)
    table = em.i64_table(
        [
            j * copy + c * hp * g["ow"] + i * g["dh"] * g["ow"]
            for c in range(g["c"])
            for i in range(g["kh"])
            for j in range(g["kw"])
        ],
        "conv.taps",
    )

    chunks = channel_chunks(g, t)

    def panel(p: ir.Value, nvec: int, partial: bool) -> None:
        p0 = b.mul(p, i64(t.nv * t.lanes))  # the panel's first pixel
        widths = [t.lanes] * nvec
        if partial:
            widths[-1] = last_lanes
        args = (em, g, t, a, a_dtype, copies, out, bias, epilogue)
        for ci, (c0, c1) in enumerate(chunks):
            # the panel's rows of channels [c0, c1) stay in L1 while every row tile passes over them
            k = (c0 * taps, c1 * taps, ci == 0, ci == len(chunks) - 1)
            if m_main:
                with em.loop(m_main, name="r", step=t.mr) as row:
                    _tile(*args, row, t.mr, p0, widths, table, pix, *k)
            if m_tail:
                _tile(*args, i64(m_main), m_tail, p0, widths, table, pix, *k)

    if panels is None:
        if full:
            with em.loop(full, name="p") as p:
                panel(p, t.nv, False)
        if tail:
            panel(i64(full), tail, last_lanes < t.lanes)
        return
    lo, hi = panels
    if full:
        end = b.select(b.icmp_signed("<", hi, i64(full)), hi, i64(full))
        with em.loop(end, name="p", start=lo) as p:
            panel(p, t.nv, False)
    if tail:
        with b.if_then(b.icmp_signed(">", hi, i64(full))):
            panel(i64(full), tail, last_lanes < t.lanes)


def _tile(
    em: Emitter,
    g: dict[str, int],
    t: Tiling,
    a: ir.Value,
    a_dtype: str,
    copies: ir.Value,
    out: ir.Value,
    bias: ir.Value | None,
    epilogue,
    row: ir.Value,
    mr: int,
    p0: ir.Value,
    widths: list[int],
    tap_offsets: ir.Value,
    pix: int,
    k0: int,
    k1: int,
    first: bool,
    last: bool,
) -> None:
    """An ``mr x len(widths)``-vector tile: output channels ``row..row+mr``, pixels from ``p0``, K range
    ``[k0, k1)``. Not ``first``: added to the partial sums in ``out``; ``last``: bias and epilogue."""
    b = em.b
    vt = vec(F32, t.lanes)
    nvec = len(widths)
    a_elem = HALF_STORAGE.get(a_dtype, F32)
    a_tile = em.gep(a, b.mul(row, i64(g["kh"] * g["kw"] * g["c"])), a_elem)  # A[row + r, k] at a_tile[k*MR + r]
    x0 = em.gep(copies, p0, F32)
    n_acc = mr * nvec
    # one k per iteration, its offset from the table: the GEMM's loop shape. (Channels in a loop with
    # the kh*kw taps unrolled let LLVM hoist the loads of several taps at once, and the 6 x 4 tile
    # spilled accumulators to the stack.)
    with em.loop_carried(k1, [const(vt, 0.0)] * n_acc, name="k", start=k0) as lp:
        acc = list(lp.values)
        x_k = em.gep(x0, em.load(tap_offsets, lp.index, ir.IntType(64)), F32)
        bv = [em.load(x_k, v * t.lanes, vt, align=4) for v in range(nvec)]
        a_k = b.mul(lp.index, i64(t.mr))
        for r in range(mr):
            av = em.splat(load_b(em, a_tile, b.add(a_k, i64(r)), 1, a_dtype), t.lanes)
            for v in range(nvec):
                acc[r * nvec + v] = em.fma(av, bv[v], acc[r * nvec + v])
        lp.next(acc)
    acc = list(lp.results)
    for r in range(mr):
        ch = b.add(row, i64(r))
        bias_v = em.splat(em.load(bias, ch, F32), t.lanes) if bias is not None and last else None
        at = b.add(b.mul(ch, i64(pix)), p0)
        for v, width in enumerate(widths):
            val = acc[r * nvec + v]
            dst = b.add(at, i64(v * t.lanes))
            if not first:
                val = b.fadd(val, em.load(out, dst, vt) if width == t.lanes else em.masked_load(out, dst, vt, width))
            if last and bias_v is not None:
                val = b.fadd(val, bias_v)
            if last and epilogue is not None:
                val = epilogue(em, val)
            if width == t.lanes:
                em.store(val, out, dst, align=4)
            else:
                em.masked_store(val, out, dst, width)
