"""The entry point for one fx call: fold it when it depends on no input, else run its handler.

``convert`` finds the handler (``torch_calls.lookup``: the aten table of ``torch_ops``/``aten_*``
or a torch-level call of symbolic tracing), runs it, and checks its result against the types torch
recorded. It sits above the handler tables and below the driver (``torch_import.run``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from mcir.errors import McirError, UnsupportedError
from mcir.frontend import torch_calls
from mcir.frontend.convert import Converter, Folded, Param, Unavailable, mcir_dtype
from mcir.frontend.torch_ops import Args, evaluate
from mcir.ir import Value


def convert(cx: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What ``node`` computes, given its converted arguments: constants are folded, ops emitted."""
    handler = torch_calls.lookup(cx, node)
    if _is_random(node) and handler is None:
        raise UnsupportedError(
            f"{cx.describe()} draws random numbers; an inference graph cannot express it. "
            "Pass the random tensor as an input instead."
        )
    if _foldable(args, kwargs):
        return _fold(cx, node, args, kwargs)
    if handler is None:
        hint = "Rewrite the model around it, or add a handler (mcir/frontend/aten_*.py)."
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
    return evaluate(cx, node, fx.node.map_aggregate(args, unwrap), fx.node.map_aggregate(kwargs, unwrap))


def _check(cx: Converter, node: fx.Node, result: Any) -> None:
    """The result types must be what torch recorded; a mismatch is a bug in a handler."""
    val = node.meta.get("val")
    pairs = zip(result, val) if isinstance(result, tuple | list) and isinstance(val, tuple | list) else [(result, val)]
    for got, want in pairs:
        if isinstance(got, Value) and isinstance(want, torch.Tensor):
            # a size torch.export left symbolic (a constant boolean mask's count) is the one mcir computed
            cx.bind_sizes(want.shape, got.type.shape)
            shape = cx.concrete(want.shape)
            if got.type.shape != shape or got.type.dtype != mcir_dtype(want.dtype):
                raise McirError(
                    f"internal error: {cx.describe()} was mapped to {got.type}, but torch computes "
                    f"{mcir_dtype(want.dtype)}{list(want.shape)}; please report this mcir bug"
                )
