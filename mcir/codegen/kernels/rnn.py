"""LSTM and GRU recurrences over a static sequence: one kernel per layer and direction.

The input projection of every step is a ``linear`` before this op (one GEMM for the whole
sequence); what is left is inherently sequential. Per step:

1. ``gates[B, G*H] = h[B, H] @ W_hh^T + b_hh`` with the fp32 GEMM/GEMV micro-kernel of
   ``gemm_f32``; ``W_hh`` is packed into its column panels once, at compile time, so every
   step streams it in order (at H = 256 the 1 MiB of an LSTM's ``W_hh`` stays in L2);
2. one fused pass over ``[B, H]`` adds the step's input gates, applies the gate functions
   (mcir's own sigmoid/tanh, vectorised by LLVM) and updates the state in scratch, writing
   ``h`` (or ``c``) straight into the step's row of the output.

The state lives in the op's scratch (``h``, ``c`` and the gates, 64-byte aligned), so the
output never aliases the GEMM's input and ``reverse`` only changes which row a step uses.

An LSTM with a projection (LSTMP, ``w_hr`` [P, H]) writes ``o * tanh(c)`` to scratch in the fused
pass and runs a second packed GEMV per step, ``h = (o * tanh(c)) W_hr^T``; ``W_hh`` is then
[4H, P], so the recurrent product shrinks by H/P and the projection adds P x H MACs per step.

With an int8 ``W_hh`` (``quant8``; ``int8_state``), each step first writes the state as u8 codes
``clamp(rint(127 h), -128, 127) + 128`` and the product runs on the int8 GEMM of ``gemm_i8``
(``vpdpbusd`` where present) with the zero point folded into per-row offsets and
``s_w[n] / 127`` as the f32 epilogue scale; ``b_hh`` is added in f32. The weight stream is a
quarter of fp32's (256 KiB instead of 1 MiB per layer at H = 256). Tolerance: the codes are
exact products summed exactly; only a state exactly between two codes can round differently
from the interpreter (which keeps ``h`` in float64), one code = 1/127 in one input of one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, I8, I32, Emitter, i64
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels import math_approx as ma
from mcir.codegen.kernels.gemm_f32 import (
    GemmArgs,
    check_half_target,
    choose_tiling,
    emit_gemm,
    half_panels,
    pack_b,
    panel_width,
)
from mcir.codegen.kernels.gemm_i8 import (
    IntGemm,
    IntTiling,
    Requant,
    blob,
    channel_table,
    digest,
    dot_isa,
    pack_panels,
    panel_bytes,
    widen_a,
    widened_bytes,
)
from mcir.codegen.kernels.gemm_i8 import choose_tiling as choose_int8_tiling
from mcir.codegen.kernels.gemm_i8 import emit_gemm as emit_int8_gemm
from mcir.codegen.memory_plan import align_up, view_root
from mcir.codegen.target import Target
from mcir.encodings import Quant
from mcir.errors import CodegenError
from mcir.ir import Op
from mcir.ops.rnn import STATE_SCALE

_GATES = {"lstm": 4, "gru": 3}
_PROJ = 5  # operand index of an LSTM's projection W_hr [P, H]


def _dims(op: Op) -> tuple[int, int, int, int]:
    """(steps T, batch B, hidden H, gates G); H is the cell's width (the gates are G x H wide)."""
    steps, batch = op.result.type.shape[:2]
    gates = _GATES[op.name]
    return steps, batch, op.operands[0].type.shape[2] // gates, gates


def _width(op: Op) -> int:
    """The hidden state's width P: H, or the projection's output size (LSTMP)."""
    return op.operands[1].type.shape[1]


def _has_proj(op: Op) -> bool:
    return op.name == "lstm" and len(op.operands) > _PROJ


def _weight_index(op: Op) -> int:
    return 3 if op.name == "lstm" else 2


def _pack(op: Op, index: int, data, target: Target):
    _, _, hidden, gates = _dims(op)
    width = _width(op)
    if index == _weight_index(op):
        n, k = gates * hidden, width  # W_hh [G*H, P]
    elif index == _PROJ and _has_proj(op):
        n, k = width, hidden  # W_hr [P, H]
    else:
        return None
    nv, lanes = panel_width(n, target)
    dtype = op.operands[index].type.dtype.name
    w = np.asarray(data).astype(np.float32).reshape(n, k)
    panels = pack_b(w.T, nv * lanes)  # the same layout linear uses for [N, K]
    if dtype == "f32":
        return f"gemm_b_t:{nv * lanes}", panels
    return f"gemm_b_t:{nv * lanes}:{dtype}", half_panels(panels, dtype)


def _round16(n: int) -> int:
    return -(-n // 16) * 16  # floats: keeps every scratch buffer 64-byte aligned


@dataclass(frozen=True)
class Scratch:
    """Offsets in bytes of the op's private buffers: h (at 0), c, the gates, the state as the GEMM
    reads it, and an LSTMP's unprojected o * tanh(c)."""

    c: int
    gates: int
    state: int  # f32 copy rounded to the int8 grid, or u8 codes
    wide: int  # int16 copy of the u8 codes (the vpmaddwd path)
    unprojected: int
    total: int


def _scratch_plan(op: Op, target: Target) -> Scratch:
    _, batch, hidden, gates = _dims(op)
    h_bytes = 4 * _round16(batch * _width(op))
    c_bytes = 4 * _round16(batch * hidden)
    c, g = h_bytes, h_bytes + c_bytes
    q = g + 4 * _round16(batch * gates * hidden)
    wide = q + h_bytes
    extra = widened_bytes(batch, _width(op), _int8_plan(op, target).isa) if _is_int8(op) else 0
    m = wide + align_up(extra)
    return Scratch(c, g, q, wide, m, m + (c_bytes if _has_proj(op) else 0))


def _scratch(op: Op, target: Target) -> int:
    return _scratch_plan(op, target).total


def _is_int8(op: Op) -> bool:
    return op.operands[_weight_index(op)].type.dtype.name == "i8"


def _int8_plan(op: Op, target: Target) -> IntTiling:
    _, batch, hidden, gates = _dims(op)
    return choose_int8_tiling(batch, gates * hidden, dot_isa(target, a_signed=False, b_signed=True), target)


def _pack_int8(op: Op, index: int, data, target: Target):
    """W_hh int8 in the int8 GEMM's panels + its channel table: zero point 128 of the u8 state folded
    into the offsets (``-128 sum_k w``), accumulator scale ``STATE_SCALE * s_w[n]``."""
    if index != _weight_index(op):
        return None
    t = op.operands[index].type
    enc = t.encoding
    if not isinstance(enc, Quant) or enc.zero_point != 0:
        raise CodegenError(f"{op.where()}: int8 recurrent weights must be symmetric i8 #quant, got {t}")
    w = np.asarray(data["data"] if isinstance(data, dict) else data).reshape(t.shape).astype(np.int8)
    if enc.axis is None:
        scale = np.full(t.shape[0], enc.scale, np.float32)
    elif enc.axis % 2 == 0:
        scale = np.asarray(data["scale"], np.float32).reshape(t.shape[0])
    else:
        raise CodegenError(f"{op.where()}: int8 recurrent weights quantised along axis {enc.axis}; need axis 0")
    plan = _int8_plan(op, target)
    count = -(-t.shape[0] // plan.nr) * plan.nr
    panels = pack_panels(w, plan.nr, plan.isa.group)
    offset = -128 * w.astype(np.int64).sum(axis=1)
    acc_scale = (np.float64(STATE_SCALE) * scale.astype(np.float64)).astype(np.float32)
    table = channel_table(offset, acc_scale, Requant("f32"), 1.0, count)
    return f"i8rnn:{plan.isa.key}:nr{plan.nr}+{digest(table)}", blob(panels, table)


def _recurrence(k: KernelContext, gates_fn) -> None:
    """The step loop shared by LSTM and GRU; ``gates_fn(em, row_g, row_h, j, gx, gs, hs, cs, out)``
    updates one state element from the gates (input + recurrent + b_hh). With a projection (LSTMP)
    ``hs`` is the unprojected ``o * tanh(c)`` [B, H], ``out`` is None unless the op gives c, and
    ``h = hs @ W_hr^T`` follows as a second GEMM per step."""
    em, b = k.em, k.em.b
    steps, batch, hidden, gates = _dims(k.op)
    width = _width(k.op)
    proj = _has_proj(k.op)
    w_index = _weight_index(k.op)
    for index in (w_index, _PROJ) if proj else (w_index,):
        if not view_root(k.op.operands[index]).is_constant:
            raise CodegenError(
                f"no native kernel for {k.op.where()} with a recurrent weight computed at run time (it is packed "
                "once, at compile time): make the weight a constant or run the graph with mcir.interpret"
            )
    plan = _scratch_plan(k.op, k.target)
    hs = k.scratch
    cs = em.byte_offset(k.scratch, plan.c)
    gs = em.byte_offset(k.scratch, plan.gates)
    qs = em.byte_offset(k.scratch, plan.state)
    ms = em.byte_offset(k.scratch, plan.unprojected)
    with em.loop(batch * width, name="init_h") as i:
        em.store(em.load(k.args[1], i, F32), hs, i)
    if gates == 4:
        with em.loop(batch * hidden, name="init_c") as i:
            em.store(em.load(k.args[2], i, F32), cs, i)
    n = gates * hidden
    w, bias = k.args[w_index], k.args[w_index + 1]
    int8 = _is_int8(k.op)
    w_dtype = k.op.operands[w_index].type.dtype.name
    check_half_target(k.op, w_dtype, k.target)
    rounded = k.op.attrs["int8_state"]
    if int8 and not rounded:
        raise CodegenError(f"{k.op.where()}: an int8 W_hh needs int8_state=true (the quant8 pass sets both)")
    if int8:
        if proj:
            raise CodegenError(
                f"{k.op.where()}: an int8 W_hh with a projection W_hr has no kernel (its state is not bounded by 1, "
                "so quant8 keeps such an LSTM f32): dequantize W_hh"
            )
        t8 = _int8_plan(k.op, k.target)
        count = -(-n // t8.nr) * t8.nr
        table = em.byte_offset(w, align_up(panel_bytes(n, hidden, t8.nr, t8.isa.group)))
        gemm8 = IntGemm(batch, n, hidden, qs, hidden, False, w, True, gs, n, table, count, Requant("f32"))
    tiling = choose_tiling(batch, n, width, k.target)
    reverse = k.op.attrs["reverse"]
    cell = k.op.attrs.get("cell", False)
    out_width = hidden if cell else width
    with em.loop(steps, name="step") as s:
        t = b.sub(i64(steps - 1), s) if reverse else s
        if rounded:
            _round_state(em, hs, qs, batch * width, codes=int8)
        if int8:
            g = widen_a(em, gemm8, em.byte_offset(k.scratch, plan.wide)) if t8.isa.kind == "madd" else gemm8
            emit_int8_gemm(em, g, t8)
            with em.loop(batch, name="brow") as r, em.loop(n, name="bcol") as j:  # + b_hh (not in the int8 table)
                at = b.add(b.mul(r, i64(n)), j)
                em.store(b.fadd(em.load(gs, at, F32), em.load(bias, j, F32)), gs, at)
        else:
            a = qs if rounded else hs
            emit_gemm(em, GemmArgs(batch, n, width, a, width, 1, w, gs, n, bias, b_dtype=w_dtype), tiling)
        gx = em.gep(k.args[0], b.mul(t, i64(batch * n)), F32)
        out = em.gep(k.out, b.mul(t, i64(batch * out_width)), F32)
        with em.loop(batch, name="row") as r:
            row_g = b.mul(r, i64(n))
            row_h = b.mul(r, i64(hidden))
            with em.loop(hidden, name="unit") as j:
                gates_fn(em, row_g, row_h, j, gx, gs, ms if proj else hs, cs, out if cell or not proj else None)
        if proj:  # h = (o * tanh(c)) @ W_hr^T: the state the next step multiplies by W_hh
            tiling_r = choose_tiling(batch, width, hidden, k.target)
            emit_gemm(em, GemmArgs(batch, width, hidden, ms, hidden, 1, k.args[_PROJ], hs, width), tiling_r)
            if not cell:
                with em.loop(batch * width, name="proj_out") as i:
                    em.store(em.load(hs, i, F32), out, i)


def _round_state(em: Emitter, hs: ir.Value, qs: ir.Value, count: int, codes: bool) -> None:
    """q = clamp(rint(h / STATE_SCALE), -128, 127): as u8 codes q + 128, or as the f32 value q * STATE_SCALE."""
    b = em.b
    with em.loop(count, name="q") as i:
        q = ma.rint(em, b.fmul(em.load(hs, i, F32), ir.Constant(F32, 1.0 / STATE_SCALE)))
        q = em.fmin(em.fmax(q, ir.Constant(F32, -128.0)), ir.Constant(F32, 127.0))
        if codes:
            em.store(b.trunc(b.fptosi(b.fadd(q, ir.Constant(F32, 128.0)), I32), I8), qs, i)
        else:
            em.store(b.fmul(q, ir.Constant(F32, STATE_SCALE)), qs, i)


def _gate(em: Emitter, gx: ir.Value, gs: ir.Value, row_g: ir.Value, index: ir.Value) -> ir.Value:
    """Input gate + recurrent gate at ``row_g + index``."""
    at = em.b.add(row_g, index)
    return em.b.fadd(em.load(gx, at, F32), em.load(gs, at, F32))


@kernel("lstm", ("f32", "f32", "f32", "i8#quant", "f32", "f32?"), pack=_pack_int8, scratch=_scratch, constant=(3, 5))
@kernel("lstm", ("f32", "f32", "f32", "f32|f16|bf16", "f32", "f32?"), pack=_pack, scratch=_scratch, constant=(3, 5))
def lstm(k: KernelContext) -> None:
    """LSTM recurrence: W_hh GEMV per step (packed panels) + fused gates (+ the W_hr projection GEMV
    of an LSTMP); y[t] = h_t (or c_t)."""
    hidden = _dims(k.op)[2]
    cell = k.op.attrs["cell"]

    def update(em, row_g, row_h, j, gx, gs, hs, cs, out):
        b = em.b
        i = ma.sigmoid(em, _gate(em, gx, gs, row_g, j))
        f = ma.sigmoid(em, _gate(em, gx, gs, row_g, b.add(j, i64(hidden))))
        g = ma.tanh(em, _gate(em, gx, gs, row_g, b.add(j, i64(2 * hidden))))
        o = ma.sigmoid(em, _gate(em, gx, gs, row_g, b.add(j, i64(3 * hidden))))
        at = b.add(row_h, j)
        c = em.fma(f, em.load(cs, at, F32), b.fmul(i, g))
        h = b.fmul(o, ma.tanh(em, c))
        em.store(c, cs, at)
        em.store(h, hs, at)
        if out is not None:
            em.store(c if cell else h, out, at)

    _recurrence(k, update)


@kernel("gru", ("f32", "f32", "i8#quant", "f32"), pack=_pack_int8, scratch=_scratch, constant=(2,))
@kernel("gru", ("f32", "f32", "f32|f16|bf16", "f32"), pack=_pack, scratch=_scratch, constant=(2,))
def gru(k: KernelContext) -> None:
    """GRU recurrence: W_hh GEMV per step (packed panels, b_hh added) + fused gates; y[t] = h_t."""
    hidden = _dims(k.op)[2]

    def update(em, row_g, row_h, j, gx, gs, hs, cs, out):
        b = em.b
        r = ma.sigmoid(em, _gate(em, gx, gs, row_g, j))
        z = ma.sigmoid(em, _gate(em, gx, gs, row_g, b.add(j, i64(hidden))))
        at_n = b.add(row_g, b.add(j, i64(2 * hidden)))
        n = ma.tanh(em, em.fma(r, em.load(gs, at_n, F32), em.load(gx, at_n, F32)))
        at = b.add(row_h, j)
        h_prev = em.load(hs, at, F32)
        h = em.fma(z, b.fsub(h_prev, n), n)  # (1 - z) n + z h = n + z (h - n)
        em.store(h, hs, at)
        em.store(h, out, at)

    _recurrence(k, update)
