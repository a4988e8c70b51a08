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
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, Emitter, i64
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels import math_approx as ma
from mcir.codegen.kernels.gemm_f32 import GemmArgs, choose_tiling, emit_gemm, pack_b, panel_width
from mcir.codegen.memory_plan import view_root
from mcir.codegen.target import Target
from mcir.errors import CodegenError
from mcir.ir import Op


def _dims(op: Op) -> tuple[int, int, int, int]:
    """(steps T, batch B, hidden H, gates G)."""
    steps, batch, hidden = op.result.type.shape
    return steps, batch, hidden, op.operands[0].type.shape[2] // hidden


def _weight_index(op: Op) -> int:
    return len(op.operands) - 2


def _pack(op: Op, index: int, data, target: Target):
    if index != _weight_index(op):
        return None
    _, _, hidden, gates = _dims(op)
    nv, lanes = panel_width(gates * hidden, target)
    w = np.asarray(data, np.float32).reshape(gates * hidden, hidden)
    return f"gemm_b_t:{nv * lanes}", pack_b(w.T, nv * lanes)  # the same layout linear uses for [N, K]


def _round16(n: int) -> int:
    return -(-n // 16) * 16  # floats: keeps every scratch buffer 64-byte aligned


def _scratch_floats(op: Op) -> tuple[int, int, int]:
    """Offsets (in floats) of h, c and the gates in scratch, and the total."""
    _, batch, hidden, gates = _dims(op)
    state = _round16(batch * hidden)
    return state, 2 * state, 2 * state + _round16(batch * gates * hidden)


def _scratch(op: Op, target: Target) -> int:
    return 4 * _scratch_floats(op)[2]


def _recurrence(k: KernelContext, gates_fn) -> None:
    """The step loop shared by LSTM and GRU; ``gates_fn(em, b, j, t, pointers)`` updates one state element."""
    em, b = k.em, k.em.b
    steps, batch, hidden, gates = _dims(k.op)
    if not view_root(k.op.operands[_weight_index(k.op)]).is_constant:
        raise CodegenError(
            f"no native kernel for {k.op.where()} with a recurrent weight computed at run time (it is packed "
            "once, at compile time): make the weight a constant or run the graph with mcir.interpret"
        )
    c_off, g_off, _ = _scratch_floats(k.op)
    hs = k.scratch
    cs = em.gep(k.scratch, c_off, F32)
    gs = em.gep(k.scratch, g_off, F32)
    with em.loop(batch * hidden, name="init") as i:
        em.store(em.load(k.args[1], i, F32), hs, i)
        if gates == 4:
            em.store(em.load(k.args[2], i, F32), cs, i)
    n = gates * hidden
    tiling = choose_tiling(batch, n, hidden, k.target)
    w, bias = k.args[-2], k.args[-1]
    reverse = k.op.attrs["reverse"]
    with em.loop(steps, name="step") as s:
        t = b.sub(i64(steps - 1), s) if reverse else s
        emit_gemm(em, GemmArgs(batch, n, hidden, hs, hidden, 1, w, gs, n, bias), tiling)
        gx = em.gep(k.args[0], b.mul(t, i64(batch * n)), F32)
        out = em.gep(k.out, b.mul(t, i64(batch * hidden)), F32)
        with em.loop(batch, name="row") as r:
            row_g = b.mul(r, i64(n))
            row_h = b.mul(r, i64(hidden))
            with em.loop(hidden, name="unit") as j:
                gates_fn(em, row_g, row_h, j, gx, gs, hs, cs, out)


def _gate(em: Emitter, gx: ir.Value, gs: ir.Value, row_g: ir.Value, index: ir.Value) -> ir.Value:
    """Input gate + recurrent gate at ``row_g + index``."""
    at = em.b.add(row_g, index)
    return em.b.fadd(em.load(gx, at, F32), em.load(gs, at, F32))


@kernel("lstm", ("f32", "f32", "f32", "f32", "f32"), pack=_pack, scratch=_scratch)
def lstm(k: KernelContext) -> None:
    """LSTM recurrence: W_hh GEMV per step (packed panels) + fused gates; y[t] = h_t (or c_t)."""
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
        em.store(c if cell else h, out, at)

    _recurrence(k, update)


@kernel("gru", ("f32", "f32", "f32", "f32"), pack=_pack, scratch=_scratch)
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
