"""Giving a layer a compressed weight: the check every low-bit pass makes, and run-time quantised inputs.

``store_weight`` replaces a layer's weight only when the backend has a kernel for the new
operand types and it embeds fewer bytes than the weight it replaces (``mcir.stats.try_kernel``
runs the kernel registry and the pack hooks, so the answer is the library's); ``dynamic_input``
gives a float activation its ``quantize(x) : u8 #dynamic`` (one per value). Used by ``cluster``
and ``quantize``.
"""

from __future__ import annotations

from typing import Any

from mcir import dtypes
from mcir.encodings import Dynamic
from mcir.ir import Graph, Op, Value
from mcir.pass_base import PassContext
from mcir.rewriter import Rewriter
from mcir.stats import try_kernel
from mcir.types import TensorType


def store_weight(
    rw: Rewriter, op: Op, t: TensorType, stored: Any, ctx: PassContext, who: str, inputs: dict | None = None
) -> bool:
    """Give ``op`` the compressed weight ``(t, stored)`` if a native kernel runs it (with its other
    operands retyped as in ``inputs``, index -> (type, None)) and it embeds fewer bytes than the
    weight it replaces; otherwise warn and keep the layer. True if stored (``inputs`` are the
    caller's to apply)."""
    w = op.operands[1]
    where = f"{op.name} %{op.result.name}" + (f" ({op.loc.module})" if op.loc and op.loc.module else "")
    before, after = try_kernel(op), try_kernel(op, {**(inputs or {}), 1: (t, stored)})
    if not after.ok:
        ctx.warn(f"{who}: {where} stays {w.type}: no native kernel runs a {t.encoding} weight there")
        return False
    if before.ok and after.operand_bytes.get(1, 0) >= before.operand_bytes.get(1, w.type.nbytes):
        ctx.warn(f"{who}: {where} stays {w.type}: {t.encoding} would embed more bytes than the dense weight")
        return False
    if len(w.uses) == 1:
        rw.set_data(w.producer, stored, t)
    else:  # shared with a layer that stays float: this layer gets its own compressed copy
        rw.set_operand(op, 1, rw.const(f"{w.name}.{t.encoding.name}", stored, t))
    return True


def dynamic_input(rw: Rewriter, graph: Graph, x: Value, memo: dict[int, Value]) -> Value:
    """``quantize(x) : u8 #dynamic<axis=0>``, one per value (``memo``: id(x) -> it), right after x is made."""
    if id(x) not in memo:
        xt = TensorType(x.type.shape, dtypes.u8, Dynamic(axis=0))
        anchor = x.producer
        if anchor is None or anchor.name == "const":
            first = next(o for o in graph.ops if o.name != "const")
            memo[id(x)] = rw.insert_before(first, "quantize", [x], type=xt, result=f"{x.name}.dq")
        else:
            memo[id(x)] = rw.insert_after(anchor, "quantize", [x], type=xt, result=f"{x.name}.dq")
    return memo[id(x)]
