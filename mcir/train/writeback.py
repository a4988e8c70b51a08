"""Write-back: trained weights go back into the graph with the encodings they came from.

``write_back(module, graph)`` replaces the data of every constant of ``graph`` that ``module``
(built by ``mcir.to_torch`` from this graph or a copy of it) trained, keeping its type:

* ``f32`` weights: the trained values; pruned zeros are still zero (the mask kept them);
* ``#csr`` / ``#nm``: new values at the *same* positions (same ``indices``/``rowptr`` or
  ``index``), so nnz and the pattern are unchanged; i8 values re-quantised with the trained
  per-row scales;
* ``#quant<axis=0>`` weights: ``q = clamp(round(w / s), -127, 127)`` with the learned scales
  ``s`` (stored as f32) — the forward the module trained; per-tensor scales change the type's
  ``scale``;
* i32 biases of an int8 layer: re-derived in the accumulator scale ``s_x · s_w`` of the layer's
  (new) weight scales;
* ``#binary``: bits = w ≥ 0, α = mean|w| per slice (re-derived); ``#ternary``: the same
  non-zero pattern, new signs, α = mean|w| over it.

A shared constant is one parameter, so it is written once and stays shared; shapes (ranks of
low-rank factors, pruned channels) never change. Every change goes through the rewriter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcir.encodings import Quant
from mcir.errors import McirError
from mcir.ir import Graph, Op
from mcir.rewriter import Rewriter
from mcir.train.forms import QuantForm
from mcir.train.to_torch import GraphModule


def write_back(module: GraphModule, graph: Graph) -> int:
    """Store ``module``'s trained constants into ``graph`` in place; returns how many changed."""
    rw = Rewriter(graph)
    written: dict[str, Any] = {}
    for name, form in module.forms.items():
        if not graph.has_value(name):
            raise McirError(f"write-back: the graph has no constant %{name} (was the module built from this graph?)")
        op = graph.value(name).producer
        if op is None or op.name != "const" or op.result.type != form.type:
            raise McirError(f"write-back: %{name} is not the constant of type {form.type} the module was built from")
    # weights first: an i32 bias's scale follows its layer's new weight scales
    order = sorted(module.forms, key=lambda n: isinstance(module.forms[n], QuantForm) and _is_bias(graph, n))
    for name in order:
        form = module.forms[name]
        op = graph.value(name).producer
        context = {}
        if isinstance(form, QuantForm) and _is_bias(graph, name):
            scale = _bias_scale(op, graph, written)
            if scale is not None:
                context["scale"] = scale
        t, data = form.stored(context)
        written[name] = (t, data)
        rw.set_data(op, data, t)
    return len(written)


def _is_bias(graph: Graph, name: str) -> bool:
    uses = graph.value(name).uses
    return bool(uses) and all(u.name in ("linear", "conv2d") and i == 2 for u, i in uses)


def _bias_scale(bias: Op, graph: Graph, written: dict[str, Any]) -> np.ndarray | None:
    """s_x · s_w of the layer the bias belongs to, when its input is u8 and its weight per-axis int8."""
    enc = bias.result.type.encoding
    if not (isinstance(enc, Quant) and enc.axis is not None):
        return None
    layer = bias.result.users[0]
    x, w = layer.operands[0], layer.operands[1]
    xenc = x.type.encoding
    if not (isinstance(xenc, Quant) and xenc.axis is None and w.name in written):
        return None
    wt, wdata = written[w.name]
    wenc = wt.encoding
    if isinstance(wenc, Quant):
        ws = np.asarray(wenc.scales(wt, wdata), np.float32).reshape(-1)
    elif isinstance(wdata, dict) and "scale" in wdata:  # i8 #csr / #nm: per-row scales
        ws = np.asarray(wdata["scale"], np.float32)
    else:
        return None
    if ws.size == 1:
        ws = np.full(bias.result.type.shape[0], ws.reshape(())[()], np.float32)
    return (np.float32(xenc.scale) * ws).astype(np.float32)
