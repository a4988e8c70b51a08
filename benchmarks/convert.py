"""PyTorch benchmark models -> mcir graphs.

Uses ``mcir.trace`` when the torch frontend is available. Until it lands, a small
TEMPORARY converter handles exactly the module kinds of ``benchmarks/models.py``
(Sequential of Linear/ReLU/Conv2d/MaxPool2d/Flatten, and nn.TransformerEncoder in eval
mode), following PyTorch's documented forward math. Delete it once ``mcir.trace`` exists.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mcir.ir import Graph, Value
from mcir.types import tensor


def to_graph(model: nn.Module, example: torch.Tensor, name: str) -> Graph:
    """The mcir graph of ``model`` for inputs shaped like ``example``."""
    try:
        from mcir.frontend.torch_import import trace
    except ImportError:
        trace = None
    if trace is not None:
        return trace(model.eval(), (example,), tracer="export", name=name)
    g = Graph(name)
    x = g.add_input("x", tensor(list(example.shape)))
    if isinstance(model, nn.TransformerEncoder):
        y = _encoder(g, model, x)
    else:
        y = _sequential(g, model, x)
    g.set_outputs([y])
    return g


def _w(g: Graph, name: str, p: torch.Tensor) -> Value:
    return g.const(name, p.detach().numpy().astype(np.float32).copy())


def _sequential(g: Graph, model: nn.Sequential, x: Value) -> Value:
    for i, m in enumerate(model):
        if isinstance(m, nn.Linear):
            x = g.add("linear", [x, _w(g, f"{i}.weight", m.weight), _w(g, f"{i}.bias", m.bias)])
        elif isinstance(m, nn.ReLU):
            x = g.add("relu", [x])
        elif isinstance(m, nn.Conv2d):
            x = g.add(
                "conv2d",
                [x, _w(g, f"{i}.weight", m.weight), _w(g, f"{i}.bias", m.bias)],
                {"stride": list(m.stride), "padding": list(m.padding)},
            )
        elif isinstance(m, nn.MaxPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            x = g.add("max_pool2d", [x], {"kernel": [k, k], "stride": [s, s]})
        elif isinstance(m, nn.Flatten):
            n = x.type.shape[0]
            x = g.add("reshape", [x], {"shape": [n, math.prod(x.type.shape[1:])]})
        else:
            raise NotImplementedError(f"temporary converter: {type(m).__name__}")
    return x


def _encoder(g: Graph, enc: nn.TransformerEncoder, x: Value) -> Value:
    b, s, e = x.type.shape
    for i, layer in enumerate(enc.layers):
        attn = layer.self_attn
        h = attn.num_heads
        d = e // h
        p = f"layers.{i}."
        qkv = g.add(
            "linear",
            [x, _w(g, p + "in_proj_weight", attn.in_proj_weight), _w(g, p + "in_proj_bias", attn.in_proj_bias)],
        )
        heads = []
        for j in range(3):
            part = g.add("slice", [qkv], {"axis": 2, "start": j * e, "end": (j + 1) * e})
            part = g.add("reshape", [part], {"shape": [b, s, h, d]})
            heads.append(g.add("permute", [part], {"dims": [0, 2, 1, 3]}))
        a = g.add("scaled_dot_product_attention", heads)
        a = g.add("reshape", [g.add("permute", [a], {"dims": [0, 2, 1, 3]})], {"shape": [b, s, e]})
        a = g.add(
            "linear",
            [a, _w(g, p + "out_proj.weight", attn.out_proj.weight), _w(g, p + "out_proj.bias", attn.out_proj.bias)],
        )
        x = g.add(
            "layer_norm",
            [
                g.add("add", [x, a]),
                _w(g, p + "norm1.weight", layer.norm1.weight),
                _w(g, p + "norm1.bias", layer.norm1.bias),
            ],
            {"eps": layer.norm1.eps},
        )
        f = g.add(
            "linear",
            [x, _w(g, p + "linear1.weight", layer.linear1.weight), _w(g, p + "linear1.bias", layer.linear1.bias)],
        )
        f = g.add("relu", [f])
        f = g.add(
            "linear",
            [f, _w(g, p + "linear2.weight", layer.linear2.weight), _w(g, p + "linear2.bias", layer.linear2.bias)],
        )
        x = g.add(
            "layer_norm",
            [
                g.add("add", [x, f]),
                _w(g, p + "norm2.weight", layer.norm2.weight),
                _w(g, p + "norm2.bias", layer.norm2.bias),
            ],
            {"eps": layer.norm2.eps},
        )
    return x
