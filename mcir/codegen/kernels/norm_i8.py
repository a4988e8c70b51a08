"""layer_norm on the int8 path: u8 (or i8) in and/or out, the requantisation fused into the kernel.

The interpreter defines a quantised ``layer_norm`` as "decode, normalise in float, encode". These
kernels do exactly that one row at a time: the row's stored bytes are decoded into an f32 row in
the op's scratch (``d`` floats, in L1: no dequantised copy of the tensor is ever written), the f32
row kernel of ``norm.py`` computes the mean, the two-pass variance and the affine map, and the
encoder writes the result bytes (``q = clamp(rint(y / s) + z)``, the reference's own formula). The
statistics are f32 sums, as in the f32 kernel, so the output is within 1 LSB of the interpreter
(a rounding tie of the f32 vs f64 statistics).

Entries: ``u8/i8 -> u8/i8 | f32`` (the residual stream of an int8 encoder: add on u8, then this)
and ``f32 -> u8/i8`` (an embedding sum or a float residual normalised straight into u8).
"""

from __future__ import annotations

import math

import llvmlite.ir as ir

from mcir.codegen.emit import F32, Emitter, i64, storage_type
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels.norm import layer_norm_row
from mcir.codegen.kernels.quant import QUANT, QUANT_OR_F32, decode, encode, per_tensor
from mcir.codegen.target import Target
from mcir.dtypes import DType
from mcir.encodings import Quant
from mcir.ir import Op


def decode_row(em: Emitter, src: ir.Value, dst: ir.Value, n: int, lanes: int, dt: DType, enc: Quant) -> None:
    """dst[i] = (src[i] - z) * s: ``n`` stored u8/i8 values into f32, full vectors then a scalar tail."""
    full = n - n % lanes
    if full:
        with em.loop(full, name="dq", step=lanes) as i:
            em.store(decode(em, em.load(src, i, ir.VectorType(storage_type(dt), lanes)), dt, enc), dst, i)
    if full < n:
        with em.loop(n, name="dqt", start=full) as i:
            em.store(decode(em, em.load(src, i, storage_type(dt)), dt, enc), dst, i)


def encode_row(em: Emitter, src: ir.Value, dst: ir.Value, n: int, lanes: int, dt: DType, enc: Quant) -> None:
    """dst[i] = clamp(rint(src[i] / s) + z): ``n`` f32 values into stored u8/i8, as the interpreter encodes."""
    full = n - n % lanes
    if full:
        with em.loop(full, name="q", step=lanes) as i:
            em.store(encode(em, em.load(src, i, ir.VectorType(F32, lanes)), dt, enc), dst, i)
    if full < n:
        with em.loop(n, name="qt", start=full) as i:
            em.store(encode(em, em.load(src, i, F32), dt, enc), dst, i)


def _row_size(op: Op) -> int:
    t = op.operands[0].type
    return math.prod(t.shape[t.rank - op.attrs["dims"] :])


def _scratch(op: Op, target: Target) -> int:
    return _row_size(op) * 4


def _layer_norm_q(k: KernelContext) -> None:
    """layer_norm with a quantised operand and/or result: decode a row, normalise it in f32, encode it."""
    em, b = k.em, k.em.b
    xt, yt = k.operand_types[0], k.result_type
    d = _row_size(k.op)
    rows = xt.numel // max(d, 1)
    lanes = k.target.f32_lanes
    x_enc = per_tensor(xt, k.op.where()) if xt.encoding is not None else None
    y_enc = per_tensor(yt, k.op.where()) if yt.encoding is not None else None
    w = k.args[1] if len(k.args) > 1 else None
    bias = k.args[2] if len(k.args) > 2 else None
    row = k.scratch  # one f32 row: the decoded input and/or the normalised output before encoding
    x_ty = storage_type(xt.dtype) if x_enc is not None else F32
    y_ty = storage_type(yt.dtype) if y_enc is not None else F32
    with em.loop(rows, name="row") as r:
        off = b.mul(r, i64(d))
        src, dst = em.gep(k.args[0], off, x_ty), em.gep(k.out, off, y_ty)
        if x_enc is not None:
            decode_row(em, src, row, d, lanes, xt.dtype, x_enc)
            src = row
        layer_norm_row(em, src, row if y_enc is not None else dst, d, lanes, w, bias, k.op.attrs["eps"])
        if y_enc is not None:
            encode_row(em, row, dst, d, lanes, yt.dtype, y_enc)


kernel("layer_norm", (QUANT, "f32?", "f32?"), result=QUANT_OR_F32, scratch=_scratch)(_layer_norm_q)
kernel("layer_norm", ("f32", "f32?", "f32?"), result=QUANT, scratch=_scratch)(_layer_norm_q)
