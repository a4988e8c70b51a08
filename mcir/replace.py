"""``replace_pattern``: rewrite with patterns written as ordinary torch functions.

::

    def pattern(x):
        return x * torch.sigmoid(x)

    def replacement(x):
        return torch.nn.functional.silu(x)

    mcir.replace_pattern(graph, pattern, replacement)

Both functions are traced by mcir's own frontend, so the pattern is made of exactly the
ops a model trace produces. The pattern's parameters match any value (a parameter used
twice must match the same value twice); its constants match constants with the same
data; attributes must be equal, except the target shapes of ``reshape``/``expand``, which
depend on the example shapes the pattern was traced with. The replacement is traced once
per distinct set of matched operand types, with example tensors of those types, and
inlined where the pattern matched.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from mcir.errors import McirError
from mcir.ir import Graph, Value
from mcir.ops import registry
from mcir.ops.traits import SHAPE_ATTR
from mcir.patterns import Match, Pat, constant_array
from mcir.rewriter import Rewriter, dead_code_elimination


def _function_module(fn: Callable[..., Any]):
    import torch

    class FunctionModule(torch.nn.Module):
        def forward(self, *args):
            return fn(*args)

    module = FunctionModule()
    module.forward = fn  # so the traced graph's inputs take the function's parameter names
    return module


def _trace_function(fn: Callable[..., Any], example_inputs: tuple) -> Graph:
    from mcir.frontend.torch_import import trace  # lazy: importing mcir.replace must not import torch

    return trace(_function_module(fn), example_inputs, tracer="export", name=fn.__name__)


def _default_examples(fn: Callable[..., Any]) -> tuple:
    import torch

    n = len(inspect.signature(fn).parameters)
    return tuple(torch.randn(4, 4) for _ in range(n))


def pattern_from_graph(pg: Graph) -> tuple[Pat, list[str]]:
    """A Pat matching what ``pg`` computes; returns it and the names of its input variables."""
    if len(pg.outputs) != 1:
        raise McirError(f"a pattern function must return one tensor, {pg.name} returns {len(pg.outputs)}")
    pats: dict[int, Pat] = {id(v): Pat.var(f"in:{v.name}") for v in pg.inputs}
    for op in pg.ops:
        if op.name == "const":
            data = constant_array(op.result)
            pats[id(op.result)] = Pat.const(
                name=f"c:{op.result.name}", where=lambda a, d=data: a.shape == d.shape and bool(np.array_equal(a, d))
            )
            continue
        # a static shape attribute spells the example sizes used to trace the pattern, not the pattern
        ignored = {"shape"} if registry.has_trait(op.name, SHAPE_ATTR) else set()
        attrs = {k: v for k, v in op.attrs.items() if k not in ignored}
        pats[id(op.result)] = Pat(op.name, *(pats[id(v)] for v in op.operands), attrs=attrs, name=f"v:{op.result.name}")
    root = pg.outputs[0]
    if root.producer is None or root.producer.name == "const":
        raise McirError("a pattern function must compute something from its inputs")
    return pats[id(root)], [f"in:{v.name}" for v in pg.inputs]


def _example_tensors(values: list[Value]) -> tuple:
    import torch

    rng = np.random.default_rng(0)
    out = []
    for v in values:
        t = v.type.logical
        if t.dtype.is_float:
            out.append(torch.from_numpy(rng.standard_normal(t.shape).astype(t.dtype.np)))
        else:
            out.append(torch.from_numpy(np.zeros(t.shape, t.dtype.np)))
    return tuple(out)


def _inline(rw: Rewriter, anchor, sub: Graph, args: list[Value]) -> Value:
    """Copy ``sub``'s ops before ``anchor`` with its inputs bound to ``args``; returns its output."""
    mapping: dict[int, Value] = {id(v): a for v, a in zip(sub.inputs, args)}
    for op in sub.ops:
        if op.name == "const":
            mapping[id(op.result)] = rw.const(op.result.name, op.data, op.result.type, loc=anchor.loc)
        else:
            mapping[id(op.result)] = rw.insert_before(
                anchor,
                op.name,
                [mapping[id(v)] for v in op.operands],
                op.attrs,
                type=op.result.type,
                result=op.result.name,
                loc=anchor.loc,
            )
    return mapping[id(sub.outputs[0])]


def replace_pattern(
    graph: Graph, pattern: Callable[..., Any], replacement: Callable[..., Any], example_inputs: tuple | None = None
) -> int:
    """Replace every match of ``pattern`` in ``graph`` by ``replacement``; returns how many.

    ``example_inputs`` (torch tensors, one per pattern parameter) are only needed when the
    pattern cannot be traced with 4x4 float tensors (e.g. it indexes a particular shape).
    """
    n_pattern = len(inspect.signature(pattern).parameters)
    n_repl = len(inspect.signature(replacement).parameters)
    if n_pattern != n_repl:
        raise McirError(f"pattern takes {n_pattern} argument(s) but replacement takes {n_repl}; they must match")
    try:
        pg = _trace_function(pattern, example_inputs or _default_examples(pattern))
    except McirError as e:
        hint = "" if example_inputs else " (pass example_inputs=... with shapes the pattern accepts)"
        raise McirError(f"cannot trace the pattern function {pattern.__name__}: {e}{hint}") from None
    pat, inputs = pattern_from_graph(pg)
    rw = Rewriter(graph)
    cache: dict[tuple, Graph] = {}
    count = 0
    for op in list(graph.ops):
        if op.graph is not graph or op.name == "const":
            continue
        m = Match(op)
        if not pat.match(op.result, m):
            continue
        args = [m.values[name] for name in inputs]
        key = tuple(str(a.type.logical) for a in args)
        if key not in cache:
            cache[key] = _trace_function(replacement, _example_tensors(args))
        sub = cache[key]
        if sub.outputs[0].type.logical != op.result.type.logical:
            raise McirError(
                f"replacement {replacement.__name__} returns {sub.outputs[0].type} where the pattern "
                f"matched {op.where()} of type {op.result.type}"
            )
        rw.replace_op(op, _inline(rw, op, sub, args))
        count += 1
    dead_code_elimination(graph, rw)
    return count
