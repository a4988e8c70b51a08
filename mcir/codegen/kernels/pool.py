"""Pooling: max_pool2d, avg_pool2d (torch semantics incl. ceil_mode and count_include_pad)
and adaptive_avg_pool2d.

Window taps are unrolled (windows are small); positions outside the input are masked
with selects (-inf for max, 0 for average), so there are no branches in the loop body.
Average divisors are computed at compile time per output row/column where they vary.

Threads: the (image, channel) planes are independent; they split through the parallel hook
(``_split_planes``), each plane computed by one task with the same instructions as on one thread.
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from mcir.codegen.emit import F32, I64, Emitter, const, i64, vec
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.parallel import ELEMENT_WORK, parallel_for
from mcir.ops.nn import adaptive_bounds


def _split_planes(k: KernelContext, taps: int, plane: Callable[[Emitter, ir.Value, ir.Value, ir.Value], None]) -> None:
    """``plane(em, x, out, index)`` for every (image, channel) plane, split across the host's threads.
    Work: every output reads ``taps`` inputs (``ELEMENT_WORK`` each), and every input is read at least once."""
    n, c, h, w = k.operand_types[0].shape
    _, _, oh, ow = k.result_type.shape
    work = max(n * c * h * w, n * c * oh * ow * taps) * ELEMENT_WORK

    def planes(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
        with em.loop(hi, name="plane", start=lo) as pl:
            plane(em, p[0], p[1], pl)

    parallel_for(k.em, k.op.name, n * c, work, [k.args[0], k.out], planes)


def _pool(k: KernelContext) -> None:
    """max / average over each (dilated) window."""
    em = k.em
    _, _, h, w = k.operand_types[0].shape
    _, _, oh, ow = k.result_type.shape
    a = k.op.attrs
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    dh, dw = a.get("dilation", (1, 1))
    is_max = k.op.name == "max_pool2d"
    fill = const(F32, float("-inf") if is_max else 0.0)
    # every window inside the image (no padding, no ceil_mode overhang): no masking at all
    inside = ph == pw == 0 and (oh - 1) * sh + (kh - 1) * dh < h and (ow - 1) * sw + (kw - 1) * dw < w
    if inside and sw <= 4:
        _pool_rows(k, is_max)
        return
    if not is_max:
        # torch's divisor per output position: separable in rows and columns
        def counts(size: int, out: int, kk: int, s: int, p: int) -> list[int]:
            res = []
            for o in range(out):
                lo, hi = o * s - p, o * s - p + kk
                if a["count_include_pad"]:
                    res.append(min(hi, size + p) - lo)
                else:
                    res.append(min(hi, size) - max(lo, 0))
            return res

        rows = counts(h, oh, kh, sh, ph)
        cols = counts(w, ow, kw, sw, pw)
        rt, ct = em.i64_table(rows, "pool.rows"), em.i64_table(cols, "pool.cols")

    def plane(em: Emitter, x: ir.Value, out: ir.Value, pl: ir.Value) -> None:
        b = em.b
        src = b.mul(pl, i64(h * w))
        dst = b.mul(pl, i64(oh * ow))
        with em.loop(oh, name="oy") as oy, em.loop(ow, name="ox") as ox:
            acc = fill
            for i in range(kh):
                iy = b.add(b.mul(oy, i64(sh)), i64(i * dh - ph))
                row_ok = em.in_range(iy, h)
                for j in range(kw):
                    ix = b.add(b.mul(ox, i64(sw)), i64(j * dw - pw))
                    at = b.add(src, b.add(b.mul(iy, i64(w)), ix))
                    if inside:
                        v = em.load(x, at, F32)
                    else:
                        ok = b.and_(row_ok, em.in_range(ix, w))
                        v = b.select(ok, em.load(x, b.select(ok, at, i64(0)), F32), fill)
                    acc = em.fmax(acc, v) if is_max else b.fadd(acc, v)
            if not is_max:
                if a["divisor"] is not None:
                    div = const(F32, float(a["divisor"]))
                elif inside:
                    div = const(F32, float(kh * kw))
                else:
                    cnt = b.mul(em.load(rt, oy, I64), em.load(ct, ox, I64))
                    div = b.sitofp(cnt, F32)
                acc = b.fdiv(acc, div)
            em.store(acc, out, b.add(dst, b.add(b.mul(oy, i64(ow)), ox)))

    _split_planes(k, kh * kw, plane)


def _pool_rows(k: KernelContext, is_max: bool) -> None:
    """Pooling whose windows all lie inside the image, vectorised along output rows.

    For each tap, ``lanes * stride`` contiguous inputs are loaded (masked at the row's end)
    and every stride-th lane is picked with a shuffle: lanes outputs per tap and vector op.
    """
    _, _, h, w = k.operand_types[0].shape
    _, _, oh, ow = k.result_type.shape
    a = k.op.attrs
    (kh, kw), (sh, sw) = a["kernel"], a["stride"]
    dh, dw = a.get("dilation", (1, 1))
    lanes = k.target.f32_lanes
    wide = vec(F32, lanes * sw)
    pick = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [i * sw for i in range(lanes)])
    divisor = float(a["divisor"]) if not is_max and a.get("divisor") is not None else float(kh * kw)

    def outputs(em: Emitter, x: ir.Value, row0: ir.Value, ox0: ir.Value, count: int) -> ir.Value:
        b = em.b
        acc = None
        for i in range(kh):
            for j in range(kw):
                start = b.add(row0, b.add(i64(i * dh * w + j * dw), b.mul(ox0, i64(sw))))
                v = em.masked_load(x, start, wide, (count - 1) * sw + 1)
                v = b.shuffle_vector(v, v, pick) if sw > 1 else v
                acc = v if acc is None else (em.fmax(acc, v) if is_max else b.fadd(acc, v))
        return acc if is_max else b.fdiv(acc, const(acc.type, divisor))

    full, tail = divmod(ow, lanes)

    def plane(em: Emitter, x: ir.Value, out: ir.Value, pl: ir.Value) -> None:
        b = em.b
        with em.loop(oh, name="oy") as oy:
            row0 = b.add(b.mul(pl, i64(h * w)), b.mul(oy, i64(sh * w)))
            dst = b.add(b.mul(pl, i64(oh * ow)), b.mul(oy, i64(ow)))
            if full:
                with em.loop(full, name="ox") as q:
                    ox0 = b.mul(q, i64(lanes))
                    em.store(outputs(em, x, row0, ox0, lanes), out, b.add(dst, ox0))
            if tail:
                ox0 = i64(full * lanes)
                em.masked_store(outputs(em, x, row0, ox0, tail), out, b.add(dst, ox0), tail)

    _split_planes(k, kh * kw, plane)


kernel("max_pool2d", ("f32",))(_pool)
kernel("avg_pool2d", ("f32",))(_pool)


@kernel("adaptive_avg_pool2d", ("f32",))
def adaptive_avg_pool2d(k: KernelContext) -> None:
    """Mean over torch's adaptive windows [floor(i*H/OH), ceil((i+1)*H/OH)), bounds from tables."""
    em = k.em
    _, _, h, w = k.operand_types[0].shape
    _, _, oh, ow = k.result_type.shape
    rows, cols = adaptive_bounds(h, oh), adaptive_bounds(w, ow)
    r0 = em.i64_table([r[0] for r in rows], "ap.r0")
    r1 = em.i64_table([r[1] for r in rows], "ap.r1")
    c0 = em.i64_table([x[0] for x in cols], "ap.c0")
    c1 = em.i64_table([x[1] for x in cols], "ap.c1")

    def plane(em: Emitter, x: ir.Value, out: ir.Value, pl: ir.Value) -> None:
        b = em.b
        src = b.mul(pl, i64(h * w))
        dst = b.mul(pl, i64(oh * ow))
        with em.loop(oh, name="oy") as oy, em.loop(ow, name="ox") as ox:
            y0, y1 = em.load(r0, oy, I64), em.load(r1, oy, I64)
            x0, x1 = em.load(c0, ox, I64), em.load(c1, ox, I64)
            with em.loop_carried(y1, [const(F32, 0.0)], name="wy", start=y0) as ly:
                row = b.add(src, b.mul(ly.index, i64(w)))
                with em.loop_carried(x1, [ly.values[0]], name="wx", start=x0) as lx:
                    lx.next([b.fadd(lx.values[0], em.load(x, b.add(row, lx.index), F32), flags=("reassoc",))])
                ly.next([lx.results[0]])
            cnt = b.sitofp(b.mul(b.sub(y1, y0), b.sub(x1, x0)), F32)
            em.store(b.fdiv(ly.results[0], cnt), out, b.add(dst, b.add(b.mul(oy, i64(ow)), ox)))

    # an adaptive window covers about (H / OH) x (W / OW) inputs
    _split_planes(k, max(1, (h // oh) * (w // ow)), plane)
