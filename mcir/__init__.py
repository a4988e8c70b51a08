"""mcir: a model-compression compiler from PyTorch to self-contained native libraries.

The public API::

    g = mcir.trace(model, example_inputs)          # torch.export (default) or tracer="fx"
    print(g)                                       # textual IR; mcir.parse(text) reads it back
    ys = mcir.interpret(g, x)                      # numpy reference interpreter
    mcir.save(g, "out/model"); g = mcir.load("out/model")
"""

from __future__ import annotations

from typing import Any

from mcir.errors import McirError, ParseError, UnsupportedError, VerifyError
from mcir.interp import Interpreter, interpret
from mcir.ir import Graph, Location, Op, Value
from mcir.parser import parse, parse_file
from mcir.serialize import load, save
from mcir.types import TensorType, tensor
from mcir.verifier import verify

__version__ = "0.1.0"


def trace(module: Any, example_inputs: Any, tracer: str = "export", name: str | None = None) -> Graph:
    """Trace a ``torch.nn.Module`` into an mcir Graph.

    ``tracer="export"`` uses ``torch.export`` (non-strict, eval mode); ``tracer="fx"``
    uses ``torch.fx.symbolic_trace``. Both give the same IR.
    """
    from mcir.frontend.torch_import import trace as _trace

    return _trace(module, example_inputs, tracer=tracer, name=name)


__all__ = [
    "Graph", "Interpreter", "Location", "McirError", "Op", "ParseError", "TensorType", "UnsupportedError",
    "Value", "VerifyError", "interpret", "load", "parse", "parse_file", "save", "tensor", "trace", "verify",
]
