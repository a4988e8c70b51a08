"""Handlers for elementwise aten ops: activations, arithmetic with scalars, comparisons, casts.

Python scalars become 0-d constants of the dtype torch computes in (``cx.out_dtype()`` or
``promote``), and operands are cast to it, so ``int_tensor / 2`` is a float division as in torch.
"""

from __future__ import annotations

from typing import Any

from mcir import dtypes
from mcir.errors import UnsupportedError
from mcir.frontend.convert import Converter, Folded, Param
from mcir.frontend.torch_ops import (
    ATEN,
    Args,
    Handler,
    aten,
    cast,
    float_input,
    on,
    promote,
    tensor_as,
)
from mcir.ir import Value

# -- elementwise -----------------------------------------------------------------------------


def unary(op: str, **attrs: Any) -> Handler:
    return lambda cx, a: cx.emit(op, [float_input(cx, a)], attrs)


for _packet, _op in [
    (aten.relu, "relu"),
    (aten.sigmoid, "sigmoid"),
    (aten.tanh, "tanh"),
    (aten.silu, "silu"),
    (aten.hardswish, "hardswish"),
    (aten.hardsigmoid, "hardsigmoid"),
    (aten.exp, "exp"),
    (aten.log, "log"),
    (aten.sqrt, "sqrt"),
    (aten.rsqrt, "rsqrt"),
    (aten.erf, "erf"),
    (aten.neg, "neg"),
    (aten.abs, "abs"),
]:
    ATEN[_packet] = unary(_op)


@on(aten.gelu)
def gelu(cx, a):
    return cx.emit("gelu", [float_input(cx, a)], {"approximate": a(1, "approximate", "none")})


@on(aten.hardtanh)
def hardtanh(cx, a):
    return cx.emit("clamp", [float_input(cx, a)], {"min": a(1, "min_val", -1.0), "max": a(2, "max_val", 1.0)})


@on(aten.relu6)
def relu6(cx, a):
    return cx.emit("clamp", [float_input(cx, a)], {"min": 0.0, "max": 6.0})


def emit_clamp(cx: Converter, x: Value, lo: Any, hi: Any) -> Value:
    if isinstance(lo, Value | Param | Folded) or isinstance(hi, Value | Param | Folded):
        # tensor bounds: max(x, lo) then min(., hi)
        if lo is not None:
            x = cx.emit("maximum", [x, tensor_as(cx, lo, x.type.dtype)])
        if hi is not None:
            x = cx.emit("minimum", [x, tensor_as(cx, hi, x.type.dtype)])
        return x
    return cx.emit("clamp", [x], {"min": lo, "max": hi})


@on(aten.clamp, aten.clip)
def clamp(cx, a):
    return emit_clamp(cx, float_input(cx, a), a(1, "min", None), a(2, "max", None))


@on(aten.clamp_min)
def clamp_min(cx, a):
    return emit_clamp(cx, float_input(cx, a), a(1, "min"), None)


@on(aten.clamp_max)
def clamp_max(cx, a):
    return emit_clamp(cx, float_input(cx, a), None, a(1, "max"))


@on(aten.leaky_relu)
def leaky_relu(cx, a):
    # y = x if x > 0 else slope * x
    x = float_input(cx, a)
    slope = cx.scalar(a(1, "negative_slope", 0.01), x.type.dtype)
    positive = cx.emit("gt", [x, cx.scalar(0.0, x.type.dtype)])
    return cx.emit("where", [positive, x, cx.emit("mul", [x, slope])])


def emit_elu(cx: Converter, x: Value, alpha: float, scale: float = 1.0, input_scale: float = 1.0) -> Value:
    """y = scale * (x if x > 0 else alpha * (exp(input_scale * x) - 1)): torch's ELU, which SELU and CELU are."""
    dt = x.type.dtype
    z = x if input_scale == 1.0 else cx.emit("mul", [x, cx.scalar(input_scale, dt)])
    negative = cx.emit("mul", [cx.emit("sub", [cx.emit("exp", [z]), cx.scalar(1.0, dt)]), cx.scalar(alpha, dt)])
    y = cx.emit("where", [cx.emit("gt", [x, cx.scalar(0.0, dt)]), x, negative])
    return y if scale == 1.0 else cx.emit("mul", [y, cx.scalar(scale, dt)])


@on(aten.elu)
def elu(cx, a):
    alpha, scale, input_scale = (float(a(i, name, 1.0)) for i, name in ((1, "alpha"), (2, "scale"), (3, "input_scale")))
    return emit_elu(cx, float_input(cx, a), alpha, scale, input_scale)


@on(aten.selu)
def selu(cx, a):
    # torch's constants (Klambauer et al.): alpha and scale of the self-normalising ELU
    return emit_elu(cx, float_input(cx, a), 1.6732632423543772848170429916717, 1.0507009873554804934193349852946)


@on(aten.celu)
def celu(cx, a):
    alpha = float(a(1, "alpha", 1.0))
    if alpha == 0.0:
        raise UnsupportedError(f"{cx.describe()}: celu with alpha=0 divides by zero (x / alpha); use relu")
    return emit_elu(cx, float_input(cx, a), alpha, 1.0, 1.0 / alpha)


@on(aten.dropout, aten.feature_dropout, aten.alpha_dropout, aten.feature_alpha_dropout)
def dropout(cx, a):
    # kept as an op (identity at inference) so the model's structure stays visible; the fold pass removes it
    return cx.emit("dropout", [cx.tensor(a(0, "self"))], {"p": float(a(1, "p", 0.5))})


def arith(op: str) -> Handler:
    def handler(cx, a):
        x, y = a(0, "self"), a(1, "other")
        alpha = a(2, "alpha", 1)
        dt = cx.out_dtype()
        if alpha != 1:  # add/sub: x + alpha * y
            if isinstance(y, int | float):
                y = y * alpha
            else:
                y = cx.emit("mul", [tensor_as(cx, y, dt), cx.scalar(alpha, dt)])
        return cx.emit(op, [tensor_as(cx, x, dt), tensor_as(cx, y, dt)])

    return handler


ATEN[aten.add] = arith("add")
ATEN[aten.sub] = arith("sub")
ATEN[aten.mul] = arith("mul")
ATEN[aten.maximum] = arith("maximum")
ATEN[aten.minimum] = arith("minimum")


@on(aten.rsub)
def rsub(cx, a):
    # rsub(x, y, alpha) = y - alpha * x
    return arith("sub")(cx, Args([a(1, "other"), a(0, "self"), a(2, "alpha", 1)]))


@on(aten.div)
def div(cx, a):
    x, y = a(0, "self"), a(1, "other")
    mode = a(2, "rounding_mode", None)
    dt = cx.out_dtype()
    if mode == "trunc" or (mode == "floor" and dt.is_float):
        raise UnsupportedError(f"division with rounding_mode='{mode}' on {dt} is not supported")
    # mcir div is true division on floats and floor division on integers, like torch's rounding_mode='floor'
    return cx.emit("div", [tensor_as(cx, x, dt), tensor_as(cx, y, dt)])


@on(aten.floor_divide)
def floor_divide(cx, a):
    dt = cx.out_dtype()
    if dt.is_float:
        raise UnsupportedError("floor division of floating-point tensors is not supported")
    return cx.emit("div", [tensor_as(cx, a(0, "self"), dt), tensor_as(cx, a(1, "other"), dt)])


@on(aten.reciprocal)
def reciprocal(cx, a):
    x = float_input(cx, a)
    return cx.emit("div", [cx.scalar(1.0, x.type.dtype), x])


@on(aten.pow)
def pow_(cx, a):
    base, exponent = a(0, "self"), a(1, "exponent")
    dt = cx.out_dtype()
    if isinstance(exponent, Folded) and exponent.tensor.numel() == 1:
        exponent = exponent.tensor.item()
    if isinstance(base, int | float):  # c ** x = exp(x * ln c)
        import math

        if base <= 0:
            raise UnsupportedError(f"pow with the non-positive scalar base {base} is not supported")
        return cx.emit("exp", [cx.emit("mul", [tensor_as(cx, exponent, dt), cx.scalar(math.log(base), dt)])])
    if not isinstance(exponent, int | float):
        raise UnsupportedError("pow with a tensor exponent is not supported; mcir's pow takes a constant exponent")
    return cx.emit("pow", [tensor_as(cx, base, dt)], {"exponent": float(exponent)})


@on(aten.square)
def square(cx, a):
    return cx.emit("pow", [float_input(cx, a)], {"exponent": 2.0})


def _compare(op: str) -> Handler:
    def handler(cx, a):
        x, y = a(0, "self"), a(1, "other")
        dt = promote(cx, x, y)
        return cx.emit(op, [tensor_as(cx, x, dt), tensor_as(cx, y, dt)])

    return handler


for _packet, _op in [
    (aten.eq, "eq"),
    (aten.ne, "ne"),
    (aten.lt, "lt"),
    (aten.le, "le"),
    (aten.gt, "gt"),
    (aten.ge, "ge"),
]:
    ATEN[_packet] = _compare(_op)


def _logical(op: str) -> Handler:
    def handler(cx, a):
        operands = [tensor_as(cx, x, dtypes.boolean) for x in a.args[:2]]
        if cx.out_dtype() != dtypes.boolean:
            raise UnsupportedError("bitwise ops on non-bool tensors are not supported")
        return cx.emit(op, operands)

    return handler


ATEN[aten.logical_not] = ATEN[aten.bitwise_not] = _logical("logical_not")
ATEN[aten.logical_and] = ATEN[aten.bitwise_and] = ATEN[aten.__and__] = _logical("logical_and")
ATEN[aten.logical_or] = ATEN[aten.bitwise_or] = ATEN[aten.__or__] = _logical("logical_or")


@on(aten.where)
def where(cx, a):
    if len(a.args) < 3 and "other" not in a.kwargs:
        raise UnsupportedError(
            "torch.where(condition) with one argument (indices of true elements) has a data-dependent shape"
        )
    dt = cx.out_dtype()
    cond = tensor_as(cx, a(0, "condition"), dtypes.boolean)
    return cx.emit("where", [cond, tensor_as(cx, a(1, "self"), dt), tensor_as(cx, a(2, "other"), dt)])


@on(aten.masked_fill)
def masked_fill(cx, a):
    # masked_fill(x, mask, v) = where(mask, v, x)
    x = cx.tensor(a(0, "self"))
    mask = tensor_as(cx, a(1, "mask"), dtypes.boolean)
    return cx.emit("where", [mask, tensor_as(cx, a(2, "value"), x.type.dtype), x])


@on(aten.to, aten._to_copy, aten.type_as)
def to(cx, a):
    x = cx.tensor(a(0, "self"))
    return cast(cx, x, cx.out_dtype())


@on(
    aten.contiguous,
    aten.clone,
    aten.alias,
    aten.detach,
    aten.lift_fresh_copy,
    aten.lift_fresh,
    aten.resolve_conj,
    aten.resolve_neg,
)
def identity(cx, a):
    # values in the IR have no memory layout: copies and views of the same values disappear
    x = a(0, "self")
    return x if isinstance(x, Param | Folded) else cx.tensor(x)


@on(aten._assert_tensor_metadata, aten._assert_scalar, aten.sym_constrain_range_for_size)
def assertion(cx, a):
    return None
