"""Explicit-vector loops over one contiguous row of f32: reductions (max, sum) and maps.

Softmax, layer norm and attention spend their time in these. LLVM does not vectorise
a NaN-propagating max reduction on its own, so they are written with full vectors and
one masked vector for the tail (no scalar remainder loop, no read past the row).
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from mcir.codegen.emit import F32, REASSOC, Emitter, const, i64, vec

VecFn = Callable[[ir.Value, ir.Value], ir.Value]  # (vector of values, index of lane 0) -> vector


def _tail_mask(lanes: int, valid: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(ir.IntType(1), lanes), [int(i < valid) for i in range(lanes)])


def reduce_row(
    em: Emitter, ptr: ir.Value, n: int, lanes: int, kind: str, fn: Callable[[ir.Value], ir.Value] | None = None
) -> ir.Value:
    """max or sum over ``fn(row[i])`` for i < n (``fn`` maps a vector; default identity)."""
    b = em.b
    vt = vec(F32, lanes)
    ident = float("-inf") if kind == "max" else 0.0
    fn = fn or (lambda v: v)

    def combine(acc: ir.Value, v: ir.Value) -> ir.Value:
        return em.fmax(acc, v) if kind == "max" else b.fadd(acc, v, flags=REASSOC)

    full, tail = divmod(n, lanes)
    acc = const(vt, ident)
    if full:
        with em.loop_carried(full, [acc], name="rv") as lp:
            v = fn(em.load(ptr, b.mul(lp.index, i64(lanes)), vt))
            lp.next([combine(lp.values[0], v)])
        acc = lp.results[0]
    if tail:
        v = fn(em.masked_load(ptr, i64(full * lanes), vt, tail, ident))
        # lanes past the row must stay neutral after fn too
        v = b.select(_tail_mask(lanes, tail), v, const(vt, ident))
        acc = combine(acc, v)
    name = "llvm.vector.reduce.fmaximum" if kind == "max" else "llvm.vector.reduce.fadd"
    if kind == "max":
        red = em.intrinsic(name, [vt], F32, [vt])
        return b.call(red, [acc])
    red = em.intrinsic(name, [vt], F32, [F32, vt])
    return b.call(red, [const(F32, -0.0), acc], fastmath=REASSOC)


def map_row(
    em: Emitter, src: ir.Value, dst: ir.Value, n: int, lanes: int, fn: Callable[[ir.Value, ir.Value], ir.Value]
) -> None:
    """dst[i] = fn(src[i] vector, i64 index of its first lane) for i < n."""
    b = em.b
    vt = vec(F32, lanes)
    full, tail = divmod(n, lanes)
    if full:
        with em.loop(full, name="mv") as i:
            off = b.mul(i, i64(lanes))
            em.store(fn(em.load(src, off, vt), off), dst, off)
    if tail:
        off = i64(full * lanes)
        em.masked_store(fn(em.masked_load(src, off, vt, tail), off), dst, off, tail)
