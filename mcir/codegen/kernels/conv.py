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

import dataclasses
import math

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, I1, I32, PTR, VOID, Emitter, const, i64, vec
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels.conv_implicit import copies_bytes, emit_copies, emit_implicit_conv, implicit_ok, tap_range
from mcir.codegen.kernels.conv_implicit import panel_count as implicit_panels
from mcir.codegen.kernels.gemm_f32 import (
    HALF_STORAGE,
    GemmArgs,
    check_half_target,
    choose_split,
    choose_tiling,
    emit_gemm,
    emit_split_gemm,
    half_panels,
    load_b,
    pack_a,
    packed_b_bytes,
)
from mcir.codegen.kernels.pool import emit_pool_rows, row_poolable
from mcir.codegen.memory_plan import view_root
from mcir.codegen.parallel import parallel_for
from mcir.codegen.target import Target
from mcir.errors import CodegenError
from mcir.ir import Op
from mcir.ops.nn import conv_out


def geometry(op: Op) -> dict[str, int]:
    """Sizes of a conv2d: image n, c, h, w; weight o, cg, kh, kw; stride, padding, dilation; output oh, ow."""
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
        og=o // op.attrs["groups"],
    )


def _uses_gemm(g: dict[str, int]) -> bool:
    """GEMM per group unless each output channel sees one input channel (depthwise) or a
    group has a single output channel: then there is nothing to block in registers."""
    return g["groups"] == 1 or (g["cg"] > 1 and g["og"] > 1)


def _tiling(op: Op, target: Target):
    g = geometry(op)
    return choose_tiling(g["og"], g["oh"] * g["ow"], g["cg"] * g["kh"] * g["kw"], target)


# Batched convolutions split across threads by images: each task runs whole images (im2col and
# GEMM) in its own im2col buffer, so the images' buffers are up to this many, within this budget.
MAX_IMAGE_TASKS = 8
IMAGE_SCRATCH_BUDGET = 8 << 20


def _implicit(op: Op, target: Target) -> bool:
    """True if this convolution reads its GEMM operand straight from the image (conv_implicit.py):
    constant (pre-packed) weights and a shape ``implicit_ok`` accepts."""
    return view_root(op.operands[1]).is_constant and implicit_ok(geometry(op), _tiling(op, target))


def _slot_bytes(op: Op, target: Target) -> int:
    """Bytes of one task's B buffer, 64-byte aligned: one image's (one group's) im2col panels, or
    for the implicit GEMM the image's kw column-shifted copies."""
    g = geometry(op)
    if _implicit(op, target):
        return copies_bytes(g, _tiling(op, target))
    nbytes = packed_b_bytes(g["cg"] * g["kh"] * g["kw"], g["oh"] * g["ow"], _tiling(op, target).nr)
    return -(-nbytes // 64) * 64


def image_tasks(op: Op, target: Target) -> int:
    """Units a batched GEMM convolution is split into: groups of images, one im2col buffer each.
    1 for a single image (its GEMM is split by panels or row tiles instead)."""
    g = geometry(op)
    return max(1, min(g["n"], MAX_IMAGE_TASKS, IMAGE_SCRATCH_BUDGET // _slot_bytes(op, target)))


def _scratch(op: Op, target: Target) -> int:
    if not _uses_gemm(geometry(op)):
        return 0
    return image_tasks(op, target) * _slot_bytes(op, target)


def _image_bytes(op: Op) -> int:
    """Bytes of one image's unpooled result (all channels), 64-byte aligned."""
    g = geometry(op)
    return -(-(g["o"] * g["oh"] * g["ow"] * 4) // 64) * 64


def _pool_scratch(op: Op, pool: Op, target: Target) -> int | None:
    """Extra scratch to fuse ``pool`` (a row-poolable pooling of this conv's result): one image's
    unpooled result per task, which the GEMMs write and the pool reads while it is in cache.
    None (no fusion) for the direct grouped kernels, which write their result row by row."""
    if not _uses_gemm(geometry(op)) or not row_poolable(pool):
        return None
    return image_tasks(op, target) * _image_bytes(op)


def emit_im2col(em: Emitter, x: ir.Value, g: dict[str, int], nr: int, dst: ir.Value, lanes: int = 1) -> None:
    """cols[kidx, p] for kidx = (c, i, j), p = (oy, ox), in packed panels of NR columns.

    ``lanes`` > 1: the target has masked vector loads and stores of that width (AVX2, AVX-512)."""
    if lanes > 1 and g["sw"] == 1 and nr % g["ow"] == 0:
        _im2col_vector_rows(em, x, g, nr, dst, lanes)
    elif g["ow"] <= nr:
        _im2col_rows(em, x, g, nr, dst)
    else:
        _im2col_general(em, x, g, nr, dst)


def _lane_mask(lanes: int, lo: int, hi: int) -> ir.Constant:
    """An i1 vector mask with lanes [lo, hi) set."""
    return ir.Constant(ir.VectorType(I1, lanes), [ir.Constant(I1, int(lo <= i < hi)) for i in range(lanes)])


def _im2col_vector_rows(em: Emitter, x: ir.Value, g: dict[str, int], nr: int, dst: ir.Value, lanes: int) -> None:
    """im2col of a unit-stride convolution whose output rows tile a panel exactly (NR % OW == 0):
    each (channel, tap, output row) is ceil(OW / lanes) masked vector copies.

    The load mask covers the columns whose tap lies inside the image (a static range per kernel
    column), so padding lanes read nothing and come out zero; the store mask covers the row. A
    row outside the image stores zeros. About 16x fewer instructions than the element loops,
    which made im2col ~20 % of a batch-32 3x3 convolution."""
    b = em.b
    ck = g["c"] * g["kh"] * g["kw"]
    ow, pw, dw = g["ow"], g["pw"], g["dw"]
    vt = vec(F32, lanes)
    zero = const(vt, 0.0)
    load_fn = em.intrinsic("llvm.masked.load", [vt, PTR], vt, [PTR, I32, ir.VectorType(I1, lanes), vt])
    store_fn = em.intrinsic("llvm.masked.store", [vt, PTR], VOID, [vt, PTR, I32, ir.VectorType(I1, lanes)])
    align = ir.Constant(I32, 4)
    nvec = math.ceil(ow / lanes)
    with em.loop(g["c"], name="ic") as c, em.loop(g["kh"], name="ki") as i, em.loop(g["oh"], name="oy") as oy:
        iy = b.add(b.sub(b.mul(oy, i64(g["sh"])), i64(g["ph"])), b.mul(i, i64(g["dh"])))
        row_ok = b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, i64(g["h"])))
        p0 = b.mul(oy, i64(ow))
        base = b.add(b.mul(b.udiv(p0, i64(nr)), i64(ck * nr)), b.urem(p0, i64(nr)))  # the row never crosses
        src_row = b.mul(b.add(b.mul(c, i64(g["h"])), b.select(row_ok, iy, i64(0))), i64(g["w"]))
        for j in range(g["kw"]):
            kidx = b.add(b.mul(b.add(b.mul(c, i64(g["kh"])), i), i64(g["kw"])), i64(j))
            d = b.add(base, b.mul(kidx, i64(nr)))
            off = j * dw - pw
            lo, hi = tap_range(ow, 1, off, g["w"])  # ox in [lo, hi) reads column ox + off inside the image
            for v in range(nvec):
                c0 = v * lanes
                store_mask = _lane_mask(lanes, 0, min(lanes, ow - c0))
                vlo, vhi = max(lo - c0, 0), min(hi - c0, lanes)
                if vhi > vlo:
                    # lane l reads x[src_row + c0 + l + off]; only lanes inside the image are touched
                    src = em.gep(x, b.add(src_row, i64(c0 + off)), F32)
                    mask = b.and_(_lane_mask(lanes, vlo, vhi), em.splat(row_ok, lanes))
                    val = b.call(load_fn, [src, align, mask, zero])
                else:
                    val = zero
                b.call(store_fn, [val, em.gep(dst, b.add(d, i64(c0)), F32), align, store_mask])


def _im2col_rows(em: Emitter, x: ir.Value, g: dict[str, int], nr: int, dst: ir.Value) -> None:
    """im2col by output rows (rows no longer than a panel: every CNN but the widest images).

    An output row is one run in its panel, or two when it crosses into the next panel
    (split at ``s1``). The columns a tap reads inside the image form a static range: zero
    the edges, copy the middle with unit stride (vectorised for stride-1 convolutions).
    No per-element checks.
    """
    b = em.b
    ck = g["c"] * g["kh"] * g["kw"]
    ow, sw, pw, dw = g["ow"], g["sw"], g["pw"], g["dw"]
    zero = const(F32, 0.0)

    def runs(lo: int | ir.Value, hi: int | ir.Value, d1: ir.Value, d2: ir.Value, s1: ir.Value, body) -> None:
        """body(ox, dst index) for ox in [lo, hi): before s1 in the first panel, after it in the next."""
        lo_v = i64(lo) if isinstance(lo, int) else lo
        hi_v = i64(hi) if isinstance(hi, int) else hi
        end1 = b.select(b.icmp_signed("<", hi_v, s1), hi_v, s1)
        start2 = b.select(b.icmp_signed(">", lo_v, s1), lo_v, s1)
        with em.loop(end1, name="r1", start=lo_v) as ox:
            body(ox, b.add(d1, ox))
        with em.loop(hi_v, name="r2", start=start2) as ox:
            body(ox, b.add(d2, ox))

    def fill(lo: int, hi: int, d1: ir.Value, d2: ir.Value, s1: ir.Value) -> None:
        if hi > lo:
            runs(lo, hi, d1, d2, s1, lambda ox, at: em.store(zero, dst, at))

    with em.loop(g["c"], name="ic") as c, em.loop(g["kh"], name="ki") as i, em.loop(g["oh"], name="oy") as oy:
        iy = b.add(b.sub(b.mul(oy, i64(g["sh"])), i64(g["ph"])), b.mul(i, i64(g["dh"])))
        row_ok = b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, i64(g["h"])))
        p0 = b.mul(oy, i64(ow))
        panel, lane0 = b.udiv(p0, i64(nr)), b.urem(p0, i64(nr))
        room = b.sub(i64(nr), lane0)
        s1 = b.select(b.icmp_signed("<", room, i64(ow)), room, i64(ow))  # columns in the first panel
        base1 = b.add(b.mul(panel, i64(ck * nr)), lane0)
        base2 = b.sub(b.mul(b.add(panel, i64(1)), i64(ck * nr)), s1)
        src_row = b.mul(b.add(b.mul(c, i64(g["h"])), iy), i64(g["w"]))
        for j in range(g["kw"]):
            kidx = b.add(b.mul(b.add(b.mul(c, i64(g["kh"])), i), i64(g["kw"])), i64(j))
            d1 = b.add(base1, b.mul(kidx, i64(nr)))
            d2 = b.add(base2, b.mul(kidx, i64(nr)))
            # ox reads column ox*sw - pw + j*dw: inside the image for ox in [lo, hi)
            off = j * dw - pw
            lo, hi = tap_range(ow, sw, off, g["w"])
            with b.if_else(row_ok) as (inside, outside):
                with inside:
                    fill(0, lo, d1, d2, s1)
                    if hi > lo:

                        def copy(ox: ir.Value, at: ir.Value, off=off) -> None:
                            em.store(em.load(x, b.add(src_row, b.add(b.mul(ox, i64(sw)), i64(off))), F32), dst, at)

                        runs(lo, hi, d1, d2, s1, copy)
                    fill(hi, ow, d1, d2, s1)
                with outside:
                    fill(0, ow, d1, d2, s1)


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


def _pack_weights(op: Op, index: int, data, target: Target):
    """Weights of a GEMM convolution as A row panels of the GEMM's MR, group after group."""
    g = geometry(op)
    if index != 1 or not _uses_gemm(g):
        return None
    mr = _tiling(op, target).mr
    per_group = np.asarray(data).astype(np.float32).reshape(g["groups"], g["og"], -1)  # f16/bf16: exact in f32
    panels = np.concatenate([pack_a(wg, mr).reshape(-1) for wg in per_group])
    dtype = op.operands[1].type.dtype.name
    if dtype == "f32":
        return f"conv_a:{mr}", panels
    return f"conv_a:{mr}:{dtype}", half_panels(panels, dtype)


def _conv_gemm(k: KernelContext) -> None:
    """Per image and group: im2col of the group's channels, then out[og, P] = W_g @ cols.

    Threads (``parallel_for``): a batch is split by groups of whole images, each task with its own
    im2col buffer (scratch slot = its first unit), so im2col runs in parallel too; a single image
    splits its GEMMs by pixel panels or row tiles (``choose_split``) after the calling thread's
    im2col. Every output element is computed by the same code whatever the split."""
    em = k.em
    packed = view_root(k.op.operands[1]).is_constant
    g = geometry(k.op)
    t = _tiling(k.op, k.target)
    og, cg = g["og"], g["cg"]
    ck = cg * g["kh"] * g["kw"]
    pix = g["oh"] * g["ow"]
    plane = g["h"] * g["w"]
    a_group = math.ceil(og / t.mr) * t.mr * ck if packed else og * ck  # weight floats per group
    w_dtype = k.op.operands[1].type.dtype.name
    if w_dtype != "f32" and not packed:
        raise CodegenError(f"{k.op.where()}: {w_dtype} convolution weights computed at run time have no kernel")
    w_elem = HALF_STORAGE.get(w_dtype, F32)
    gg = dict(g, c=cg)  # im2col sees only the group's channels
    # masked vector copies where the ISA has them (AVX2 vmaskmov, AVX-512 masks), else element loops
    vector_lanes = t.lanes if k.target.has("avx2") or k.target.has("avx512f") else 1
    macs = g["n"] * g["groups"] * og * pix * ck
    has_bias = len(k.args) > 2

    def group_gemm(tem: Emitter, p: list[ir.Value], gi: ir.Value, cols: ir.Value) -> GemmArgs:
        """The GEMM of group gi, with p = [weights, input, the image's output block, bias?] as ``tem``
        sees them."""
        tb = tem.b
        return GemmArgs(
            og, pix, ck, tem.gep(p[0], tb.mul(gi, i64(a_group)), w_elem), ck, 1, cols,
            tem.gep(p[2], tb.mul(gi, i64(og * pix)), F32), pix,
            tem.gep(p[3], tb.mul(gi, i64(og)), F32) if has_bias else None,
            bias_per_row=True, epilogue=k.epilogue, a_packed=packed, a_dtype=w_dtype,
        )  # fmt: skip

    def im2col(tem: Emitter, x: ir.Value, n: ir.Value, gi: ir.Value, cols: ir.Value) -> None:
        first = tem.b.add(tem.b.mul(n, i64(g["groups"])), gi)
        emit_im2col(tem, tem.gep(x, tem.b.mul(first, i64(cg * plane)), F32), gg, t.nr, cols, vector_lanes)

    tasks = image_tasks(k.op, k.target)
    slot_floats = _slot_bytes(k.op, k.target) // 4
    image_floats = _image_bytes(k.op) // 4
    pool = k.pool
    pooled = 0 if pool is None else g["o"] * math.prod(pool.result.type.shape[2:])  # floats per pooled image

    def image_buffer(tem: Emitter, scratch: ir.Value, slot: ir.Value) -> ir.Value:
        """A task's unpooled image (fused pool only): in the scratch after the im2col slots."""
        return tem.gep(scratch, tem.b.add(i64(tasks * slot_floats), tem.b.mul(slot, i64(image_floats))), F32)

    def gemm_out(tem: Emitter, p: list[ir.Value], n: ir.Value, slot: ir.Value) -> ir.Value:
        """Where image n's GEMMs write: its block of the output, or with a fused pool the task's buffer."""
        if pool is None:
            return tem.gep(p[2], tem.b.mul(n, i64(g["o"] * pix)), F32)
        return image_buffer(tem, p[-1], slot)

    def pool_image(tem: Emitter, p: list[ir.Value], n: ir.Value, slot: ir.Value) -> None:
        # the image's result is in cache (32-512 KiB): pooling it now saves a round trip through memory
        out = tem.gep(p[2], tem.b.mul(n, i64(pooled)), F32)
        emit_pool_rows(tem, pool, k.target, image_buffer(tem, p[-1], slot), out, g["o"])

    implicit = _implicit(k.op, k.target)

    def image_source(tem: Emitter, x: ir.Value, n: ir.Value, buf: ir.Value) -> ir.Value:
        """The implicit GEMM's B for image n: its column-shifted copies, written to ``buf``."""
        emit_copies(tem, g, tem.gep(x, tem.b.mul(n, i64(g["c"] * plane)), F32), buf)
        return buf

    operands = [k.args[1], k.args[0], k.out] + ([k.args[2]] if has_bias else [])
    if tasks > 1:

        def images(tem: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
            tb = tem.b
            cols = tem.gep(p[-1], tb.mul(lo, i64(slot_floats)), F32)  # tasks have distinct first units
            # units are groups of images: unit u holds images [u*N/T, (u+1)*N/T)
            n0 = tb.sdiv(tb.mul(lo, i64(g["n"])), i64(tasks))
            n1 = tb.sdiv(tb.mul(hi, i64(g["n"])), i64(tasks))
            with tem.loop(n1, name="img", start=n0) as n:
                dst = [p[0], p[1], gemm_out(tem, p, n, lo)] + p[3:-1]
                if implicit:
                    xp = image_source(tem, p[1], n, cols)
                    emit_implicit_conv(tem, g, t, p[0], w_dtype, xp, dst[2], dst[3] if has_bias else None, k.epilogue)
                else:
                    with tem.loop(g["groups"], name="grp") as gi:
                        im2col(tem, p[1], n, gi, cols)
                        emit_gemm(tem, group_gemm(tem, dst, gi, cols), t)
                if pool is not None:
                    pool_image(tem, p, n, lo)

        parallel_for(em, "conv_images", tasks, macs, [*operands, k.scratch], images)
        return

    if implicit:
        # one image at a time: its copies on the calling thread, then its panels split across threads
        with em.loop(g["n"], name="img") as n:
            dst = gemm_out(em, [*operands, k.scratch], n, i64(0))
            xp = image_source(em, k.args[0], n, k.scratch)
            pointers = [operands[0], xp, dst] + ([operands[3]] if has_bias else [])

            def panels(tem: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
                bias = p[3] if has_bias else None
                emit_implicit_conv(tem, g, t, p[0], w_dtype, p[1], p[2], bias, k.epilogue, panels=(lo, hi))

            parallel_for(em, "conv_implicit", implicit_panels(g, t), og * pix * ck, pointers, panels)
            if pool is not None:
                pool_image(em, [*operands, k.scratch], n, i64(0))
        return

    split = choose_split(og, pix, t)
    with em.loop(g["n"], name="img") as n:
        dst = [operands[0], operands[1], gemm_out(em, [*operands, k.scratch], n, i64(0)), *operands[3:]]
        with em.loop(g["groups"], name="grp") as gi:
            im2col(em, k.args[0], n, gi, k.scratch)
            one = group_gemm(em, dst, gi, k.scratch)  # the pointers of this image and group
            pointers = [one.a, one.b_packed, one.c] + ([one.bias] if has_bias else [])

            def body(tem: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
                # the image's GEMM, its panels or row tiles split across threads
                bias = p[3] if has_bias else None
                args = dataclasses.replace(one, a=p[0], b_packed=p[1], c=p[2], bias=bias)
                emit_split_gemm(tem, args, t, split, lo, hi)

            parallel_for(em, "conv_gemm", split.units, og * pix * ck, pointers, body)
        if pool is not None:
            pool_image(em, [*operands, k.scratch], n, i64(0))


def _conv_direct(k: KernelContext) -> None:
    """Grouped/depthwise convolution, one output row at a time.

    The row starts at the bias; every (channel, tap) adds ``w * x`` over exactly the
    output columns whose input column exists (a static range per tap) and only for
    input rows inside the image (a branch per row), so the inner loop is a plain
    unit-stride (or stride-s) multiply-add that vectorises; the fused activation runs
    over the finished row.
    """
    em, b = k.em, k.em.b
    g = geometry(k.op)
    og = g["o"] // g["groups"]
    x, w = k.args[0], k.args[1]
    bias = k.args[2] if len(k.args) > 2 else None
    ow, sw = g["ow"], g["sw"]
    w_dtype = k.op.operands[1].type.dtype.name  # f16/bf16 weights (the half pass) widen as they load
    with em.loop(g["n"], name="img") as n, em.loop(g["o"], name="oc") as o:
        grp = b.udiv(o, i64(og))
        b0 = em.load(bias, o, F32) if bias is not None else const(F32, 0.0)
        with em.loop(g["oh"], name="oy") as oy:
            row = b.mul(b.add(b.mul(b.add(b.mul(n, i64(g["o"])), o), i64(g["oh"])), oy), i64(ow))
            with em.loop(ow, name="init") as ox:
                em.store(b0, k.out, b.add(row, ox))
            with em.loop(g["cg"], name="cc") as cc:
                ch = b.add(b.mul(grp, i64(g["cg"])), cc)
                plane = b.mul(b.add(b.mul(n, i64(g["c"])), ch), i64(g["h"] * g["w"]))
                wrow = b.mul(b.add(b.mul(o, i64(g["cg"])), cc), i64(g["kh"] * g["kw"]))
                for i in range(g["kh"]):
                    iy = b.add(b.mul(oy, i64(g["sh"])), i64(i * g["dh"] - g["ph"]))
                    row_ok = b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, i64(g["h"])))
                    with b.if_then(row_ok):
                        src = b.add(plane, b.mul(iy, i64(g["w"])))
                        for j in range(g["kw"]):
                            off = j * g["dw"] - g["pw"]
                            lo, hi = tap_range(ow, sw, off, g["w"])
                            if hi <= lo:
                                continue
                            wv = load_b(em, w, b.add(wrow, i64(i * g["kw"] + j)), 1, w_dtype)
                            with em.loop(hi, name="ox", start=lo) as ox:
                                v = em.load(x, b.add(src, b.add(b.mul(ox, i64(sw)), i64(off))), F32)
                                at = b.add(row, ox)
                                em.store(em.fma(v, wv, em.load(k.out, at, F32)), k.out, at)
            if k.epilogue is not None:
                with em.loop(ow, name="epi") as ox:
                    at = b.add(row, ox)
                    em.store(k.apply_epilogue(em.load(k.out, at, F32)), k.out, at)


def _conv(k: KernelContext) -> None:
    """conv2d: im2col + register-blocked GEMM per group, or direct rows for depthwise."""
    check_half_target(k.op, k.op.operands[1].type.dtype.name, k.target)
    if _uses_gemm(geometry(k.op)):
        _conv_gemm(k)
    else:
        _conv_direct(k)


kernel("conv2d", ("f32", "f32", "f32?"), pack=_pack_weights, scratch=_scratch, epilogue=True, pool=_pool_scratch)(_conv)
# 16-bit weights (the half pass): the same kernels, weights widened to f32 as they are loaded
kernel("conv2d", ("f32", "f16|bf16", "f32?"), pack=_pack_weights, scratch=_scratch, epilogue=True, pool=_pool_scratch)(
    _conv
)
