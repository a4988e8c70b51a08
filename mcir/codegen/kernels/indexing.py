"""Indexing with index tensors (``index_select``, ``gather``) and the running sum ``cumsum``.

Indices come from the graph (position ids, token positions) or are constants that the
frontend computed at trace time (advanced indexing with constant index tensors becomes an
``index_select`` on the flattened tensor). Either way they are read at run time, and an index
outside ``[0, n)`` (torch rejects negative ones here too; advanced indexing wraps them before)
makes the whole call return ``MCIR_ERR_INDEX_OUT_OF_RANGE`` before anything is written.
"""

from __future__ import annotations

import math

import llvmlite.ir as ir

from mcir.codegen.abi import ERR_INDEX_OUT_OF_RANGE
from mcir.codegen.emit import F64, I1, Emitter, i64, storage_type
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels.elementwise import cast_value, load_logical
from mcir.codegen.kernels.gemm_f32 import check_half_target, load_b
from mcir.codegen.kernels.movement import strides_of
from mcir.dtypes import DType
from mcir.dtypes import i64 as I64_DTYPE
from mcir.ops.registry import norm_axis

VALUES = "f32|int|bool"


def _index_at(em: Emitter, ptr: ir.Value, pos: ir.Value, dt: DType) -> ir.Value:
    """The index stored at ``ptr[pos]`` as i64."""
    return cast_value(em, load_logical(em, ptr, pos, dt), dt, I64_DTYPE)


def _check_all(k: KernelContext, arg: int, count: int, dt: DType, size: int) -> None:
    """Return the index error unless every one of ``count`` indices is inside ``[0, size)``."""
    em, b = k.em, k.em.b
    with em.loop_carried(count, [ir.Constant(I1, 0)], name="chk") as lp:
        idx = _index_at(em, k.args[arg], lp.index, dt)
        lp.next([b.or_(lp.values[0], b.icmp_unsigned(">=", idx, i64(size)))])  # unsigned: negative is huge
    k.fail_unless(b.not_(lp.results[0]), ERR_INDEX_OUT_OF_RANGE)


@kernel("index_select", (VALUES, "int"), can_fail=True)
def index_select(k: KernelContext) -> None:
    """y[p, i, q] = x[p, index[i], q]: one contiguous row copy of the trailing axes per index."""
    em, b = k.em, k.em.b
    x, idx = k.operand_types
    ax = norm_axis(k.op.attrs["axis"], x.rank)
    size = x.shape[ax]
    pre, post, m = math.prod(x.shape[:ax]), math.prod(x.shape[ax + 1 :]), idx.numel
    _check_all(k, 1, m, idx.dtype, size)
    elem = storage_type(x.dtype)
    with em.loop(pre, name="pre") as p, em.loop(m, name="idx") as i:
        row = _index_at(em, k.args[1], i, idx.dtype)
        src = b.mul(b.add(b.mul(p, i64(size)), row), i64(post))
        dst = b.mul(b.add(b.mul(p, i64(m)), i), i64(post))
        with em.loop(post, name="col") as j:
            em.store(em.load(k.args[0], b.add(src, j), elem), k.out, b.add(dst, j))


@kernel("gather", (VALUES, "int"), can_fail=True)
def gather(k: KernelContext) -> None:
    """y[i, j] = x[index[i, j], j] (axis 0): walk index's shape, read x at the index along ``axis``."""
    em, b = k.em, k.em.b
    x, idx = k.operand_types
    if x.rank == 0:
        em.store(em.load(k.args[0], 0, storage_type(x.dtype)), k.out, 0)
        return
    ax = norm_axis(k.op.attrs["axis"], x.rank)
    size = x.shape[ax]
    _check_all(k, 1, idx.numel, idx.dtype, size)
    xs, ys = strides_of(x.shape), strides_of(idx.shape)
    elem = storage_type(x.dtype)

    def level(d: int, xo: ir.Value, yo: ir.Value) -> None:
        if d == idx.rank:
            at = _index_at(em, k.args[1], yo, idx.dtype)
            em.store(em.load(k.args[0], b.add(xo, b.mul(at, i64(xs[ax]))), elem), k.out, yo)
            return
        with em.loop(idx.shape[d], name=f"g{d}") as i:
            step = b.mul(i, i64(xs[d])) if d != ax else i64(0)
            level(d + 1, b.add(xo, step), b.add(yo, b.mul(i, i64(ys[d]))))

    level(0, i64(0), i64(0))


@kernel("cumsum", ("f32|int",))
def cumsum(k: KernelContext) -> None:
    """y[p, i, q] = sum_{j<=i} x[p, j, q]; floats accumulate in f64 (as the reference), integers wrap."""
    em, b = k.em, k.em.b
    x = k.operand_types[0]
    if x.rank == 0:
        em.store(em.load(k.args[0], 0, storage_type(x.dtype)), k.out, 0)
        return
    ax = norm_axis(k.op.attrs["axis"], x.rank)
    n = x.shape[ax]
    pre, post = math.prod(x.shape[:ax]), math.prod(x.shape[ax + 1 :])
    elem = storage_type(x.dtype)
    acc_ty = F64 if x.dtype.is_float else elem
    with em.loop(pre, name="pre") as p, em.loop(post, name="post") as q:
        base = b.add(b.mul(p, i64(n * post)), q)
        with em.loop_carried(n, [ir.Constant(acc_ty, 0)], name="scan") as lp:
            at = b.add(base, b.mul(lp.index, i64(post)))
            v = em.load(k.args[0], at, elem)
            if x.dtype.is_float:
                acc = b.fadd(lp.values[0], b.fpext(v, F64))
                em.store(b.fptrunc(acc, elem), k.out, at)
            else:
                acc = b.add(lp.values[0], v)
                em.store(acc, k.out, at)
            lp.next([acc])


@kernel("embedding", ("int", "f16|bf16"), can_fail=True)
def embedding_half(k: KernelContext) -> None:
    """y[i, :] = f32(table[indices[i], :]) for a table stored in f16/bf16 (the half pass)."""
    em, b = k.em, k.em.b
    idx_t, table = k.operand_types
    num, dim = table.shape
    dtype = table.dtype.name
    check_half_target(k.op, dtype, k.target)
    _check_all(k, 0, idx_t.numel, idx_t.dtype, num)
    with em.loop(idx_t.numel, name="row") as i:
        src = b.mul(_index_at(em, k.args[0], i, idx_t.dtype), i64(dim))
        dst = b.mul(i, i64(dim))
        with em.loop(dim, name="col") as j:
            em.store(load_b(em, k.args[1], b.add(src, j), 1, dtype), k.out, b.add(dst, j))
