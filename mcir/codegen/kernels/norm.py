"""Normalisation kernels: softmax, log_softmax, layer_norm, batch_norm (inference).

Softmax and layer norm work on rows. When the normalised axes are the innermost
(the common case: attention scores, hidden vectors) each row is contiguous and the
explicit-vector helpers of ``rows`` do the work. Softmax along an outer axis walks
``inner`` interleaved rows at once, keeping running maxima and sums in scratch.
"""

from __future__ import annotations

import math

import llvmlite.ir as ir

from mcir.codegen.emit import F32, Emitter, const, i64
from mcir.codegen.kernels import KernelContext, kernel, math_approx
from mcir.codegen.kernels.rows import map_row, reduce_row
from mcir.codegen.memory_plan import align_up
from mcir.codegen.parallel import ELEMENT_WORK, MIN_PARALLEL_MACS, parallel_for
from mcir.codegen.target import Target
from mcir.ir import Op
from mcir.ops.registry import norm_axis

# a softmax element costs an exp (twice on the row path) on top of the memory traffic of an element-wise op
SOFTMAX_WORK = 2 * ELEMENT_WORK


def _split(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """(outer, n, inner) sizes around ``axis``; a scalar is one row of one element."""
    if not shape:
        return 1, 1, 1
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


def softmax_row(
    em: Emitter, src: ir.Value, dst: ir.Value, n: int, lanes: int, log: bool, masked_rows_zero: bool = False
) -> None:
    """dst = softmax(src) (or log_softmax) of one contiguous row.

    ``masked_rows_zero``: a row that is all -inf gives zeros (attention's rule, torch's
    _safe_softmax) instead of the 0/0 = NaN of a plain softmax.
    """
    b = em.b
    mx = reduce_row(em, src, n, lanes, "max")
    all_masked = b.fcmp_ordered("==", mx, const(F32, float("-inf")))
    # an all -inf row: subtract 0 instead of -inf, as the reference does (result nan for softmax)
    mx = b.select(all_masked, const(F32, 0.0), mx)
    mxv = em.splat(mx, lanes)
    if log:
        total = reduce_row(em, src, n, lanes, "sum", lambda v: math_approx.exp(em, b.fsub(v, mxv)))
        shift = em.splat(b.fadd(mx, math_approx.log(em, total)), lanes)
        map_row(em, src, dst, n, lanes, lambda v, _: b.fsub(v, shift))
        return
    total = reduce_row(em, src, n, lanes, "sum", lambda v: math_approx.exp(em, b.fsub(v, mxv)))
    # exp once more instead of storing it in the first pass: the row is in L1 and the
    # second read is cheaper than a write + read of the intermediate
    inv = b.fdiv(const(F32, 1.0), total)
    if masked_rows_zero:
        inv = b.select(all_masked, const(F32, 0.0), inv)
    inv = em.splat(inv, lanes)
    map_row(em, src, dst, n, lanes, lambda v, _: b.fmul(math_approx.exp(em, b.fsub(v, mxv)), inv))


# Scratch copies (running maxima and sums) for concurrent tasks of a softmax along an outer axis
SOFTMAX_SLOTS = 8


def _softmax_slots(op: Op) -> int:
    t = op.operands[0].type
    outer, _, _ = _split(t.shape, norm_axis(op.attrs["axis"], t.rank))
    return min(SOFTMAX_SLOTS, outer) if outer > 1 and t.numel * SOFTMAX_WORK >= MIN_PARALLEL_MACS else 1


def _softmax_scratch(op: Op, target: Target) -> int:
    t = op.operands[0].type
    _, _, inner = _split(t.shape, norm_axis(op.attrs["axis"], t.rank))
    return 0 if inner == 1 else _softmax_slots(op) * align_up(2 * inner * 4)


def _softmax_gen(k: KernelContext) -> None:
    """softmax / log_softmax along one axis; rows (or outer blocks) split across threads, each computed by
    one task exactly as on one thread."""
    em = k.em
    t = k.operand_types[0]
    outer, n, inner = _split(t.shape, norm_axis(k.op.attrs["axis"], t.rank))
    log = k.op.name == "log_softmax"
    lanes = k.target.f32_lanes
    work = t.numel * SOFTMAX_WORK
    if inner == 1:

        def rows(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
            b = em.b
            with em.loop(hi, name="row", start=lo) as r:
                off = b.mul(r, i64(n))
                softmax_row(em, em.gep(p[0], off, F32), em.gep(p[1], off, F32), n, lanes, log)

        parallel_for(em, k.op.name, outer, work, [k.args[0], k.out], rows)
        return
    slot_bytes = align_up(2 * inner * 4)

    def blocks(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value, slot: ir.Value) -> None:
        """Outer blocks ``[lo, hi)``, with running maxima and sums in scratch copy ``slot``."""
        b = em.b
        x, y, scratch = p
        mx = em.byte_offset(scratch, b.mul(slot, i64(slot_bytes)))
        sm = em.gep(mx, inner, F32)
        with em.loop(hi, name="o", start=lo) as o:
            base = b.mul(o, i64(n * inner))
            with em.loop(inner, name="i0") as i:
                em.store(const(F32, float("-inf")), mx, i)
                em.store(const(F32, 0.0), sm, i)
            with em.loop(n, name="j") as j, em.loop(inner, name="i") as i:
                v = em.load(x, b.add(base, b.add(b.mul(j, i64(inner)), i)), F32)
                em.store(em.fmax(em.load(mx, i, F32), v), mx, i)
            with em.loop(inner, name="i1") as i:
                m = em.load(mx, i, F32)
                em.store(b.select(b.fcmp_ordered("==", m, const(F32, float("-inf"))), const(F32, 0.0), m), mx, i)
            with em.loop(n, name="j") as j, em.loop(inner, name="i") as i:
                off = b.add(base, b.add(b.mul(j, i64(inner)), i))
                e = math_approx.exp(em, b.fsub(em.load(x, off, F32), em.load(mx, i, F32)))
                em.store(b.fadd(em.load(sm, i, F32), e), sm, i)
                if not log:
                    em.store(e, y, off)
            with em.loop(n, name="j") as j, em.loop(inner, name="i") as i:
                off = b.add(base, b.add(b.mul(j, i64(inner)), i))
                s = em.load(sm, i, F32)
                if log:
                    v = b.fsub(b.fsub(em.load(x, off, F32), em.load(mx, i, F32)), math_approx.log(em, s))
                else:
                    v = b.fdiv(em.load(y, off, F32), s)
                em.store(v, y, off)

    parallel_for(em, k.op.name, outer, work, [k.args[0], k.out, k.scratch], blocks, slots=_softmax_slots(k.op))


kernel("softmax", ("f32",), scratch=_softmax_scratch)(_softmax_gen)
kernel("log_softmax", ("f32",), scratch=_softmax_scratch)(_softmax_gen)


def layer_norm_row(
    em: Emitter, src: ir.Value, dst: ir.Value, d: int, lanes: int, w: ir.Value | None, bias: ir.Value | None, eps: float
) -> None:
    """dst = (src - mean) / sqrt(var + eps) * w + bias over one contiguous f32 row of ``d`` (two-pass
    variance); ``dst`` may be ``src``. The int8 layer norm (norm_i8.py) runs it on a decoded row."""
    b = em.b
    vt = ir.VectorType(F32, lanes)
    mean = b.fmul(reduce_row(em, src, d, lanes, "sum"), const(F32, 1.0 / d))
    mv = em.splat(mean, lanes)
    var = reduce_row(em, src, d, lanes, "sum", lambda v: b.fmul(b.fsub(v, mv), b.fsub(v, mv)))
    var = b.fmul(var, const(F32, 1.0 / d))
    rstd = em.splat(b.fdiv(const(F32, 1.0), em.call_unary("sqrt", b.fadd(var, const(F32, eps)))), lanes)

    def norm(v: ir.Value, i: ir.Value) -> ir.Value:
        y = b.fmul(b.fsub(v, mv), rstd)
        if w is not None:
            y = b.fmul(y, em.load(w, i, vt))
        if bias is not None:
            y = b.fadd(y, em.load(bias, i, vt))
        return y

    if d % lanes == 0:
        map_row(em, src, dst, d, lanes, norm)
        return
    # weight/bias are d long: the masked tail must not read past them either
    full = d - d % lanes
    if full:
        map_row(em, src, dst, full, lanes, norm)
    with em.loop(d, name="t", start=full) as i:
        y = b.fmul(b.fsub(em.load(src, i, F32), mean), b.extract_element(rstd, ir.Constant(ir.IntType(32), 0)))
        if w is not None:
            y = b.fmul(y, em.load(w, i, F32))
        if bias is not None:
            y = b.fadd(y, em.load(bias, i, F32))
        em.store(y, dst, i)


@kernel("layer_norm", ("f32", "f32?", "f32?"))
def layer_norm(k: KernelContext) -> None:
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the trailing ``dims`` axes (two-pass variance)."""
    em = k.em
    t = k.operand_types[0]
    d = math.prod(t.shape[t.rank - k.op.attrs["dims"] :])
    rows = t.numel // max(d, 1)
    lanes = k.target.f32_lanes
    eps = k.op.attrs["eps"]

    def run(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
        """Rows ``[lo, hi)``: each row is reduced and normalised by one task (bit-identical for any split)."""
        b = em.b
        x, out = p[0], p[-1]
        w = p[1] if len(p) > 2 else None
        bias = p[2] if len(p) > 3 else None
        with em.loop(hi, name="row", start=lo) as r:
            off = b.mul(r, i64(d))
            layer_norm_row(em, em.gep(x, off, F32), em.gep(out, off, F32), d, lanes, w, bias, eps)

    parallel_for(em, "layer_norm", rows, t.numel * ELEMENT_WORK, [*k.args, k.out], run)


@kernel("batch_norm", ("f32", "f32", "f32", "f32", "f32"), epilogue=True)
def batch_norm(k: KernelContext) -> None:
    """y = x * s + t per channel, s = weight / sqrt(var + eps), t = bias - mean * s."""
    em, b = k.em, k.em.b
    t = k.operand_types[0]
    n, c = t.shape[0], t.shape[1]
    inner = math.prod(t.shape[2:])
    x, w, bias, mean, var = k.args
    eps = const(F32, k.op.attrs["eps"])
    with em.loop(n, name="n") as ni, em.loop(c, name="c") as ci:
        s = b.fdiv(em.load(w, ci, F32), em.call_unary("sqrt", b.fadd(em.load(var, ci, F32), eps)))
        sh = b.fsub(em.load(bias, ci, F32), b.fmul(em.load(mean, ci, F32), s))
        base = b.mul(b.add(b.mul(ni, i64(c)), ci), i64(inner))
        with em.loop(inner, name="p") as p:
            off = b.add(base, p)
            em.store(k.apply_epilogue(b.fadd(b.fmul(em.load(x, off, F32), s), sh)), k.out, off)
