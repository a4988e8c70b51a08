"""The numpy reference interpreter: the semantics every backend is measured against.

Values are held in their *stored* form (a u8 array for a quantised activation, a dict
of components for a packed constant). Each op decodes its operands to logical values,
runs the op's numpy reference ("dequantize, compute in float") and encodes the result
into its declared type. Subclass ``Interpreter`` and override ``run_op`` to observe or
change values (calibration, profiling), as with ``torch.fx.Interpreter``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcir.errors import McirError
from mcir.ir import Graph, Op, Value
from mcir.ops import registry


class Interpreter:
    """Runs a graph on numpy arrays."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def run(self, *inputs: np.ndarray) -> list[Any]:
        """Outputs (stored form) of the graph for ``inputs`` (one array per graph input)."""
        g = self.graph
        if len(inputs) != len(g.inputs):
            names = ", ".join(f"%{v.name}: {v.type}" for v in g.inputs)
            raise McirError(f"graph @{g.name} takes {len(g.inputs)} input(s) ({names}), got {len(inputs)}")
        env: dict[int, Any] = {}
        for v, x in zip(g.inputs, inputs):
            env[id(v)] = check_input(v, x)
        last_use = _last_uses(g)
        for i, op in enumerate(g.ops):
            try:
                env[id(op.result)] = self.run_op(op, [env[id(v)] for v in op.operands])
            except McirError as e:
                if op.name == "const" or op.where() in str(e):  # the message already names the value
                    raise
                raise type(e)(f"{e} (while running {describe(op)})") from None
            except MemoryError:
                # a verified graph may still need more memory than this machine has (huge attention scores)
                raise McirError(
                    f"not enough memory to interpret {describe(op)}; run the compiled library or smaller shapes"
                ) from None
            except Exception as e:
                # a failing reference is an mcir bug: keep the exception and its traceback, add where
                if hasattr(e, "add_note"):  # Python 3.11+; on 3.10 the exception goes up unchanged
                    e.add_note(f"while running {describe(op)}")
                raise
            for v in last_use.get(i, ()):
                env.pop(id(v), None)
        return [env[id(v)] for v in g.outputs]

    def run_op(self, op: Op, args: list[Any]) -> Any:
        """Stored result of ``op`` given its operands' stored values."""
        if op.name == "const":
            if op.data is None:
                raise McirError(
                    f"constant %{op.result.name} has no data: load the graph with its weights "
                    "(mcir.load) or attach them before running"
                )
            return op.data
        logical = [v.type.decode(a) for v, a in zip(op.operands, args)]
        out = np.asarray(registry.get(op.name).reference(*logical, **op.attrs))
        t = op.result.type
        if out.shape != t.shape:
            raise McirError(f"internal error: reference of {op.where()} gave shape {list(out.shape)}, type says {t}")
        return t.encode(out)


def describe(op: Op) -> str:
    """The op, its module path and source line, and its operand types, for error messages."""
    operands = ", ".join(f"%{v.name}: {v.type}" for v in op.operands) or "no operands"
    return f"{op.where()} on ({operands})"


def _last_uses(g: Graph) -> dict[int, list[Value]]:
    """Op index -> values whose last use is that op (freed to keep memory flat)."""
    outputs = {id(v) for v in g.outputs}
    last: dict[int, tuple[int, Value]] = {}
    for i, op in enumerate(g.ops):
        for v in op.operands:
            last[id(v)] = (i, v)
    out: dict[int, list[Value]] = {}
    for key, (i, v) in last.items():
        if key not in outputs:
            out.setdefault(i, []).append(v)
    return out


def check_input(v: Value, x: Any) -> np.ndarray:
    """``x`` as an array of ``v``'s type; McirError naming the input when shape or dtype differ."""
    arr = np.asarray(x)
    t = v.type
    want = t.dtype.np
    if arr.shape != t.shape:
        raise McirError(f"input %{v.name} must have shape {list(t.shape)}, got {list(arr.shape)}")
    if arr.dtype != want:
        if arr.dtype.kind == want.kind == "f" or (
            arr.dtype.kind in "iu"
            and want.kind in "iu"
            and np.can_cast(arr.dtype, want, "same_kind")
            and arr.size
            and arr.min() >= np.iinfo(want).min
            and arr.max() <= np.iinfo(want).max
        ):
            return arr.astype(want)
        raise McirError(f"input %{v.name} must be {t.dtype} ({want}), got {arr.dtype}")
    return arr


def interpret(graph: Graph, *inputs: np.ndarray) -> list[Any]:
    """Run ``graph`` with the reference interpreter; returns the list of outputs."""
    return Interpreter(graph).run(*inputs)
