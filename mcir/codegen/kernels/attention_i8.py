"""Scaled dot-product attention on u8/i8 q, k, v: integer products, the softmax in f32 registers.

The interpreter's meaning (``mcir/ops/nn.py``): decode q, k, v, ``p = softmax(q k^T · scale + mask)``,
with ``u8_probs`` round ``p`` to the u8 grid ``rint(255 p) / 255`` (a u8 probability tensor of scale
1/255, zero point 0), ``y = p v``, encode y into the result type. Per (batch, head) this kernel does

    S_int = (q - z_q) (k - z_k)^T          integer products: |S_int| <= E · 255²
    s     = S_int · (s_q s_k scale)          one multiply, fused into the product's store
    p     = softmax(s + mask)                the score row in f32 registers (own exp)
    P     = rint(255 p)                      integers 0..255 (u8_probs)
    Y_int = P (v - z_v)                      integer products: |Y_int| <= S · 255²
    y     = Y_int · s_v / 255  -> encode     the requantisation, one row at a time

The integer products run on the register-blocked f32 GEMM of ``gemm_f32.py`` with the centred
integers as f32 operands: every product and partial sum is an integer below 2^24 while the
reduction length is at most 258 (E, S <= 258: 258 · 255² < 2^24), so the f32 FMA computes the
int32 result exactly, in any order; longer reductions round like an f32 GEMM (2^-24 relative).
The centred operands and the score matrix live in the op's scratch; the result leaves in u8.
Against the interpreter: the scores differ by f32 rounding of one multiply, the exp by its
approximation; a probability at a rounding tie of ``255 p`` may flip by one step, which moves an
output by at most ``|v| / 255``, about one LSB of the result.

Threads: as the f32 attention, the (batch, head) indices split through the parallel hook, each
task in its own copy of the scratch (``SLOTS`` copies when the op is large enough to split); an
index is computed by the same instructions whatever the split (bit-identical for any thread count).
Before it split, this op was 41 % of the int8 encoder's 2-thread wall time at batch 32, all of it
on one core (docs/benchmarks.md, "Threads, part 3").
"""

from __future__ import annotations

import math

import llvmlite.ir as ir

from mcir.codegen.emit import F32, Emitter, const, i64, storage_type
from mcir.codegen.kernels import KernelContext, kernel, math_approx
from mcir.codegen.kernels.attention import emit_probabilities, mask_strides, sdpa_dims, sdpa_macs, sdpa_slots
from mcir.codegen.kernels.gemm_f32 import GemmArgs, batch_strides, choose_tiling, emit_gemm, emit_pack_b, packed_b_bytes
from mcir.codegen.kernels.norm_i8 import decode_row, encode_row
from mcir.codegen.kernels.quant import QUANT, QUANT_OR_F32, per_tensor
from mcir.codegen.kernels.rows import map_row
from mcir.codegen.memory_plan import align_up
from mcir.codegen.parallel import parallel_for
from mcir.codegen.target import Target
from mcir.encodings import Quant
from mcir.ir import Op


def _layout(op: Op, target: Target) -> list[int]:
    """Byte offsets in the scratch of: centred q, centred k, packed k^T, scores, centred v, packed v,
    the f32 result rows; the last entry is the total size."""
    _, L, S, E, Ev = sdpa_dims(op)
    t1, t2 = choose_tiling(L, S, E, target), choose_tiling(L, Ev, S, target)
    sizes = [L * E * 4, S * E * 4, packed_b_bytes(E, S, t1.nr), L * S * 4, S * Ev * 4, packed_b_bytes(S, Ev, t2.nr)]
    sizes.append(L * Ev * 4)
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + align_up(size))
    return offsets


def _scratch(op: Op, target: Target) -> int:
    return sdpa_slots(op) * _layout(op, target)[-1]


def _centred(enc: Quant) -> Quant:
    """Decoding with this gives the integer ``q - z`` (scale 1): the operand of an exact integer product."""
    return Quant(scale=1.0, zero_point=enc.zero_point)


def _sdpa_q(k: KernelContext) -> None:
    """Attention on quantised q, k, v per batch index: integer QK^T, f32 softmax, u8 probabilities, integer PV."""
    em = k.em
    op = k.op
    batch, L, S, E, Ev = sdpa_dims(op)
    where = op.where()
    encs = [per_tensor(t, where) for t in k.operand_types[:3]]
    dts = [t.dtype for t in k.operand_types[:3]]
    y_t = k.result_type
    y_enc = per_tensor(y_t, where) if y_t.encoding is not None else None
    scale = op.attrs["scale"] if op.attrs["scale"] is not None else 1.0 / math.sqrt(E)
    u8_probs = op.attrs["u8_probs"]
    lanes = k.target.f32_lanes
    t1, t2 = choose_tiling(L, S, E, k.target), choose_tiling(L, Ev, S, k.target)
    layout = _layout(op, k.target)
    shapes = [o.type.shape for o in op.operands]
    strides = [batch_strides(s, batch) for s in shapes[:3]]
    mask_t = op.operands[3].type if len(op.operands) > 3 else None
    mst = mask_strides(mask_t, batch, L, S)
    score_scale = encs[0].scale * encs[1].scale * scale
    # P = rint(255 p) carries the 1/255 of the u8 probabilities; without u8_probs P = p
    out_scale = encs[2].scale / 255.0 if u8_probs else encs[2].scale
    pointers = [*k.args[:3], k.out, k.scratch] + ([k.args[3]] if mask_t is not None else [])

    def to_255(em: Emitter, row: ir.Value) -> None:
        """A probability row as rint(255 p): the u8 probabilities' integer levels, still in f32."""
        step = const(ir.VectorType(F32, lanes), 255.0)
        map_row(em, row, row, S, lanes, lambda v, _: math_approx.rint(em, em.b.fmul(v, step)))

    def heads(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value, slot: ir.Value) -> None:
        """(batch, head) indices ``[lo, hi)`` in scratch copy ``slot``."""
        b = em.b
        qa, ka, va, out, scratch = p[:5]
        mask = p[5] if mask_t is not None else None
        base = em.byte_offset(scratch, b.mul(slot, i64(layout[-1])))
        qf, kf, kpack, scores, vf, vpack, yf = (em.byte_offset(base, o) for o in layout[:-1])
        with em.loop(hi, name="bh", start=lo) as bi:
            *offs, moff = em.batch_offsets(bi, batch, [*strides, mst])
            qp, kp, vp = (em.gep(a, o, storage_type(dt)) for a, o, dt in zip((qa, ka, va), offs, dts))
            decode_row(em, qp, qf, L * E, lanes, dts[0], _centred(encs[0]))
            decode_row(em, kp, kf, S * E, lanes, dts[1], _centred(encs[1]))
            emit_pack_b(em, kf, 1, E, E, S, t1.nr, kpack)
            emit_probabilities(
                k,
                em,
                qf,
                kpack,
                scores,
                t1,
                score_scale,
                mask_t,
                mask,
                moff,
                mst,
                after_row=to_255 if u8_probs else None,
            )
            decode_row(em, vp, vf, S * Ev, lanes, dts[2], _centred(encs[2]))
            emit_pack_b(em, vf, Ev, 1, S, Ev, t2.nr, vpack)
            y_rows = em.gep(out, b.mul(bi, i64(L * Ev)), F32) if y_enc is None else yf
            emit_gemm(
                em,
                GemmArgs(
                    L,
                    Ev,
                    S,
                    scores,
                    S,
                    1,
                    vpack,
                    y_rows,
                    Ev,
                    epilogue=lambda em, v: em.b.fmul(v, const(v.type, out_scale)),
                ),
                t2,
            )
            if y_enc is not None:
                dst = em.gep(out, b.mul(bi, i64(L * Ev)), storage_type(y_t.dtype))
                encode_row(em, yf, dst, L * Ev, lanes, y_t.dtype, y_enc)

    # sdpa_slots is 1 exactly when parallel_for keeps the op inline (one index, or too little work)
    parallel_for(em, "attention_q", math.prod(batch), sdpa_macs(op), pointers, heads, slots=sdpa_slots(op))


kernel("scaled_dot_product_attention", (QUANT, QUANT, QUANT, "bool|f32?"), result=QUANT_OR_F32, scratch=_scratch)(
    _sdpa_q
)
