"""Scaled dot-product attention: ``softmax(q @ k^T * scale + mask) @ v`` per batch index.

For each (batch, head): pack ``k^T`` into GEMM panels (a transposing pack), one GEMM
for the scores with the scale fused into its store, the mask / causal mask and the
softmax on each score row (in the scratch, never written to memory the caller sees),
pack ``v``, and one GEMM into the output. The L x S score matrix lives in the op's
scratch, which the memory plan overlaps with buffers that are dead at this point.

Threads: the (batch, head) indices are independent, so they are split through the parallel
hook; each task works in its own copy of the scratch (``SLOTS`` copies when the op is large
enough to split), and every output element is computed by the same instructions whatever the
split (bit-identical for any thread count).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import llvmlite.ir as ir

from mcir.codegen.emit import F32, I8, Emitter, const, i64
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels.gemm_f32 import GemmArgs, batch_strides, choose_tiling, emit_gemm, emit_pack_b, packed_b_bytes
from mcir.codegen.kernels.norm import softmax_row
from mcir.codegen.memory_plan import align_up
from mcir.codegen.parallel import MIN_PARALLEL_MACS, parallel_for
from mcir.codegen.target import Target
from mcir.ir import Op
from mcir.ops.registry import broadcast_shapes


def sdpa_dims(op: Op):
    """(batch shape, L, S, E, Ev) of a scaled_dot_product_attention op."""
    q, k, v = (o.type.shape for o in op.operands[:3])
    batch = op.result.type.shape[:-2]
    return batch, q[-2], k[-2], q[-1], v[-1]


def _layout(op: Op, target: Target) -> tuple[int, int, int, int]:
    """Byte offsets of (packed k^T, scores, packed v) in the scratch, and its size."""
    _, L, S, E, Ev = sdpa_dims(op)
    t1 = choose_tiling(L, S, E, target)
    t2 = choose_tiling(L, Ev, S, target)
    kb = align_up(packed_b_bytes(E, S, t1.nr))
    sb = align_up(L * S * 4)
    vb = align_up(packed_b_bytes(S, Ev, t2.nr))
    return 0, kb, kb + sb, kb + sb + vb


# Scratch copies for concurrent tasks: at most this many tasks run one op's (batch, head) indices
SLOTS = 8


def sdpa_macs(op: Op) -> int:
    """Multiply-adds of both products (q k^T and p v) over every (batch, head)."""
    batch, L, S, E, Ev = sdpa_dims(op)
    return math.prod(batch) * L * S * (E + Ev)


def sdpa_slots(op: Op) -> int:
    """Scratch copies: one per task when the op is large enough to split, else one."""
    total = math.prod(sdpa_dims(op)[0])
    return min(SLOTS, total) if total > 1 and sdpa_macs(op) >= MIN_PARALLEL_MACS else 1


def _scratch(op: Op, target: Target) -> int:
    return sdpa_slots(op) * _layout(op, target)[3]


def _sdpa(k: KernelContext) -> None:
    """Attention per batch index with GEMM micro-kernels and a vectorised row softmax."""
    em = k.em
    op = k.op
    batch, L, S, E, Ev = sdpa_dims(op)
    scale = op.attrs["scale"] if op.attrs["scale"] is not None else 1.0 / math.sqrt(E)
    t1 = choose_tiling(L, S, E, k.target)
    t2 = choose_tiling(L, Ev, S, k.target)
    ko, so, vo, _ = _layout(op, k.target)
    shapes = [o.type.shape for o in op.operands]
    strides = [batch_strides(s, batch) for s in shapes[:3]]
    mask_t = op.operands[3].type if len(op.operands) > 3 else None
    mst = mask_strides(mask_t, batch, L, S)
    total = math.prod(batch)
    slot_bytes = _layout(op, k.target)[3]
    pointers = [*k.args[:3], k.out, k.scratch] + ([k.args[3]] if mask_t is not None else [])

    def heads(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value, slot: ir.Value) -> None:
        """(batch, head) indices ``[lo, hi)`` in scratch copy ``slot``."""
        b = em.b
        qa, ka, va, out, scratch = p[:5]
        mask = p[5] if mask_t is not None else None
        base = em.byte_offset(scratch, b.mul(slot, i64(slot_bytes)))
        kpack, scores, vpack = (em.byte_offset(base, o) for o in (ko, so, vo))
        with em.loop(hi, name="bh", start=lo) as bi:
            *offs, moff = em.batch_offsets(bi, batch, [*strides, mst])
            qp, kp, vp = (em.gep(a, o, F32) for a, o in zip((qa, ka, va), offs))
            # scores = q @ k^T * scale
            emit_pack_b(em, kp, 1, E, E, S, t1.nr, kpack)
            emit_probabilities(k, em, qp, kpack, scores, t1, scale, mask_t, mask, moff, mst)
            emit_pack_b(em, vp, Ev, 1, S, Ev, t2.nr, vpack)
            emit_gemm(em, GemmArgs(L, Ev, S, scores, S, 1, vpack, em.gep(out, b.mul(bi, i64(L * Ev)), F32), Ev), t2)

    # sdpa_slots is 1 exactly when parallel_for keeps the op inline (one index, or too little work)
    parallel_for(em, "attention", total, sdpa_macs(op), pointers, heads, slots=sdpa_slots(op))


def mask_strides(mask_t, batch: tuple[int, ...], L: int, S: int) -> list[int]:
    """Element strides of a broadcast attention mask over ``batch + (L, S)`` (0 on broadcast axes);
    all zeros over the batch axes when there is no mask."""
    if mask_t is None:
        return [0] * len(batch)
    full = broadcast_shapes(mask_t.shape, batch + (L, S))
    mshape = (1,) * (len(full) - mask_t.rank) + mask_t.shape
    mst, acc = [0] * len(full), 1
    for d in range(len(full) - 1, -1, -1):
        mst[d] = 0 if mshape[d] == 1 else acc
        acc *= mshape[d]
    return mst


def emit_probabilities(
    k: KernelContext,
    em: Emitter,
    q: ir.Value,
    kpack: ir.Value,
    scores: ir.Value,
    t1,
    scale: float,
    mask_t,
    mask: ir.Value | None,
    moff: ir.Value,
    mst: list[int],
    after_row: Callable[[Emitter, ir.Value], None] | None = None,
) -> None:
    """``scores[L, S] = softmax(mask(q @ K^T * scale))`` for one (batch, head): the f32 GEMM with the
    scale in its epilogue, then per row the mask (causal and/or additive/boolean) and the softmax
    (fully masked rows give zeros); ``after_row(em, row)`` runs on each finished row."""
    _, L, S, E, _ = sdpa_dims(k.op)
    causal = k.op.attrs["is_causal"]
    lanes = k.target.f32_lanes
    emit_gemm(
        em,
        GemmArgs(L, S, E, q, E, 1, kpack, scores, S, epilogue=lambda em, v: em.b.fmul(v, const(v.type, scale))),
        t1,
    )
    with em.loop(L, name="qi") as qi:
        row = em.gep(scores, em.b.mul(qi, i64(S)), F32)
        if causal or mask_t is not None:
            mask_row(k, em, row, qi, S, causal, mask_t, mask, moff, mst if mask_t is not None else None)
        softmax_row(em, row, row, S, lanes, log=False, masked_rows_zero=True)
        if after_row is not None:
            after_row(em, row)


def mask_row(k: KernelContext, em: Emitter, row: ir.Value, qi: ir.Value, S: int, causal: bool, mask_t, mask, moff, mst):
    """Apply the causal mask and/or the given (bool or additive) mask to one score row."""
    b = em.b
    ninf = const(F32, float("-inf"))
    lanes = k.target.f32_lanes
    start = 0
    if mask_t is not None and not causal and mst[-1] == 1 and lanes > 1 and lanes <= S:
        # a contiguous mask row (the usual [B, 1, L, S] padding mask): whole vectors of scores and
        # mask bytes at once; LLVM does not vectorise the scalar loop below (the score row and
        # the mask might alias as far as it knows)
        base = b.add(moff, b.mul(qi, i64(mst[-2])))
        vf, vb = ir.VectorType(F32, lanes), ir.VectorType(I8, lanes)
        vninf = const(vf, float("-inf"))
        full = S - S % lanes
        with em.loop(full, name="kv", step=lanes) as j:
            sv = em.load(row, j, vf)
            if mask_t.dtype.name == "bool":
                keep = b.icmp_unsigned("!=", em.load(mask, b.add(base, j), vb), const(vb, 0))
                sv = b.select(keep, sv, vninf)
            else:
                sv = b.fadd(sv, em.load(mask, b.add(base, j), vf))
            em.store(sv, row, j)
        start = full
    if start == S:
        return
    with em.loop(S, name="kj", start=start) as j:
        s = em.load(row, j, F32)
        if causal:
            s = b.select(b.icmp_signed(">", j, qi), ninf, s)
        if mask_t is not None:
            off = b.add(moff, b.add(b.mul(qi, i64(mst[-2])), b.mul(j, i64(mst[-1]))))
            if mask_t.dtype.name == "bool":
                keep = b.icmp_unsigned("!=", em.load(mask, off, I8), ir.Constant(I8, 0))
                s = b.select(keep, s, ninf)
            else:
                s = b.fadd(s, em.load(mask, off, F32))
        em.store(s, row, j)


kernel("scaled_dot_product_attention", ("f32", "f32", "f32", "bool|f32?"), scratch=_scratch)(_sdpa)
