"""The op table: how each torch op becomes mcir ops.

One small handler per family of torch ops, registered in ``ATEN`` under the aten op
packets ``torch.export`` produces (``aten.linear``, ``aten.view``, ...). The torch-level
calls of ``torch.fx.symbolic_trace`` (``F.relu``, ``x.view``, ``nn.Linear``) map onto
the same handlers in ``mcir.frontend.torch_calls``, which is why both tracers give the
same IR.

A handler gets the converter ``cx`` and the call's arguments ``a`` (fx nodes already
replaced by mcir ``Value``s, not-yet-materialized ``Param``/``Folded`` tensors, or Python
values) and returns the result: a ``Value``, a tuple of them, or a Python value.
``a(i, "name", default)`` reads argument ``i`` or keyword ``name``. Shapes torch already
knows (``view(x, [-1, 4])``, ``expand``) are read from the node's recorded result
(``cx.out_shape()``), so no ``-1`` reaches the IR. After each handler the result type is
checked against torch's, so a wrong mapping fails at trace time, not later in a pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from mcir import dtypes
from mcir.errors import McirError, UnsupportedError
from mcir.frontend.torch_import import Converter, Folded, Param, Unavailable, mcir_dtype, target_name, torch_dtype
from mcir.ir import Value

aten = torch.ops.aten
Handler = Callable[[Converter, "Args"], Any]
_REQUIRED = object()
_ALIASES = {"self": ("input",), "input": ("self",), "other": ("exponent",)}
BIG = 2**63 - 1  # torch's "to the end" in slices


class Args:
    """A call's positional and keyword arguments; ``a(i, name, default)`` reads one."""

    def __init__(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any] | None = None) -> None:
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})

    def __call__(self, index: int | None, name: str, default: Any = _REQUIRED) -> Any:
        if index is not None and index < len(self.args):
            return self.args[index]
        for key in (name, *_ALIASES.get(name, ())):
            if key in self.kwargs:
                return self.kwargs[key]
        if default is _REQUIRED:
            raise UnsupportedError(f"missing argument '{name}'")
        return default


ATEN: dict[Any, Handler] = {}


def on(*packets: Any) -> Callable[[Handler], Handler]:
    """Register the decorated handler for aten op packets (``aten.relu``) or Python callables."""

    def deco(fn: Handler) -> Handler:
        for p in packets:
            ATEN[p] = fn
        return fn

    return deco


# -- entry point -----------------------------------------------------------------------------


def convert(cx: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What ``node`` computes, given its converted arguments: constants are folded, ops emitted."""
    from mcir.frontend import torch_calls

    handler = torch_calls.lookup(cx, node)
    if _is_random(node) and handler is None:
        raise UnsupportedError(
            f"{cx.describe()} draws random numbers; an inference graph cannot express it. "
            "Pass the random tensor as an input instead."
        )
    if _foldable(args, kwargs):
        return _fold(cx, node, args, kwargs)
    if handler is None:
        hint = "Rewrite the model around it, or add a handler to mcir/frontend/torch_ops.py."
        if node.op == "call_module":
            hint = (
                "symbolic_trace keeps torch.nn modules whole and mcir maps only the common ones; "
                "tracer='export' (the default) traces inside modules."
            )
        raise UnsupportedError(f"{cx.describe()} is not supported by mcir. {hint}")
    try:
        result = handler(cx, Args(args, kwargs))
    except McirError as e:
        if "torch op" in str(e):
            raise
        raise type(e)(f"{cx.describe()}: {e}") from None
    _check(cx, node, result)
    if torch_calls.mutates(cx, node) and node.args and isinstance(node.args[0], fx.Node):
        # later uses of the overwritten tensor must see the new value
        cx.env[node.args[0]] = result
    return result


_RANDOM = {
    "rand",
    "randn",
    "randint",
    "randperm",
    "rand_like",
    "randn_like",
    "randint_like",
    "normal",
    "uniform",
    "bernoulli",
    "multinomial",
    "exponential",
    "poisson",
}


def _is_random(node: fx.Node) -> bool:
    """Whether the node samples random numbers (a constant from trace time would be wrong)."""
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        name = t.overloadpacket.__name__
    else:
        name = t if isinstance(t, str) else getattr(t, "__name__", "")
    return name.rstrip("_") in _RANDOM


def _leaves(x: Any) -> list[Any]:
    if isinstance(x, tuple | list):
        return [y for item in x for y in _leaves(item)]
    if isinstance(x, dict):
        return [y for item in x.values() for y in _leaves(item)]
    return [x]


def _foldable(args: Any, kwargs: Any) -> bool:
    """True when nothing in the arguments depends on a graph input or names a parameter."""
    return not any(isinstance(x, Value | Param | Unavailable) for x in _leaves((args, kwargs)))


def _fold(cx: Converter, node: fx.Node, args: Any, kwargs: Any) -> Any:
    """Run the node with torch now; tensors it gives become ``Folded`` (constants if used)."""
    unwrap = lambda x: x.tensor if isinstance(x, Folded) else x
    return _evaluate(cx, node, fx.node.map_aggregate(args, unwrap), fx.node.map_aggregate(kwargs, unwrap))


def _evaluate(cx: Converter, node: fx.Node, args: Any, kwargs: Any) -> Any:
    with torch.no_grad():
        if node.op == "call_method":
            result = getattr(args[0], str(node.target))(*args[1:], **kwargs)
        elif node.op == "call_module":
            result = cx.source.root.get_submodule(str(node.target))(*args, **kwargs)
        else:
            result = node.target(*args, **kwargs)
    if "empty" in target_name(node, cx.source.root):
        result = torch.zeros_like(result)  # uninitialised memory has no defined value: use zeros
    return fx.node.map_aggregate(result, lambda r: Folded(r, node.name) if isinstance(r, torch.Tensor) else r)


def _check(cx: Converter, node: fx.Node, result: Any) -> None:
    """The result types must be what torch recorded; a mismatch is a bug in a handler."""
    val = node.meta.get("val")
    pairs = zip(result, val) if isinstance(result, tuple | list) and isinstance(val, tuple | list) else [(result, val)]
    for got, want in pairs:
        if isinstance(got, Value) and isinstance(want, torch.Tensor):
            shape = tuple(int(d) for d in want.shape)
            if got.type.shape != shape or got.type.dtype != mcir_dtype(want.dtype):
                raise McirError(
                    f"internal error: {cx.describe()} was mapped to {got.type}, but torch computes "
                    f"{mcir_dtype(want.dtype)}{list(shape)}; please report this mcir bug"
                )


# -- small helpers ---------------------------------------------------------------------------


def cast(cx: Converter, v: Value, dt: dtypes.DType) -> Value:
    """``v`` converted to ``dt`` (no op when it already is)."""
    return v if v.type.dtype == dt else cx.emit("cast", [v], {"dtype": dt.name})


def tensor_as(cx: Converter, x: Any, dt: dtypes.DType) -> Value:
    """Any operand (Value, parameter, Python number) as a Value of dtype ``dt``."""
    return cast(cx, cx.tensor(x, dt), dt)


def _meta(cx: Converter, x: Any) -> Any:
    """A stand-in torch can type-promote: meta tensors for values, numbers as they are."""
    if isinstance(x, Value):
        return torch.empty(x.type.shape, dtype=torch_dtype(x.type.dtype), device="meta")
    if isinstance(x, Param | Folded):
        return x.tensor
    return x


def promote(cx: Converter, *xs: Any) -> dtypes.DType:
    """torch's result dtype for an op on ``xs`` (tensors and Python scalars)."""
    metas = [_meta(cx, x) for x in xs]
    dt = metas[0] if len(metas) == 1 else torch.result_type(metas[0], metas[1])
    for m in metas[2:]:
        dt = torch.promote_types(dt, m.dtype if isinstance(m, torch.Tensor) else torch.result_type(m, m))
    return mcir_dtype(dt if isinstance(dt, torch.dtype) else dt.dtype)


def norm_dim(d: int, rank: int) -> int:
    return d % max(rank, 1)


def _ints(v: Any, n: int = 2) -> tuple[int, ...]:
    """An int or a list of ints as an n-tuple (torch repeats a single value)."""
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(x) for x in v)
    return v * n if len(v) == 1 else v


def reshape_to(cx: Converter, v: Value, shape: tuple[int, ...]) -> Value:
    return v if v.type.shape == tuple(shape) else cx.emit("reshape", [v], {"shape": list(shape)})


def with_extras(cx: Converter, y: Value, count: int) -> Any:
    """``y`` alone, or ``(y, Unavailable, ...)`` when torch's op returns extra results (indices,
    statistics) that mcir does not compute; only using one of those is an error."""
    val = cx.node.meta.get("val")
    extra = Unavailable(f"an extra result of {target_name(cx.node, cx.source.root)} (indices or statistics)")
    return (y,) + (extra,) * (count - 1) if isinstance(val, tuple | list) else y


def float_input(cx: Converter, a: Args) -> Value:
    """The first operand, cast to the result dtype (``torch.exp`` of an int tensor is float)."""
    return tensor_as(cx, a(0, "self"), cx.out_dtype())


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


@on(aten.dropout, aten.feature_dropout, aten.alpha_dropout, aten.feature_alpha_dropout)
def dropout(cx, a):
    # kept as an op (identity at inference) so the model's structure stays visible; the fold pass removes it
    return cx.emit("dropout", [cx.tensor(a(0, "self"))], {"p": float(a(1, "p", 0.5))})


def _arith(op: str) -> Handler:
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


ATEN[aten.add] = _arith("add")
ATEN[aten.sub] = _arith("sub")
ATEN[aten.mul] = _arith("mul")
ATEN[aten.maximum] = _arith("maximum")
ATEN[aten.minimum] = _arith("minimum")


@on(aten.rsub)
def rsub(cx, a):
    # rsub(x, y, alpha) = y - alpha * x
    return _arith("sub")(cx, Args([a(1, "other"), a(0, "self"), a(2, "alpha", 1)]))


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


# -- linear algebra, convolution, normalisation -------------------------------------------------


@on(aten.linear)
def linear(cx, a):
    x = cx.tensor(a(0, "self"))
    operands = [x, cx.tensor(a(1, "weight"))]
    bias = a(2, "bias", None)
    if bias is not None:
        operands.append(cx.tensor(bias))
    return cx.emit("linear", operands)


@on(aten.matmul, aten.mm, aten.bmm)
def matmul(cx, a):
    return cx.emit("matmul", [cx.tensor(a(0, "self")), cx.tensor(a(1, "other"))])


@on(aten.addmm)
def addmm(cx, a):
    # addmm(c, a, b, beta, alpha) = beta * c + alpha * (a @ b)
    c, m1, m2 = cx.tensor(a(0, "self")), cx.tensor(a(1, "mat1")), cx.tensor(a(2, "mat2"))
    beta, alpha = a(3, "beta", 1), a(4, "alpha", 1)
    prod = cx.emit("matmul", [m1, m2])
    if alpha != 1:
        prod = cx.emit("mul", [prod, cx.scalar(alpha, prod.type.dtype)])
    if beta != 1:
        c = cx.emit("mul", [c, cx.scalar(beta, c.type.dtype)])
    return cx.emit("add", [c, prod])


@on(aten.t, aten.transpose, aten.swapaxes, aten.permute, aten.numpy_T)
def permute(cx, a):
    x = cx.tensor(a(0, "self"))
    rank = x.type.rank
    packet = getattr(cx.node.target, "overloadpacket", None)
    name = getattr(packet, "__name__", None) or str(cx.node.target)
    if name.endswith("permute") or "dims" in a.kwargs:
        dims = [norm_dim(d, rank) for d in _varargs(a, 1, "dims")]
    else:
        dims = list(range(rank))
        if name.endswith("numpy_T"):
            dims.reverse()
        elif rank >= 2:
            d0 = norm_dim(a(1, "dim0", 0), rank)
            d1 = norm_dim(a(2, "dim1", 1), rank)
            dims[d0], dims[d1] = dims[d1], dims[d0]
    if dims == list(range(rank)):
        return x
    return cx.emit("permute", [x], {"dims": dims})


def _varargs(a: Args, start: int, name: str) -> list[int]:
    """``x.view(2, 3)`` and ``x.view([2, 3])`` alike: the int arguments from ``start`` on."""
    first = a(start, name)
    if isinstance(first, list | tuple | torch.Size):
        return list(first)
    return list(a.args[start:])


def conv_padding(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Torch's conv padding (ints, or 'same'/'valid') as (symmetric conv padding, extra pad-op pads)."""
    if padding == "valid":
        return [0, 0], []
    if padding == "same":
        before = [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
        after = [d * (k - 1) - b for k, d, b in zip(kernel, dilation, before)]
        if before == after:
            return before, []
        # uneven 'same' padding: pad explicitly, then convolve without padding
        return [0, 0], [0, 0, 0, 0, before[0], after[0], before[1], after[1]]
    return list(_ints(padding)), []


@on(aten.conv2d)
def conv2d(cx, a):
    x, w = cx.tensor(a(0, "self")), cx.tensor(a(1, "weight"))
    bias = a(2, "bias", None)
    if x.type.rank != 4:
        raise UnsupportedError(f"only 2-D convolution on [N, C, H, W] inputs is supported, got {x.type}")
    stride, dilation = _ints(a(3, "stride", 1)), _ints(a(5, "dilation", 1))
    padding, extra = conv_padding(a(4, "padding", 0), tuple(w.type.shape[2:]), dilation)
    if extra:
        x = cx.emit("pad", [x], {"pads": extra})
    operands = [x, w] + ([cx.tensor(bias)] if bias is not None else [])
    return cx.emit(
        "conv2d",
        operands,
        {"stride": list(stride), "padding": padding, "dilation": list(dilation), "groups": int(a(6, "groups", 1))},
    )


@on(aten.convolution)
def convolution(cx, a):
    # convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups)
    if a(6, "transposed"):
        raise UnsupportedError("transposed convolution is not supported")
    if len(a(3, "stride")) != 2:
        raise UnsupportedError("only 2-D convolution is supported")
    return conv2d(
        cx,
        Args(
            [
                a(0, "input"),
                a(1, "weight"),
                a(2, "bias"),
                a(3, "stride"),
                a(4, "padding"),
                a(5, "dilation"),
                a(8, "groups"),
            ]
        ),
    )


def ones_like_channel(cx: Converter, value: float, channels: int, name: str) -> Value:
    import numpy as np

    return cx.graph.const(cx.graph.fresh_name(name), np.full((channels,), value, np.float32))


def emit_batch_norm(cx: Converter, x: Any, weight: Any, bias: Any, mean: Any, var: Any, eps: float) -> Value:
    x = cx.tensor(x)
    if mean is None or var is None:
        raise UnsupportedError(
            "batch norm without running statistics (track_running_stats=False) normalises "
            "with batch statistics, which is not inference; set track_running_stats=True"
        )
    c = x.type.shape[1]
    operands = [
        x,
        cx.tensor(weight) if weight is not None else ones_like_channel(cx, 1.0, c, "bn_weight"),
        cx.tensor(bias) if bias is not None else ones_like_channel(cx, 0.0, c, "bn_bias"),
        cx.tensor(mean),
        cx.tensor(var),
    ]
    return cx.emit("batch_norm", operands, {"eps": float(eps)})


@on(aten.batch_norm)
def batch_norm(cx, a):
    # batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
    if a(5, "training", False) and a(3, "running_mean", None) is None:
        return emit_batch_norm(cx, a(0, "input"), None, None, None, None, 0.0)
    return emit_batch_norm(
        cx,
        a(0, "input"),
        a(1, "weight", None),
        a(2, "bias", None),
        a(3, "running_mean", None),
        a(4, "running_var", None),
        a(7, "eps", 1e-5),
    )


@on(aten._native_batch_norm_legit_no_training)
def native_batch_norm(cx, a):
    # (x, weight, bias, running_mean, running_var, momentum, eps) -> (y, save_mean, save_invstd)
    y = emit_batch_norm(
        cx, a(0, "input"), a(1, "weight"), a(2, "bias"), a(3, "running_mean"), a(4, "running_var"), a(6, "eps", 1e-5)
    )
    return with_extras(cx, y, 3)


@on(aten.layer_norm, aten.native_layer_norm)
def layer_norm(cx, a):
    x = cx.tensor(a(0, "input"))
    shape = _ints(a(1, "normalized_shape"), 1)
    weight, bias = a(2, "weight", None), a(3, "bias", None)
    operands = [x]
    if weight is not None or bias is not None:
        operands.append(cx.tensor(weight) if weight is not None else ones_like_channel(cx, 1.0, shape[-1], "ln_weight"))
        if len(shape) != 1 and weight is None:
            raise UnsupportedError("layer_norm over several dimensions with a bias but no weight is not supported")
    if bias is not None:
        operands.append(cx.tensor(bias))
    y = cx.emit("layer_norm", operands, {"dims": len(shape), "eps": float(a(4, "eps", 1e-5))})
    return with_extras(cx, y, 3)


def _softmax(op: str) -> Handler:
    def handler(cx, a):
        x = tensor_as(cx, a(0, "self"), cx.out_dtype())
        return cx.emit(op, [x], {"axis": norm_dim(a(1, "dim"), x.type.rank)})

    return handler


ATEN[aten.softmax] = ATEN[aten._softmax] = _softmax("softmax")
ATEN[aten.log_softmax] = ATEN[aten._log_softmax] = _softmax("log_softmax")


# -- pooling ---------------------------------------------------------------------------------


def _pool_args(a: Args) -> dict[str, Any]:
    kernel = _ints(a(1, "kernel_size"))
    stride = a(2, "stride", None)
    stride = kernel if stride is None or stride == [] or stride == () else _ints(stride)
    return {"kernel": list(kernel), "stride": list(stride), "padding": list(_ints(a(3, "padding", 0)))}


@on(aten.max_pool2d, aten.max_pool2d_with_indices)
def max_pool2d(cx, a):
    x = cx.tensor(a(0, "self"))
    attrs = _pool_args(a) | {"dilation": list(_ints(a(4, "dilation", 1))), "ceil_mode": bool(a(5, "ceil_mode", False))}
    return with_extras(cx, cx.emit("max_pool2d", [x], attrs), 2)


@on(aten.avg_pool2d)
def avg_pool2d(cx, a):
    x = cx.tensor(a(0, "self"))
    attrs = _pool_args(a) | {
        "ceil_mode": bool(a(4, "ceil_mode", False)),
        "count_include_pad": bool(a(5, "count_include_pad", True)),
        "divisor": a(6, "divisor_override", None),
    }
    return cx.emit("avg_pool2d", [x], attrs)


@on(aten.adaptive_avg_pool2d, aten._adaptive_avg_pool2d)
def adaptive_avg_pool2d(cx, a):
    x = cx.tensor(a(0, "self"))
    return cx.emit("adaptive_avg_pool2d", [x], {"output_size": list(cx.out_shape()[2:])})


@on(aten.adaptive_max_pool2d)
def adaptive_max_pool2d(cx, a):
    x = cx.tensor(a(0, "self"))
    if cx.out_shape(0)[2:] != (1, 1):
        raise UnsupportedError("adaptive max pooling is supported only to a 1x1 output (global max pooling)")
    return with_extras(cx, cx.emit("amax", [x], {"axes": [2, 3], "keepdim": True}), 2)


# -- embedding, attention, reductions -----------------------------------------------------------


@on(aten.embedding)
def embedding(cx, a):
    # aten.embedding(weight, indices, ...): mcir's operand order is (indices, weight)
    weight, indices = cx.tensor(a(0, "weight")), cx.tensor(a(1, "indices"))
    return cx.emit("embedding", [indices, weight])


@on(aten.scaled_dot_product_attention)
def attention(cx, a):
    q, k, v = (cx.tensor(a(i, n)) for i, n in enumerate(("query", "key", "value")))
    mask = a(3, "attn_mask", None)
    if a(4, "dropout_p", 0.0):
        raise UnsupportedError(
            "scaled_dot_product_attention with dropout_p > 0 is random even in eval mode; "
            "pass dropout_p=0.0 when not training"
        )
    if a(7, "enable_gqa", False):
        raise UnsupportedError("scaled_dot_product_attention with enable_gqa=True is not supported")
    operands = [q, k, v]
    if mask is not None:
        m = cx.tensor(mask)
        operands.append(m if m.type.dtype == dtypes.boolean else cast(cx, m, q.type.dtype))
    return cx.emit(
        "scaled_dot_product_attention",
        operands,
        {"is_causal": bool(a(5, "is_causal", False)), "scale": a(6, "scale", None)},
    )


def _dims(d: Any) -> list[int]:
    if d is None:
        return []
    return [d] if isinstance(d, int) else list(d)


def _reduce(op: str) -> Handler:
    def handler(cx, a):
        x = tensor_as(cx, a(0, "self"), cx.out_dtype())
        dim = a(1, "dim", None)
        if isinstance(dim, torch.dtype):  # mean.default(x, dtype)
            dim = None
        return cx.emit(op, [x], {"axes": _dims(dim), "keepdim": bool(a(2, "keepdim", False))})

    return handler


ATEN[aten.mean] = _reduce("mean")
ATEN[aten.sum] = _reduce("sum")
ATEN[aten.amax] = _reduce("amax")


@on(aten.amin)
def amin(cx, a):
    # min x = -max(-x)
    x = cx.tensor(a(0, "self"))
    attrs = {"axes": _dims(a(1, "dim", None)), "keepdim": bool(a(2, "keepdim", False))}
    return cx.emit("neg", [cx.emit("amax", [cx.emit("neg", [x])], attrs)])


def _arg_extreme(cx: Converter, x: Value, dim: Any, keepdim: bool, smallest: bool) -> Value:
    if smallest:
        x = cx.emit("neg", [x])  # the first minimum of x is the first maximum of -x
    if dim is None:
        y = cx.emit("argmax", [reshape_to(cx, x, (x.type.numel,))], {"axis": 0})
        return reshape_to(cx, y, (1,) * x.type.rank if keepdim else ())
    return cx.emit("argmax", [x], {"axis": norm_dim(dim, x.type.rank), "keepdim": bool(keepdim)})


@on(aten.argmax, aten.argmin)
def argmax(cx, a):
    smallest = "argmin" in str(cx.node.target)
    return _arg_extreme(cx, cx.tensor(a(0, "self")), a(1, "dim", None), a(2, "keepdim", False), smallest)


def _max_min(smallest: bool) -> Handler:
    def handler(cx, a):
        x = cx.tensor(a(0, "self"))
        other = a(1, "dim", None)
        if isinstance(other, Value | Param | Folded):  # torch.max(a, b) is maximum
            return _arith("minimum" if smallest else "maximum")(cx, Args([x, other]))
        if other is None:  # max of all elements
            return amin(cx, Args([x])) if smallest else cx.emit("amax", [x])
        keepdim = bool(a(2, "keepdim", False))
        attrs = {"axes": [other], "keepdim": keepdim}
        values = (
            cx.emit("neg", [cx.emit("amax", [cx.emit("neg", [x])], attrs)]) if smallest else cx.emit("amax", [x], attrs)
        )
        return (values, _arg_extreme(cx, x, other, keepdim, smallest))

    return handler


ATEN[aten.max] = _max_min(False)
ATEN[aten.min] = _max_min(True)


# -- shapes and data movement ---------------------------------------------------------------------


@on(
    aten.view,
    aten.reshape,
    aten._unsafe_view,
    aten.flatten,
    aten.unflatten,
    aten.squeeze,
    aten.unsqueeze,
    aten.view_as,
    aten.reshape_as,
    aten._reshape_alias,
)
def reshape(cx, a):
    # torch resolved -1 and the squeezed axes: the recorded result shape is the static target
    return reshape_to(cx, cx.tensor(a(0, "self")), cx.out_shape())


@on(aten.expand, aten.expand_as, aten.broadcast_to, aten.expand_copy)
def expand(cx, a):
    x = cx.tensor(a(0, "self"))
    shape = cx.out_shape()
    return x if x.type.shape == shape else cx.emit("expand", [x], {"shape": list(shape)})


def emit_slice(cx: Converter, x: Value, axis: int, start: int | None, end: int | None, step: int = 1) -> Value:
    axis = norm_dim(axis, x.type.rank)
    size = x.type.shape[axis]
    s, e, st = slice(start, end, step).indices(size)
    e = max(e, s)
    if (s, e, st) == (0, size, 1):
        return x
    return cx.emit("slice", [x], {"axis": axis, "start": s, "end": e, "step": st})


@on(aten.slice)
def slice_(cx, a):
    x = cx.tensor(a(0, "self"))
    return emit_slice(cx, x, a(1, "dim", 0), a(2, "start", None), a(3, "end", None), a(4, "step", 1))


@on(aten.narrow)
def narrow(cx, a):
    x = cx.tensor(a(0, "self"))
    dim = norm_dim(a(1, "dim"), x.type.rank)
    start = a(2, "start") % x.type.shape[dim] if a(2, "start") < 0 else a(2, "start")
    return emit_slice(cx, x, dim, start, start + a(3, "length"))


@on(aten.select)
def select(cx, a):
    x = cx.tensor(a(0, "self"))
    axis = norm_dim(a(1, "dim"), x.type.rank)
    index = a(2, "index") % x.type.shape[axis]
    return cx.emit("select", [x], {"axis": axis, "index": index})


@on(aten.split, aten.split_with_sizes, aten.chunk, aten.tensor_split, aten.unsafe_split)
def split(cx, a):
    # the part sizes along the axis are what torch recorded for the results
    x = cx.tensor(a(0, "self"))
    axis = norm_dim(a(2, "dim", 0), x.type.rank)
    parts, start = [], 0
    for meta in cx.node.meta["val"]:
        size = int(meta.shape[axis])
        parts.append(emit_slice(cx, x, axis, start, start + size))
        start += size
    return tuple(parts)


@on(aten.unbind)
def unbind(cx, a):
    x = cx.tensor(a(0, "self"))
    axis = norm_dim(a(1, "dim", 0), x.type.rank)
    return tuple(cx.emit("select", [x], {"axis": axis, "index": i}) for i in range(x.type.shape[axis]))


@on(aten.cat, aten.concat, aten.concatenate)
def cat(cx, a):
    dt = cx.out_dtype()
    parts = [tensor_as(cx, t, dt) for t in a(0, "tensors")]
    parts = [p for p in parts if p.type.numel > 0 or p.type.rank > 1] or parts  # torch skips empty 1-D tensors
    if len(parts) == 1:
        return parts[0]
    return cx.emit("concat", parts, {"axis": norm_dim(a(1, "dim", 0), parts[0].type.rank)})


@on(aten.stack)
def stack(cx, a):
    dt = cx.out_dtype()
    out = cx.out_shape()
    axis = norm_dim(a(1, "dim", 0), len(out))
    parts = [tensor_as(cx, t, dt) for t in a(0, "tensors")]
    parts = [reshape_to(cx, p, (*p.type.shape[:axis], 1, *p.type.shape[axis:])) for p in parts]
    return parts[0] if len(parts) == 1 else cx.emit("concat", parts, {"axis": axis})


def emit_pad(cx: Converter, x: Value, torch_pads: list[int], value: float) -> Value:
    # torch lists (before, after) pairs from the last axis backwards; mcir from the first axis forwards
    pads = [0] * (2 * x.type.rank)
    for i in range(len(torch_pads) // 2):
        axis = x.type.rank - 1 - i
        pads[2 * axis], pads[2 * axis + 1] = torch_pads[2 * i], torch_pads[2 * i + 1]
    return cx.emit("pad", [x], {"pads": pads, "value": float(value)})


@on(aten.constant_pad_nd)
def constant_pad_nd(cx, a):
    return emit_pad(cx, cx.tensor(a(0, "self")), list(a(1, "pad")), a(2, "value", 0.0))


@on(aten.pad)
def pad(cx, a):
    mode = a(2, "mode", "constant")
    if mode != "constant":
        raise UnsupportedError(f"padding mode '{mode}' is not supported, only 'constant'")
    return emit_pad(cx, cx.tensor(a(0, "self")), list(a(1, "pad")), a(3, "value", None) or 0.0)


def getitem(cx, a):
    obj, index = a(0, "self"), a(1, "index")
    if isinstance(obj, tuple | list):
        return obj[index]
    return index_tensor(cx, cx.tensor(obj), index)


def index_tensor(cx: Converter, x: Value, index: Any) -> Value:
    """Basic indexing ``x[1, :, None, ..., ::2]`` as select, slice and reshape ops."""
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, Value | Param | Folded | list) for i in index):
        raise UnsupportedError("indexing with a tensor or a list (advanced indexing) is not supported")
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (x.type.rank - n_real) + index[at + 1 :]
    axis = 0
    for i in index:
        if i is None:
            continue
        if isinstance(i, int):
            x = cx.emit("select", [x], {"axis": axis, "index": i % x.type.shape[axis]})
        elif isinstance(i, slice):
            x = emit_slice(cx, x, axis, i.start, i.stop, i.step or 1)
            axis += 1
        else:
            raise UnsupportedError(f"index {i!r} is not supported")
    return reshape_to(cx, x, cx.out_shape())  # None inserts size-1 axes: torch recorded the final shape


# -- values made at trace time ---------------------------------------------------------------------


@on(
    aten.zeros_like,
    aten.ones_like,
    aten.full_like,
    aten.empty_like,
    aten.new_zeros,
    aten.new_ones,
    aten.new_full,
    aten.new_empty,
)
def like_factory(cx, a):
    # the result depends only on the shape and dtype of the tensor argument: run the op on a zero stand-in
    def standin(x: Any) -> Any:
        if isinstance(x, Value):
            return torch.zeros(x.type.shape, dtype=torch_dtype(x.type.dtype))
        return x.tensor if isinstance(x, Param | Folded) else x

    return _evaluate(cx, cx.node, fx.node.map_aggregate(a.args, standin), fx.node.map_aggregate(a.kwargs, standin))
