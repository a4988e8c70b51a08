"""Trace a PyTorch module into an mcir ``Graph``.

Two tracers produce a ``torch.fx`` graph, one converter turns it into mcir:

* ``tracer="export"`` (default): ``torch.export.export(..., strict=False)`` gives an
  aten-level graph; it follows Python control flow on the example inputs, so it
  handles transformer and ResNet-style models that symbolic tracing cannot.
* ``tracer="fx"``: ``torch.fx.symbolic_trace`` gives a graph of torch-level calls
  (``call_module`` for ``nn.Linear``, ``F.relu``, ``operator.add``, ``x.view``...);
  running it once on the example inputs gives every node's shape.

Both land in the same IR, op for op: ``mcir.frontend.torch_ops`` drives the op table
(handlers for aten ops in ``aten_elementwise``, ``aten_nn``, ``aten_shape``) and
``torch_calls`` maps the torch-level calls of symbolic tracing onto the same handlers. Naming is
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from mcir import dtypes
from mcir.errors import McirError, UnsupportedError
from mcir.ir import Graph, Location, Value
from mcir.types import TensorType
from mcir.verifier import verify

TRACERS = ("export", "fx")
_TORCH_DIR = os.path.dirname(torch.__file__)


def trace(module: torch.nn.Module, example_inputs: Any, tracer: str = "export", name: str | None = None) -> Graph:
    """Trace ``module`` (in eval mode) on ``example_inputs`` into a verified mcir Graph.

    ``example_inputs`` is a tensor or a tuple of tensors, one per ``forward`` parameter.
    ``tracer`` is ``"export"`` (torch.export, non-strict) or ``"fx"`` (torch.fx.symbolic_trace).
    The module's training flag is restored afterwards. Raises ``UnsupportedError`` naming
    the torch op, module path and source line of anything mcir cannot express.
    """
    if isinstance(module, torch.export.ExportedProgram):  # e.g. loaded from a .pt2 archive
        graph = Converter(_from_program(module, torch.nn.Module(), None), _graph_name(name or "main")).run()
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
        graph = Converter(source, graph_name).run()
    finally:
        module.train(was_training)
    return verify(graph)


#: ops that are "the" computation of the module they come from: named after its path
_LAYER_OPS = (
    "linear",
    "conv2d",
    "batch_norm",
    "layer_norm",
    "embedding",
    "scaled_dot_product_attention",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
)


def name_layers_by_module(graph: Graph) -> None:
    """Rename layer results after their module path (``%fc1 = linear(...)``, ``%enc.layers.0.norm1``)
    so dumps read like the model; ops without a module keep their op-kind names. Both
    tracers see the same module paths, so names stay tracer-independent."""
    for op in graph.compute_ops():
        if op.name in _LAYER_OPS and op.loc.module and not graph.has_value(op.loc.module):
            graph.rename(op.result, op.loc.module)


# -- what a tracer hands to the converter ----------------------------------------------


@dataclass
class Param:
    """A named tensor of the model (parameter, buffer, tensor attribute): a constant created at first use."""

    path: str
    tensor: torch.Tensor


@dataclass
class Folded:
    """A tensor computed at trace time from no graph input; becomes a constant if an op needs it."""

    tensor: torch.Tensor
    name: str


@dataclass
class Unavailable:
    """A result of a torch op that mcir does not compute (pooling indices, saved batch statistics).

    Handlers return it in place of that result; only using it is an error."""

    what: str


@dataclass
class TracedModel:
    """An fx graph plus what the converter needs to read it."""

    graph: fx.Graph
    tracer: str
    root: torch.nn.Module
    input_names: list[str]  # per user-input placeholder, in order
    params: dict[str, Param]  # placeholder name (export) -> parameter it stands for
    output_nodes: Callable[[fx.Node], list[Any]]  # output node -> user outputs


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
    frames = [f for f in traceback.extract_tb(e.__traceback__) if _is_user_file(f.filename)]
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
        frames = [f for f in traceback.extract_tb(e.__traceback__) if _is_user_file(f.filename)]
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


def _is_user_file(filename: str) -> bool:
    """Frames of the user's model code: not torch's own files, not generated code."""
    return not (
        filename.startswith(_TORCH_DIR)
        or filename.startswith("<")
        or os.sep + "mcir" + os.sep + "frontend" + os.sep in filename
    )


_FRAME_RE = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n([^\n]*)')


def user_frame(node: fx.Node) -> tuple[str, str]:
    """(``file.py:LINE``, source text) of the innermost user-code frame in the node's stack trace."""
    trace_text = node.meta.get("stack_trace") or ""
    frames = [(f, int(line), code.strip()) for f, line, code in _FRAME_RE.findall(trace_text) if _is_user_file(f)]
    if not frames:
        return "", ""
    f, line, code = frames[-1]
    return f"{os.path.basename(f)}:{line}", code


def module_path(node: fx.Node) -> str:
    """Path of the innermost module the node ran in (``""`` for the root module)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path).removeprefix("L__self__").lstrip("._")


# -- dtypes --------------------------------------------------------------------------------

_DTYPES = {
    torch.float32: dtypes.f32,
    torch.float16: dtypes.f16,
    torch.bfloat16: dtypes.bf16,
    torch.int64: dtypes.i64,
    torch.int32: dtypes.i32,
    torch.int16: dtypes.i16,
    torch.int8: dtypes.i8,
    torch.uint8: dtypes.u8,
    torch.bool: dtypes.boolean,
}
_TORCH_DTYPES = {v.name: k for k, v in _DTYPES.items()}


def mcir_dtype(dt: torch.dtype, what: str = "tensor") -> dtypes.DType:
    """The mcir dtype of a torch dtype; UnsupportedError for float64, complex, ..."""
    try:
        return _DTYPES[dt]
    except KeyError:
        hint = " (convert the model and inputs with .float())" if dt == torch.float64 else ""
        raise UnsupportedError(f"{what} has dtype {dt}, which mcir does not support{hint}") from None


def torch_dtype(dt: dtypes.DType) -> torch.dtype:
    return _TORCH_DTYPES[dt.name]


def to_numpy(t: torch.Tensor, what: str) -> np.ndarray:
    """A private numpy copy of ``t`` (never a view of the model's memory)."""
    dt = mcir_dtype(t.dtype, what)
    t = t.detach().cpu()
    if dt is dtypes.bf16:
        return t.float().numpy().astype(dt.np)
    return t.numpy().copy()


# -- the converter ---------------------------------------------------------------------------


class Converter:
    """Walks an fx graph once, building the mcir graph; ``mcir.frontend.torch_ops`` does each op.

    The environment maps each fx node to what it computed: a ``Value``, a ``Param`` or
    ``Folded`` tensor not yet materialized, a Python value (``x.size(0)``), or a tuple of
    these (``split``). Handlers see the node's arguments with nodes replaced by these.
    """

    def __init__(self, source: TracedModel, name: str) -> None:
        self.source = source
        self.graph = Graph(name)
        self.env: dict[fx.Node, Any] = {}
        self.node: fx.Node | None = None
        self.loc = Location()
        # id(Param / Folded) -> (it, its constant): holding the object keeps its id from being reused
        # by a later temporary (handlers create Folded tensors that live only for one call)
        self._consts: dict[int, tuple[Param | Folded, Value]] = {}
        self._params: dict[str, Param] = {}  # module path -> Param, so a weight used twice is one constant

    # -- driving ---------------------------------------------------------------------------
    def run(self) -> Graph:
        from mcir.frontend import torch_ops

        inputs = iter(self.source.input_names)
        for node in self.source.graph.nodes:
            self.node = node
            path = module_path(node)
            self.loc = Location(path, user_frame(node)[0])
            if node.op == "placeholder":
                if node.name in self.source.params:
                    self.env[node] = self.source.params[node.name]
                    continue
                name = next(inputs, None)
                # a parameter fixed to its default (fx concrete_args) has it as its argument
                self.env[node] = self._add_input(node, name) if name is not None else node.args[0]
            elif node.op == "get_attr":
                self.env[node] = self.param(str(node.target), _get_attr(self.source.root, str(node.target)))
            elif node.op in ("call_function", "call_method", "call_module"):
                args = fx.node.map_arg(node.args, lambda n: self.env[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: self.env[n])
                self.env[node] = torch_ops.convert(self, node, args, kwargs)
            elif node.op == "output":
                outs = [fx.node.map_arg(o, lambda n: self.env[n]) for o in self.source.output_nodes(node)]
                self.graph.set_outputs([self.tensor(o) for o in _flatten(outs)])
        name_layers_by_module(self.graph)
        return self.graph

    def _add_input(self, node: fx.Node, name: str) -> Value:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise UnsupportedError(f"input '{name}' is a {type(val).__name__}; mcir graphs take tensor inputs only")
        t = TensorType(tuple(int(d) for d in val.shape), mcir_dtype(val.dtype, f"input '{name}'"))
        return self.graph.add_input(self.graph.fresh_name(name), t)

    # -- helpers for handlers ----------------------------------------------------------------
    def param(self, path: str, tensor: torch.Tensor) -> Param:
        """The model tensor at ``path`` (one ``Param`` per path: one constant however often it is used)."""
        if path not in self._params:
            self._params[path] = Param(path, tensor)
        return self._params[path]

    def emit(self, op: str, operands: list[Value], attrs: dict[str, Any] | None = None, **kw: Any) -> Value:
        """Add op ``op`` at the current node's location; its result is named after the op kind."""
        return self.graph.add(op, operands, attrs or {}, result=op, loc=self.loc, **kw)

    def tensor(self, x: Any, dtype: dtypes.DType | None = None) -> Value:
        """``x`` as a Value: materializes parameters and folded tensors; Python numbers become
        0-d constants of ``dtype`` (required for them)."""
        if isinstance(x, Value):
            return x
        if isinstance(x, Param | Folded):
            key = id(x)
            if key not in self._consts:
                name = x.path if isinstance(x, Param) else x.name
                what = f"tensor '{name}'"
                self._consts[key] = (x, self.graph.const(self.graph.fresh_name(name), to_numpy(x.tensor, what)))
            return self._consts[key][1]
        if isinstance(x, Unavailable):
            raise UnsupportedError(f"{self.describe()} uses {x.what}, which mcir does not compute")
        if isinstance(x, bool | int | float):
            if dtype is None:
                raise McirError(f"internal error: no dtype for the scalar {x!r} in {self.describe()}")
            return self.scalar(x, dtype)
        raise UnsupportedError(f"{self.describe()}: expected a tensor, got {type(x).__name__} {x!r}")

    def scalar(self, x: float | int | bool, dtype: dtypes.DType) -> Value:
        """A 0-d constant (printed inline in the IR)."""
        return self.graph.const(self.graph.fresh_name("scalar"), np.asarray(x, dtype=dtype.np))

    def out_meta(self, index: int | None = None) -> torch.Tensor:
        """The meta/fake tensor torch recorded for the current node's result (``index`` into tuples)."""
        val = self.node.meta.get("val") if self.node is not None else None
        if index is not None and isinstance(val, tuple | list):
            val = val[index]
        if not isinstance(val, torch.Tensor):
            raise McirError(f"internal error: no tensor metadata for {self.describe()}")
        return val

    def out_shape(self, index: int | None = None) -> tuple[int, ...]:
        shape = self.out_meta(index).shape
        if not all(isinstance(d, int) for d in shape):
            raise UnsupportedError(
                f"{self.describe()} has a data-dependent shape {list(shape)} under torch.export (e.g. a boolean "
                "mask, even a constant one, selects a number of elements torch.export does not know); index with "
                "integer positions (torch.nonzero of the mask, computed outside the model) or use tracer='fx'"
            )
        return tuple(shape)

    def out_dtype(self, index: int | None = None) -> dtypes.DType:
        return mcir_dtype(self.out_meta(index).dtype, f"result of {self.describe()}")

    def describe(self) -> str:
        """``torch op X at module 'm', file.py:LINE: `code` `` for messages."""
        node = self.node
        if node is None:
            return "the model"
        text = f"torch op {target_name(node, self.source.root)}"
        where = []
        path = module_path(node)
        where.append(f"module '{path}'" if path else "the top-level module")
        src, code = user_frame(node)
        if src:
            where.append(f"{src}: `{code}`" if code else src)
        return f"{text} (at {', '.join(where)})"


def target_name(node: fx.Node, root: torch.nn.Module) -> str:
    """A readable name of what a node calls: ``aten.cumsum.default``, ``torch.cumsum``, ``Tensor.view``, ``nn.LSTM``."""
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    if node.op == "call_module":
        mod = _get_attr(root, str(t))
        cls = type(mod)
        return (
            f"torch.nn.{cls.__qualname__}"
            if cls.__module__.startswith("torch.nn.")
            else f"{cls.__module__}.{cls.__qualname__}"
        )
    if isinstance(t, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return str(t)
    mod = getattr(t, "__module__", None) or ""
    qual = getattr(t, "__name__", None) or str(t)
    if mod in ("_operator", "operator"):
        mod = "operator"
    elif mod.startswith("torch._C._nn") or mod.startswith("torch.nn.functional"):
        mod = "torch.nn.functional"
    elif mod.startswith("torch._C") or mod.startswith("torch._VariableFunctions"):
        mod = "torch"
    return f"{mod}.{qual}" if mod else qual


def _get_attr(root: torch.nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _flatten(x: Any) -> list[Any]:
    if isinstance(x, tuple | list):
        return [y for item in x for y in _flatten(item)]
    if isinstance(x, dict):
        return [y for item in x.values() for y in _flatten(item)]
    return [x]
