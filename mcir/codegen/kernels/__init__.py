"""The kernel registry: which generator lowers an op, chosen by op name and the *types*
of its operands and result (dtype and encoding).

Compression changes types, not ops (``linear`` with an ``f32`` weight and ``linear``
with an ``i8 #quant<axis=0>`` weight are the same op), so the encodings in the types are
what pick the kernel. Each registry entry is a generator::

    @kernel("linear", ("f32", "f32", "f32?"), pack=pack_weights, epilogue=True)
    def linear_f32(k: KernelContext) -> None: ...

**Patterns.** An operand or result pattern is a dtype (``"f32"``), a dtype family
(``"float"``, ``"int"``, ``"bool"``, ``"any"``), an encoded type (``"i8#quant"``), or
alternatives joined by ``|``. Plain names and families match *unencoded* types only, so an
encoded value never reaches a kernel that reads plain storage: it needs its own entry
(INT8 VNNI, XNOR-popcount, sparse...), and without one lowering fails with a CodegenError
naming the op. The result is matched the same way; an entry that does not name one
writes plain values (``result="any"``): the verifier fixes their dtype, and nothing
encoded (``u8 #quant`` is 1 byte per element, not 4) ever gets a plain kernel.

**Arity.** Operand patterns are spelt like the op registry's operand specs: a trailing
``?`` marks the optional operands the op declares (``bias?``), ``*`` a variadic one.
An op with n operands matches an entry only if n lies between the entry's required and
declared counts and every operand matches its own pattern: never an entry with more or
fewer operands.

**Exactness.** No two entries of one op may accept the same operand and result
signature (``overlapping()`` lists any pair; a test asserts there are none), so at most
one entry matches, and neither registration nor module order can change which kernel
runs. ``constant`` names operand positions an entry packs at compile time (pre-packed
weights and folded channel tables): when such an operand is a graph input or computed
at run time, lookup refuses with a CodegenError naming the op instead of reading a raw
buffer as a packed layout.

Every module in this package is imported when the registry is first used, so a new
kernel file registers itself: nothing else changes. ``kernel_table()`` lists the whole
registry (``mcir kernels`` prints it).
"""

from __future__ import annotations

import functools
import importlib
import itertools
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llvmlite.ir as ir
import numpy as np

from mcir import dtypes, ops
from mcir.codegen.emit import Emitter
from mcir.codegen.memory_plan import view_root
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
    (only given to generators registered with ``epilogue=True``). ``pool`` is a pooling op
    fused after them (only for generators registered with ``pool=``, which accepted it): then
    ``out`` is the pooled result, and the producer's own result is never stored.
    """

    em: Emitter
    op: Op
    target: Target
    args: list[ir.Value]
    out: ir.Value
    scratch: ir.Value | None
    epilogue: Callable[[Emitter, ir.Value], ir.Value] | None = None
    pool: Op | None = None

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

#: plain dtypes a family name stands for (plain: unencoded storage of that dtype)
FAMILIES = {
    "float": ("f32",),
    "int": ("i64", "i32", "i16", "i8", "u8"),
    "bool": ("bool",),
    "any": ("f32", "i64", "i32", "i16", "i8", "u8", "bool"),
}
# plain dtypes a pattern may name; f16/bf16 only by name (16-bit weight storage, the half pass),
# never through a family, so no float kernel takes them by accident
_PLAIN = frozenset(FAMILIES["any"]) | {"f16", "bf16"}


@functools.cache
def expand(pattern: str) -> frozenset[str]:
    """The concrete signatures (``signature()`` strings) a pattern accepts, ``?``/``*`` ignored."""
    out: set[str] = set()
    for alt in pattern.rstrip("?*").split("|"):
        alt = alt.strip()
        if "#" in alt:
            if alt.split("#", 1)[0] not in dtypes.ALL:
                raise ValueError(f"kernel pattern {pattern!r}: {alt!r} does not start with a dtype")
            out.add(alt)
        elif alt in FAMILIES:
            out.update(FAMILIES[alt])
        elif alt in _PLAIN:
            out.add(alt)
        else:
            raise ValueError(f"kernel pattern {pattern!r}: {alt!r} is not a dtype, a family or dtype#encoding")
    return frozenset(out)


@dataclass(frozen=True)
class KernelGen:
    """One registry entry: a generator for an op with operands and a result of given types."""

    op: str
    operands: tuple[str, ...]
    emit: Callable[[KernelContext], None]
    pack: PackFn | None = None
    scratch: Callable[[Op, Target], int] | None = None
    epilogue: bool = False
    can_fail: bool = False
    doc: str = field(default="")
    result: str = "any"
    constant: tuple[int, ...] = ()  # operand positions that must be compile-time constants
    variant: Callable[[Target], str] | None = None  # the code path a target gets (for the table)
    # the emitted code reads per-tensor quantisation scales only from packed constants (the channel
    # table), never as immediates: ops that differ only in scales can share one kernel function
    scales_in_data: bool = False
    # pool(op, pool_op, target): extra scratch bytes if this generator can write ``pool_op`` applied
    # to its (epilogue'd) result instead of the result itself, None if it cannot fuse that pool
    pool: Callable[[Op, Op, Target], int | None] | None = None

    @property
    def name(self) -> str:
        return self.emit.__name__

    @property
    def variadic(self) -> bool:
        return len(self.operands) == 1 and self.operands[0].endswith("*")

    @property
    def arity(self) -> tuple[int, int | None]:
        """(fewest, most) operands accepted; most is None for a variadic entry."""
        if self.variadic:
            return 1, None
        return sum(1 for p in self.operands if not p.endswith("?")), len(self.operands)

    def accepts_arity(self, n: int) -> bool:
        lo, hi = self.arity
        return lo <= n and (hi is None or n <= hi)

    def pattern_at(self, i: int) -> str:
        return self.operands[0] if self.variadic else self.operands[i]

    def matches(self, types: list[TensorType], result: TensorType) -> bool:
        """True if operands ``types`` and ``result`` are exactly what this entry accepts."""
        return self.matches_signatures([signature(t) for t in types], signature(result))

    def matches_signatures(self, operands: list[str], result: str) -> bool:
        """``matches`` on ``signature()`` strings (``["u8#quant", "i8#quant"]``, ``"f32"``)."""
        if not self.accepts_arity(len(operands)) or result not in expand(self.result):
            return False
        return all(sig in expand(self.pattern_at(i)) for i, sig in enumerate(operands))

    def overlaps(self, other: KernelGen) -> bool:
        """True if some operand and result signature would match both entries."""
        if self.op != other.op or not expand(self.result) & expand(other.result):
            return False
        lo = max(self.arity[0], other.arity[0])
        highs = [h for h in (self.arity[1], other.arity[1]) if h is not None]
        hi = min(highs) if highs else lo
        for n in range(lo, hi + 1):
            if all(expand(self.pattern_at(i)) & expand(other.pattern_at(i)) for i in range(n)):
                return True
        return False

    def describe(self) -> str:
        """``(f32, f32, f32?) -> any``: the entry's signature as the table and errors print it."""
        return f"({', '.join(self.operands)}) -> {self.result}"


_REGISTRY: dict[str, list[KernelGen]] = {}


def kernel(
    op: str,
    operands: tuple[str, ...],
    *,
    pack: PackFn | None = None,
    scratch: Callable[[Op, Target], int] | None = None,
    epilogue: bool = False,
    can_fail: bool = False,
    result: str = "any",
    constant: tuple[int, ...] = (),
    variant: Callable[[Target], str] | None = None,
    scales_in_data: bool = False,
    pool: Callable[[Op, Op, Target], int | None] | None = None,
) -> Callable[[Callable[[KernelContext], None]], Callable[[KernelContext], None]]:
    """Decorator: register the decorated function as the generator of ``op`` for ``operands``
    and ``result`` patterns (see the module docstring); ``constant`` lists operand positions
    that must be compile-time constants, ``variant(target)`` names the code path a target gets,
    ``scales_in_data`` promises that the code reads per-tensor scales only from packed constants,
    ``pool`` says whether (and with how much more scratch) it can fuse a following pooling op."""

    def deco(fn: Callable[[KernelContext], None]) -> Callable[[KernelContext], None]:
        for p in (*operands, result):
            expand(p)  # a misspelt pattern fails at import, not as "no kernel" later
        _REGISTRY.setdefault(op, []).append(
            KernelGen(
                op,
                tuple(operands),
                fn,
                pack,
                scratch,
                epilogue,
                can_fail,
                (fn.__doc__ or "").strip(),
                result,
                tuple(constant),
                variant,
                scales_in_data,
                pool,
            )
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


def lookup(op: Op) -> KernelGen:
    """The one generator for ``op``; a CodegenError naming the op, its types and what exists
    when there is none, or when an operand the kernel packs at compile time is not a constant."""
    _load()
    types = [v.type for v in op.operands]
    gens = _REGISTRY.get(op.name, ())
    found = [g for g in gens if g.matches(types, op.result.type)]
    got = ", ".join(signature(t) for t in types) or "no operands"
    if len(found) > 1:  # the registry test rules this out; never pick one silently
        names = ", ".join(f"{g.name} {g.describe()}" for g in found)
        raise CodegenError(f"kernel registry: {op.where()} with ({got}) matches {len(found)} entries: {names}")
    if not found:
        have = "; ".join(g.describe() for g in gens)
        hint = f"kernels exist for {have}" if have else "no kernel exists for this op yet"
        raise CodegenError(
            f"no native kernel for {op.where()} with operands ({got}) and result {signature(op.result.type)}: "
            f"{hint}. Convert the graph (e.g. dequantize the weights) or run it with mcir.interpret"
        )
    gen = found[0]
    for i in gen.constant:
        if i < len(op.operands) and not view_root(op.operands[i]).is_constant:
            v = op.operands[i]
            role = ops.get(op.name).operand_names()[i]
            raise CodegenError(
                f"{op.where()}: its {role} %{v.name} : {v.type} must be a compile-time constant (kernel "
                f"{gen.name} packs it when compiling), but it is a graph input or computed at run time; make it "
                "a const op, or dequantize the layer to f32 to feed it run-time values"
            )
    return gen


def has_kernel(op: str, operands: list[TensorType], result: TensorType) -> bool:
    """True if some entry of ``op`` accepts these operand and result types (constness aside):
    for passes that choose a storage only where the backend can run it."""
    _load()
    return any(g.matches(operands, result) for g in _REGISTRY.get(op, ()))


def registered() -> dict[str, list[KernelGen]]:
    """All generators by op name (for documentation and tests)."""
    _load()
    return {k: list(v) for k, v in _REGISTRY.items()}


def overlapping() -> list[tuple[KernelGen, KernelGen]]:
    """Pairs of entries of one op that some operand and result signature would both match."""
    return [(a, b) for gens in registered().values() for a, b in itertools.combinations(gens, 2) if a.overlaps(b)]


@dataclass(frozen=True)
class KernelRow:
    """One row of the kernel table: what an entry accepts and which code it emits on a target."""

    op: str
    operands: str
    result: str
    target: str
    kernel: str
    constant: str


def kernel_table(op: str | None = None, target: Target | None = None) -> list[KernelRow]:
    """Every registry entry (or those of ``op``) as rows sorted by op and signature.

    ``target`` column: the code path the entry takes on ``target`` (its ``variant``), or
    ``any`` for kernels that only adapt their vector width.
    """
    rows = []
    for name, gens in sorted(registered().items()):
        if op is not None and name != op:
            continue
        for g in gens:
            path = g.variant(target) if g.variant is not None and target is not None else "any"
            const = ",".join(str(i) for i in g.constant) or "-"
            where = f"{g.emit.__module__.rsplit('.', 1)[-1]}.{g.name.lstrip('_')}"
            rows.append(KernelRow(name, ", ".join(g.operands), g.result, path, where, const))
    return sorted(rows, key=lambda r: (r.op, r.operands, r.result))


def format_kernel_table(rows: list[KernelRow]) -> str:
    """``rows`` as an aligned text table with a header."""
    head = ("op", "operands", "result", "target", "kernel", "const")
    cells = [head] + [(r.op, f"({r.operands})", r.result, r.target, r.kernel, r.constant) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
