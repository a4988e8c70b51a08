"""Elementwise kernels: activations, broadcasting arithmetic, comparisons, where, casts
and per-tensor quantize/dequantize.

One generator handles every elementwise op: it collapses the broadcast iteration space
to as few loops as the operands' strides allow and emits scalar code in the innermost
loop, which LLVM's loop vectoriser turns into full-width vector code (the math
functions are branch-free for that reason). The float unary functions also work on
explicit vectors, which is how GEMM and convolution fuse a following activation into
their store ("epilogue").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, I1, I8, I64, Emitter, const, i64, is_signed, storage_type
from mcir.codegen.kernels import KernelContext, kernel, math_approx
from mcir.codegen.parallel import ELEMENT_WORK, parallel_for
from mcir.dtypes import DType
from mcir.encodings import Quant
from mcir.errors import CodegenError
from mcir.ir import Op
from mcir.types import TensorType

Unary = Callable[[Emitter, ir.Value], ir.Value]


def _c(x: ir.Value, v: float) -> ir.Constant:
    return const(x.type, v)


def _clamp(lo: float | None, hi: float | None) -> Unary:
    def fn(em: Emitter, x: ir.Value) -> ir.Value:
        if lo is not None:
            x = em.fmax(x, _c(x, lo))
        if hi is not None:
            x = em.fmin(x, _c(x, hi))
        return x

    return fn


def _gelu(approximate: str) -> Unary:
    def fn(em: Emitter, x: ir.Value) -> ir.Value:
        b = em.b
        half_x = b.fmul(x, _c(x, 0.5))
        if approximate == "tanh":
            inner = b.fmul(_c(x, math.sqrt(2.0 / math.pi)), em.fma(b.fmul(b.fmul(x, x), x), _c(x, 0.044715), x))
            t = math_approx.tanh(em, inner)
        else:
            t = math_approx.erf(em, b.fmul(x, _c(x, 1.0 / math.sqrt(2.0))))
        return em.fma(half_x, t, half_x)

    return fn


def _pow(e: float) -> Unary:
    def fn(em: Emitter, x: ir.Value) -> ir.Value:
        b = em.b
        if e == 1.0:
            return x
        if e == 2.0:
            return b.fmul(x, x)
        if e == 3.0:
            return b.fmul(b.fmul(x, x), x)
        if e == 0.5:
            return em.call_unary("sqrt", x)
        if e == -1.0:
            return b.fdiv(_c(x, 1.0), x)
        if e == 0.0:
            return _c(x, 1.0)
        # |x|^e = exp(e ln|x|); a negative base keeps its sign for odd integer e, is NaN otherwise
        y = math_approx.exp(em, b.fmul(_c(x, e), math_approx.log(em, em.call_unary("fabs", x))))
        neg = b.fcmp_ordered("<", x, _c(x, 0.0))
        if e == int(e):
            signed = b.fneg(y) if int(e) % 2 else y
        else:
            signed = _c(x, float("nan"))
        return b.select(neg, signed, y)

    return fn


def float_unary(op: Op) -> Unary | None:
    """The branch-free function of a float unary elementwise op (None if it is not one)."""
    a = op.attrs
    table: dict[str, Callable[[], Unary]] = {
        "relu": lambda: _clamp(0.0, None),
        "clamp": lambda: _clamp(a.get("min"), a.get("max")),
        "sigmoid": lambda: math_approx.sigmoid,
        "tanh": lambda: math_approx.tanh,
        "silu": lambda: lambda em, x: em.b.fmul(x, math_approx.sigmoid(em, x)),
        "hardswish": lambda: (
            lambda em, x: em.b.fmul(x, em.b.fmul(_clamp(0.0, 6.0)(em, em.b.fadd(x, _c(x, 3.0))), _c(x, 1.0 / 6.0)))
        ),
        "hardsigmoid": lambda: (
            lambda em, x: em.b.fmul(_clamp(0.0, 6.0)(em, em.b.fadd(x, _c(x, 3.0))), _c(x, 1.0 / 6.0))
        ),
        "gelu": lambda: _gelu(a.get("approximate", "none")),
        "exp": lambda: math_approx.exp,
        "log": lambda: math_approx.log,
        "erf": lambda: math_approx.erf,
        "sqrt": lambda: lambda em, x: em.call_unary("sqrt", x),
        "rsqrt": lambda: lambda em, x: em.b.fdiv(_c(x, 1.0), em.call_unary("sqrt", x)),
        "neg": lambda: lambda em, x: em.b.fneg(x),
        "abs": lambda: lambda em, x: em.call_unary("fabs", x),
        "pow": lambda: _pow(a["exponent"]),
        "dropout": lambda: lambda em, x: x,
    }
    make = table.get(op.name)
    return None if make is None else make()


def fusable_epilogue(op: Op) -> Unary | None:
    """A unary float op a producing GEMM/conv kernel may apply before its store."""
    if len(op.operands) != 1 or op.operands[0].type.dtype.name != "f32" or op.result.type.encoding is not None:
        return None
    if op.operands[0].type.encoding is not None or op.result.type.dtype.name != "f32":
        return None
    return float_unary(op)


# -- integer and mixed ops --------------------------------------------------------------


def _int_unary(op: Op, dt: DType) -> Unary | None:
    signed = is_signed(dt)

    def relu(em: Emitter, x: ir.Value) -> ir.Value:
        zero = _c(x, 0)
        return em.b.select(em.b.icmp_signed(">", x, zero) if signed else em.b.icmp_unsigned(">", x, zero), x, zero)

    def clamp(em: Emitter, x: ir.Value) -> ir.Value:
        info = np.iinfo(dt.np)
        lo, hi = op.attrs.get("min"), op.attrs.get("max")
        cmp = em.b.icmp_signed if signed else em.b.icmp_unsigned
        # bounds outside the dtype's range are no-ops (a negative min on an unsigned tensor)
        if lo is not None and math.ceil(lo) > info.min:
            c = _c(x, min(math.ceil(lo), int(info.max)))
            x = em.b.select(cmp("<", x, c), c, x)
        if hi is not None and math.floor(hi) < info.max:
            c = _c(x, max(math.floor(hi), int(info.min)))
            x = em.b.select(cmp(">", x, c), c, x)
        return x

    def neg(em: Emitter, x: ir.Value) -> ir.Value:
        return em.b.sub(_c(x, 0), x)

    def abs_(em: Emitter, x: ir.Value) -> ir.Value:
        if not signed:
            return x
        return em.b.select(em.b.icmp_signed("<", x, _c(x, 0)), em.b.sub(_c(x, 0), x), x)

    return {"relu": relu, "clamp": clamp, "neg": neg, "abs": abs_, "dropout": lambda em, x: x}.get(op.name)


def _binary_fn(name: str, dt: DType) -> Callable[[Emitter, ir.Value, ir.Value], ir.Value]:
    if dt.is_float:
        return {
            "add": lambda em, a, b: em.b.fadd(a, b),
            "sub": lambda em, a, b: em.b.fsub(a, b),
            "mul": lambda em, a, b: em.b.fmul(a, b),
            "div": lambda em, a, b: em.b.fdiv(a, b),
            "maximum": lambda em, a, b: em.fmax(a, b),
            "minimum": lambda em, a, b: em.fmin(a, b),
        }[name]
    signed = is_signed(dt)
    if name == "div":
        return _int_floordiv if signed else _uint_div
    cmp = "icmp_signed" if signed else "icmp_unsigned"
    return {
        "add": lambda em, a, b: em.b.add(a, b),
        "sub": lambda em, a, b: em.b.sub(a, b),
        "mul": lambda em, a, b: em.b.mul(a, b),
        "maximum": lambda em, a, b: em.b.select(getattr(em.b, cmp)(">", a, b), a, b),
        "minimum": lambda em, a, b: em.b.select(getattr(em.b, cmp)("<", a, b), a, b),
    }[name]


def _int_floordiv(em: Emitter, a: ir.Value, d: ir.Value) -> ir.Value:
    """numpy floor_divide: rounds toward -inf; x // 0 is 0 (numpy's result) instead of a trap."""
    b = em.b
    zero, one = _c(a, 0), _c(a, 1)
    bad = b.or_(
        b.icmp_signed("==", d, zero),
        b.and_(b.icmp_signed("==", d, _c(a, -1)), b.icmp_signed("==", a, _c(a, -(1 << (a.type.width - 1))))),
    )
    safe = b.select(bad, one, d)
    q = b.sdiv(a, safe)
    r = b.srem(a, safe)
    adjust = b.and_(b.icmp_signed("!=", r, zero), b.icmp_signed("<", b.xor(r, safe), zero))
    q = b.select(adjust, b.sub(q, one), q)
    # INT_MIN // -1 wraps to INT_MIN as in numpy; x // 0 is 0
    return b.select(b.icmp_signed("==", d, zero), zero, b.select(bad, b.sub(zero, a), q))


def _uint_div(em: Emitter, a: ir.Value, d: ir.Value) -> ir.Value:
    b = em.b
    zero = b.icmp_unsigned("==", d, _c(a, 0))
    q = b.udiv(a, b.select(zero, _c(a, 1), d))
    return b.select(zero, _c(a, 0), q)


_FCMP = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _compare(em: Emitter, name: str, dt: DType, a: ir.Value, b: ir.Value) -> ir.Value:
    if dt.is_float:
        if name == "ne":  # numpy: nan != nan is true
            return em.b.fcmp_unordered("!=", a, b)
        return em.b.fcmp_ordered(_FCMP[name], a, b)
    if dt.name == "bool" or not is_signed(dt):
        return em.b.icmp_unsigned(_FCMP[name], a, b)
    return em.b.icmp_signed(_FCMP[name], a, b)


def cast_value(em: Emitter, x: ir.Value, src: DType, dst: DType) -> ir.Value:
    """Convert a logical value of ``src`` to ``dst`` (bools are i1 here)."""
    b = em.b
    if src.name == dst.name:
        return x
    dty = I1 if dst.name == "bool" else storage_type(dst)
    if dst.name == "bool":
        if src.is_float:
            return b.fcmp_unordered("!=", x, _c(x, 0.0))
        return b.icmp_unsigned("!=", x, _c(x, 0))
    if src.name == "bool":
        return b.uitofp(x, dty) if dst.is_float else b.zext(x, dty)
    if src.is_float and dst.is_float:
        return x
    if src.is_float:
        # defined for every float (docs/ir.md, "Edge values"): truncate toward zero, saturate to int64 (NaN -> 0),
        # then wrap to the target width like torch; a plain fptosi/fptoui out of range is poison
        wide_t = ir.VectorType(I64, x.type.count) if isinstance(x.type, ir.VectorType) else I64
        wide = b.call(em.intrinsic("llvm.fptosi.sat", [wide_t, x.type], wide_t, [x.type]), [x])
        return (
            wide if dty.width == 64 else b.trunc(wide, ir.VectorType(dty, x.type.count) if wide_t is not I64 else dty)
        )
    if dst.is_float:
        return b.sitofp(x, dty) if is_signed(src) else b.uitofp(x, dty)
    if x.type.width == dty.width:
        return x
    if x.type.width > dty.width:
        return b.trunc(x, dty)
    return b.sext(x, dty) if is_signed(src) else b.zext(x, dty)


def load_logical(em: Emitter, ptr: ir.Value, index: ir.Value, dt: DType) -> ir.Value:
    """Load one element as its logical LLVM value (bool becomes i1)."""
    v = em.load(ptr, index, storage_type(dt))
    if dt.name == "bool":
        return em.b.icmp_unsigned("!=", v, ir.Constant(I8, 0))
    return v


def store_logical(em: Emitter, value: ir.Value, ptr: ir.Value, index: ir.Value, dt: DType) -> None:
    if dt.name == "bool":
        value = em.b.zext(value, I8)
    em.store(value, ptr, index)


# -- the broadcasting loop nest -------------------------------------------------------


def _strides(shape: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


def broadcast_plan(out_shape: tuple[int, ...], shapes: list[tuple[int, ...]]) -> tuple[list[int], list[list[int]]]:
    """Collapsed loop sizes and per-operand element strides (0 where broadcast).

    Adjacent axes merge when every operand walks them as one contiguous axis, so
    ``[32,128,256] + [256]`` becomes two loops, and same-shape operands become one.
    """
    rank = len(out_shape)
    per = []
    for s in shapes:
        full = (1,) * (rank - len(s)) + tuple(s)
        st = _strides(full)
        per.append([0 if full[d] == 1 and out_shape[d] != 1 else st[d] for d in range(rank)])
    dims = [(out_shape[d], [p[d] for p in per]) for d in range(rank) if out_shape[d] != 1]
    merged: list[tuple[int, list[int]]] = []
    for size, st in dims:
        if merged:
            psize, pst = merged[-1]
            if all(a == b * size for a, b in zip(pst, st)):
                merged[-1] = (psize * size, st)
                continue
        merged.append((size, st))
    sizes = [m[0] for m in merged]
    return sizes, [[m[1][k] for m in merged] for k in range(len(shapes))]


def emit_broadcast(
    k: KernelContext, dtypes_in: list[DType], body: Callable[[list[ir.Value]], ir.Value], out_dtype: DType
) -> None:
    """Loop over the result, load each operand (broadcast), store ``body(values)``.

    The outermost (collapsed) loop is split through the parallel hook when the result is large
    (``ELEMENT_WORK`` per element): every element is computed by the same instructions whatever
    the split, so results are bit-identical for any thread count."""
    em = k.em
    shapes = [t.shape for t in k.operand_types]
    out_shape = k.result_type.shape
    sizes, strides = broadcast_plan(out_shape, [*shapes, out_shape])

    def run(em: Emitter, ptrs: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
        def level(d: int, offsets: list[ir.Value]) -> None:
            if d == len(sizes):
                vals = [load_logical(em, p, off, dt) for p, off, dt in zip(ptrs, offsets, dtypes_in)]
                store_logical(em, body(vals), ptrs[-1], offsets[-1], out_dtype)
                return
            count, start = (hi, lo) if d == 0 else (sizes[d], 0)
            with em.loop(count, name=f"d{d}", start=start) as i:
                level(
                    d + 1,
                    [
                        off if st[d] == 0 else em.b.add(off, em.b.mul(i, i64(st[d])))
                        for off, st in zip(offsets, strides)
                    ],
                )

        level(0, [i64(0)] * (len(shapes) + 1))

    units = sizes[0] if sizes else 1
    work = math.prod(out_shape) * ELEMENT_WORK
    parallel_for(em, f"{k.op.name}_elementwise", units, work, [*k.args[: len(shapes)], k.out], run)


# -- generators --------------------------------------------------------------------------

_FLOAT_UNARY = (
    "sigmoid",
    "tanh",
    "silu",
    "hardswish",
    "hardsigmoid",
    "gelu",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "erf",
    "pow",
)


def _unary_gen(k: KernelContext) -> None:
    """y = f(x) for one float or integer operand."""
    dt = k.operand_types[0].dtype
    fn = float_unary(k.op) if dt.is_float else _int_unary(k.op, dt)
    emit_broadcast(k, [dt], lambda v: fn(k.em, v[0]), dt)


for _name in _FLOAT_UNARY:
    kernel(_name, ("f32",))(_unary_gen)
for _name in ("relu", "clamp", "neg", "abs"):
    kernel(_name, ("f32|int",))(_unary_gen)


def _binary_gen(k: KernelContext) -> None:
    """y = a (op) b with numpy broadcasting."""
    dt = k.operand_types[0].dtype
    fn = _binary_fn(k.op.name, dt)
    emit_broadcast(k, [dt, dt], lambda v: fn(k.em, v[0], v[1]), dt)


for _name in ("add", "sub", "mul", "div", "maximum", "minimum"):
    kernel(_name, ("f32|int", "f32|int"))(_binary_gen)


def _compare_gen(k: KernelContext) -> None:
    """y = a (cmp) b as bool."""
    dt = k.operand_types[0].dtype
    emit_broadcast(k, [dt, dt], lambda v: _compare(k.em, k.op.name, dt, v[0], v[1]), k.result_type.dtype)


for _name in _FCMP:
    kernel(_name, ("any", "any"))(_compare_gen)


@kernel("where", ("bool", "any", "any"))
def where(k: KernelContext) -> None:
    """y = a where cond else b (broadcasting)."""
    types = k.operand_types
    emit_broadcast(k, [t.dtype for t in types], lambda v: k.em.b.select(v[0], v[1], v[2]), types[1].dtype)


def _logical_gen(k: KernelContext) -> None:
    """Boolean not/and/or."""
    b = k.em.b
    fns = {
        "logical_not": lambda v: b.not_(v[0]),
        "logical_and": lambda v: b.and_(v[0], v[1]),
        "logical_or": lambda v: b.or_(v[0], v[1]),
    }
    emit_broadcast(k, [t.dtype for t in k.operand_types], fns[k.op.name], k.result_type.dtype)


kernel("logical_not", ("bool",))(_logical_gen)
kernel("logical_and", ("bool", "bool"))(_logical_gen)
kernel("logical_or", ("bool", "bool"))(_logical_gen)


@kernel("cast", ("any",))
def cast(k: KernelContext) -> None:
    """y = x converted to another dtype (float -> int truncates toward zero)."""
    src, dst = k.operand_types[0].dtype, k.result_type.dtype
    emit_broadcast(k, [src], lambda v: cast_value(k.em, v[0], src, dst), dst)


# -- per-tensor affine quantisation: the encoding is in the result/operand type ----------------


def _per_tensor(t: TensorType) -> Quant | None:
    enc = t.encoding
    return enc if isinstance(enc, Quant) and enc.axis is None else None


@kernel("quantize", ("f32",), result="i8#quant|u8#quant|i16#quant|i32#quant")
def quantize(k: KernelContext) -> None:
    """q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax) into the result's integer type."""
    t = k.result_type
    q = _per_tensor(t)
    if q is None or not t.dtype.is_integer:
        raise CodegenError(f"{k.op.where()}: native quantize needs a per-tensor #quant integer result, got {t}")
    info = np.iinfo(t.dtype.np)
    em = k.em

    def body(v: list[ir.Value]) -> ir.Value:
        b = em.b
        x = b.fdiv(v[0], _c(v[0], q.scale))  # division, not * (1/scale): bit-equal to the reference
        r = b.fadd(math_approx.rint(em, x), _c(x, float(q.zero_point)))
        big = b.fcmp_ordered(">=", em.call_unary("fabs", x), _c(x, 4194304.0))  # rint trick range
        r = b.select(big, b.fadd(x, _c(x, float(q.zero_point))), r)
        r = em.fmin(em.fmax(r, _c(r, float(info.min))), _c(r, float(info.max)))
        r = b.select(b.fcmp_unordered("uno", r, r), _c(r, 0.0), r)
        # convert through a wider integer: fptosi straight to i8 is poison for 128..255 (u8)
        ty = storage_type(t.dtype)
        wide = ir.IntType(32 if ty.width <= 16 else 64)
        v = b.fptosi(r, wide)
        return b.trunc(v, ty) if ty.width < wide.width else v

    emit_broadcast(k, [k.operand_types[0].dtype], body, t.dtype)


@kernel("dequantize", ("i8#quant|u8#quant|i16#quant|i32#quant",), result="f32")
def dequantize(k: KernelContext) -> None:
    """x = scale * (q - zero_point) for per-tensor quantised operands."""
    t = k.operand_types[0]
    q = _per_tensor(t)
    if q is None:
        raise CodegenError(
            f"{k.op.where()}: native dequantize needs a per-tensor #quant operand, got {t}; "
            "per-axis constants are decoded at compile time by the kernels that use them"
        )
    em = k.em

    def body(v: list[ir.Value]) -> ir.Value:
        b = em.b
        x = b.sitofp(v[0], F32) if is_signed(t.dtype) else b.uitofp(v[0], F32)
        return b.fmul(b.fsub(x, const(F32, float(q.zero_point))), const(F32, q.scale))

    emit_broadcast(k, [t.dtype], body, k.result_type.dtype)
