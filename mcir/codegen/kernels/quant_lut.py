"""Unary activations on per-tensor quantised values: a 256-entry table, exact by construction.

A u8 (or i8) operand takes only 256 values, so ``f(x)`` for any elementwise activation is a
table computed at compile time with the interpreter's own definition,

    table[b] = encode_out(f(decode_in(b)))      for every stored byte b,

and the kernel is one load per element: ``y[i] = table[x[i]]``. The result is bit equal to the
reference interpreter (same decode, same numpy reference, same encode), whatever the function
costs in float (GELU's erf, sigmoid's exp). The quant8 pass runs GELU this way between the two
linears of a transformer's FFN (``INT8_ACTIVATION_OPS``), so neither side leaves int8.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import I8, I64
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels.quant import QUANT, per_tensor
from mcir.ops import registry
from mcir.types import TensorType

#: activations given a table kernel: elementwise functions of one operand, no state
TABLE_ACTIVATIONS = ("gelu", "sigmoid", "tanh", "silu", "hardswish", "hardsigmoid")


def activation_table(op_name: str, attrs: dict, src: TensorType, dst: TensorType) -> np.ndarray:
    """uint8[256]: the stored result byte for each stored operand byte, by the op's reference."""
    stored = np.arange(256, dtype=np.uint8).view(src.dtype.np)
    x = TensorType((256,), src.dtype, src.encoding).decode(stored)
    y = np.asarray(registry.get(op_name).reference(x, **attrs))
    return np.asarray(TensorType((256,), dst.dtype, dst.encoding).encode(y)).view(np.uint8)


def _table_activation(k: KernelContext) -> None:
    src, dst = k.operand_types[0], k.result_type
    per_tensor(src, k.op.where())
    per_tensor(dst, k.op.where())
    table = activation_table(k.op.name, dict(k.op.attrs), src, dst)
    ty = ir.ArrayType(I8, 256)
    gv = ir.GlobalVariable(k.em.module, ty, k.em.module.get_unique_name(f"{k.op.name}.table"))
    gv.linkage = "internal"
    gv.global_constant = True
    gv.initializer = ir.Constant(ty, bytearray(table.tobytes()))
    b = k.em.b
    with k.em.loop(int(np.prod(dst.shape, dtype=np.int64)), name="e") as i:
        byte = k.em.load(k.args[0], i, I8)
        entry = k.em.load(gv, b.zext(byte, I64), I8)
        k.em.store(entry, k.out, i)


for _name in TABLE_ACTIVATIONS:
    kernel(_name, (QUANT,), result=QUANT)(_table_activation)
