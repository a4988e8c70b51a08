"""Kernels on per-tensor quantised u8/i8 activations: requantize, add, pooling, mean and
data movement.

The interpreter defines these ops as "decode, compute in float, encode"; these kernels
do the same arithmetic in the same order where it is cheap, so most results are bit
equal to the reference:

* decode ``x = (q - z) * s`` and encode ``q = clamp(rint(x / s) + z)`` in f32, with a
  division (not a multiplication by 1/s) exactly like numpy;
* sums of windows and reduced axes are exact integer sums ``S = sum q`` that are
  decoded once, ``(S - count * z) * s``; only the float rounding of the reference's own
  sum differs, so an average may land 1 LSB away at a rounding tie.

Data movement and max pooling commute with quantisation, so they copy or compare the
stored integers; the result type must carry the operand's quantisation (the quant8
pass guarantees it), or they requantise.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, I32, I64, Emitter, const, i64, is_signed, storage_type
from mcir.codegen.kernels import KernelContext, kernel, math_approx, movement
from mcir.codegen.kernels.elementwise import emit_broadcast
from mcir.codegen.kernels.movement import strides_of
from mcir.codegen.kernels.reduce import _collapse, _nest
from mcir.dtypes import DType
from mcir.encodings import Quant
from mcir.errors import CodegenError
from mcir.ops.nn import adaptive_bounds
from mcir.ops.registry import norm_axis
from mcir.types import TensorType

QUANT = "u8#quant|i8#quant"
#: what decode-compute-encode kernels write: the quantised type, or f32 (``_store_result``)
QUANT_OR_F32 = QUANT + "|f32"


def per_tensor(t: TensorType, where: str) -> Quant:
    """The per-tensor quantisation of ``t``; CodegenError for per-axis or unencoded types."""
    enc = t.encoding
    if not isinstance(enc, Quant) or enc.axis is not None:
        raise CodegenError(f"{where}: expected a per-tensor quantised u8/i8 value, got {t}")
    return enc


def decode(em: Emitter, q: ir.Value, dt: DType, enc: Quant) -> ir.Value:
    """``(q - z) * s`` in f32 (scalar or vector ``q`` of integer lanes)."""
    b = em.b
    fty = ir.VectorType(F32, q.type.count) if isinstance(q.type, ir.VectorType) else F32
    x = b.sitofp(q, fty) if is_signed(dt) else b.uitofp(q, fty)
    return b.fmul(b.fsub(x, const(fty, float(enc.zero_point))), const(fty, enc.scale))


def encode(em: Emitter, x: ir.Value, dt: DType, enc: Quant) -> ir.Value:
    """``clamp(rint(x / s) + z, qmin, qmax)`` as the storage integer of ``dt`` (NaN -> 0)."""
    b = em.b
    info = np.iinfo(dt.np)
    y = b.fdiv(x, const(x.type, enc.scale))  # a division, as the reference: bit-equal results
    r = b.fadd(math_approx.rint(em, y), const(x.type, float(enc.zero_point)))
    # the rint trick holds for |y| < 2^22; beyond that y is far outside the integer range anyway
    big = b.fcmp_ordered(">=", em.call_unary("fabs", y), const(x.type, 4194304.0))
    r = b.select(big, y, r)
    r = em.fmin(em.fmax(r, const(x.type, float(info.min))), const(x.type, float(info.max)))
    r = b.select(b.fcmp_unordered("uno", r, r), const(x.type, 0.0), r)
    # through i32: fptosi straight to i8 is poison for 128..255 (u8), and targets differ on it
    lanes = x.type.count if isinstance(x.type, ir.VectorType) else None
    wide = b.fptosi(r, I32 if lanes is None else ir.VectorType(I32, lanes))
    return b.trunc(wide, storage_type(dt) if lanes is None else ir.VectorType(storage_type(dt), lanes))


def _store_result(k: KernelContext, x: ir.Value) -> ir.Value:
    """Encode a float result into the result type (or keep it f32)."""
    t = k.result_type
    if t.encoding is None:
        if t.dtype.name != "f32":
            raise CodegenError(f"{k.op.where()}: result must be f32 or per-tensor quantised, got {t}")
        return x
    return encode(k.em, x, t.dtype, per_tensor(t, k.op.where()))


# -- requantize and add --------------------------------------------------------------------------


def _requantize(k: KernelContext) -> None:
    """quantize(u8 #quant<a>) : u8 #quant<b>: decode with a, encode with b."""
    src = k.operand_types[0]
    enc = per_tensor(src, k.op.where())
    per_tensor(k.result_type, k.op.where())
    emit_broadcast(k, [src.dtype], lambda v: _store_result(k, decode(k.em, v[0], src.dtype, enc)), k.result_type.dtype)


kernel("quantize", (QUANT,), result=QUANT)(_requantize)


def _add(k: KernelContext) -> None:
    """a + b on quantised operands (numpy broadcasting): decode both, add in f32, encode."""
    ta, tb = k.operand_types
    ea, eb = per_tensor(ta, k.op.where()), per_tensor(tb, k.op.where())

    def body(v: list[ir.Value]) -> ir.Value:
        s = k.em.b.fadd(decode(k.em, v[0], ta.dtype, ea), decode(k.em, v[1], tb.dtype, eb))
        return _store_result(k, s)

    emit_broadcast(k, [ta.dtype, tb.dtype], body, k.result_type.dtype)


kernel("add", (QUANT, QUANT), result=QUANT_OR_F32)(_add)


# -- data movement: copies of the stored integers --------------------------------------------------


def _same_quant(gen):
    def wrapped(k: KernelContext) -> None:
        for t in k.operand_types:
            if t.encoding != k.result_type.encoding or t.dtype != k.result_type.dtype:
                raise CodegenError(
                    f"{k.op.where()}: moves quantised values unchanged, so its result must have the "
                    f"operand's type encoding ({t.dtype} {t.encoding}), got {k.result_type}"
                )
        gen(k)

    wrapped.__name__ = f"{gen.__name__}_quant"
    wrapped.__doc__ = f"{(gen.__doc__ or '').strip()} (quantised values, copied as stored)"
    return wrapped


for _name, _gen in (
    ("permute", movement.permute),
    ("slice", movement.slice_),
    ("select", movement.select),
    ("expand", movement.expand),
):
    kernel(_name, (QUANT,), result=QUANT)(_same_quant(_gen))
kernel("concat", (QUANT + "*",), result=QUANT)(_same_quant(movement.concat))


# -- pooling -------------------------------------------------------------------------------------


def _window_counts(size: int, out: int, kk: int, s: int, p: int, include_pad: bool) -> list[int]:
    """Per output position: how many window taps lie in the input (or in its explicit padding)."""
    res = []
    for o in range(out):
        lo, hi = o * s - p, o * s - p + kk
        res.append(min(hi, size + p) - lo if include_pad else min(hi, size) - max(lo, 0))
    return res


def _pool(k: KernelContext) -> None:
    """max (integer compare) or average (exact integer window sum, decoded once) over u8/i8 windows."""
    em, b = k.em, k.em.b
    src_t = k.operand_types[0]
    enc = per_tensor(src_t, k.op.where())
    dt = src_t.dtype
    ety = storage_type(dt)
    n, c, h, w = src_t.shape
    _, _, oh, ow = k.result_type.shape
    a = k.op.attrs
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    dh, dw = a.get("dilation", (1, 1))
    is_max = k.op.name == "max_pool2d"
    signed = is_signed(dt)
    inside = ph == pw == 0 and (oh - 1) * sh + (kh - 1) * dh < h and (ow - 1) * sw + (kw - 1) * dw < w
    same = k.result_type.encoding == src_t.encoding and k.result_type.dtype == dt
    if not is_max:
        valid_r, valid_c = _window_counts(h, oh, kh, sh, ph, False), _window_counts(w, ow, kw, sw, pw, False)
        div_r = _window_counts(h, oh, kh, sh, ph, a["count_include_pad"])
        div_c = _window_counts(w, ow, kw, sw, pw, a["count_include_pad"])
        tabs = [em.i64_table(v, f"qpool.{i}") for i, v in enumerate((valid_r, valid_c, div_r, div_c))]
    lo = ir.Constant(ety, int(np.iinfo(dt.np).min))
    with em.loop(n * c, name="plane") as pl:
        src = b.mul(pl, i64(h * w))
        dst = b.mul(pl, i64(oh * ow))
        with em.loop(oh, name="oy") as oy, em.loop(ow, name="ox") as ox:
            acc = lo if is_max else ir.Constant(I32, 0)
            for i in range(kh):
                iy = b.add(b.mul(oy, i64(sh)), i64(i * dh - ph))
                for j in range(kw):
                    ix = b.add(b.mul(ox, i64(sw)), i64(j * dw - pw))
                    at = b.add(src, b.add(b.mul(iy, i64(w)), ix))
                    ok = None if inside else b.and_(em.in_range(iy, h), em.in_range(ix, w))
                    v = em.load(k.args[0], at if ok is None else b.select(ok, at, i64(0)), ety)
                    if is_max:
                        if ok is not None:
                            v = b.select(ok, v, lo)  # padding never wins
                        gt = b.icmp_signed(">", v, acc) if signed else b.icmp_unsigned(">", v, acc)
                        acc = b.select(gt, v, acc)
                    else:
                        v = b.sext(v, I32) if signed else b.zext(v, I32)
                        if ok is not None:
                            v = b.select(ok, v, ir.Constant(I32, 0))
                        acc = b.add(acc, v)
            if is_max:
                out = acc if same else _store_result(k, decode(em, acc, dt, enc))
            else:
                # padding is the real value 0: only the taps inside the input carry the zero point
                valid = b.mul(em.load(tabs[0], oy, I64), em.load(tabs[1], ox, I64))
                if a["divisor"] is not None:
                    div = const(F32, float(a["divisor"]))
                else:
                    div = b.sitofp(b.mul(em.load(tabs[2], oy, I64), em.load(tabs[3], ox, I64)), F32)
                centred = b.sub(b.sext(acc, I64), b.mul(valid, i64(enc.zero_point)))
                total = b.fmul(b.sitofp(centred, F32), const(F32, enc.scale))
                out = _store_result(k, b.fdiv(total, div))
            em.store(out, k.out, b.add(dst, b.add(b.mul(oy, i64(ow)), ox)))


kernel("max_pool2d", (QUANT,), result=QUANT_OR_F32)(_pool)
kernel("avg_pool2d", (QUANT,), result=QUANT_OR_F32)(_pool)


@kernel("adaptive_avg_pool2d", (QUANT,), result=QUANT_OR_F32)
def adaptive_avg_pool2d(k: KernelContext) -> None:
    """Mean over torch's adaptive windows: exact integer sums, decoded and divided once."""
    em, b = k.em, k.em.b
    src_t = k.operand_types[0]
    enc = per_tensor(src_t, k.op.where())
    ety = storage_type(src_t.dtype)
    n, c, h, w = src_t.shape
    _, _, oh, ow = k.result_type.shape
    rows, cols = adaptive_bounds(h, oh), adaptive_bounds(w, ow)
    r0, r1 = em.i64_table([r[0] for r in rows], "qap.r0"), em.i64_table([r[1] for r in rows], "qap.r1")
    c0, c1 = em.i64_table([x[0] for x in cols], "qap.c0"), em.i64_table([x[1] for x in cols], "qap.c1")
    signed = is_signed(src_t.dtype)
    with em.loop(n * c, name="plane") as pl:
        src = b.mul(pl, i64(h * w))
        dst = b.mul(pl, i64(oh * ow))
        with em.loop(oh, name="oy") as oy, em.loop(ow, name="ox") as ox:
            y0, y1 = em.load(r0, oy, I64), em.load(r1, oy, I64)
            x0, x1 = em.load(c0, ox, I64), em.load(c1, ox, I64)
            with em.loop_carried(y1, [ir.Constant(I32, 0)], name="wy", start=y0) as ly:
                row = b.add(src, b.mul(ly.index, i64(w)))
                with em.loop_carried(x1, [ly.values[0]], name="wx", start=x0) as lx:
                    v = em.load(k.args[0], b.add(row, lx.index), ety)
                    lx.next([b.add(lx.values[0], b.sext(v, I32) if signed else b.zext(v, I32))])
                ly.next([lx.results[0]])
            cnt = b.mul(b.sub(y1, y0), b.sub(x1, x0))
            centred = b.sub(b.sext(ly.results[0], I64), b.mul(cnt, i64(enc.zero_point)))
            total = b.fmul(b.sitofp(centred, F32), const(F32, enc.scale))
            out = _store_result(k, b.fdiv(total, b.sitofp(cnt, F32)))
            em.store(out, k.out, b.add(dst, b.add(b.mul(oy, i64(ow)), ox)))


@kernel("mean", (QUANT,), result=QUANT_OR_F32)
def mean(k: KernelContext) -> None:
    """Mean over ``axes``: an exact integer sum per output, decoded and divided once."""
    em, b = k.em, k.em.b
    x = k.operand_types[0]
    enc = per_tensor(x, k.op.where())
    ety = storage_type(x.dtype)
    signed = is_signed(x.dtype)
    axes = k.op.attrs["axes"]
    red = sorted({norm_axis(a, x.rank) for a in axes}) if axes else list(range(x.rank))
    xs = strides_of(x.shape)
    kept = _collapse([(x.shape[d], xs[d]) for d in range(x.rank) if d not in red])
    rdims = _collapse([(x.shape[d], xs[d]) for d in red])
    count = int(np.prod([x.shape[d] for d in red]))
    if count >= 2**23:
        raise CodegenError(f"{k.op.where()}: quantised mean over {count} elements would overflow its int32 sum")

    def per_output(base: ir.Value, out_off: ir.Value) -> None:
        def level(d: int, off: ir.Value, acc: ir.Value) -> ir.Value:
            if d == len(rdims):
                v = em.load(k.args[0], off, ety)
                return b.add(acc, b.sext(v, I32) if signed else b.zext(v, I32))
            size, stride = rdims[d]
            with em.loop_carried(size, [acc], name=f"r{d}") as lp:
                lp.next([level(d + 1, b.add(off, b.mul(lp.index, i64(stride))), lp.values[0])])
            return lp.results[0]

        total = level(0, base, ir.Constant(I32, 0))
        centred = b.sub(total, ir.Constant(I32, count * enc.zero_point))
        real = b.fmul(b.sitofp(centred, F32), const(F32, enc.scale))
        em.store(_store_result(k, b.fdiv(real, const(F32, float(count)))), k.out, out_off)

    _nest(em, kept, per_output, "o")
