"""half: weights stored in 16 bits (f16 or bf16), computed in f32.

The weights of ``linear`` and ``conv2d`` layers, embedding tables and LSTM/GRU recurrences
(``W_hh``) keep their values rounded to the nearest 16-bit float; the kernels widen them to f32 as they stream
them (``vcvtph2ps`` for f16, a 16-bit shift for bf16), so activations, biases and
accumulation stay f32. Before::

    %fc.weight = const : f32[256,784]
    %y = linear(%x, %fc.weight, %fc.bias) : f32[1,256]

After ``half`` (``dtype=f16``)::

    %fc.weight = const : f16[256,784]
    %y = linear(%x, %fc.weight, %fc.bias) : f32[1,256]

``w' = round_f16(w)``: relative error <= 2^-11 per weight for f16 (normal range; values below
6.1e-5 lose relative precision, beyond 65504 overflow, so the pass refuses such weights),
<= 2^-8 for bf16 (the f32 exponent range, no overflow). A weight that any other op also reads
(a tied embedding) stays f32, so no op sees a type it does not take. Biases and small
constants stay f32: they are a sliver of the bytes.

Preserves: approximate; the report measures max |delta| and SQNR. The weight bytes of every
converted layer halve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from mcir import dtypes
from mcir.errors import McirError
from mcir.ir import Graph, Op, Value
from mcir.pass_manager import Pass, PassContext, option
from mcir.patterns import constant_array
from mcir.rewriter import Rewriter
from mcir.types import TensorType

#: op -> which operand is the weight that can be stored in 16 bits
HALF_WEIGHTS = {"linear": 1, "conv2d": 1, "lstm": 3, "gru": 2, "embedding": 1}

F16_MAX = 65504.0


@dataclass(frozen=True)
class Half(Pass):
    """Weights of linear/conv layers, embeddings and RNN recurrences stored in f16/bf16 (half the bytes)."""

    name: ClassVar[str] = "half"
    preserves: ClassVar[str] = "approximate: weights rounded to 16-bit floats (f16 2^-11, bf16 2^-8 relative)"
    dtype: Literal["f16", "bf16"] = option("f16", "storage: f16 (more precision) or bf16 (f32's range)")
    min_elements: int = option(1024, "leave smaller weights in f32")

    def __post_init__(self) -> None:
        if self.min_elements < 1:
            raise McirError(f"min_elements={self.min_elements} must be >= 1")

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        rw = Rewriter(graph)
        target = dtypes.by_name(self.dtype)
        done: set[int] = set()
        skipped = 0
        for op in list(graph.compute_ops()):
            index = HALF_WEIGHTS.get(op.name)
            if index is None:
                continue
            w = op.operands[index]
            if id(w) in done or not self._convertible(w):
                continue
            if not all(HALF_WEIGHTS.get(u.name) == i for u, i in _uses(w)):
                skipped += 1  # also read by an op that takes only f32 (a tied embedding table)
                continue
            a = constant_array(w)
            if self.dtype == "f16" and np.abs(a).max(initial=0.0) > F16_MAX:
                raise McirError(
                    f"half: weight %{w.name} has values up to {np.abs(a).max():.3g}, beyond f16's 65504; "
                    "use half(dtype=bf16)"
                )
            rw.set_data(w.producer, a.astype(target.np), TensorType(w.type.shape, target))
            done.add(id(w))
        if skipped:
            ctx.warn(f"half: {skipped} weight(s) shared with ops that need f32 stay f32")

    def _convertible(self, w: Value) -> bool:
        t = w.type
        return (
            w.is_constant
            and w.producer.data is not None
            and t.encoding is None
            and t.dtype == dtypes.f32
            and t.numel >= self.min_elements
        )


def _uses(v: Value) -> list[tuple[Op, int]]:
    """(user op, operand index) of every use of ``v``."""
    return list(v.uses)
