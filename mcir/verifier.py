"""The graph verifier: the invariants every pass must keep.

* SSA: every value is defined once, before its uses; names are unique.
* Use lists agree with operands (no dangling uses of erased ops).
* Every op is registered, its attributes are valid, and the type inferred from its
  operands equals its declared (logical) type.
* Constants with data match their types and their encodings' facts (``Encoding.check_stored``:
  indices, row pointers, padding bits, scales); only constants have encodings with components
  (per-axis scales, packed bits); outputs are values of the graph.
* Resource limits (below): a graph within them compiles in time and memory linear in its size;
  tensor sizes are limited by ``mcir.types.MAX_TENSOR_BYTES`` (2^40 bytes).
"""

from __future__ import annotations

from mcir.errors import McirError, VerifyError
from mcir.ir import Graph, Value, _freeze_data
from mcir.ops import registry

#: operands of one op: a kernel takes one pointer per operand (a 20,000-operand concat made LLVM run out
#: of memory); split wider concatenations into a tree of concats
MAX_OPERANDS = 1024
#: graph inputs and outputs: each is a descriptor in the library and a pointer in every call
MAX_INPUTS = 16384
MAX_OUTPUTS = 16384
#: ops of one graph (constants included)
MAX_OPS = 1_000_000


def check_limits(graph: Graph) -> None:
    """Raise VerifyError when ``graph`` exceeds a resource limit above."""
    for what, count, limit in (
        ("inputs", len(graph.inputs), MAX_INPUTS),
        ("outputs", len(graph.outputs), MAX_OUTPUTS),
        ("ops", len(graph.ops), MAX_OPS),
    ):
        if count > limit:
            raise VerifyError(f"@{graph.name} has {count} {what}; mcir allows at most {limit} (docs/ir.md, Limits)")
    for op in graph.ops:
        if len(op.operands) > MAX_OPERANDS:
            raise VerifyError(
                f"@{graph.name}: {op.where()} has {len(op.operands)} operands; mcir allows at most {MAX_OPERANDS} "
                "per op: split it (e.g. a concat into a tree of concats)"
            )


def _only_constants_have_components(graph: Graph, v: Value, where: str, computed_ok: bool = False) -> None:
    # such values are dicts of arrays: constants have them as data; an op can compute them only
    # for encodings whose components follow from the values (Encoding.computed); inputs never
    t = v.type
    if t.encoding is not None and t.encoding.needs_components and not (computed_ok and t.encoding.computed):
        raise VerifyError(f"@{graph.name}: {where}: %{v.name} has type {t}, which only constants can have")


def verify(graph: Graph) -> Graph:
    """Check ``graph``; raise VerifyError naming the first broken op. Returns the graph."""
    check_limits(graph)
    defined: set[int] = set()
    names: set[str] = set()

    def define(v, where: str) -> None:
        if v.name in names:
            raise VerifyError(f"@{graph.name}: value %{v.name} is defined twice ({where})")
        names.add(v.name)
        defined.add(id(v))

    for v in graph.inputs:
        if v.producer is not None:
            raise VerifyError(f"@{graph.name}: graph input %{v.name} has a producer")
        _only_constants_have_components(graph, v, "graph input")
        define(v, "graph input")
    for op in graph.ops:
        where = op.where()
        if op.graph is not graph:
            raise VerifyError(f"@{graph.name}: {where} does not belong to this graph")
        for i, v in enumerate(op.operands):
            if id(v) not in defined:
                raise VerifyError(
                    f"@{graph.name}: {where} uses %{v.name} before it is defined (or after it was erased)"
                )
            if (op, i) not in v.uses:
                raise VerifyError(f"@{graph.name}: {where}: the use list of %{v.name} misses operand {i}")
        try:
            opdef = registry.get(op.name)
        except McirError as e:
            raise VerifyError(f"@{graph.name}: {where}: {e}") from None
        if op.name == "const":
            if op.data is not None:
                try:
                    _freeze_data(op.data, op.result.type)
                except McirError as e:
                    raise VerifyError(f"@{graph.name}: {where}: {e}") from None
        else:
            _only_constants_have_components(graph, op.result, where, computed_ok=True)
            try:
                attrs = opdef.complete_attrs(dict(op.attrs), where)
                inferred = opdef.infer_type([v.type for v in op.operands], attrs, where)
            except McirError as e:
                raise VerifyError(f"@{graph.name}: {e}") from None
            if inferred != op.result.type.logical:
                raise VerifyError(
                    f"@{graph.name}: {where} is declared {op.result.type} but its operands give {inferred}"
                )
        if op.result.producer is not op:
            raise VerifyError(f"@{graph.name}: {where}: result producer link is broken")
        define(op.result, where)
        for user, idx in op.result.uses:
            if user.graph is not graph or user.operands[idx] is not op.result:
                raise VerifyError(f"@{graph.name}: {where}: stale use by {user.where()}")
    for v in graph.outputs:
        if id(v) not in defined:
            raise VerifyError(f"@{graph.name}: output %{v.name} is not a value of the graph")
    if not graph.outputs:
        raise VerifyError(f"@{graph.name}: the graph returns nothing")
    return graph
