"""The kernel registry: which generator lowers an op, chosen by op name and the
*types of its operands* (dtype and encoding).

Compression changes types, not ops (``linear`` with an ``f32`` weight and ``linear``
with an ``i8 #quant<axis=0>`` weight are the same op), so the encoding in a weight's
type is what picks the kernel. Each registry entry is a generator::

    @kernel("linear", operands=("f32", "f32", "f32"), pack=pack_weights, epilogue=True)
    def linear_f32(k: KernelContext) -> None: ...

An operand pattern is ``"f32"``, a dtype family (``"float"``, ``"int"``, ``"bool"``,
``"any"``), alternatives joined by ``|``, or an encoded type such as ``"i8#quant"``.
Plain patterns match unencoded operands only, so an encoded weight never reaches a
float kernel by accident: it needs its own entry (INT8 VNNI, XNOR-popcount, sparse,
codebook...), and without one lowering fails with a CodegenError naming the op.

An entry may also constrain the *result* type (``result="b1#binary"``): ``quantize``
has one f32 operand whatever it produces, so its kernels differ by result only.

Every module in this package is imported when the registry is first used, so a new
kernel file registers itself: nothing else changes. Within an op, entries with a result
pattern are tried first, then the others, each group in module-name order, then
definition order; the first whose patterns match wins.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import Emitter
from mcir.codegen.target import Target
from mcir.errors import CodegenError
from mcir.ir import Op
from mcir.types import TensorType


@dataclass
class KernelContext:
    """What a generator sees while emitting one op's kernel function.

    ``args`` are pointers to the operands' storage (raw or pre-packed constants, graph
    inputs, workspace buffers), ``out`` points at the result, ``scratch`` at this op's
    private workspace (``scratch_bytes`` of it, 64-byte aligned). ``epilogue`` is a
    chain of fused unary elementwise functions to apply to results before storing
    (only given to generators registered with ``epilogue=True``).
    """

    em: Emitter
    op: Op
    target: Target
    args: list[ir.Value]
    out: ir.Value
    scratch: ir.Value | None
    epilogue: Callable[[Emitter, ir.Value], ir.Value] | None = None

    @property
    def operand_types(self) -> list[TensorType]:
        return [v.type for v in self.op.operands]

    @property
    def result_type(self) -> TensorType:
        return self.op.result.type

    def apply_epilogue(self, value: ir.Value) -> ir.Value:
        return value if self.epilogue is None else self.epilogue(self.em, value)

    def fail_unless(self, ok: ir.Value, code: int) -> None:
        """Return error ``code`` from the kernel (and so from ``mcir_NAME_run``) unless ``ok``."""
        b = self.em.b
        err = b.function.append_basic_block("fail")
        cont = b.function.append_basic_block("cont")
        b.cbranch(ok, cont, err)
        b.position_at_end(err)
        b.ret(ir.Constant(ir.IntType(32), code))
        b.position_at_end(cont)


# pack(op, operand_index, stored_data, target) -> (layout key, packed array) or None to store as is
PackFn = Callable[[Op, int, Any, Target], "tuple[str, np.ndarray] | None"]


@dataclass(frozen=True)
class KernelGen:
    """One registry entry: a generator for an op with operands of given types."""

    op: str
    operands: tuple[str, ...] | None  # None: any operands (the generator checks itself)
    emit: Callable[[KernelContext], None]
    pack: PackFn | None = None
    scratch: Callable[[Op, Target], int] | None = None
    epilogue: bool = False
    can_fail: bool = False
    doc: str = field(default="")
    result: str | None = None  # pattern the result type must match (None: any)

    @property
    def name(self) -> str:
        return self.emit.__name__

    def matches(self, types: list[TensorType], result: TensorType | None = None) -> bool:
        if self.result is not None and (result is None or not _matches(self.result, result)):
            return False
        if self.operands is None:
            return True
        if len(types) > len(self.operands) and not self.operands[-1].endswith("*"):
            return False
        for i, t in enumerate(types):
            pat = self.operands[min(i, len(self.operands) - 1)].rstrip("*")
            if not _matches(pat, t):
                return False
        return True


_REGISTRY: dict[str, list[KernelGen]] = {}


def kernel(
    op: str,
    operands: tuple[str, ...] | None = None,
    *,
    pack: PackFn | None = None,
    scratch: Callable[[Op, Target], int] | None = None,
    epilogue: bool = False,
    can_fail: bool = False,
    result: str | None = None,
) -> Callable[[Callable[[KernelContext], None]], Callable[[KernelContext], None]]:
    """Decorator: register the decorated function as the generator of ``op`` for ``operands``
    (and, if given, a ``result`` type pattern)."""

    def deco(fn: Callable[[KernelContext], None]) -> Callable[[KernelContext], None]:
        _REGISTRY.setdefault(op, []).append(
            KernelGen(op, operands, fn, pack, scratch, epilogue, can_fail, (fn.__doc__ or "").strip(), result)
        )
        return fn

    return deco


@functools.cache
def _load() -> None:
    # every module of this package registers its generators on import: a new kernel file
    # (gemm_i8.py, xnor.py, ...) plugs in without touching the registry or the lowering
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")


def signature(t: TensorType) -> str:
    """How a type reads in kernel patterns: ``f32``, ``i64``, ``i8#quant``."""
    return t.dtype.name if t.encoding is None else f"{t.dtype.name}#{t.encoding.name}"


_FAMILIES = {
    "float": ("f32",),
    "int": ("i64", "i32", "i16", "i8", "u8"),
    "bool": ("bool",),
    "any": ("f32", "i64", "i32", "i16", "i8", "u8", "bool"),
}


def _matches(pattern: str, t: TensorType) -> bool:
    sig = signature(t)
    for alt in pattern.split("|"):
        if "#" in alt:
            if alt == sig:
                return True
        elif t.encoding is None and sig in _FAMILIES.get(alt, (alt,)):
            return True
    return False


def lookup(op: Op) -> KernelGen:
    """The generator for ``op``; a CodegenError naming the op, its operand types and what exists."""
    _load()
    types = [v.type for v in op.operands]
    gens = _REGISTRY.get(op.name, ())
    # result-constrained entries first: they are the more specific ones
    for gen in sorted(gens, key=lambda g: g.result is None):
        if gen.matches(types, op.result.type):
            return gen
    got = ", ".join(signature(t) for t in types) or "no operands"
    have = [
        (f"({', '.join(g.operands)})" if g.operands else "(any)") + (f" -> {g.result}" if g.result else "")
        for g in gens
    ]
    hint = f"kernels exist for operands {'; '.join(have)}" if have else "no kernel exists for this op yet"
    raise CodegenError(
        f"no native kernel for {op.where()} with operands ({got}) and result {signature(op.result.type)}: "
        f"{hint}. Convert the graph "
        "(e.g. dequantize the weights) or run it with mcir.interpret"
    )


def registered() -> dict[str, list[KernelGen]]:
    """All generators by op name (for documentation and tests)."""
    _load()
    return {k: list(v) for k, v in _REGISTRY.items()}
