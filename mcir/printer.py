"""The textual form of a graph: readable, fully typed, deterministic.

::

    graph @mlp(%x: f32[1,784]) -> (f32[1,10]) {
      %fc1.weight = const : f32[1024,784]
      %scale = const dense<[0.5]> : f32[1]
      %h = linear(%x, %fc1.weight, %fc1.bias) : f32[1,1024] loc("fc1", "model.py:12")
      %c = conv2d(%h4, %w, %b) {padding=[1, 1]} : f32[1,32,32,32]
      %q = quantize(%x) : u8[1,784] #quant<scale=0.0213, zero_point=128>
      return %y
    }

Attributes equal to their declared default are not printed. Constants of up to
``INLINE_LIMIT`` elements (unencoded) are printed inline as ``dense<[...]>``; larger
ones live in the weights file (``mcir.save``) under the value's name. The parser in
``mcir.parser`` reads this text back; ``print(parse(print(g))) == print(g)``.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mcir.literals import format_attr, format_float
from mcir.ops import registry

if TYPE_CHECKING:  # the printer reads graphs but needs no class of mcir.ir at run time (ir imports it)
    from mcir.ir import Graph, Op

__all__ = ["INLINE_LIMIT", "format_attr", "format_float", "format_op", "is_inline", "print_graph"]

INLINE_LIMIT = 16


def _format_element(x: Any, kind: str) -> str:
    if kind == "b":
        return "true" if x else "false"
    if kind in "iu":
        return str(int(x))
    if kind == "f":
        f = float(x)
        if not math.isfinite(f):
            return format_float(f)
        # shortest decimal that round-trips at the array's own precision (f32: "0.1")
        text = (
            np.format_float_positional(x, unique=True, trim="0")
            if (abs(f) >= 1e-4 and abs(f) < 1e16) or f == 0
            else np.format_float_scientific(x, unique=True, trim="-")
        )
        if "." not in text and "e" not in text and "n" not in text:
            text += ".0"
        return text
    raise TypeError(f"cannot print element of kind {kind}")


def is_inline(op: Op) -> bool:
    """Whether a const op is printed with its data (small, unencoded, data present)."""
    t = op.result.type
    return op.data is not None and t.numel <= INLINE_LIMIT and (t.encoding is None or not t.encoding.needs_components)


def format_dense(arr: np.ndarray) -> str:
    kind = arr.dtype.kind
    if arr.dtype.name == "bfloat16":
        arr, kind = arr.astype(np.float32), "f"
    return "dense<[" + ", ".join(_format_element(x, kind) for x in arr.reshape(-1)) + "]>"


def format_op(op: Op) -> str:
    res = f"%{op.result.name} = "
    if op.name == "const":
        body = "const"
        if is_inline(op):
            data = op.data["data"] if isinstance(op.data, dict) else op.data
            body += " " + format_dense(np.asarray(data))
    else:
        args = ", ".join(f"%{v.name}" for v in op.operands)
        body = f"{op.name}({args})"
        opdef = registry.get(op.name)
        shown = {
            k: v
            for k, v in op.attrs.items()
            if k not in opdef.attrs
            or opdef.attrs[k].default is registry.REQUIRED
            or not _attr_equal(v, opdef.attrs[k].default)
        }
        if shown:
            body += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in shown.items()) + "}"
    text = f"{res}{body} : {op.result.type}"
    if op.loc.module or op.loc.source:
        text += f" loc({json.dumps(op.loc.module)}, {json.dumps(op.loc.source)})"
    return text


def _attr_equal(a: Any, b: Any) -> bool:
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_attr_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):  # -0.0 == 0.0, but pad{value=-0.0} pads with -0.0
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return type(a) is type(b) and a == b


def print_graph(graph: Graph) -> str:
    """The graph's text form (see the module docstring)."""
    params = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    results = ", ".join(str(v.type) for v in graph.outputs)
    lines = [f"graph @{graph.name}({params}) -> ({results}) {{"]
    for op in graph.ops:
        lines.append("  " + format_op(op))
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
