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
from mcir.codegen.target import Target
from mcir.ir import Op
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
    inside = _inside(k.op)
    if inside and sw <= 4:

        def rows(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
            b = em.b
            src = em.gep(p[0], b.mul(lo, i64(h * w)), F32)
            dst = em.gep(p[1], b.mul(lo, i64(oh * ow)), F32)
            emit_pool_rows(em, k.op, k.target, src, dst, b.sub(hi, lo))

        n, c = k.operand_types[0].shape[:2]
        work = max(n * c * h * w, n * c * oh * ow * kh * kw) * ELEMENT_WORK
        parallel_for(k.em, k.op.name, n * c, work, [k.args[0], k.out], rows)
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


def _inside(op: Op) -> bool:
    """True if every window of pooling ``op`` lies inside its input (no padding, no ceil_mode overhang)."""
    _, _, h, w = op.operands[0].type.shape
    _, _, oh, ow = op.result.type.shape
    a = op.attrs
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    dh, dw = a.get("dilation", (1, 1))
    return ph == pw == 0 and (oh - 1) * sh + (kh - 1) * dh < h and (ow - 1) * sw + (kw - 1) * dw < w


def row_poolable(op: Op) -> bool:
    """True if ``emit_pool_rows`` computes pooling ``op`` (f32 max/avg, windows inside, stride <= 4):
    a producer may then fuse it (the convolution pools each image from cache)."""
    return (
        op.name in ("max_pool2d", "avg_pool2d")
        and op.operands[0].type.dtype.name == "f32"
        and op.operands[0].type.encoding is None
        and op.result.type.encoding is None
        and _inside(op)
        and op.attrs["stride"][1] <= 4
    )


def emit_pool_rows(em: Emitter, op: Op, target: Target, src: ir.Value, dst: ir.Value, planes: ir.Value | int) -> None:
    """Pooling ``op`` (``row_poolable``) of ``planes`` planes at ``src`` into ``dst``, vectorised
    along output rows.

    For each tap, ``lanes * stride`` contiguous inputs are loaded (masked at the row's end)
    and every stride-th lane is picked with a shuffle: lanes outputs per tap and vector op.
    """
    b = em.b
    is_max = op.name == "max_pool2d"
    _, _, h, w = op.operands[0].type.shape
    _, _, oh, ow = op.result.type.shape
    a = op.attrs
    (kh, kw), (sh, sw) = a["kernel"], a["stride"]
    dh, dw = a.get("dilation", (1, 1))
    lanes = target.f32_lanes
    wide = vec(F32, lanes * sw)
    pick = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [i * sw for i in range(lanes)])
    divisor = float(a["divisor"]) if not is_max and a.get("divisor") is not None else float(kh * kw)

    def nan_max(x: ir.Value, y: ir.Value) -> ir.Value:
        # x > y ? x : y is one vmaxps (y when either is NaN); then x where x is NaN: numpy's NaN-propagating
        # maximum in 3 instructions (llvm.maximum also orders -0 < +0, which took about 7 on AVX-512)
        return b.select(b.fcmp_unordered("uno", x, x), x, b.select(b.fcmp_ordered(">", x, y), x, y))

    def outputs(row0: ir.Value, ox0: ir.Value, count: int) -> ir.Value:
        if is_max and (kw - 1) * dw < sw:
            # every window's columns lie inside one stride's span: one load per window row covers all
            # of a row's taps; the max over rows runs on the wide vectors, the taps are then picked out
            acc = None
            for i in range(kh):
                start = b.add(row0, b.add(i64(i * dh * w), b.mul(ox0, i64(sw))))
                v = em.masked_load(src, start, wide, (count - 1) * sw + (kw - 1) * dw + 1)
                acc = v if acc is None else nan_max(acc, v)
            out = None
            for j in range(kw):
                at = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [i * sw + j * dw for i in range(lanes)])
                v = b.shuffle_vector(acc, acc, at) if sw > 1 or j else acc
                out = v if out is None else nan_max(out, v)
            return out
        acc = None
        for i in range(kh):
            for j in range(kw):
                start = b.add(row0, b.add(i64(i * dh * w + j * dw), b.mul(ox0, i64(sw))))
                v = em.masked_load(src, start, wide, (count - 1) * sw + 1)
                v = b.shuffle_vector(v, v, pick) if sw > 1 else v
                acc = v if acc is None else (nan_max(acc, v) if is_max else b.fadd(acc, v))
        return acc if is_max else b.fdiv(acc, const(acc.type, divisor))

    full, tail = divmod(ow, lanes)
    with em.loop(planes, name="plane") as pl, em.loop(oh, name="oy") as oy:
        row0 = b.add(b.mul(pl, i64(h * w)), b.mul(oy, i64(sh * w)))
        at = b.add(b.mul(pl, i64(oh * ow)), b.mul(oy, i64(ow)))
        if full:
            with em.loop(full, name="ox") as q:
                ox0 = b.mul(q, i64(lanes))
                em.store(outputs(row0, ox0, lanes), dst, b.add(at, ox0))
        if tail:
            ox0 = i64(full * lanes)
            em.masked_store(outputs(row0, ox0, tail), dst, b.add(at, ox0), tail)


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
