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

This module holds the machinery and shared helpers; the handlers live in
``aten_elementwise``, ``aten_nn`` and ``aten_shape`` (mirroring ``mcir/ops``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from mcir import dtypes
from mcir.errors import UnsupportedError
from mcir.frontend.convert import Converter, Folded, Param, Unavailable, mcir_dtype, target_name, torch_dtype
from mcir.ir import Value

aten = torch.ops.aten
Handler = Callable[[Converter, "Args"], Any]
_REQUIRED = object()
_ALIASES = {"self": ("input",), "input": ("self",), "other": ("exponent",)}


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


def evaluate(cx: Converter, node: fx.Node, args: Any, kwargs: Any) -> Any:
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


def ints(v: Any, n: int = 2) -> tuple[int, ...]:
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


def short_name(node: fx.Node) -> str:
    """The bare name of what a node calls: ``permute`` for aten.permute.default, torch.permute and x.permute."""
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return t.overloadpacket.__name__
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def float_input(cx: Converter, a: Args) -> Value:
    """The first operand, cast to the result dtype (``torch.exp`` of an int tensor is float)."""
    return tensor_as(cx, a(0, "self"), cx.out_dtype())
