"""The frontend's shared vocabulary: what a tracer hands over and what every handler uses.

``TracedModel`` (an fx graph and how to read it), the not-yet-materialized tensors ``Param``,
``Folded`` and ``Unavailable``, dtype mapping, source locations, and ``Converter``: the state of
one conversion with the helpers handlers call (``cx.emit``, ``cx.tensor``, ``cx.out_shape()``).
The driver (``torch_import``) and the handler tables (``torch_ops``, ``aten_*``, ``torch_calls``)
import it; it imports none of them, so the frontend has no import circle.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy
import torch
import torch.fx as fx

from mcir import dtypes
from mcir.errors import McirError, UnsupportedError
from mcir.ir import Graph, Location, Value
from mcir.types import TensorType

_TORCH_DIR = os.path.dirname(torch.__file__)


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


def is_user_file(filename: str) -> bool:
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
    frames = [(f, int(line), code.strip()) for f, line, code in _FRAME_RE.findall(trace_text) if is_user_file(f)]
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
    """The state of one conversion and the helpers handlers use; ``torch_import.run`` walks the fx
    graph once, ``mcir.frontend.dispatch`` converts each call with the handler tables.

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
        # torch.export's unbacked sizes (``u0``: how many elements a boolean mask selects) -> the count mcir
        # computed from a mask known at trace time; later shapes that mention the symbol resolve through it
        self.sizes: dict[sympy.Symbol, sympy.Integer] = {}

    def add_input(self, node: fx.Node, name: str) -> Value:
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
        """The current node's result shape, with torch.export's symbolic sizes resolved (see ``concrete``)."""
        shape = self.concrete(self.out_meta(index).shape)
        if shape is None:
            raise UnsupportedError(
                f"{self.describe()} has a data-dependent shape {list(self.out_meta(index).shape)} under torch.export: "
                "its size depends on the values of a run-time tensor (e.g. x[mask] with a mask computed from an "
                "input), which a static graph cannot express. Keep the shape: torch.where(mask, x, 0) or "
                "x.masked_fill(~mask, 0); or index with a mask that is a constant or is computed from shapes only"
            )
        return shape

    def concrete(self, shape: Any) -> tuple[int, ...] | None:
        """``shape`` as ints: symbolic sizes are replaced by the counts bound in ``sizes``; None if one is unknown."""
        dims = []
        for d in shape:
            if isinstance(d, int):
                dims.append(d)
                continue
            expr = d.node.expr.xreplace(self.sizes) if isinstance(d, torch.SymInt) else None
            if expr is None or not expr.is_Integer:
                return None
            dims.append(int(expr))
        return tuple(dims)

    def bind_sizes(self, want: torch.Size, got: tuple[int, ...]) -> None:
        """Bind each bare unbacked size of ``want`` (torch's recorded shape) to mcir's count in ``got``."""
        if len(want) != len(got):
            return
        for d, n in zip(want, got):
            if isinstance(d, torch.SymInt) and d.node.expr.is_Symbol and d.node.expr not in self.sizes:
                self.sizes[d.node.expr] = sympy.Integer(int(n))

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
        mod = get_attr(root, str(t))
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


def get_attr(root: torch.nn.Module, target: str) -> Any:
    """The submodule, parameter or attribute of ``root`` at dotted path ``target``."""
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
