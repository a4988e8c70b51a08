"""Trace a PyTorch module into an mcir ``Graph``.

Two tracers produce a ``torch.fx`` graph, one converter turns it into mcir:

* ``tracer="export"`` (default): ``torch.export.export(..., strict=False)`` gives an
  aten-level graph; it follows Python control flow on the example inputs, so it
  handles transformer and ResNet-style models that symbolic tracing cannot.
* ``tracer="fx"``: ``torch.fx.symbolic_trace`` gives a graph of torch-level calls
  (``call_module`` for ``nn.Linear``, ``F.relu``, ``operator.add``, ``x.view``...);
  running it once on the example inputs gives every node's shape.

Both land in the same IR, op for op: ``run`` walks the fx graph, ``mcir.frontend.dispatch``
converts each call with the op table of ``torch_ops`` (handlers for aten ops in
``aten_elementwise``, ``aten_nn``, ``aten_shape``), and ``torch_calls`` maps the torch-level
calls of symbolic tracing onto the same handlers; ``convert`` holds their shared vocabulary. Naming is
tracer-independent too: graph inputs take the ``forward`` parameter names, weights
their module path (``enc.layers.0.linear1.weight``), op results the mcir op kind
(``%linear_2``); constants are created at their first use. Every op carries a
``Location`` (module path, ``file.py:LINE`` of the innermost frame of the user's code).

Values computed from no input (``torch.arange``, a causal mask built with ``ones().tril()``)
are evaluated at trace time and become constants; parameters are never folded, so
they keep their names for the compression passes.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import sys
import traceback
from typing import Any

import torch
import torch.fx as fx

from mcir.errors import McirError, UnsupportedError
from mcir.frontend import dispatch
from mcir.frontend.convert import (  # noqa: F401  (re-exported: handlers written against torch_import keep working)
    Converter,
    Folded,
    Param,
    TracedModel,
    Unavailable,
    get_attr,
    is_user_file,
    mcir_dtype,
    module_path,
    target_name,
    torch_dtype,
    user_frame,
)
from mcir.ir import Graph, Location
from mcir.ops import registry
from mcir.ops.traits import ATTENTION, NORMALIZATION, POOLING, UNARY, WEIGHTED
from mcir.verifier import verify

TRACERS = ("export", "fx")


def trace(module: torch.nn.Module, example_inputs: Any, tracer: str = "export", name: str | None = None) -> Graph:
    """Trace ``module`` (in eval mode) on ``example_inputs`` into a verified mcir Graph.

    ``example_inputs`` is a tensor or a tuple of tensors, one per ``forward`` parameter.
    ``tracer`` is ``"export"`` (torch.export, non-strict) or ``"fx"`` (torch.fx.symbolic_trace).
    The module's training flag is restored afterwards. Raises ``UnsupportedError`` naming
    the torch op, module path and source line of anything mcir cannot express.
    """
    if isinstance(module, torch.export.ExportedProgram):  # e.g. loaded from a .pt2 archive
        graph = run(Converter(_from_program(module, torch.nn.Module(), None), _graph_name(name or "main")))
        return verify(graph)
    if not isinstance(module, torch.nn.Module):
        raise McirError(
            f"mcir.trace needs a torch.nn.Module or torch.export.ExportedProgram, got {type(module).__name__}"
        )
    if tracer not in TRACERS:
        raise McirError(f"unknown tracer '{tracer}'; use one of: {', '.join(TRACERS)}")
    inputs = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
    inputs = tuple(inputs)
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise McirError(f"example input {i} is a {type(x).__name__}; mcir traces tensor inputs only")
    graph_name = _graph_name(name or type(module).__name__)
    was_training = module.training
    module.eval()
    try:
        source = _export(module, inputs) if tracer == "export" else _symbolic_trace(module, inputs)
        graph = run(Converter(source, graph_name))
    finally:
        module.train(was_training)
    return verify(graph)


def is_layer_op(name: str) -> bool:
    """Whether op ``name`` is "the" computation of the module it comes from (so it is named after
    the module's path): weighted layers, attention, pooling, and normalisations over operands
    other than their input (batch_norm, layer_norm; not softmax, which is unary)."""
    t = registry.get(name).traits
    return bool(t & {WEIGHTED, ATTENTION, POOLING}) or (NORMALIZATION in t and UNARY not in t)


def name_layers_by_module(graph: Graph) -> None:
    """Rename layer results after their module path (``%fc1 = linear(...)``, ``%enc.layers.0.norm1``)
    so dumps read like the model; ops without a module keep their op-kind names. Both
    tracers see the same module paths, so names stay tracer-independent."""
    for op in graph.compute_ops():
        if is_layer_op(op.name) and op.loc.module and not graph.has_value(op.loc.module):
            graph.rename(op.result, op.loc.module)


def _export(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> TracedModel:
    # on failure torch prints the partial graph to stderr and logs a warning; our error replaces both
    captured = io.StringIO()
    shapes_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = shapes_log.level
    try:
        shapes_log.setLevel(logging.ERROR)
        with contextlib.redirect_stderr(captured):
            ep = torch.export.export(module, inputs, strict=False)
    except McirError:
        raise
    except Exception as e:
        raise UnsupportedError(_export_failure(module, e)) from None
    finally:
        shapes_log.setLevel(level)
    sys.stderr.write(captured.getvalue())  # warnings of a successful export stay visible
    return _from_program(ep, module, _forward_names(module))


def _from_program(ep: torch.export.ExportedProgram, root: torch.nn.Module, forward: list[str] | None) -> TracedModel:
    """What the converter needs from an exported program; user inputs take ``forward``'s parameter names."""
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    params: dict[str, Param] = {}
    names: list[str] = []
    for spec in sig.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            names.append(spec.arg.name)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            tensor = ep.state_dict[spec.target] if spec.target in ep.state_dict else ep.constants[spec.target]
            params[spec.arg.name] = Param(spec.target, tensor)
        else:
            raise UnsupportedError(
                f"torch.export gave an input of kind {spec.kind.name} ({spec.target}), "
                "which mcir cannot import; try tracer='fx'"
            )
    user_outputs = [i for i, spec in enumerate(sig.output_specs) if spec.kind == OutputKind.USER_OUTPUT]
    if forward is not None and len(forward) >= len(names):
        names = forward[: len(names)]
    return TracedModel(ep.graph, "export", root, names, params, lambda node: [node.args[0][i] for i in user_outputs])


def _export_failure(module: torch.nn.Module, e: Exception) -> str:
    """A short explanation of why torch.export failed, pointing at the user's code."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    if len(first) > 300:
        first = first[:300] + "..."
    frames = [f for f in traceback.extract_tb(e.__traceback__) if is_user_file(f.filename)]
    where = (
        f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}: `{(frames[-1].line or '').strip()}`"
        if frames
        else ""
    )
    text = f"torch.export could not trace {type(module).__name__}{where}: {type(e).__name__}: {first}."
    if "data-dependent" in str(e) or "data dependent" in str(e) or "GuardOnDataDependent" in type(e).__name__:
        text += (
            " The model branches on tensor values (data-dependent control flow), which a static graph "
            "cannot express: compute the condition from shapes or constants, or use torch.where / "
            "torch.cond."
        )
    return text + " You can also try tracer='fx' (mcir --tracer fx)."


def _symbolic_trace(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> TracedModel:
    tracer = fx.Tracer()
    tracer.record_stack_traces = True  # gives each node the user's source line
    try:
        graph = tracer.trace(module, concrete_args=_defaults_beyond(module, len(inputs)))
    except McirError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        frames = [f for f in traceback.extract_tb(e.__traceback__) if is_user_file(f.filename)]
        where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
        raise UnsupportedError(
            f"torch.fx.symbolic_trace could not trace {type(module).__name__}{where}: "
            f"{type(e).__name__}: {first}. Try tracer='export' (the default), which "
            "follows Python control flow on the example inputs."
        ) from None
    gm = fx.GraphModule(tracer.root, graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    # parameters after the example inputs were fixed to their defaults (concrete_args); their
    # placeholders remain, holding the default as their argument
    fixed = placeholders[len(inputs) :]
    if len(placeholders) < len(inputs) or any(not p.args for p in fixed):
        raise McirError(
            f"{type(module).__name__}.forward takes {len(placeholders)} input(s) "
            f"({', '.join(str(p.target) for p in placeholders)}), got {len(inputs)} example input(s)"
        )
    with torch.no_grad():
        _Propagate(gm).run(*inputs, *[p.args[0] for p in fixed])
    names = [str(p.target).lstrip("*") for p in placeholders[: len(inputs)]]
    return TracedModel(graph, "fx", module, names, {}, lambda node: [node.args[0]])


class _Propagate(fx.Interpreter):
    """Runs the symbolically traced module once and records each node's value in ``node.meta["val"]``.

    Tensors are recorded as meta tensors (shape and dtype only), so memory stays flat;
    other values (``x.size(0)``, tuples) are recorded as they are.
    """

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        n.meta["val"] = fx.node.map_aggregate(
            result, lambda v: torch.empty(v.shape, dtype=v.dtype, device="meta") if isinstance(v, torch.Tensor) else v
        )
        return result


def _defaults_beyond(module: torch.nn.Module, count: int) -> dict[str, Any] | None:
    """Default values of the ``forward`` parameters after the first ``count`` (not given as example inputs)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    rest = {p.name: p.default for p in params[count:] if p.default is not p.empty}
    return rest or None


def _forward_names(module: torch.nn.Module) -> list[str] | None:
    """The names of ``forward``'s positional parameters."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _graph_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.$\-]", "_", name) or "main"


# -- the driver ------------------------------------------------------------------------------


def run(cx: Converter) -> Graph:
    """Walk the fx graph once in order, converting each node (calls through ``dispatch``)."""
    inputs = iter(cx.source.input_names)
    for node in cx.source.graph.nodes:
        cx.node = node
        path = module_path(node)
        cx.loc = Location(path, user_frame(node)[0])
        if node.op == "placeholder":
            if node.name in cx.source.params:
                cx.env[node] = cx.source.params[node.name]
                continue
            name = next(inputs, None)
            # a parameter fixed to its default (fx concrete_args) has it as its argument
            cx.env[node] = cx.add_input(node, name) if name is not None else node.args[0]
        elif node.op == "get_attr":
            cx.env[node] = cx.param(str(node.target), get_attr(cx.source.root, str(node.target)))
        elif node.op in ("call_function", "call_method", "call_module"):
            args = fx.node.map_arg(node.args, lambda n: cx.env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: cx.env[n])
            cx.env[node] = dispatch.convert(cx, node, args, kwargs)
        elif node.op == "output":
            outs = [fx.node.map_arg(o, lambda n: cx.env[n]) for o in cx.source.output_nodes(node)]
            cx.graph.set_outputs([cx.tensor(o) for o in _flatten(outs)])
    name_layers_by_module(cx.graph)
    return cx.graph


def _flatten(x: Any) -> list[Any]:
    if isinstance(x, tuple | list):
        return [y for item in x for y in _flatten(item)]
    if isinstance(x, dict):
        return [y for item in x.values() for y in _flatten(item)]
    return [x]
