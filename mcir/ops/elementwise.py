"""Elementwise ops: activations, arithmetic with broadcasting, comparisons, casts.

References compute in float64 where it matters for accuracy and return the result
dtype, so they are the oracle the native approximations are measured against.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mcir import dtypes
from mcir.errors import McirError
from mcir.ops.registry import Attr, broadcast_shapes, defop
from mcir.ops.traits import ACTIVATION, BINARY, COMMUTATIVE, CONVERSION, ELEMENTWISE, UNARY, VIEW
from mcir.types import TensorType

UNARY_EW = {ELEMENTWISE, UNARY}
ACT = UNARY_EW | {ACTIVATION}
BINARY_EW = {ELEMENTWISE, BINARY}


def _f(x: np.ndarray) -> np.ndarray:
    """Compute in float64, the caller casts back to the operand dtype."""
    return np.asarray(x, dtype=np.float64)


def _like(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray(y).astype(np.asarray(x).dtype, copy=False)


def _float_only(types: list[TensorType], **_: Any) -> TensorType:
    if not types[0].dtype.is_float:
        raise McirError(f"needs a floating-point operand, got {types[0]}")
    return types[0]


_erf = np.frompyfunc(math.erf, 1, 1)


def erf64(x: np.ndarray) -> np.ndarray:
    """The error function in float64 (exact to double rounding, via math.erf)."""
    # frompyfunc returns a bare Python float for a 0-d input, hence asarray rather than .astype
    return np.asarray(_erf(np.asarray(x, np.float64)), np.float64)


# -- activations -------------------------------------------------------------------


@defop("relu", traits=ACT)
def relu(x):
    """y = max(x, 0)"""
    return np.maximum(x, np.zeros((), np.asarray(x).dtype))


@defop(
    "clamp",
    attrs={
        "min": Attr("float?", None, "lower bound, none for -inf", finite=True),
        "max": Attr("float?", None, "upper bound, none for +inf", finite=True),
    },
    traits=ACT,
)
def clamp(x, min=None, max=None):
    """y = min(max(x, min), max); relu6 is clamp{min=0, max=6}, hardtanh is clamp{min=-1, max=1}"""
    lo = -np.inf if min is None else min
    hi = np.inf if max is None else max
    if np.asarray(x).dtype.kind in "iu":  # bounds beyond an integer dtype saturate to it (as natively)
        info = np.iinfo(np.asarray(x).dtype)
        lo, hi = (float(np.clip(b, info.min, info.max)) for b in (lo, hi))
    return _like(np.clip(x, lo, hi), x)


@defop("sigmoid", infer=_float_only, traits=ACT)
def sigmoid(x):
    """y = 1 / (1 + exp(-x))"""
    return _like(1.0 / (1.0 + np.exp(-_f(x))), x)


@defop("tanh", infer=_float_only, traits=ACT)
def tanh(x):
    """y = tanh(x)"""
    return _like(np.tanh(_f(x)), x)


@defop("silu", infer=_float_only, traits=ACT)
def silu(x):
    """y = x * sigmoid(x)"""
    xf = _f(x)
    return _like(xf / (1.0 + np.exp(-xf)), x)


@defop("hardswish", infer=_float_only, traits=ACT)
def hardswish(x):
    """y = x * clamp(x + 3, 0, 6) / 6"""
    xf = _f(x)
    return _like(xf * np.clip(xf + 3.0, 0.0, 6.0) / 6.0, x)


@defop("hardsigmoid", infer=_float_only, traits=ACT)
def hardsigmoid(x):
    """y = clamp(x + 3, 0, 6) / 6"""
    return _like(np.clip(_f(x) + 3.0, 0.0, 6.0) / 6.0, x)


@defop(
    "gelu",
    attrs={"approximate": Attr("str", "none", "'none' (exact, erf) or 'tanh'")},
    infer=lambda t, approximate: _gelu_infer(t, approximate),
    traits=ACT,
)
def gelu(x, approximate="none"):
    """exact: y = x/2 (1 + erf(x/sqrt 2)); tanh: y = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))"""
    xf = _f(x)
    if approximate == "tanh":
        y = 0.5 * xf * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (xf + 0.044715 * xf**3)))
    else:
        y = 0.5 * xf * (1.0 + erf64(xf / math.sqrt(2.0)))
    return _like(y, x)


def _gelu_infer(types: list[TensorType], approximate: str) -> TensorType:
    if approximate not in ("none", "tanh"):
        raise McirError(f"gelu approximate must be 'none' or 'tanh', got '{approximate}'")
    return _float_only(types)


@defop("exp", infer=_float_only, traits=UNARY_EW)
def exp(x):
    """y = e^x"""
    return _like(np.exp(_f(x)), x)


@defop("log", infer=_float_only, traits=UNARY_EW)
def log(x):
    """y = ln x"""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _like(np.log(_f(x)), x)


@defop("sqrt", infer=_float_only, traits=UNARY_EW)
def sqrt(x):
    """y = sqrt(x)"""
    with np.errstate(invalid="ignore"):
        return _like(np.sqrt(_f(x)), x)


@defop("rsqrt", infer=_float_only, traits=UNARY_EW)
def rsqrt(x):
    """y = 1 / sqrt(x)"""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _like(1.0 / np.sqrt(_f(x)), x)


@defop("erf", infer=_float_only, traits=UNARY_EW)
def erf(x):
    """y = erf(x)"""
    return _like(erf64(x), x)


def _numeric_infer(types: list[TensorType], **_: Any) -> TensorType:
    # like torch: negation, subtraction and division have no meaning on bool (numpy raises TypeError)
    if any(t.dtype == dtypes.boolean for t in types):
        raise McirError(f"needs numeric operands, got bool ({', '.join(str(t) for t in types)})")
    return _binary_infer(types) if len(types) == 2 else types[0]


@defop("neg", infer=_numeric_infer, traits=UNARY_EW)
def neg(x):
    """y = -x"""
    return np.negative(x)


@defop("abs", traits=UNARY_EW)
def abs_(x):
    """y = |x|"""
    return np.abs(x)


@defop(
    "pow",
    attrs={"exponent": Attr("float", doc="the constant exponent", finite=True)},
    infer=_float_only,
    traits=UNARY_EW,
)
def pow_(x, exponent):
    """y = x ** exponent (constant exponent)"""
    with np.errstate(invalid="ignore", divide="ignore"):
        return _like(np.power(_f(x), exponent), x)


@defop(
    "dropout",
    attrs={"p": Attr("float", 0.5, "drop probability (training only)", finite=True)},
    traits=UNARY_EW | {VIEW},
)
def dropout(x, p=0.5):
    """y = x: inference semantics; the fold pass removes it"""
    return x


@defop(
    "cast",
    attrs={"dtype": Attr("dtype", doc="target element type")},
    infer=lambda t, dtype: TensorType(t[0].shape, dtypes.by_name(dtype)),
    traits=UNARY_EW | {CONVERSION},
)
def cast(x, dtype):
    """y = x converted to dtype; float -> int truncates toward zero, saturates to int64 (NaN -> 0) and
    wraps to the target width (as torch does on x86: -1.0 -> u8 255), the same natively"""
    x = np.asarray(x)
    target = dtypes.by_name(dtype).np
    if x.dtype.kind == "f" and np.dtype(target).kind in "iu":
        t = np.trunc(x.astype(np.float64))
        hi = 2.0**63  # the first float above int64's range
        wide = np.where(t >= hi, 0, np.where(np.isnan(t) | (t < -hi), 0, t)).astype(np.int64)
        wide = np.where(t >= hi, np.iinfo(np.int64).max, np.where(t < -hi, np.iinfo(np.int64).min, wide))
        return wide.astype(target)
    return x.astype(target)


# -- binary arithmetic with broadcasting ----------------------------------------


def _binary_infer(types: list[TensorType], **_: Any) -> TensorType:
    a, b = types
    if a.dtype != b.dtype:
        raise McirError(f"operand dtypes differ: {a.dtype} and {b.dtype}; insert a cast")
    return TensorType(broadcast_shapes(a.shape, b.shape), a.dtype)


def _compare_infer(types: list[TensorType], **_: Any) -> TensorType:
    return TensorType(_binary_infer(types).shape, dtypes.boolean)


def _binary(name: str, fn, doc: str, infer=_binary_infer, commutative: bool = True) -> None:
    def ref(a, b):
        return _like(fn(a, b), a)

    ref.__doc__ = doc
    traits = BINARY_EW | ({COMMUTATIVE} if commutative else set())
    defop(name, operands="a, b", infer=infer, traits=traits)(ref)


_binary("add", np.add, "y = a + b (broadcasting)")
_binary("sub", np.subtract, "y = a - b (broadcasting)", infer=_numeric_infer, commutative=False)
_binary("mul", np.multiply, "y = a * b (broadcasting)")
_binary("maximum", np.maximum, "y = max(a, b) (broadcasting)")
_binary("minimum", np.minimum, "y = min(a, b) (broadcasting)")


@defop("div", operands="a, b", infer=_numeric_infer, traits=BINARY_EW)
def div(a, b):
    """y = a / b (broadcasting; true division for floats, floor division for integers)"""
    a = np.asarray(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        if a.dtype.kind in "iu":
            return np.floor_divide(a, b)
        return _like(np.divide(a, b), a)


def _compare(name: str, fn, doc: str, commutative: bool = False) -> None:
    def ref(a, b):
        return fn(a, b)

    ref.__doc__ = doc
    traits = BINARY_EW | ({COMMUTATIVE} if commutative else set())
    defop(name, operands="a, b", infer=_compare_infer, traits=traits)(ref)


_compare("eq", np.equal, "y = a == b (bool)", commutative=True)
_compare("ne", np.not_equal, "y = a != b (bool)", commutative=True)
_compare("lt", np.less, "y = a < b (bool)")
_compare("le", np.less_equal, "y = a <= b (bool)")
_compare("gt", np.greater, "y = a > b (bool)")
_compare("ge", np.greater_equal, "y = a >= b (bool)")


def _where_infer(types: list[TensorType], **_: Any) -> TensorType:
    cond, a, b = types
    if cond.dtype != dtypes.boolean:
        raise McirError(f"where: condition must be bool, got {cond}")
    if a.dtype != b.dtype:
        raise McirError(f"where: branch dtypes differ: {a.dtype} and {b.dtype}")
    return TensorType(broadcast_shapes(cond.shape, a.shape, b.shape), a.dtype)


@defop("where", operands="cond, a, b", infer=_where_infer, traits={ELEMENTWISE})
def where(cond, a, b):
    """y = a where cond else b (broadcasting)"""
    return _like(np.where(cond, a, b), a)


def _logical_infer(types: list[TensorType], **_: Any) -> TensorType:
    if any(t.dtype != dtypes.boolean for t in types):
        raise McirError(f"needs bool operands, got {', '.join(str(t) for t in types)}")
    return TensorType(broadcast_shapes(*(t.shape for t in types)), dtypes.boolean)


@defop("logical_not", infer=_logical_infer, traits=UNARY_EW)
def logical_not(x):
    """y = not x"""
    return np.logical_not(x)


@defop("logical_and", operands="a, b", infer=_logical_infer, traits=BINARY_EW | {COMMUTATIVE})
def logical_and(a, b):
    """y = a and b"""
    return np.logical_and(a, b)


@defop("logical_or", operands="a, b", infer=_logical_infer, traits=BINARY_EW | {COMMUTATIVE})
def logical_or(a, b):
    """y = a or b"""
    return np.logical_or(a, b)
