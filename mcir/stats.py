"""What a graph costs: parameters, the bytes its library embeds, MACs by kind.

    s = mcir.stats(graph)                      # for the native target
    s.weight_bytes == mcir.compile(graph, "build/m").weight_bytes   # always, exactly

``weight_bytes`` is not a formula over types: kernels pad, interleave and fold their
constant operands (GEMM panels, int8 zero-point correction tables, sparse windows and
5-bit gaps, per-target layouts), share one copy of a constant between uses of the same
layout and store two copies for two layouts. ``stats`` walks the graph's kernel steps with
the lowering's own ``constant_uses`` / ``constant_layout`` (``mcir/codegen/lowering.py``),
so it counts exactly the globals the library will hold, without generating code.

Parameters and MACs come from the encodings: a sparse weight counts only the elements it
stores (``Encoding.stored_fraction``), and each MAC has the kind of its weight's encoding
(``Encoding.mac_kind``): ``f32``, ``int8`` (integer activations x int8 weights), ``bit``
(packed binary/ternary weights: XNOR + popcount or sign-select) or ``sparse``.

``kernel_exists`` and ``try_kernel`` answer the passes' question "would this op, with this
operand stored that way, compile, and how many bytes would it embed?" from the kernel
registry and the kernels' own pack hooks, so a pass never picks a storage the backend cannot
run or that is bigger than what it replaces.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from mcir.errors import McirError
from mcir.ir import Graph, Op, Value
from mcir.ops import registry
from mcir.types import TensorType

MAC_KINDS = ("f32", "int8", "bit", "sparse")


@dataclass(frozen=True)
class GraphStats:
    """Size and cost of a graph: compute ops, parameters, weight bytes, MACs per inference.

    ``weight_bytes`` are the bytes the library embeds for the native target when the graph
    compiles (``exact``), else the canonical storage bytes of its constants. Sparse weights
    count only their stored values in ``params`` and MACs. ``int8_macs`` are MACs between
    integer activations and int8 weights, ``bit_macs`` MACs against packed binary/ternary
    weights, ``sparse_macs`` MACs against ``#csr``/``#nm`` weights (the stored values only);
    ``macs`` is the total, the rest being f32.
    """

    ops: int
    params: int
    weight_bytes: int
    macs: int
    int8_macs: int = 0
    bit_macs: int = 0
    sparse_macs: int = 0
    exact: bool = True

    @property
    def f32_macs(self) -> int:
        return self.macs - self.int8_macs - self.bit_macs - self.sparse_macs

    @property
    def macs_by_kind(self) -> dict[str, int]:
        """MACs per kind: f32, int8, bit, sparse."""
        return {"f32": self.f32_macs, "int8": self.int8_macs, "bit": self.bit_macs, "sparse": self.sparse_macs}

    @staticmethod
    def of(graph: Graph, target: Any = "native") -> GraphStats:
        """Stats of ``graph``; falls back to storage bytes (``exact=False``) if it does not compile."""
        return stats(graph, target, strict=False)


def stats(graph: Graph, target: Any = "native", *, strict: bool = True) -> GraphStats:
    """Parameters, embedded weight bytes and MACs by kind of ``graph`` compiled for ``target``.

    ``weight_bytes`` equals ``mcir.compile(graph, ..., target=target).weight_bytes``. With
    ``strict`` (the default) a graph the backend cannot lower raises its CodegenError; with
    ``strict=False`` the canonical storage bytes are reported instead and ``exact`` is False.
    """
    params = ops = 0
    macs = dict.fromkeys(MAC_KINDS, 0)
    storage = 0
    for op in graph.ops:
        t = op.result.type
        if op.name == "const":
            params += round(t.numel * stored_fraction(t))
            storage += t.nbytes
            continue
        ops += 1
        types = [v.type for v in op.operands]
        n = registry.get(op.name).count_macs(types, t, op.attrs)
        if n and len(types) >= 2:
            n = round(n * stored_fraction(types[1]))
        macs[mac_kind(types)] += n
    exact = True
    try:
        wbytes = embedded_weight_bytes(graph, target)
    except McirError:
        if strict:
            raise
        wbytes, exact = storage, False
    return GraphStats(ops, params, wbytes, sum(macs.values()), macs["int8"], macs["bit"], macs["sparse"], exact=exact)


def stored_fraction(t: TensorType) -> float:
    """Share of a tensor's elements actually stored (1 unless its encoding is sparse)."""
    return 1.0 if t.encoding is None else t.encoding.stored_fraction(t)


def mac_kind(types: list[TensorType]) -> str:
    """Kind of the MACs of an op with operand types ``types`` (input first, weight second)."""
    if len(types) < 2:
        return "f32"
    x, w = types[0], types[1]
    kind = "f32" if w.encoding is None else w.encoding.mac_kind
    if kind == "int8":  # an int8 weight against float activations is decoded, not an int8 dot product
        both = x.encoding is not None and x.encoding.mac_kind == "int8"
        return "int8" if both else "f32"
    return kind


@functools.cache
def _target(name: str) -> Any:
    from mcir.codegen.target import resolve

    return resolve(name)


def resolve_target(target: Any) -> Any:
    """A ``mcir.codegen.target.Target`` from a target name (or the Target itself)."""
    return _target(target) if isinstance(target, str) else target


def embedded_weight_bytes(graph: Graph, target: Any = "native") -> int:
    """Bytes of constants the library of ``graph`` embeds (one copy per constant and layout)."""
    from mcir.codegen.lowering import embedded_constants

    return sum(n for _, n in embedded_constants(graph, resolve_target(target)).values())


# -- what the passes ask before they choose a storage -------------------------------------------


@dataclass(frozen=True)
class KernelTrial:
    """The answer of ``try_kernel``: why the op would not compile (None if it would), the bytes
    each constant operand would embed and the layout it would have (by operand index; equal
    layouts of one constant are stored once)."""

    problem: str | None
    operand_bytes: dict[int, int]
    layouts: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def weight_bytes(self) -> int:
        return sum(self.operand_bytes.values())


def _trial_op(op: Op, replace: dict[int, tuple[TensorType, Any]]) -> Op:
    """A detached copy of ``op`` whose operand ``i`` is replaced by a value of type ``t`` holding
    ``stored``: a constant with that data, or with ``stored=None`` a value as constant as the
    operand it replaces (a constant without data: enough to choose a kernel, which may require
    compile-time constants, not to pack one). The graph is not touched."""
    from mcir.codegen.memory_plan import view_root

    operands: list[Value] = []
    for i, v in enumerate(op.operands):
        if i in replace:
            t, stored = replace[i]
            if stored is None and not view_root(v).is_constant:
                v = Value(f"{v.name}.trial", t)
            else:
                v = Op("const", [], {}, f"{v.name}.trial", t, data=stored).result
        operands.append(v)
    return Op(op.name, operands, op.attrs, op.result.name, op.result.type, loc=op.loc)


def try_kernel(op: Op, replace: dict[int, tuple[TensorType, Any]] | None = None, target: Any = "native") -> KernelTrial:
    """Would ``op`` (with operands replaced as in ``_trial_op``) lower natively for ``target``,
    and how many bytes would each of its constant operands embed? Runs the kernel registry's
    choice, its scratch rule and its pack hooks (the compile-time layout), emits no code."""
    from mcir.codegen import kernels
    from mcir.codegen.lowering import constant_layout
    from mcir.codegen.memory_plan import view_root

    trial = _trial_op(op, replace or {})
    tgt = resolve_target(target)
    try:
        gen = kernels.lookup(trial)
        if gen.scratch is not None:
            gen.scratch(trial, tgt)
        sizes: dict[int, int] = {}
        layouts: dict[int, str] = {}
        for i, v in enumerate(trial.operands):
            if view_root(v).is_constant:
                (_, layout), payload, _ = constant_layout(v, trial, i, gen, tgt)
                sizes[i], layouts[i] = int(payload().nbytes), layout
    except McirError as e:
        return KernelTrial(str(e), {})
    return KernelTrial(None, sizes, layouts)


def kernel_exists(op: Op, replace: dict[int, TensorType], target: Any = "native") -> bool:
    """Whether the kernel registry has a native kernel for ``op`` when operand ``i`` has type
    ``replace[i]`` (types only: no weights are packed)."""
    from mcir.codegen import kernels

    trial = _trial_op(op, {i: (t, None) for i, t in replace.items()})
    try:
        gen = kernels.lookup(trial)
        if gen.scratch is not None:
            gen.scratch(trial, resolve_target(target))
    except McirError:
        return False
    return True


def has_kernel(op: Op, index: int, t: TensorType, target: Any = "native") -> bool:
    """Whether a native kernel exists for ``op`` with operand ``index`` of type ``t`` (an encoded
    weight, say) and its other operands as they are (the kernel registry's answer)."""
    return kernel_exists(op, {index: t}, target)


def embedded_bytes(op: Op, index: int, t: TensorType, stored: Any, target: Any = "native") -> int | None:
    """Bytes a library embeds for operand ``index`` of ``op`` stored as ``t`` with components
    ``stored``: the layout of the kernel that would run it, padding and folded tables included
    (None when no native kernel would)."""
    trial = try_kernel(op, {index: (t, stored)}, target)
    return trial.operand_bytes.get(index) if trial.ok else None


__all__ = [
    "GraphStats",
    "KernelTrial",
    "embedded_bytes",
    "embedded_weight_bytes",
    "has_kernel",
    "kernel_exists",
    "stats",
    "try_kernel",
]
