"""Data movement: permute, slice, select, expand, concat, pad, and embedding lookup.

All of them are strided copies: loop over the destination, read the source with
per-axis strides (0 for a broadcast axis). Axes that both sides walk contiguously are
merged first, so a slice of whole rows is one long vectorisable loop. ``reshape`` and
``dropout`` never get here: they are views (``memory_plan``).
"""

from __future__ import annotations

import math

import llvmlite.ir as ir

from mcir.codegen.abi import ERR_INDEX_OUT_OF_RANGE
from mcir.codegen.emit import I1, Emitter, i64, storage_type
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels.elementwise import cast_value, load_logical
from mcir.codegen.parallel import ELEMENT_WORK, parallel_for
from mcir.dtypes import DType
from mcir.ops.registry import norm_axis


def strides_of(shape: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


def strided_copy(
    em: Emitter,
    elem: ir.Type,
    src: ir.Value,
    src_off: int,
    src_strides: list[int],
    dst: ir.Value,
    dst_off: int,
    dst_strides: list[int],
    shape: tuple[int, ...],
) -> None:
    """dst[dst_off + sum i_d*dst_strides[d]] = src[src_off + sum i_d*src_strides[d]] over ``shape``
    (split through the parallel hook over the outermost loop, or the outer two, when large: a copy is
    exact anyway)."""
    dims = [(n, s, d) for n, s, d in zip(shape, src_strides, dst_strides) if n != 1]
    merged: list[tuple[int, int, int]] = []
    for n, s, d in dims:
        if merged and merged[-1][1] == s * n and merged[-1][2] == d * n:
            merged[-1] = (merged[-1][0] * n, s, d)
        else:
            merged.append((n, s, d))
    if math.prod(shape) == 0:
        return

    # the split runs over the outermost loop, or the outer two as one when the outermost is short (the
    # q/k/v axis of attention's head split has 3): few units would share out unevenly
    fused = len(merged) >= 2 and merged[0][0] < 16
    inner_n = merged[1][0] if fused else 1

    def run(em: Emitter, ptrs: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
        b = em.b

        def level(k: int, so: ir.Value, do: ir.Value) -> None:
            if k == len(merged):
                em.store(em.load(ptrs[0], so, elem), ptrs[1], do)
                return
            n, s, d = merged[k]
            with em.loop(n, name=f"c{k}") as i:
                level(k + 1, b.add(so, b.mul(i, i64(s))) if s else so, b.add(do, b.mul(i, i64(d))))

        def at(k: int, i: ir.Value, so: ir.Value, do: ir.Value) -> tuple[ir.Value, ir.Value]:
            _, s, d = merged[k]
            return (b.add(so, b.mul(i, i64(s))) if s else so), b.add(do, b.mul(i, i64(d)))

        if not merged:  # a single element
            level(0, i64(src_off), i64(dst_off))
            return
        with em.loop(hi, name="cu", start=lo) as u:
            if fused:
                so, do = at(0, b.sdiv(u, i64(inner_n)), i64(src_off), i64(dst_off))
                level(2, *at(1, b.srem(u, i64(inner_n)), so, do))
            else:
                level(1, *at(0, u, i64(src_off), i64(dst_off)))

    units = (merged[0][0] * inner_n) if merged else 1
    parallel_for(em, "copy", units, math.prod(shape) * ELEMENT_WORK, [src, dst], run)


def _elem(k: KernelContext) -> ir.Type:
    return storage_type(k.result_type.dtype)


@kernel("permute", ("any",))
def permute(k: KernelContext) -> None:
    """y = x with reordered axes: a strided read, contiguous write."""
    x = k.operand_types[0]
    xs = strides_of(x.shape)
    dims = [d % x.rank for d in k.op.attrs["dims"]]
    out = k.result_type.shape
    strided_copy(k.em, _elem(k), k.args[0], 0, [xs[d] for d in dims], k.out, 0, strides_of(out), out)


@kernel("slice", ("any",))
def slice_(k: KernelContext) -> None:
    """y = x[..., start:end:step, ...] along one axis."""
    x = k.operand_types[0]
    a = k.op.attrs
    ax = norm_axis(a["axis"], x.rank)
    start, _, step = slice(a["start"], a["end"], a["step"]).indices(x.shape[ax])
    xs = strides_of(x.shape)
    src = list(xs)
    src[ax] *= step
    out = k.result_type.shape
    strided_copy(k.em, _elem(k), k.args[0], start * xs[ax], src, k.out, 0, strides_of(out), out)


@kernel("select", ("any",))
def select(k: KernelContext) -> None:
    """y = x[..., index, ...]: the axis disappears."""
    x = k.operand_types[0]
    ax = norm_axis(k.op.attrs["axis"], x.rank)
    index = k.op.attrs["index"] % x.shape[ax]
    xs = strides_of(x.shape)
    out = k.result_type.shape
    strided_copy(k.em, _elem(k), k.args[0], index * xs[ax], xs[:ax] + xs[ax + 1 :], k.out, 0, strides_of(out), out)


@kernel("expand", ("any",))
def expand(k: KernelContext) -> None:
    """y = x broadcast to a larger shape (stride 0 on repeated axes)."""
    x = k.operand_types[0]
    out = k.result_type.shape
    full = (1,) * (len(out) - x.rank) + x.shape
    xs = strides_of(full)
    src = [0 if full[d] == 1 and out[d] != 1 else xs[d] for d in range(len(out))]
    strided_copy(k.em, _elem(k), k.args[0], 0, src, k.out, 0, strides_of(out), out)


@kernel("concat", ("any*",))
def concat(k: KernelContext) -> None:
    """y = inputs joined along an axis: one strided copy per input into its slot."""
    out = k.result_type.shape
    ax = norm_axis(k.op.attrs["axis"], len(out))
    os_ = strides_of(out)
    pos = 0
    for arg, t in zip(k.args, k.operand_types):
        strided_copy(k.em, _elem(k), arg, 0, strides_of(t.shape), k.out, pos * os_[ax], os_, t.shape)
        pos += t.shape[ax]


@kernel("pad", ("any",))
def pad(k: KernelContext) -> None:
    """y = x with constant padding (negative pads crop): fill, then copy the kept region."""
    em = k.em
    x = k.operand_types[0]
    out = k.result_type.shape
    pads = k.op.attrs["pads"]
    dt: DType = k.result_type.dtype
    value = k.op.attrs["value"]
    ety = storage_type(dt)
    if dt.is_float:
        fill = ir.Constant(ety, float(value))
    else:
        fill = ir.Constant(ety, int(bool(value)) if dt.name == "bool" else int(value))
    with em.loop(math.prod(out), name="fill") as i:
        em.store(fill, k.out, i)
    xs, os_ = strides_of(x.shape), strides_of(out)
    src_off = dst_off = 0
    region = []
    for d in range(x.rank):
        before, after = pads[2 * d], pads[2 * d + 1]
        lo = max(-before, 0)
        hi = x.shape[d] - max(-after, 0)
        region.append(max(hi - lo, 0))
        src_off += lo * xs[d]
        dst_off += max(before, 0) * os_[d]
    if all(region):
        strided_copy(em, _elem(k), k.args[0], src_off, xs, k.out, dst_off, os_, tuple(region))


def _check_indices(k: KernelContext, n_idx: int, dt: DType, num: int) -> None:
    """Fail with MCIR_ERR_INDEX_OUT_OF_RANGE unless every index is in [0, num)."""
    em, b = k.em, k.em.b
    with em.loop_carried(n_idx, [ir.Constant(I1, 0)], name="chk") as lp:
        idx = cast_value(em, load_logical(em, k.args[0], lp.index, dt), dt, _I64)
        bad = b.icmp_unsigned(">=", idx, i64(num))  # unsigned: negative indices are huge
        lp.next([b.or_(lp.values[0], bad)])
    k.fail_unless(b.not_(lp.results[0]), ERR_INDEX_OUT_OF_RANGE)


_I64 = DType("i64", 64, "int")


@kernel("embedding", ("int", "any"), can_fail=True)
def embedding(k: KernelContext) -> None:
    """y[i, :] = table[indices[i], :]; any index outside the table returns an error, nothing written."""
    em, b = k.em, k.em.b
    idx_t, table = k.operand_types
    num, dim = table.shape
    _check_indices(k, idx_t.numel, idx_t.dtype, num)
    elem = storage_type(table.dtype)
    with em.loop(idx_t.numel, name="row") as i:
        idx = cast_value(em, load_logical(em, k.args[0], i, idx_t.dtype), idx_t.dtype, _I64)
        src = b.mul(idx, i64(dim))
        dst = b.mul(i, i64(dim))
        with em.loop(dim, name="col") as j:
            em.store(em.load(k.args[1], b.add(src, j), elem), k.out, b.add(dst, j))
