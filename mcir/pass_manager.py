"""The former home of passes, their registry and the pipeline runner, kept importable for one
release: users' passes import ``Pass``, ``PassContext`` and ``option`` from here.

New code imports from where things live now:

- ``mcir.pass_base``: ``Pass``, ``PassContext``, ``option``, ``pass_``, ``rules_pass``, option coercion
- ``mcir.passes``: the built-in passes (``BUILTIN``, ``ALIASES``), ``get_pass``, ``build_pipeline``
- ``mcir.instrument``: ``run_passes`` and the ``PipelineReport`` (not re-exported here: it reads
  ``GraphStats`` from this module); ``mcir.metrics``: ``compare_outputs``

``GraphStats`` (size and cost of a graph) is still defined here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcir.errors import ParseError
from mcir.ir import Graph
from mcir.metrics import compare_outputs
from mcir.pass_base import OptionSpec, Pass, PassContext, coerce, option, options_of, pass_, rules_pass
from mcir.passes import (
    ALIASES,
    BUILTIN,
    as_pass,
    as_pass_class,
    build_pipeline,
    get_pass,
    pass_names,
    register_pass,
)


@dataclass(frozen=True)
class GraphStats:
    """Size and cost of a graph: compute ops, parameters, weight bytes, MACs per inference.

    Sparse weights count only their stored values (``#csr``: nnz, ``#nm``: n/m of the
    elements), in parameters and in MACs. ``int8_macs`` are MACs whose operands are all
    integer-quantised; ``bit_macs`` are MACs between packed binary/ternary weights and binary
    activations, i.e. done as XNOR + popcount.
    """

    ops: int
    params: int
    weight_bytes: int
    macs: int
    int8_macs: int = 0
    bit_macs: int = 0

    @staticmethod
    def of(graph: Graph) -> GraphStats:
        from mcir.ops import registry

        params = wbytes = macs = ops = int8 = bits = 0
        for op in graph.ops:
            t = op.result.type
            if op.name == "const":
                params += round(t.numel * _stored_fraction(t))
                wbytes += t.nbytes
                continue
            ops += 1
            types = [v.type for v in op.operands]
            n = registry.get(op.name).count_macs(types, t, op.attrs)
            if n and len(types) >= 2:
                n = round(n * _stored_fraction(types[1]))
                kinds = {_kind(x) for x in types[:2]}
                if kinds == {"quant"}:
                    int8 += n
                elif kinds == {"packed"}:
                    bits += n
            macs += n
        return GraphStats(ops, params, wbytes, macs, int8, bits)


def _stored_fraction(t) -> float:
    """Fraction of a tensor's elements actually stored (1 unless sparse)."""
    enc = t.encoding
    if enc is None or not t.numel:
        return 1.0
    if enc.name == "csr":
        return enc.nnz / t.numel
    if enc.name == "nm":
        return enc.n / enc.m
    return 1.0


def _kind(t) -> str:
    if t.encoding is None:
        return "plain"
    if t.dtype.kind == "packed":
        return "packed"
    return "quant" if t.dtype.is_integer else "other"


__all__ = [
    "ALIASES",
    "BUILTIN",
    "GraphStats",
    "OptionSpec",
    "ParseError",
    "Pass",
    "PassContext",
    "as_pass",
    "as_pass_class",
    "build_pipeline",
    "coerce",
    "compare_outputs",
    "get_pass",
    "option",
    "options_of",
    "pass_",
    "pass_names",
    "register_pass",
    "rules_pass",
]
