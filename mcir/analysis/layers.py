"""Choosing the layers a compression pass touches: one ``skip`` syntax for every pass.

``skip`` is ``none`` (or empty: every layer), ``first``, ``last``, ``ends`` (first and last),
or a regular expression searched in each layer's module path (``enc.layers.0.linear1``),
result name, weight name and op kind. Layers are the ``linear`` and ``conv2d`` ops with a
constant float weight, in program order.
"""

from __future__ import annotations

import re

from mcir.errors import McirError
from mcir.ir import Graph, Op
from mcir.ops import registry
from mcir.ops.traits import CONTRACTION, WEIGHTED

#: weighted layers that multiply their weight with the activations (linear, conv2d; not a lookup
#: table such as embedding): what compression passes touch. Built-in ops, read from their traits.
LAYERS = registry.ops_with(WEIGHTED, CONTRACTION)
KEYWORDS = ("none", "first", "last", "ends")


def weighted_layers(graph: Graph, accept: tuple[type, ...] = ()) -> list[Op]:
    """linear/conv2d ops whose weight is a float constant with data, in program order; a weight
    with an encoding of a class in ``accept`` counts too (``cluster`` re-stores pruned ``#csr`` weights)."""
    out = []
    for op in graph.compute_ops():
        if op.name in LAYERS:
            w = op.operands[registry.get(op.name).weight.operand]
            plain = w.type.encoding is None or isinstance(w.type.encoding, accept)
            if w.is_constant and w.producer.data is not None and plain and w.type.dtype.is_float:
                out.append(op)
    return out


def check_skip(skip: str) -> None:
    """McirError unless ``skip`` is empty, a keyword or a valid regular expression."""
    if not skip or skip in KEYWORDS:
        return
    try:
        re.compile(skip)
    except re.error as e:
        raise McirError(
            f"skip='{skip}' is neither one of {', '.join(KEYWORDS)} nor a valid regular expression: {e}"
        ) from None


def layer_names(op: Op) -> list[str]:
    """The names ``skip`` regexes are searched in."""
    names = [op.loc.module, op.result.name, op.name]
    if len(op.operands) > 1:
        names.append(op.operands[1].name)
    return [n for n in names if n]


def is_skipped(op: Op, skip: str, layers: list[Op]) -> bool:
    """Whether ``skip`` leaves ``op`` alone; ``layers`` is the pass's candidate list (for first/last)."""
    if not skip or skip == "none":
        return False
    if skip in ("first", "last", "ends"):
        first = layers[0] if layers else None
        last = layers[-1] if layers else None
        return (skip in ("first", "ends") and op is first) or (skip in ("last", "ends") and op is last)
    pattern = re.compile(skip)
    return any(pattern.search(n) for n in layer_names(op))


def select_layers(graph: Graph, skip: str, accept: tuple[type, ...] = ()) -> list[Op]:
    """The weighted layers ``skip`` does not leave alone (``accept``: as in ``weighted_layers``)."""
    layers = weighted_layers(graph, accept)
    return [op for op in layers if not is_skipped(op, skip, layers)]
