"""Reductions over axes: sum, mean, amax, and argmax along one axis.

The iteration space splits into kept axes (one output element each) and reduced axes
(an accumulator loop nest). Both are collapsed where contiguous; when the reduced axes
are innermost (global average pooling, feature means) the accumulator loop is unit
stride and vectorises (``reassoc`` on the float adds).
"""

from __future__ import annotations

import llvmlite.ir as ir

from mcir.codegen.emit import F32, F64, REASSOC, Emitter, const, i64, is_signed, storage_type
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels.movement import strides_of
from mcir.ops.nn import reduced_axes
from mcir.ops.registry import norm_axis


def _collapse(dims: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for n, s in dims:
        if n == 1:
            continue
        if out and out[-1][1] == s * n:
            out[-1] = (out[-1][0] * n, s)
        else:
            out.append((n, s))
    return out


def _nest(em: Emitter, dims: list[tuple[int, int]], body, name: str) -> None:
    """Loops over ``dims`` (size, input stride); body(input offset, output offset), output row-major."""
    b = em.b
    out_strides = []
    acc = 1
    for n, _ in reversed(dims):
        out_strides.append(acc)
        acc *= n
    out_strides.reverse()

    def level(k: int, off: ir.Value, oo: ir.Value) -> None:
        if k == len(dims):
            body(off, oo)
            return
        n, s = dims[k]
        with em.loop(n, name=f"{name}{k}") as i:
            level(k + 1, b.add(off, b.mul(i, i64(s))), b.add(oo, b.mul(i, i64(out_strides[k]))))

    level(0, i64(0), i64(0))


def _reduce_gen(k: KernelContext) -> None:
    """sum / mean / amax over ``axes`` (all axes when empty)."""
    em, b = k.em, k.em.b
    x = k.operand_types[0]
    dt = x.dtype
    axes = k.op.attrs["axes"]
    red = reduced_axes(x, axes)
    xs = strides_of(x.shape)
    kept = _collapse([(x.shape[d], xs[d]) for d in range(x.rank) if d not in red])
    rdims = _collapse([(x.shape[d], xs[d]) for d in red])
    count = 1
    for d in red:
        count *= x.shape[d]
    ety = storage_type(dt)
    kind = k.op.name
    # float sums accumulate in f64 (like the reference): a long sum that cancels to a small
    # value would otherwise carry f32 rounding errors of the size of its terms
    wide = dt.is_float and kind != "amax"
    if dt.is_float:
        init = const(F64, 0.0) if wide else const(F32, float("-inf"))
    else:
        init = ir.Constant(ety, (-(1 << (ety.width - 1)) if is_signed(dt) else 0) if kind == "amax" else 0)

    def combine(acc: ir.Value, v: ir.Value) -> ir.Value:
        if kind == "amax":
            if dt.is_float:
                return em.fmax(acc, v)
            cmp = b.icmp_signed if is_signed(dt) else b.icmp_unsigned
            return b.select(cmp(">", v, acc), v, acc)
        if wide:
            return b.fadd(acc, b.fpext(v, F64), flags=REASSOC)
        return b.add(acc, v)

    def per_output(base: ir.Value, out_off: ir.Value) -> None:
        # the reduction nest carries the accumulator through every level
        def level(d: int, off: ir.Value, acc: ir.Value) -> ir.Value:
            if d == len(rdims):
                return combine(acc, em.load(k.args[0], off, ety))
            n, s = rdims[d]
            with em.loop_carried(n, [acc], name=f"r{d}") as lp:
                lp.next([level(d + 1, b.add(off, b.mul(lp.index, i64(s))), lp.values[0])])
            return lp.results[0]

        acc = level(0, base, init)
        if kind == "mean":
            acc = b.fdiv(acc, const(F64, float(count)))  # mean is float-only (its type rule)
        if wide:
            acc = b.fptrunc(acc, F32)
        em.store(acc, k.out, out_off)

    _nest(em, kept, per_output, "o")


kernel("sum", ("f32|int",))(_reduce_gen)
kernel("amax", ("f32|int",))(_reduce_gen)
kernel("mean", ("f32",))(_reduce_gen)


@kernel("argmax", ("f32|int",))
def argmax(k: KernelContext) -> None:
    """Index (i64) of the first maximum along ``axis``; NaN wins like numpy."""
    em, b = k.em, k.em.b
    x = k.operand_types[0]
    if x.rank == 0:  # the index of the only element
        k.em.store(i64(0), k.out, 0)
        return
    ax = norm_axis(k.op.attrs["axis"], x.rank)
    outer = 1
    for d in x.shape[:ax]:
        outer *= d
    n = x.shape[ax]
    inner = 1
    for d in x.shape[ax + 1 :]:
        inner *= d
    ety = storage_type(x.dtype)
    with em.loop(outer, name="o") as o, em.loop(inner, name="i") as i:
        base = b.add(b.mul(o, i64(n * inner)), i)
        first = em.load(k.args[0], base, ety)
        with em.loop_carried(n, [first, i64(0)], name="j", start=1) as lp:
            best, bi = lp.values
            v = em.load(k.args[0], b.add(base, b.mul(lp.index, i64(inner))), ety)
            if x.dtype.is_float:
                better = b.or_(
                    b.fcmp_ordered(">", v, best),
                    b.and_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("ord", best, best)),
                )
            else:
                better = (b.icmp_signed if is_signed(x.dtype) else b.icmp_unsigned)(">", v, best)
            lp.next([b.select(better, v, best), b.select(better, lp.index, bi)])
        em.store(lp.results[1], k.out, b.add(b.mul(o, i64(inner)), i))
