"""Constants and the ops that change a value's encoding.

``quantize`` and ``dequantize`` are identities on logical values: all they change is
the result *type*, e.g. ``quantize(%x) : u8[1,784] #quant<scale=0.02, zero_point=128>``.
Their result types are given, not inferred (inference works on logical f32 types).
"""

from __future__ import annotations

from mcir.errors import McirError
from mcir.ops.registry import defop
from mcir.ops.traits import CONVERSION, ELEMENTWISE, QUANTIZATION, SOURCE, UNARY
from mcir.types import TensorType


def _const_infer(types: list[TensorType]) -> TensorType:
    raise McirError("a const's type comes from its data; build constants with Graph.const")


@defop("const", operands="", infer=_const_infer, traits={SOURCE})
def const():
    """a constant tensor (weights); its data lives in the graph's weights file or inline"""
    raise McirError("const ops are evaluated by reading their data")


@defop("quantize", traits={ELEMENTWISE, UNARY, CONVERSION, QUANTIZATION})
def quantize(x):
    """y = x stored as integers of the result type: q = clamp(round(x / scale) + zero_point)"""
    return x


@defop("dequantize", traits={ELEMENTWISE, UNARY, CONVERSION, QUANTIZATION})
def dequantize(x):
    """y = x stored as f32 again: x = scale * (q - zero_point)"""
    return x
