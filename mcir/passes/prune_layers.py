"""prune(granularity=layer): remove whole layers — residual blocks, transformer layers.

A *layer* is the set of ops whose module path starts with an item of a sequence
(``encoder.layers.3``, ``layer2.1``: a path component that is an integer) that has weights
and a residual connection (an ``add`` reading the layer's input). It can go when it maps one
value to one value of the same type — one value enters it from outside, one value leaves
it — so removing it is ``y := x``::

    %l0 = ... encoder.layers.0 ... : f32[1,12,32]          %l0 = ... encoder.layers.0 ...
    %l1 = ... encoder.layers.1 (reads %l0) ... : f32[...]   (layer 1 removed)
    %out = mean(%l1)                                   ->   %out = mean(%l0)

Importance of a layer is how much it changes its input, ``‖y − x‖ / ‖x‖``, averaged over sample
inputs (calibration data, else the training data, else random inputs); the ``sparsity``
fraction of least important layers is removed (at least one layer stays). Nested candidates
(a block inside a removable layer) are not considered separately. With ``distill`` afterwards
this is DistilBERT's recipe: keep one layer of two and learn from the full model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcir.interp import Interpreter
from mcir.ir import Graph, Op, Value
from mcir.rewriter import Rewriter, dead_code_elimination


@dataclass
class Layer:
    """A removable layer: its module path, ops, the value entering and the value leaving it."""

    path: str
    ops: list[Op]
    input: Value
    output: Value


def find_layers(graph: Graph) -> list[Layer]:
    """The removable layers of ``graph`` in program order (outermost when nested)."""
    members: dict[str, list[Op]] = {}
    for op in graph.compute_ops():
        parts = op.loc.module.split(".") if op.loc.module else []
        for i, part in enumerate(parts):
            if part.isdigit():
                members.setdefault(".".join(parts[: i + 1]), []).append(op)
    layers = []
    for path, ops in members.items():
        layer = _as_layer(graph, path, ops)
        if layer is not None:
            layers.append(layer)
    outer = [a for a in layers if not any(b is not a and a.path.startswith(b.path + ".") for b in layers)]
    return sorted(outer, key=lambda layer: graph.index(layer.ops[0]))


def _as_layer(graph: Graph, path: str, ops: list[Op]) -> Layer | None:
    inside = {id(op) for op in ops}
    produced = {id(op.result) for op in ops}
    entering: dict[int, Value] = {}
    for op in ops:
        for v in op.operands:
            if id(v) not in produced and not v.is_constant:
                entering[id(v)] = v
    outputs = {id(v) for v in graph.outputs}
    leaving = [op.result for op in ops if id(op.result) in outputs or any(id(u) not in inside for u in op.result.users)]
    if len(entering) != 1 or len(leaving) != 1:
        return None
    (x,) = entering.values()
    (y,) = leaving
    if x.type != y.type or x.type.encoding is not None:
        return None
    # a layer with its own weights and a residual connection (an add reading the layer's input):
    # a BatchNorm or ReLU that happens to be item 1 of a Sequential is not a layer to drop
    residual = any(op.name == "add" and x in op.operands for op in ops)
    weighted = any(op.name in ("linear", "conv2d", "matmul") for op in ops)
    return Layer(path, ops, x, y) if residual and weighted else None


class _Recorder(Interpreter):
    """Keeps the logical values of the layers' inputs and outputs."""

    def __init__(self, graph: Graph, watch: set[int]) -> None:
        super().__init__(graph)
        self.watch = watch
        self.seen: dict[int, np.ndarray] = {}

    def run_op(self, op: Op, args: list[Any]) -> Any:
        out = super().run_op(op, args)
        if id(op.result) in self.watch:
            self.seen[id(op.result)] = np.asarray(op.result.type.decode(out), np.float64)
        return out


def layer_importance(graph: Graph, layers: list[Layer], samples: list[tuple[np.ndarray, ...]]) -> list[float]:
    """Mean ``‖y − x‖ / ‖x‖`` of each layer over the samples."""
    watch = {id(v) for layer in layers for v in (layer.input, layer.output)}
    totals = np.zeros(len(layers))
    for sample in samples:
        rec = _Recorder(graph, watch)
        for v, x in zip(graph.inputs, sample):
            if id(v) in watch:
                rec.seen[id(v)] = np.asarray(v.type.decode(x), np.float64)
        rec.run(*sample)
        for i, layer in enumerate(layers):
            x, y = rec.seen[id(layer.input)], rec.seen[id(layer.output)]
            totals[i] += np.linalg.norm(y - x) / max(np.linalg.norm(x), 1e-12)
    return list(totals / max(len(samples), 1))


def prune_layers(graph: Graph, sparsity: float, skip: str, samples: list[tuple[np.ndarray, ...]]) -> list[str]:
    """Remove the least important ``sparsity`` fraction of the removable layers; notes for the report."""
    layers = find_layers(graph)
    if skip and skip not in ("none", "first", "last", "ends"):
        layers = [layer for layer in layers if not re.search(skip, layer.path)]
    if not layers:
        return [
            "granularity=layer: no removable layer (a numbered module with weights and a residual add, "
            "mapping one value to one of the same type)"
        ]
    scores = layer_importance(graph, layers, samples)
    count = min(round(sparsity * len(layers)), len(layers) - 1)
    order = sorted(range(len(layers)), key=lambda i: scores[i])[:count]
    rw = Rewriter(graph)
    removed = []
    for i in sorted(order, reverse=True):  # later layers first: an earlier one's output is a later one's input
        layer = layers[i]
        rw.replace_uses(layer.output, layer.input)
        removed.append(layer)
    dead_code_elimination(graph, rw)
    kept = [layer.path for j, layer in enumerate(layers) if j not in order]
    notes = [
        f"removed layer {layer.path} (changes its input by {scores[layers.index(layer)]:.3g})" for layer in removed
    ]
    return [*reversed(notes), f"kept {len(kept)} of {len(layers)} layers: {', '.join(kept)}"]
