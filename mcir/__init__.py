"""mcir: a model-compression compiler from PyTorch to self-contained native libraries.

The public API::

    g = mcir.trace(model, example_inputs)          # torch.export (default) or tracer="fx"
    print(g)                                       # textual IR; mcir.parse(text) reads it back
    ys = mcir.interpret(g, x)                      # numpy reference interpreter
    g2 = mcir.run_passes(g, "fold,quant8", calibration=batches)
    mcir.save(g, "out/model"); g = mcir.load("out/model")
    s = mcir.stats(g2)                             # params, library weight bytes, MACs by kind
    g = mcir.from_onnx("model.onnx"); mcir.to_onnx(g2, "model_int8.onnx")   # ONNX in and out
    m = mcir.to_torch(g)                           # a trainable torch module (mcir.train)
"""

from __future__ import annotations

from typing import Any

from mcir import search  # a callable package: mcir.search(...) runs a search
from mcir.errors import McirError, ParseError, UnsupportedError, VerifyError
from mcir.instrument import run_passes
from mcir.interp import Interpreter, interpret
from mcir.ir import Graph, Location, Op, Value
from mcir.parser import parse, parse_file
from mcir.pass_base import Pass, PassContext, option, pass_
from mcir.patterns import Match, Pat, RewritePattern, RuleSet, apply_rules
from mcir.rewriter import Rewriter
from mcir.serialize import load, save
from mcir.stats import stats
from mcir.types import TensorType, tensor
from mcir.verifier import verify
from mcir.version import __version__


def trace(module: Any, example_inputs: Any, tracer: str = "export", name: str | None = None) -> Graph:
    """Trace a ``torch.nn.Module`` into an mcir Graph.

    ``tracer="export"`` uses ``torch.export`` (non-strict, eval mode); ``tracer="fx"``
    uses ``torch.fx.symbolic_trace``. Both give the same IR.
    """
    from mcir.frontend.torch_import import trace as _trace  # lazy: `import mcir` must not import torch

    return _trace(module, example_inputs, tracer=tracer, name=name)


def from_onnx(model: Any, input_shapes: dict[str, Any] | None = None, name: str | None = None) -> Graph:
    """Import an ONNX model (path or ``onnx.ModelProto``) into an mcir Graph; ``input_shapes`` gives
    static shapes to inputs with symbolic dimensions. See ``mcir.frontend.onnx_import``."""
    from mcir.frontend.onnx_import import from_onnx as _from_onnx

    return _from_onnx(model, input_shapes=input_shapes, name=name)


def to_onnx(graph: Graph, path: Any = None, opset: int | None = None, external_data: bool | None = None) -> Any:
    """Export ``graph`` as an ONNX model (written to ``path`` when given) and return the ModelProto;
    int8 as QDQ, other encodings as decoded floats. See ``mcir.frontend.onnx_export``."""
    from mcir.frontend.onnx_export import to_onnx as _to_onnx

    return _to_onnx(graph, path, opset=opset, external_data=external_data)


def compile(
    graph: Graph,
    path: Any,
    target: str = "native",
    name: str | None = None,
    triple: str | None = None,
    cpu: str | None = None,
    features: str | None = None,
    memory_limit: int | str | None = None,
) -> Any:
    """Compile ``graph`` to ``PATH.o``, ``PATH.so`` and ``PATH.h`` and return the loaded library
    (``lib(*arrays)`` runs it); ``target`` is ``"native"``, an x86-64 level or a machine name
    (``"aarch64"``...), refined by ``cpu`` and ``features`` (``"+dotprod"``); see ``mcir.codegen.compile``.
    ``memory_limit`` (bytes or ``"32G"``) overrides the compile-memory limit (``$MCIR_COMPILE_MEMORY``,
    default 16 GiB; docs/ir.md "Limits")."""
    from mcir.codegen import compile as _compile  # lazy: only compiling needs llvmlite

    return _compile(
        graph,
        path,
        target=target,
        name=name,
        triple=triple,
        cpu=cpu,
        features=features,
        pipeline=graph.meta.get("pipeline", ""),
        memory_limit=memory_limit,
    )


def to_torch(graph: Graph, **options: Any) -> Any:
    """The graph as a trainable ``torch.nn.Module`` (encodings in their training forms); see ``mcir.train``."""
    from mcir.train.to_torch import to_torch as _to_torch

    return _to_torch(graph, **options)


def replace_pattern(graph: Graph, pattern: Any, replacement: Any, example_inputs: Any = None) -> int:
    """Replace every match of the torch function ``pattern`` by ``replacement``; see ``mcir.replace``."""
    from mcir.replace import replace_pattern as _replace  # lazy: it traces with torch

    return _replace(graph, pattern, replacement, example_inputs)


__all__ = [
    "Graph",
    "Interpreter",
    "Location",
    "Match",
    "McirError",
    "Op",
    "ParseError",
    "Pass",
    "PassContext",
    "Pat",
    "RewritePattern",
    "Rewriter",
    "RuleSet",
    "TensorType",
    "UnsupportedError",
    "Value",
    "VerifyError",
    "__version__",
    "apply_rules",
    "compile",
    "from_onnx",
    "interpret",
    "load",
    "option",
    "parse",
    "parse_file",
    "pass_",
    "replace_pattern",
    "run_passes",
    "save",
    "search",
    "stats",
    "tensor",
    "to_onnx",
    "to_torch",
    "trace",
    "verify",
]
