"""Importing ONNX models into the mcir IR.

``from_onnx(path_or_model, input_shapes=None)`` reads an ONNX model (a protobuf: loading it
never runs code), checks it, and converts its nodes into IR ops with one table of handlers
(``HANDLERS``, ONNX op type -> function). How it works:

* Opsets older than 11 are first converted with ``onnx.version_converter``; newer ones are
  read as they are (each handler reads both the attribute and the input form of ``axes``,
  ``pads``, ``split`` etc.).
* Every ONNX tensor name maps either to an IR ``Value`` (computed at run time) or to a numpy
  array known at import time (initializers, ``Constant`` nodes, and whatever is computed from
  them only). A node whose inputs are all known is folded at import with ONNX's own reference
  implementation (``onnx.reference``), so ``Shape -> Gather -> Concat -> Reshape`` chains of
  exported models and ``ConstantOfShape`` weights disappear. A known array becomes a ``const``
  op only when a run-time op uses it, named after its initializer.
* Inputs need static shapes: a symbolic dimension (``batch``) must be given in
  ``input_shapes`` (CLI: ``--input name=1x3x224x224``), else the error says so.
* ``onnx.shape_inference`` gives ONNX's own shapes for intermediate values; each converted
  result is checked against them, so a handler that misreads an op fails at import, naming
  the node, instead of computing something else.
* QDQ models: ``DequantizeLinear`` of a constant int8 weight becomes an ``i8 #quant``
  constant (per tensor or per output channel), a ``QuantizeLinear`` of an activation a
  ``quantize`` op with a ``u8``/``i8 #quant<scale, zero_point>`` result type and the
  following ``DequantizeLinear`` its ``dequantize`` ... exactly mcir's own quantised types, so
  the fusion rules and int8 kernels apply to them as to graphs from ``quant8``.

Unsupported ops, dtypes or attribute values raise ``UnsupportedError`` naming the ONNX op,
the node and what to do.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mcir import dtypes
from mcir.encodings import Quant
from mcir.errors import McirError, ModelFileError, UnsupportedError
from mcir.ir import Graph, Location, Value
from mcir.rewriter import dead_code_elimination
from mcir.types import TensorType

#: the opset older models are converted to before import
MIN_OPSET = 11
#: ONNX tensor element types mcir can hold
_DTYPES = {
    1: dtypes.f32, 2: dtypes.u8, 3: dtypes.i8, 5: dtypes.i16, 6: dtypes.i32, 7: dtypes.i64, 9: dtypes.boolean,
    10: dtypes.f16, 16: dtypes.bf16,
}  # fmt: skip


def from_onnx(
    model: Any,
    input_shapes: dict[Any, Any] | None = None,
    name: str | None = None,
    constant_inputs: dict[str, np.ndarray] | None = None,
) -> Graph:
    """Import an ONNX model (a path or an ``onnx.ModelProto``) into an mcir Graph.

    ``input_shapes`` maps input names (or positions among the non-constant inputs) to static
    shapes (tuples, or ``"1x3x224x224"``), for inputs whose ONNX shape has symbolic dimensions;
    a given shape replaces the file's. ``constant_inputs`` binds graph inputs to fixed values
    (they become constants: the graph is specialised to them).
    """
    source = "<ModelProto>"
    if isinstance(model, str | Path):
        source = str(model)
        model = load_onnx(model)
    import onnx

    if not isinstance(model, onnx.ModelProto):
        raise McirError(f"from_onnx takes a path or an onnx.ModelProto, not {type(model).__name__}")
    model = _common_opset(model, source)
    graph_name = name or _graph_name(model, source)
    return _Importer(model, source, input_shapes or {}, graph_name, constant_inputs or {}).run()


class NeedsValue(UnsupportedError):
    """A graph input is used where mcir needs a value known at import time (a shape, axes, pads).

    ``name`` is the ONNX input; ``from_onnx(..., constant_inputs={name: array})`` imports the model
    specialised to that value (the ONNX backend does this with the values it is run on)."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


# -- loading ----------------------------------------------------------------------------------


def load_onnx(path: str | Path) -> Any:
    """Read an ONNX file safely: the protobuf is parsed (no code runs) and external-data files
    are read only from inside the model's folder. Raises ``ModelFileError`` naming the file."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the file ({e.strerror})") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelFileError(
            f"{path}: not a valid ONNX model (the protobuf does not parse: {_first_line(e)}); "
            "the file may be truncated or not ONNX"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelFileError(f"{path}: not a valid ONNX model (no graph in the file); the file may be truncated")
    _load_external_data(model, path)
    return model


def _load_external_data(model: Any, path: Path) -> None:
    """Fill tensors stored in external files, each resolved inside the model's folder only."""
    from onnx import TensorProto

    folder = path.resolve().parent
    for tensor in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ModelFileError(
                f"{path}: initializer '{tensor.name}' keeps its data in '{location}', outside the model's folder "
                f"{folder}; mcir reads external data only from files beside the model (move the file there)"
            )
        if not target.is_file():
            raise ModelFileError(f"{path}: initializer '{tensor.name}' needs the external data file {target}")
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
        with open(target, "rb") as f:
            f.seek(offset)
            raw = f.read() if length is None else f.read(length)
        if length is not None and len(raw) != length:
            raise ModelFileError(f"{path}: external data file {target} is shorter than initializer '{tensor.name}'")
        tensor.raw_data = raw
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]


def _all_tensors(model: Any):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def _common_opset(model: Any, source: str) -> Any:
    if _opset(model) >= MIN_OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, 13)
    except Exception as e:  # the converter raises its own RuntimeError types
        raise UnsupportedError(
            f"{source}: opset {_opset(model)} model could not be converted to opset 13 ({_first_line(e)}); "
            f"re-export the model with opset {MIN_OPSET} or newer"
        ) from None


def _graph_name(model: Any, source: str) -> str:
    base = Path(source).stem if source != "<ModelProto>" else (model.graph.name or "model")
    ident = re.sub(r"\W", "_", base) or "model"
    return ident if not ident[0].isdigit() else f"m_{ident}"


def parse_shape(value: Any) -> tuple[int, ...]:
    """``"1x3x224x224"``, ``[1, 3, 224, 224]`` or ``()`` -> a shape tuple."""
    if isinstance(value, str):
        if value in ("", "scalar"):
            return ()
        try:
            return tuple(int(d) for d in value.split("x"))
        except ValueError:
            raise McirError(f"bad shape '{value}': write dimensions like 1x3x224x224") from None
    return tuple(int(d) for d in value)


def shapes_from_specs(specs: Any) -> dict[str | int, tuple[int, ...]]:
    """Input shapes from CLI specs (``x=1x3x224x224``; a spec without a name applies to the
    inputs in order), for ``from_onnx(input_shapes=...)``."""
    from mcir.frontend.model_file import parse_input_spec

    shapes: dict[str | int, tuple[int, ...]] = {}
    for i, text in enumerate(specs or []):
        spec = parse_input_spec(text)
        shapes[spec.name if spec.name else i] = spec.shape
    return shapes


# -- the importer -----------------------------------------------------------------------------


def onnx_dtype(elem_type: int, where: str) -> dtypes.DType:
    """The mcir dtype of an ONNX element type; UnsupportedError for types mcir has not (double, strings)."""
    import onnx

    if elem_type in _DTYPES:
        return _DTYPES[elem_type]
    name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "undefined"
    raise UnsupportedError(f"{where}: ONNX element type {name} is not supported by mcir (f32, f16, bf16, ints, bool)")


class _Importer:
    def __init__(
        self, model: Any, source: str, input_shapes: dict[str, Any], name: str, constant_inputs: dict[str, Any]
    ) -> None:
        self.constant_inputs = constant_inputs
        self.input_names: dict[int, str] = {}  # id(graph input Value) -> its ONNX name
        self.model = model
        self.source = source
        self.opset = _opset(model)
        self.g = Graph(name)
        self.input_shapes = {k: parse_shape(v) for k, v in input_shapes.items()}  # by name or position
        self.env: dict[str, Value | np.ndarray] = {}
        # known arrays are keyed by id(); each entry keeps its array alive so an id is never reused
        self.const_cache: dict[int, tuple[np.ndarray, Value]] = {}  # id(array) -> its materialised const
        self.names: dict[int, tuple[np.ndarray, str]] = {}  # id(array) -> initializer / tensor name
        self.onnx_shapes: dict[str, tuple] = {}
        self.node: Any = None
        self.consumers: dict[str, list[Any]] = {}
        self.skip: set[int] = set()  # nodes already handled by a fused neighbour
        self.outputs: set[str] = set()  # names of the graph outputs
        self.node_index: dict[int, int] = {}  # id(node) -> its position

    # -- driver ---------------------------------------------------------------
    def run(self) -> Graph:
        graph = self.model.graph
        for domain in {n.domain for n in graph.node} - {"", "ai.onnx"}:
            node = next(n for n in graph.node if n.domain == domain)
            raise UnsupportedError(
                f"{self.source}: unsupported ONNX op {domain}.{node.op_type} (node {node.name or '?'}): mcir imports "
                "the standard ai.onnx domain only; export the model without custom or contrib ops"
            )
        from onnx import numpy_helper

        for init in graph.initializer:
            arr = numpy_helper.to_array(init)
            self._known(init.name, arr)
        for vi in graph.input:
            if vi.name in self.constant_inputs:
                self._known(vi.name, np.asarray(self.constant_inputs[vi.name]))
            if vi.name in self.env:
                continue  # an initializer listed as an input (opset < 9 style), or bound by the caller
            self._add_input(vi)
        self._shape_inference()
        self.outputs = {o.name for o in graph.output}
        nodes = list(graph.node)  # one Python object per node: ids below stay valid
        self.node_index = {id(node): i for i, node in enumerate(nodes)}
        for node in nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        for index, node in enumerate(nodes):
            if index in self.skip:
                continue
            self.node = node
            self._convert(node)
        outputs = []
        for vi in graph.output:
            v = self.env.get(vi.name)
            if v is None:
                raise McirError(f"{self.source}: graph output '{vi.name}' is not computed by any node")
            outputs.append(self.value(vi.name))
        self.g.set_outputs(outputs)
        self._name_outputs(graph)
        _fuse_gelu(self.g)
        _fuse_layer_norm(self.g)
        if any(op.name == "quantize" for op in self.g.ops):
            # QDQ models: keep consecutive int8 layers integer, as quant8 does (the rules are exact)
            from mcir.passes.quant_fusion import FUSION
            from mcir.patterns import apply_rules

            apply_rules(self.g, FUSION)
        dead_code_elimination(self.g)
        return self.g

    def _name_outputs(self, graph: Any) -> None:
        """Graph outputs keep their ONNX names where the IR allows (ONNX Runtime users look them up)."""
        for vi, v in zip(graph.output, self.g.outputs):
            want = _ir_name(vi.name)
            if v.name != want and not self.g.has_value(want) and v not in self.g.inputs:
                self.g.rename(v, want)

    def _add_input(self, vi: Any) -> None:
        t = vi.type.tensor_type
        where = f"{self.source}: input '{vi.name}'"
        if not vi.type.HasField("tensor_type"):
            raise UnsupportedError(f"{where} is not a tensor (sequences and maps are not supported)")
        dt = onnx_dtype(t.elem_type, where)
        position = len(self.g.inputs)
        if vi.name in self.input_shapes or position in self.input_shapes:
            shape = self.input_shapes.get(vi.name, self.input_shapes.get(position))
        else:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if not t.HasField("shape") or any(d is None for d in dims):
                shown = "x".join(d.dim_param or "?" if not d.HasField("dim_value") else str(d.dim_value)
                                 for d in t.shape.dim) or "unknown"  # fmt: skip
                raise McirError(
                    f"{where} has shape {shown} with symbolic dimensions: give static shapes with "
                    f"--input {vi.name}=1x... (Python: input_shapes={{'{vi.name}': (1, ...)}})"
                )
            shape = tuple(dims)
        self.env[vi.name] = self.g.add_input(self.g.fresh_name(_ir_name(vi.name)), TensorType(shape, dt))
        self.input_names[id(self.env[vi.name])] = vi.name

    def _shape_inference(self) -> None:
        """ONNX's own static shapes of intermediate values (for the per-node check)."""
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        # pin the inputs to the static shapes in use, so inference can resolve every dimension
        for vi in model.graph.input:
            v = self.env.get(vi.name)
            if isinstance(v, Value):
                dims = vi.type.tensor_type.shape.dim
                del dims[:]
                for d in v.type.shape:
                    dims.add().dim_value = d
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception:  # inference is a check only; a model it cannot handle still imports
            return
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                self.onnx_shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)

    def _convert(self, node: Any) -> None:
        ins = [self.env.get(n) if n else None for n in node.input]
        for n, v in zip(node.input, ins):
            if n and v is None:
                raise McirError(f"{self.where()}: input '{n}' is not defined before the node (the graph is not sorted)")
        handler = HANDLERS.get(node.op_type)
        if node.op_type not in NO_FOLD and all(v is None or isinstance(v, np.ndarray) for v in ins) and node.input:
            outs = self._fold(node, ins)
        elif node.op_type == "Constant":
            outs = [_constant_value(node)]
        elif handler is None:
            raise UnsupportedError(
                f"{self.source}: unsupported ONNX op {node.op_type} (node {node.name or node.output[0]}): mcir has no "
                "import rule for it; replace it in the model or add a handler in mcir/frontend/onnx_import.py "
                "(`mcir ops` lists the IR ops it could map to)"
            )
        else:
            outs = handler(self, node, ins)
            if not isinstance(outs, list | tuple):
                outs = [outs]
        needed = max((i + 1 for i, n in enumerate(node.output) if self.used(n)), default=0)
        if len(outs) < needed:
            raise UnsupportedError(
                f"{self.where()}: only the first {len(outs)} output(s) of {node.op_type} are supported "
                f"(output {needed} is used)"
            )
        for name, out in zip(node.output, outs):
            if not name or out is None:
                continue
            if isinstance(out, np.ndarray):
                self._known(name, out)
                continue
            self._check_shape(name, out)
            self.env[name] = out

    def _known(self, name: str, arr: np.ndarray) -> None:
        arr = np.asarray(arr)
        if arr.dtype == np.float64:  # ONNX doubles in folded arithmetic: mcir holds f32
            arr = arr.astype(np.float32)
        self.env[name] = arr
        self.name_array(arr, name)

    def name_array(self, arr: np.ndarray, name: str, like: Any = None) -> None:
        """Remember ``arr``'s name (or the name of ``like``, an array it was derived from)."""
        if like is not None:
            name = self.array_name(like, name)
        self.names.setdefault(id(arr), (arr, name))

    def array_name(self, arr: Any, default: str) -> str:
        entry = self.names.get(id(arr))
        return entry[1] if entry is not None and entry[0] is arr else default

    def _check_shape(self, name: str, v: Value) -> None:
        want = self.onnx_shapes.get(name)
        if want is not None and tuple(want) != v.type.shape:
            raise McirError(
                f"{self.where()}: mcir computed shape {list(v.type.shape)} for '{name}', ONNX shape inference says "
                f"{list(want)}: the import rule of {self.node.op_type} does not cover this case (please report it)"
            )

    def _fold(self, node: Any, ins: list) -> list[np.ndarray]:
        """Evaluate a node whose inputs are all known with ONNX's reference implementation."""
        import onnx
        from onnx import helper, numpy_helper
        from onnx.reference import ReferenceEvaluator

        names = [n for n in node.input if n]
        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(self.env[n].dtype), None)
                  for n in dict.fromkeys(names)]  # fmt: skip
        outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output if n]
        g = helper.make_graph([node], "fold", inputs, outputs)
        m = helper.make_model(g, opset_imports=list(self.model.opset_import))
        try:
            results = ReferenceEvaluator(m).run(None, {n: self.env[n] for n in dict.fromkeys(names)})
        except Exception as e:
            raise McirError(f"{self.where()}: folding this constant node failed ({_first_line(e)})") from None
        del numpy_helper
        out = iter(results)
        return [np.asarray(next(out)) if n else None for n in node.output]

    # -- helpers for handlers -------------------------------------------------------
    def where(self) -> str:
        n = self.node
        return f"{self.source}: ONNX node {n.name or n.output[0]} ({n.op_type})"

    def loc(self) -> Location:
        n = self.node
        return Location(module=_module_path(n.name) or n.name, source="")

    def value(self, name_or_value: Any) -> Value:
        """The IR value of an ONNX tensor name (a known array becomes a const op)."""
        v = self.env[name_or_value] if isinstance(name_or_value, str) else name_or_value
        if isinstance(v, Value):
            return v
        arr = np.asarray(v)
        cached = self.const_cache.get(id(v))
        if cached is not None and cached[0] is v:
            return cached[1]
        name = self.array_name(v, "const")
        dt = self._array_dtype(arr, name)
        data = np.asarray(arr.astype(dt.np, copy=False), order="C")  # ascontiguousarray would make 0-d arrays 1-d
        c = self.g.const(_ir_name(name), data, TensorType(arr.shape, dt))
        self.const_cache[id(v)] = (v, c)
        return c

    def _array_dtype(self, arr: np.ndarray, name: str) -> dtypes.DType:
        if arr.dtype == np.float64:
            return dtypes.f32
        try:
            return dtypes.from_numpy(arr.dtype)
        except McirError:
            raise UnsupportedError(
                f"{self.where()}: constant '{name}' has dtype {arr.dtype}, which mcir does not hold"
            ) from None

    def known(self, v: Any, what: str) -> np.ndarray:
        """``v`` as an array known at import time, or an UnsupportedError saying it must be."""
        if isinstance(v, np.ndarray):
            return v
        if isinstance(v, Value) and id(v) in self.input_names:
            name = self.input_names[id(v)]
            raise NeedsValue(
                f"{self.where()}: {what} is the graph input '{name}', which must be known at import time; make it an "
                f"initializer or bind it (from_onnx(..., constant_inputs={{'{name}': ...}}))",
                name,
            )
        raise UnsupportedError(
            f"{self.where()}: {what} must be known at import time (a constant or computed from constants and static "
            "shapes); a value computed at run time is not supported"
        )

    def add(self, op: str, operands: list, attrs: dict | None = None, type: TensorType | None = None,
            suffix: str = "") -> Value:  # fmt: skip
        """Insert an IR op for the current node; the result is named after the node's output."""
        # results of torch-exported nodes are named after their module (``layers.0``), others after their tensor
        name = (_module_path(self.node.name) or _ir_name(self.node.output[0])) + suffix
        floats = [o.type.logical.dtype for o in operands if isinstance(o, Value) and o.type.logical.dtype.is_float]
        if floats and floats[0] != dtypes.f32:
            # scalar constants of decompositions (written as f32) take the dtype of the f16/bf16 values they meet
            operands = [np.asarray(o, floats[0].np) if isinstance(o, np.ndarray) and o.ndim == 0 and o.dtype.kind == "f"
                        else o for o in operands]  # fmt: skip
        values = [self.value(o) for o in operands]
        if type is None and op in _MOVES and _per_tensor_quant(values[0]):
            # data movement of quantised (QOperator) values stays quantised: it commutes with quantisation
            from mcir.ops import registry

            spec = registry.get(op)
            full = spec.complete_attrs(dict(attrs or {}), where=self.where())
            shape = spec.infer_type([values[0].type.logical], full, where=self.where()).shape
            type = values[0].type.with_shape(shape)
        try:
            return self.g.add(op, values, attrs or {}, result=name, type=type, loc=self.loc())
        except McirError as e:
            if isinstance(e, UnsupportedError):
                raise
            raise McirError(f"{self.where()}: {e}") from None

    def attr(self, name: str, default: Any = None) -> Any:
        from onnx import helper

        for a in self.node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def used(self, name: str) -> bool:
        """Whether tensor ``name`` is read by a node or is a graph output (unused extra outputs are fine)."""
        return bool(name) and (name in self.consumers or name in _graph_outputs(self))

    def extra_outputs_used(self) -> bool:
        return any(self.used(n) for n in self.node.output[1:])

    def unsupported(self, what: str) -> UnsupportedError:
        return UnsupportedError(f"{self.where()}: {what} is not supported")


#: IR ops that move or select values without arithmetic (a quantised input gives a quantised result)
_MOVES = {"reshape", "permute", "slice", "select", "max_pool2d"}


def _per_tensor_quant(v: Value) -> bool:
    return isinstance(v.type.encoding, Quant) and v.type.encoding.axis is None


def _ir_name(onnx_name: str) -> str:
    """An ONNX tensor name as an IR value name: ``/layers/fc1/Gemm_output_0`` -> ``layers.fc1.Gemm_output_0``."""
    name = onnx_name.strip("/").replace("/", ".").replace("::", ".")
    name = re.sub(r"[^A-Za-z0-9_.$\-]", "_", name)
    return name or "v"


def _module_path(node_name: str) -> str:
    """The torch module path in an exported node name: ``/encoder/layers.0/self_attn/MatMul`` ->
    ``encoder.layers.0.self_attn`` (a scope that repeats its parent's prefix, ``/layers/layers.0``, is kept once)."""
    parts = [p for p in node_name.split("/") if p][:-1]
    if not node_name.startswith("/") or not parts:
        return ""
    path = ""
    for part in parts:
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return _ir_name(path)


def _constant_value(node: Any) -> np.ndarray:
    from onnx import helper, numpy_helper

    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if a.name == "value":
            return numpy_helper.to_array(value)
        if a.name in ("value_float", "value_int"):
            return np.asarray(value, np.float32 if a.name == "value_float" else np.int64)
        if a.name in ("value_floats", "value_ints"):
            return np.asarray(value, np.float32 if a.name == "value_floats" else np.int64)
    raise UnsupportedError(
        f"ONNX node {node.name or node.output[0]} (Constant): only tensor and number constants are supported"
    )


# -- handlers ---------------------------------------------------------------------------------

Handler = Callable[[_Importer, Any, list], Any]
HANDLERS: dict[str, Handler] = {}
#: ops never folded at import even when their inputs are known (they would hide run-time values)
NO_FOLD = {"Constant", "DequantizeLinear"}


def handles(*op_types: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for t in op_types:
            HANDLERS[t] = fn
        return fn

    return deco


_UNARY = {
    "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Neg": "neg",
    "Abs": "abs", "Erf": "erf", "Not": "logical_not", "HardSwish": "hardswish",
}  # fmt: skip
_BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Equal": "eq", "Greater": "gt", "Less": "lt",
    "GreaterOrEqual": "ge", "LessOrEqual": "le", "And": "logical_and", "Or": "logical_or",
}  # fmt: skip


@handles(*_UNARY)
def _unary(im: _Importer, node: Any, ins: list) -> Value:
    return im.add(_UNARY[node.op_type], [ins[0]])


@handles(*_BINARY)
def _binary(im: _Importer, node: Any, ins: list) -> Value:
    a, b = ins
    if node.op_type == "Div" and _dtype_of(im, a).is_integer:
        raise im.unsupported("integer Div (ONNX truncates, mcir's div floors)")
    return im.add(_BINARY[node.op_type], [a, b])


def _dtype_of(im: _Importer, v: Any) -> dtypes.DType:
    return v.type.dtype if isinstance(v, Value) else im._array_dtype(np.asarray(v), "operand")


@handles("Sum", "Max", "Min", "Mean")
def _variadic(im: _Importer, node: Any, ins: list) -> Value:
    op = {"Sum": "add", "Max": "maximum", "Min": "minimum", "Mean": "add"}[node.op_type]
    acc = ins[0]
    if len(ins) == 1:
        return im.value(acc)
    for i, x in enumerate(ins[1:]):
        acc = im.add(op, [acc, x], suffix="" if i == len(ins) - 2 and node.op_type != "Mean" else f".{i}")
    if node.op_type == "Mean":
        acc = im.add("mul", [acc, np.asarray(1.0 / len(ins), np.float32)])
    return acc


@handles("Identity", "Dropout")
def _identity(im: _Importer, node: Any, ins: list) -> Value:
    if node.op_type == "Dropout":
        if im.extra_outputs_used():
            raise im.unsupported("Dropout's mask output")
        if len(ins) > 2 and ins[2] is not None and bool(im.known(ins[2], "Dropout's training_mode").reshape(())):
            raise im.unsupported("Dropout in training mode (mcir is an inference compiler)")
    return im.value(ins[0])


@handles("Pow")
def _pow(im: _Importer, node: Any, ins: list) -> Value:
    e = im.known(ins[1], "the exponent of Pow")
    if e.size != 1:
        raise im.unsupported("Pow with a tensor exponent")
    return im.add("pow", [ins[0]], {"exponent": float(e.reshape(()))})


@handles("Reciprocal")
def _reciprocal(im: _Importer, node: Any, ins: list) -> Value:
    return im.add("div", [np.asarray(1.0, np.float32), ins[0]])


@handles("Gelu")
def _gelu(im: _Importer, node: Any, ins: list) -> Value:
    approx = im.attr("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return im.add("gelu", [ins[0]], {"approximate": approx})


@handles("LeakyRelu")
def _leaky_relu(im: _Importer, node: Any, ins: list) -> Value:
    alpha = float(im.attr("alpha", 0.01))
    scaled = im.add("mul", [ins[0], np.asarray(alpha, np.float32)], suffix=".scaled")
    if 0 <= alpha <= 1:  # max(x, a x) is leaky ReLU for 0 <= a <= 1
        return im.add("maximum", [ins[0], scaled])
    positive = im.add("gt", [ins[0], np.asarray(0.0, np.float32)], suffix=".positive")
    return im.add("where", [positive, ins[0], scaled])


@handles("HardSigmoid")
def _hard_sigmoid(im: _Importer, node: Any, ins: list) -> Value:
    alpha, beta = float(im.attr("alpha", 0.2)), float(im.attr("beta", 0.5))
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5:
        return im.add("hardsigmoid", [ins[0]])
    y = im.add("mul", [ins[0], np.asarray(alpha, np.float32)], suffix=".scaled")
    y = im.add("add", [y, np.asarray(beta, np.float32)], suffix=".shifted")
    return im.add("clamp", [y], {"min": 0.0, "max": 1.0})


@handles("Clip")
def _clip(im: _Importer, node: Any, ins: list) -> Value:
    lo, hi = im.attr("min"), im.attr("max")
    if len(ins) > 1 and ins[1] is not None:
        lo = float(im.known(ins[1], "Clip's min").reshape(()))
    if len(ins) > 2 and ins[2] is not None:
        hi = float(im.known(ins[2], "Clip's max").reshape(()))
    if lo == 0 and hi is None:
        return im.add("relu", [ins[0]])
    return im.add(
        "clamp", [ins[0]], {"min": None if lo is None else float(lo), "max": None if hi is None else float(hi)}
    )


@handles("Where")
def _where(im: _Importer, node: Any, ins: list) -> Value:
    return im.add("where", ins)


@handles("Cast")
def _cast(im: _Importer, node: Any, ins: list) -> Value:
    dt = onnx_dtype(im.attr("to"), im.where())
    return im.add("cast", [ins[0]], {"dtype": dt.name})


# -- dense layers -----------------------------------------------------------------------------


@handles("Gemm")
def _gemm(im: _Importer, node: Any, ins: list) -> Value:
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = float(im.attr("alpha", 1.0)), float(im.attr("beta", 1.0))
    if im.attr("transA", 0):
        a = im.add("permute", [a], {"dims": [1, 0]}, suffix=".a_t")
    trans_b = bool(im.attr("transB", 0))
    if not trans_b and alpha == 1.0 and (w := _linear_weight(im, b)) is not None:
        b, trans_b = w, True
    a = _int8_input(a, b)
    # an [N, K] (quantised) constant is linear's weight as it is
    if isinstance(b, Value) and b.is_constant and trans_b and alpha == 1.0 and (c is None or beta == 1.0):
        bias = c if c is not None and _shape_of(c) == (b.type.shape[0],) else None
        y = im.add("linear", [a, b] + ([bias] if bias is not None else []))
        _drop_unused(im, ins[1])
        if bias is not None or c is None:
            return y
        return im.add("add", [y, c], suffix=".bias")
    if isinstance(b, np.ndarray):
        w = b if trans_b else np.ascontiguousarray(b.T)
        if alpha != 1.0:
            w = (w * alpha).astype(w.dtype)
        im.name_array(w, "weight", like=b)
        bias = None
        if c is not None and isinstance(c, np.ndarray) and c.size in (1, w.shape[0]) and c.ndim <= 2:
            bias = np.broadcast_to(c.reshape(-1) * beta, (w.shape[0],)).astype(np.float32)
            im.name_array(bias, "bias", like=c)
            c = None
        y = im.add("linear", [a, w] + ([bias] if bias is not None else []), suffix=".gemm" if c is not None else "")
    else:
        if trans_b:
            b = im.add("permute", [b], {"dims": [1, 0]}, suffix=".b_t")
        y = im.add("matmul", [a, b], suffix=".mm")
        if alpha != 1.0:
            y = im.add("mul", [y, np.asarray(alpha, np.float32)], suffix=".alpha")
    if c is not None:
        if beta != 1.0:
            c = im.add("mul", [c, np.asarray(beta, np.float32)], suffix=".beta")
        y = im.add("add", [y, c])
    return y


def _linear_weight(im: _Importer, b: Any) -> Value | None:
    """A constant quantised [K, N] matrix operand as linear's [N, K] weight, or None if it is not one."""
    if not isinstance(b, Value) or b.type.rank != 2:
        return None
    op = b.producer
    if op is not None and op.name == "permute" and op.operands[0].is_constant and len(b.uses) == 0:
        return op.operands[0]  # the transposed form of a per-column quantised weight
    if b.is_constant and isinstance(b.type.encoding, Quant) and b.type.encoding.axis is None:
        return im.g.const(b.name + ".t", np.ascontiguousarray(b.producer.data.T), b.type.with_shape(b.type.shape[::-1]))
    return None


def _drop_unused(im: _Importer, v: Value) -> None:
    """Erase ``v``'s producer (and its unused operands' producers) once nothing uses it."""
    op = v.producer
    if op is not None and not v.uses and v not in im.g.outputs:
        operands = op.operands
        im.g.erase(op)
        for o in operands:
            _drop_unused(im, o)


@handles("MatMul")
def _matmul(im: _Importer, node: Any, ins: list) -> Value:
    a, b = ins
    w = _linear_weight(im, b)
    a = _int8_input(a, w)
    if w is not None:
        y = im.add("linear", [a, w])
        _drop_unused(im, b)
        return y
    if isinstance(b, np.ndarray) and b.ndim == 2 and b.dtype.kind == "f":
        w = np.ascontiguousarray(b.T)
        im.name_array(w, "weight", like=b)
        # MatMul + Add(bias) of an exported nn.Linear is one linear op
        users = im.consumers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type == "Add" and node.output[0] not in _graph_outputs(im):
            add = users[0]
            other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            bias = im.env.get(other)
            if isinstance(bias, np.ndarray) and bias.shape == (w.shape[0],) and bias.dtype.kind == "f":
                im.skip.add(im.node_index[id(add)])
                im.node = add
                y = im.add("linear", [a, w, bias])
                im.env[add.output[0]] = y
                im.node = node
                return y
        return im.add("linear", [a, w])
    return im.add("matmul", [a, b])


def _graph_outputs(im: _Importer) -> set[str]:
    return im.outputs


def _spatial(im: _Importer, x: Value, kernel: tuple[int, ...], strides, dilations) -> tuple[list[int], list[int]]:
    """(pads before, pads after) per spatial axis from ``pads`` or ``auto_pad``."""
    rank = len(kernel)
    auto = im.attr("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        pads = list(im.attr("pads", [0] * (2 * rank)))
        return pads[:rank], pads[rank:]
    if auto == "VALID":
        return [0] * rank, [0] * rank
    before, after = [], []
    for i in range(rank):
        size = x.type.shape[2 + i]
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        small, big = total // 2, total - total // 2
        before.append(small if auto == "SAME_UPPER" else big)
        after.append(big if auto == "SAME_UPPER" else small)
    return before, after


def _pad_spatial(
    im: _Importer, x: Value, before: list[int], after: list[int], value: float, limit: list[int] | None = None
) -> tuple[Value, list[int]]:
    """Symmetric padding (up to ``limit`` per axis) stays in the op; other padding becomes an explicit pad op."""
    if before == after and (limit is None or all(b <= lim for b, lim in zip(before, limit))):
        return x, before
    pads = [0, 0, 0, 0]
    for b, a in zip(before, after):
        pads += [b, a]
    return im.add("pad", [x], {"pads": pads, "value": value}, suffix=".pad"), [0] * len(before)


def _to_2d(im: _Importer, x: Value, what: str) -> tuple[Value, bool]:
    """A 3-D [N, C, L] tensor as 4-D [N, C, 1, L] (1-D convs and pools run as 2-D ones)."""
    if x.type.rank == 4:
        return x, False
    if x.type.rank == 3:
        n, c, length = x.type.shape
        return im.add("reshape", [x], {"shape": [n, c, 1, length]}, suffix=".as2d"), True
    raise im.unsupported(f"{what} on a {x.type.rank}-D input (mcir has 1-D and 2-D ones)")


@handles("Conv")
def _conv(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(_int8_input(ins[0], ins[1]))
    w = ins[1]
    wshape = w.shape if isinstance(w, np.ndarray) else w.type.shape
    kernel = tuple(im.attr("kernel_shape", wshape[2:]))
    rank = len(kernel)
    strides = list(im.attr("strides", [1] * rank))
    dilations = list(im.attr("dilations", [1] * rank))
    before, after = _spatial(im, x, kernel, strides, dilations)
    x4, squeezed = _to_2d(im, x, "Conv")
    if squeezed:
        w = im.value(w)
        w = im.add("reshape", [w], {"shape": [wshape[0], wshape[1], 1, wshape[2]]}, suffix=".w2d")
        before, after, strides, dilations = [0, *before], [0, *after], [1, *strides], [1, *dilations]
    x4, pads = _pad_spatial(im, x4, before, after, 0.0)
    operands = [x4, w] + ([ins[2]] if len(ins) > 2 and ins[2] is not None else [])
    attrs = {"stride": strides, "padding": pads, "dilation": dilations, "groups": int(im.attr("group", 1))}
    y = im.add("conv2d", operands, attrs, suffix=".conv2d" if squeezed else "")
    if squeezed:
        n, o, _, length = y.type.shape
        y = im.add("reshape", [y], {"shape": [n, o, length]})
    return y


@handles("BatchNormalization")
def _batch_norm(im: _Importer, node: Any, ins: list) -> Value:
    if im.attr("training_mode", 0) or im.extra_outputs_used():
        raise im.unsupported("BatchNormalization in training mode")
    return im.add("batch_norm", ins[:5], {"eps": float(im.attr("epsilon", 1e-5))})


@handles("LayerNormalization")
def _layer_norm(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    axis = int(im.attr("axis", -1)) % x.type.rank
    eps = float(im.attr("epsilon", 1e-5))
    operands = [x] + [v for v in ins[1:3] if v is not None]
    y = im.add("layer_norm", operands, {"dims": x.type.rank - axis, "eps": eps})
    if not im.extra_outputs_used():
        return y
    # the statistics outputs (training-style graphs and ONNX's tests): mean and 1/sqrt(var + eps)
    axes = list(range(axis, x.type.rank))
    mean = im.add("mean", [x], {"axes": axes, "keepdim": True}, suffix=".mean")
    centred = im.add("sub", [x, mean], suffix=".centred")
    var = im.add("mean", [im.add("mul", [centred, centred], suffix=".sq")], {"axes": axes, "keepdim": True},
                 suffix=".var")  # fmt: skip
    inv_std = im.add("rsqrt", [im.add("add", [var, np.asarray(eps, np.float32)], suffix=".var_eps")], suffix=".inv_std")
    return [y, mean, inv_std]


@handles("Softmax", "LogSoftmax")
def _softmax(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    default = -1 if im.opset >= 13 else 1
    axis = int(im.attr("axis", default)) % max(x.type.rank, 1)
    if im.opset >= 13 or axis == x.type.rank - 1:
        return im.add(op, [x], {"axis": axis})
    # before opset 13 the input is flattened to 2-D at axis and normalised over the second part
    rows = math.prod(x.type.shape[:axis])
    flat = im.add("reshape", [x], {"shape": [rows, x.type.numel // max(rows, 1)]}, suffix=".2d")
    y = im.add(op, [flat], {"axis": 1}, suffix=".flat")
    return im.add("reshape", [y], {"shape": list(x.type.shape)})


# -- pooling ------------------------------------------------------------------------------------


@handles("MaxPool", "AveragePool")
def _pool(im: _Importer, node: Any, ins: list) -> Value:
    if im.extra_outputs_used():
        raise im.unsupported("MaxPool's indices output")
    x = im.value(ins[0])
    kernel = list(im.attr("kernel_shape"))
    rank = len(kernel)
    strides = list(im.attr("strides", [1] * rank))
    dilations = list(im.attr("dilations", [1] * rank))
    before, after = _spatial(im, x, tuple(kernel), strides, dilations)
    x4, squeezed = _to_2d(im, x, node.op_type)
    if squeezed:
        kernel, strides, dilations, before, after = (
            [1, *kernel],
            [1, *strides],
            [1, *dilations],
            [0, *before],
            [0, *after],
        )
    ceil = bool(im.attr("ceil_mode", 0))
    if node.op_type == "MaxPool":
        half = [k // 2 for k in kernel]  # mcir's pooling pads at most half a window
        x4, pads = _pad_spatial(im, x4, before, after, float(np.finfo(np.float32).min), half)
        attrs = {"kernel": kernel, "stride": strides, "padding": pads, "dilation": dilations, "ceil_mode": ceil}
        y = im.add("max_pool2d", [x4], attrs, suffix=".2d" if squeezed else "")
    else:
        if any(d != 1 for d in dilations):
            raise im.unsupported("AveragePool with dilations")
        include = bool(im.attr("count_include_pad", 0))
        half = [k // 2 for k in kernel]
        if (before != after or any(b > h for b, h in zip(before, half))) and not include:
            return _avg_pool_uncounted(im, x4, kernel, strides, before, after, ceil, squeezed)
        x4, pads = _pad_spatial(im, x4, before, after, 0.0, half)
        attrs = {"kernel": kernel, "stride": strides, "padding": pads, "ceil_mode": ceil, "count_include_pad": include}
        y = im.add("avg_pool2d", [x4], attrs, suffix=".2d" if squeezed else "")
    if squeezed:
        n, c, _, length = y.type.shape
        y = im.add("reshape", [y], {"shape": [n, c, length]})
    return y


def _avg_pool_uncounted(im: _Importer, x: Value, kernel, strides, before, after, ceil: bool, squeezed: bool) -> Value:
    """Average over asymmetric padding that is not counted: window sums divided by a constant count of
    the input elements in each window (computed here, at import)."""
    from mcir.ops.nn import avg_pool2d

    pads = [0, 0, 0, 0] + [p for b, a in zip(before, after) for p in (b, a)]
    padded = im.add("pad", [x], {"pads": pads}, suffix=".pad") if any(pads) else x
    attrs = {"kernel": kernel, "stride": strides, "ceil_mode": ceil, "divisor": 1}
    total = im.add("avg_pool2d", [padded], attrs, suffix=".sum")
    ones = np.pad(np.ones((1, 1) + x.type.shape[2:]), [(0, 0), (0, 0)] + list(zip(before, after)))
    counts = np.asarray(avg_pool2d(ones, kernel, strides, ceil_mode=ceil, divisor=1), np.float32)
    y = im.add("div", [total, counts], suffix=".2d" if squeezed else "")
    if squeezed:
        n, c, _, length = y.type.shape
        y = im.add("reshape", [y], {"shape": [n, c, length]})
    return y


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    if node.op_type == "GlobalAveragePool" and x.type.rank == 4:
        return im.add("adaptive_avg_pool2d", [x], {"output_size": [1, 1]})
    axes = list(range(2, x.type.rank))
    return im.add("mean" if node.op_type == "GlobalAveragePool" else "amax", [x], {"axes": axes, "keepdim": True})


@handles("LRN")
def _lrn(im: _Importer, node: Any, ins: list) -> Value:
    """y = x / (bias + alpha/size * sum of x^2 over `size` neighbouring channels)^beta, as IR ops."""
    x = im.value(ins[0])
    if x.type.rank != 4:
        raise im.unsupported("LRN on a non-4-D input")
    size = int(im.attr("size"))
    alpha, beta, bias = float(im.attr("alpha", 1e-4)), float(im.attr("beta", 0.75)), float(im.attr("bias", 1.0))
    n, c, h, w = x.type.shape
    sq = im.add("mul", [x, x], suffix=".sq")
    sq = im.add("reshape", [sq], {"shape": [n, 1, c, h * w]}, suffix=".sq2d")
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = im.add("pad", [sq], {"pads": [0, 0, 0, 0, lo, hi, 0, 0]}, suffix=".sqpad")
    total = im.add("avg_pool2d", [sq], {"kernel": [size, 1], "stride": [1, 1], "divisor": 1}, suffix=".sum")
    total = im.add("reshape", [total], {"shape": [n, c, h, w]}, suffix=".sum4d")
    scaled = im.add("mul", [total, np.asarray(alpha / size, np.float32)], suffix=".scaled")
    base = im.add("add", [scaled, np.asarray(bias, np.float32)], suffix=".base")
    denom = im.add("pow", [base], {"exponent": beta}, suffix=".denom")
    return im.add("div", [x, denom])


# -- reductions ------------------------------------------------------------------------------


def _axes(im: _Importer, ins: list, rank: int, empty_means_all: bool = True) -> list[int] | None:
    axes = im.attr("axes")
    if len(ins) > 1 and ins[1] is not None:
        axes = im.known(ins[1], "axes").reshape(-1).tolist()
    if axes is None or len(axes) == 0:
        if im.attr("noop_with_empty_axes", 0) or not empty_means_all:
            return None
        return list(range(rank))
    return sorted(int(a) % max(rank, 1) for a in axes)


@handles("ReduceMean", "ReduceSum", "ReduceMax")
def _reduce(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    axes = _axes(im, ins, x.type.rank)
    if axes is None:
        return x
    op = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "amax"}[node.op_type]
    return im.add(op, [x], {"axes": axes, "keepdim": bool(im.attr("keepdims", 1))})


@handles("ArgMax")
def _argmax(im: _Importer, node: Any, ins: list) -> Value:
    if im.attr("select_last_index", 0):
        raise im.unsupported("ArgMax with select_last_index=1")
    return im.add("argmax", [ins[0]], {"axis": int(im.attr("axis", 0)), "keepdim": bool(im.attr("keepdims", 1))})


# -- shapes ----------------------------------------------------------------------------------


def _shape_of(v: Any) -> tuple[int, ...]:
    return tuple(v.shape) if isinstance(v, np.ndarray) else v.type.shape


@handles("ConstantOfShape", "Range", "EyeLike", "OneHot")
def _fold_only(im: _Importer, node: Any, ins: list) -> list[np.ndarray]:
    """Ops mcir computes only at import time: every input must be known."""
    known = [None if v is None else im.known(v, f"input {i} of {node.op_type}") for i, v in enumerate(ins)]
    return im._fold(node, known)


@handles("Shape")
def _shape(im: _Importer, node: Any, ins: list) -> np.ndarray:
    shape = _shape_of(ins[0])
    start, end = im.attr("start", 0), im.attr("end")
    return np.asarray(shape[start:end], np.int64)


@handles("Size")
def _size(im: _Importer, node: Any, ins: list) -> np.ndarray:
    return np.asarray(math.prod(_shape_of(ins[0])), np.int64)


def _reshape_to(im: _Importer, x: Any, shape: list[int] | tuple[int, ...]) -> Value:
    x = im.value(x)
    if tuple(shape) == x.type.shape:
        return x
    return im.add("reshape", [x], {"shape": list(shape)})


@handles("Reshape")
def _reshape(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    target = [int(d) for d in im.known(ins[1], "the shape of Reshape").reshape(-1)]
    allow_zero = bool(im.attr("allowzero", 0))
    shape = [x.type.shape[i] if d == 0 and not allow_zero else d for i, d in enumerate(target)]
    if shape.count(-1) == 1:
        rest = math.prod(d for d in shape if d != -1)
        shape[shape.index(-1)] = x.type.numel // rest if rest else 0
    return _reshape_to(im, x, shape)


@handles("Flatten")
def _flatten(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    axis = int(im.attr("axis", 1))
    axis = axis + x.type.rank if axis < 0 else axis
    return _reshape_to(im, x, [math.prod(x.type.shape[:axis]), math.prod(x.type.shape[axis:])])


@handles("Squeeze", "Unsqueeze")
def _squeeze(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    shape = list(x.type.shape)
    axes = im.attr("axes")
    if len(ins) > 1 and ins[1] is not None:
        axes = im.known(ins[1], "axes").reshape(-1).tolist()
    if node.op_type == "Squeeze":
        if axes is None:
            keep = [d for d in shape if d != 1]
        else:
            drop = {int(a) % len(shape) for a in axes}
            keep = [d for i, d in enumerate(shape) if i not in drop]
        return _reshape_to(im, x, keep)
    out_rank = len(shape) + len(axes)
    for a in sorted(int(a) % out_rank for a in axes):
        shape.insert(a, 1)
    return _reshape_to(im, x, shape)


@handles("Transpose")
def _transpose(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    perm = list(im.attr("perm", list(range(x.type.rank))[::-1]))
    if perm == list(range(x.type.rank)):
        return x
    return im.add("permute", [x], {"dims": perm})


@handles("Concat")
def _concat(im: _Importer, node: Any, ins: list) -> Value:
    parts = [v for v in ins if math.prod(_shape_of(v)) > 0 or len(ins) == 1]
    axis = int(im.attr("axis"))
    if len(parts) == 1:
        return im.value(parts[0])
    return im.add("concat", parts, {"axis": axis % len(_shape_of(parts[0]))})


@handles("Slice")
def _slice(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    if len(ins) > 1:
        starts = im.known(ins[1], "Slice's starts").reshape(-1).tolist()
        ends = im.known(ins[2], "Slice's ends").reshape(-1).tolist()
        axes = im.known(ins[3], "Slice's axes").reshape(-1).tolist() if len(ins) > 3 and ins[3] is not None else None
        steps = im.known(ins[4], "Slice's steps").reshape(-1).tolist() if len(ins) > 4 and ins[4] is not None else None
    else:
        starts, ends, axes, steps = im.attr("starts"), im.attr("ends"), im.attr("axes"), None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    y = x
    for i, (a, s, e, st) in enumerate(zip(axes, starts, ends, steps)):
        a = int(a) % x.type.rank
        size = y.type.shape[a]
        start, stop, step = slice(int(s), int(e), int(st)).indices(size)
        if (start, stop, step) == (0, size, 1):
            continue
        last = i == len(axes) - 1
        if step < 0:  # reversed order: the positions taken one by one
            positions = list(range(start, stop, step))
            if not positions:
                raise im.unsupported("Slice with a negative step that selects nothing")
            y = _take(im, y, a, positions, "Slice with a negative step")
            continue
        y = im.add("slice", [y], {"axis": a, "start": start, "end": max(stop, start), "step": step},
                   suffix="" if last else f".{a}")  # fmt: skip
    return y


@handles("Split")
def _split(im: _Importer, node: Any, ins: list) -> list[Value]:
    x = im.value(ins[0])
    axis = int(im.attr("axis", 0)) % x.type.rank
    sizes = im.attr("split")
    if len(ins) > 1 and ins[1] is not None:
        sizes = im.known(ins[1], "Split's sizes").reshape(-1).tolist()
    count = len(node.output)
    total = x.type.shape[axis]
    if sizes is None:
        chunk = -(-total // count)
        sizes = [min(chunk, total - i * chunk) for i in range(count)]
    outs, start = [], 0
    for k, size in enumerate(sizes):
        out_name = node.output[k]
        im_node_out = _ir_name(out_name) if out_name else f"split{k}"
        v = im.g.add("slice", [x], {"axis": axis, "start": start, "end": start + int(size), "step": 1},
                     result=im_node_out, loc=im.loc())  # fmt: skip
        outs.append(v)
        start += int(size)
    return outs


@handles("Expand")
def _expand(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    shape = [int(d) for d in im.known(ins[1], "Expand's shape").reshape(-1)]
    out = list(np.broadcast_shapes(x.type.shape, tuple(shape)))
    if tuple(out) == x.type.shape:
        return x
    return im.add("expand", [x], {"shape": out})


@handles("Gather")
def _gather(im: _Importer, node: Any, ins: list) -> Value:
    data, idx = ins
    shape = _shape_of(data)
    axis = int(im.attr("axis", 0)) % len(shape)
    if not isinstance(idx, np.ndarray):
        if axis == 0 and isinstance(data, np.ndarray) and data.ndim == 2:
            return im.add("embedding", [idx, data])
        idx = im.known(idx, "Gather's indices (other than row lookups in a constant 2-D table)")
    size = shape[axis]
    flat = (idx.reshape(-1).astype(np.int64) % size) if size else idx.reshape(-1).astype(np.int64)
    if idx.ndim == 0:
        return im.add("select", [data], {"axis": axis, "index": int(flat[0])})
    y = _take(im, data, axis, [int(i) for i in flat], "Gather")
    return _reshape_to(im, y, shape[:axis] + idx.shape + shape[axis + 1 :])


#: the most single-row slices an index list may become (beyond that the graph grows too much)
MAX_TAKE = 256


def _take(im: _Importer, data: Any, axis: int, indices: list[int], what: str) -> Value:
    """``data`` at constant ``indices`` along ``axis``: one slice for a contiguous run, else one
    single-row slice per index, joined."""
    if indices and all(b - a == 1 for a, b in itertools.pairwise(indices)):
        return im.add("slice", [data], {"axis": axis, "start": indices[0], "end": indices[-1] + 1}, suffix=".rows")
    if not 0 < len(indices) <= MAX_TAKE:
        raise im.unsupported(f"{what} of {len(indices)} positions that are not a contiguous range")
    parts = [im.add("slice", [data], {"axis": axis, "start": i, "end": i + 1}, suffix=f".row{k}")
             for k, i in enumerate(indices)]  # fmt: skip
    return im.add("concat", parts, {"axis": axis}, suffix=".rows")


@handles("Pad")
def _pad(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    mode = im.attr("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise im.unsupported(f"Pad mode '{mode}' (only constant padding)")
    if len(ins) > 1:
        pads = im.known(ins[1], "Pad's pads").reshape(-1).tolist()
        value = float(im.known(ins[2], "Pad's value").reshape(())) if len(ins) > 2 and ins[2] is not None else 0.0
        if len(ins) > 3 and ins[3] is not None:
            axes = [int(a) % x.type.rank for a in im.known(ins[3], "Pad's axes").reshape(-1)]
            full = [0] * (2 * x.type.rank)
            for i, a in enumerate(axes):
                full[a], full[x.type.rank + a] = pads[i], pads[len(axes) + i]
            pads = full
    else:
        pads, value = list(im.attr("pads")), float(im.attr("value", 0.0))
    rank = x.type.rank
    pairs = [int(v) for i in range(rank) for v in (pads[i], pads[rank + i])]
    if not any(pairs):
        return x
    return im.add("pad", [x], {"pads": pairs, "value": value})


# -- quantisation (QDQ) -----------------------------------------------------------------------


def _qparams(im: _Importer, ins: list, what: str) -> tuple[np.ndarray, np.ndarray]:
    scale = im.known(ins[1], f"the scale of {what}").astype(np.float32)
    if len(ins) > 2 and ins[2] is not None:
        zp = im.known(ins[2], f"the zero point of {what}")
    else:
        zp = np.zeros(scale.shape, np.uint8)
    return scale, zp


@handles("QuantizeLinear")
def _quantize_linear(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    scale, zp = _qparams(im, ins, "QuantizeLinear")
    if scale.size != 1:
        raise im.unsupported("QuantizeLinear of a run-time value with per-axis scales")
    dt = {np.dtype(np.uint8): dtypes.u8, np.dtype(np.int8): dtypes.i8}.get(zp.dtype)
    if dt is None:
        raise im.unsupported(f"QuantizeLinear to {zp.dtype} (mcir quantises to u8 or i8)")
    enc = Quant(scale=float(scale.reshape(())), zero_point=int(zp.reshape(())))
    return im.add("quantize", [x], type=TensorType(x.type.shape, dt, enc))


@handles("DequantizeLinear")
def _dequantize_linear(im: _Importer, node: Any, ins: list) -> Value:
    q = ins[0]
    scale, zp = _qparams(im, ins, "DequantizeLinear")
    if isinstance(q, np.ndarray):
        return _quantized_constant(im, node, q, scale, zp)
    if q.type.encoding is None:
        # integers from elsewhere (a graph input): (float(q) - zero_point) * scale, in float ops
        if scale.size > 1 and scale.ndim != 1:
            raise im.unsupported("blocked DequantizeLinear")
        axis = int(im.attr("axis", 1)) % q.type.rank if scale.size > 1 else 0
        shape = [-1 if i == axis else 1 for i in range(q.type.rank)] if scale.size > 1 else []
        real = im.add("cast", [q], {"dtype": "f32"}, suffix=".real")
        shifted = im.add("sub", [real, zp.astype(np.float32).reshape(shape)], suffix=".shifted")
        return im.add("mul", [shifted, scale.reshape(shape)])
    # conv/linear read the quantised value itself (see _int8_input); unused dequantize ops go at the end
    return im.add("dequantize", [q], type=TensorType(q.type.shape, dtypes.f32))


def _int8_input(v: Any, weight: Any) -> Any:
    """The activation operand of conv2d/linear with a quantised ``weight``: a dequantized u8/i8 value is
    taken as it is stored (an op reads a quantised operand as its real values, so this is exact) and
    runs on the int8 kernels."""
    quantized_weight = isinstance(weight, Value) and isinstance(weight.type.encoding, Quant)
    if quantized_weight and isinstance(v, Value) and v.producer is not None and v.producer.name == "dequantize":
        q = v.producer.operands[0]
        if isinstance(q.type.encoding, Quant) and q.type.encoding.axis is None:
            return q
    return v


def _quantized_constant(im: _Importer, node: Any, q: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> Value:
    """A DequantizeLinear of an integer initializer: the initializer as an mcir quantised constant."""
    name = im.array_name(q, node.output[0])
    dt = {np.dtype(np.uint8): dtypes.u8, np.dtype(np.int8): dtypes.i8, np.dtype(np.int32): dtypes.i32}.get(q.dtype)
    if dt is None:
        raise im.unsupported(f"DequantizeLinear of a {q.dtype} constant")
    if scale.size == 1:
        enc = Quant(scale=float(scale.reshape(())), zero_point=int(zp.reshape(-1)[0]))
        return im.g.const(_ir_name(name), np.ascontiguousarray(q), TensorType(q.shape, dt, enc), loc=im.loc())
    if np.any(zp != 0):
        raise im.unsupported(
            "per-axis DequantizeLinear with a non-zero zero point (mcir's per-axis quantisation is symmetric)"
        )
    axis = int(im.attr("axis", 1)) % q.ndim
    if axis == 1 and q.ndim == 2:
        # a MatMul weight [K, N] with one scale per output column: stored as [N, K] with per-row scales
        # (mcir's per-axis layout, what linear takes) and transposed back; MatMul folds the transpose away
        data = {"data": np.ascontiguousarray(q.T), "scale": scale.reshape(-1)}
        c = im.g.const(_ir_name(name), data, TensorType(q.T.shape, dt, Quant(axis=0)), loc=im.loc())
        return im.add("permute", [c], {"dims": [1, 0]}, suffix=".t")
    if axis != 0:
        # mcir keeps per-axis scales along axis 0 of the stored tensor: keep the float values instead
        return np.asarray((q.astype(np.float64) - zp.reshape([-1 if i == axis else 1 for i in range(q.ndim)]))
                          * scale.reshape([-1 if i == axis else 1 for i in range(q.ndim)]), np.float32)  # fmt: skip
    data = {"data": np.ascontiguousarray(q), "scale": scale.reshape(-1)}
    return im.g.const(_ir_name(name), data, TensorType(q.shape, dt, Quant(axis=0)), loc=im.loc())


# -- activations and reductions written with other IR ops --------------------------------------------------------


def _f(value: float) -> np.ndarray:
    return np.asarray(value, np.float32)


def _expm1_branch(im: _Importer, x: Any, alpha: float, tag: str) -> Value:
    """alpha * (exp(x) - 1), the negative branch of ELU-like activations."""
    e = im.add("exp", [x], suffix=f".{tag}exp")
    return im.add("mul", [im.add("sub", [e, _f(1.0)], suffix=f".{tag}expm1"), _f(alpha)], suffix=f".{tag}neg")


@handles("Elu", "Selu", "Celu")
def _elu(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    if node.op_type == "Celu":  # max(0, x) + min(0, alpha (exp(x / alpha) - 1))
        alpha = float(im.attr("alpha", 1.0))
        scaled = im.add("div", [x, _f(alpha)], suffix=".scaled")
        neg = im.add("minimum", [_expm1_branch(im, scaled, alpha, ""), _f(0.0)], suffix=".negpart")
        return im.add("add", [im.add("relu", [x], suffix=".pos"), neg])
    default_alpha = 1.0 if node.op_type == "Elu" else 1.67326319217681884765625
    alpha = float(im.attr("alpha", default_alpha))
    positive = im.add("gt", [x, _f(0.0)], suffix=".positive")
    if node.op_type == "Elu":
        return im.add("where", [positive, x, _expm1_branch(im, x, alpha, "")])
    gamma = float(im.attr("gamma", 1.05070102214813232421875))
    y = im.add("where", [positive, x, _expm1_branch(im, x, alpha, "")], suffix=".elu")
    return im.add("mul", [y, _f(gamma)])


@handles("ThresholdedRelu")
def _thresholded_relu(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    above = im.add("gt", [x, _f(float(im.attr("alpha", 1.0)))], suffix=".above")
    return im.add("where", [above, x, _f(0.0)])


@handles("PRelu")
def _prelu(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    negative = im.add("lt", [x, _f(0.0)], suffix=".negative")
    return im.add("where", [negative, im.add("mul", [x, ins[1]], suffix=".scaled"), x])


def _softplus(im: _Importer, x: Any, tag: str = "") -> Value:
    """log(1 + exp(x))"""
    return im.add("log", [im.add("add", [im.add("exp", [x], suffix=f".{tag}exp"), _f(1.0)], suffix=f".{tag}1p")],
                  suffix=f".{tag}softplus" if tag else "")  # fmt: skip


@handles("Softplus")
def _softplus_op(im: _Importer, node: Any, ins: list) -> Value:
    return _softplus(im, ins[0])


@handles("Mish")
def _mish(im: _Importer, node: Any, ins: list) -> Value:
    t = im.add("tanh", [_softplus(im, ins[0], "sp")], suffix=".tanh")
    return im.add("mul", [ins[0], t])


@handles("Softsign")
def _softsign(im: _Importer, node: Any, ins: list) -> Value:
    denom = im.add("add", [im.add("abs", [ins[0]], suffix=".abs"), _f(1.0)], suffix=".denom")
    return im.add("div", [ins[0], denom])


@handles("Swish")
def _swish(im: _Importer, node: Any, ins: list) -> Value:
    alpha = float(im.attr("alpha", 1.0))
    if alpha == 1.0:
        return im.add("silu", [ins[0]])
    s = im.add("sigmoid", [im.add("mul", [ins[0], _f(alpha)], suffix=".scaled")], suffix=".gate")
    return im.add("mul", [ins[0], s])


@handles("Shrink")
def _shrink(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    bias, lambd = float(im.attr("bias", 0.0)), float(im.attr("lambd", 0.5))
    low = im.add("lt", [x, _f(-lambd)], suffix=".low")
    high = im.add("gt", [x, _f(lambd)], suffix=".high")
    upper = im.add("where", [high, im.add("sub", [x, _f(bias)], suffix=".minus"), _f(0.0)], suffix=".upper")
    return im.add("where", [low, im.add("add", [x, _f(bias)], suffix=".plus"), upper])


@handles("ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
def _reduce_composite(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    if not x.type.dtype.is_float:
        raise im.unsupported(f"{node.op_type} of {x.type.dtype} values")
    axes = _axes(im, ins, x.type.rank)
    keep = bool(im.attr("keepdims", 1))
    kind = node.op_type
    if axes is None:
        raise im.unsupported(f"{kind} with noop_with_empty_axes")
    attrs = {"axes": axes, "keepdim": keep}
    if kind == "ReduceMin":
        m = im.add("amax", [im.add("neg", [x], suffix=".neg")], attrs, suffix=".max")
        return im.add("neg", [m])
    if kind == "ReduceL1":
        return im.add("sum", [im.add("abs", [x], suffix=".abs")], attrs)
    if kind in ("ReduceL2", "ReduceSumSquare"):
        s = im.add(
            "sum", [im.add("mul", [x, x], suffix=".sq")], attrs, suffix="" if kind == "ReduceSumSquare" else ".ss"
        )
        return s if kind == "ReduceSumSquare" else im.add("sqrt", [s])
    if kind == "ReduceLogSum":
        return im.add("log", [im.add("sum", [x], attrs, suffix=".sum")])
    # log(sum(exp(x - max))) + max: stable for large x
    mx = im.add("amax", [x], {"axes": axes, "keepdim": True}, suffix=".max")
    e = im.add("exp", [im.add("sub", [x, mx], suffix=".shifted")], suffix=".exp")
    lse = im.add("log", [im.add("sum", [e], attrs, suffix=".sum")], suffix=".log")
    return im.add("add", [lse, mx if keep else _reshape_to(im, mx, lse.type.shape)])


@handles("ArgMin")
def _argmin(im: _Importer, node: Any, ins: list) -> Value:
    if im.attr("select_last_index", 0):
        raise im.unsupported("ArgMin with select_last_index=1")
    neg = im.add("neg", [ins[0]], suffix=".neg")
    return im.add("argmax", [neg], {"axis": int(im.attr("axis", 0)), "keepdim": bool(im.attr("keepdims", 1))})


@handles("InstanceNormalization", "MeanVarianceNormalization")
def _instance_norm(im: _Importer, node: Any, ins: list) -> Value:
    """(x - mean) / sqrt(var + eps) over the spatial axes (per sample and channel), then scale and bias."""
    x = im.value(ins[0])
    if node.op_type == "InstanceNormalization":
        axes, eps = list(range(2, x.type.rank)), float(im.attr("epsilon", 1e-5))
    else:
        axes, eps = [int(a) % x.type.rank for a in im.attr("axes", [0, 2, 3])], 1e-9
    mean = im.add("mean", [x], {"axes": axes, "keepdim": True}, suffix=".mean")
    centred = im.add("sub", [x, mean], suffix=".centred")
    var = im.add("mean", [im.add("mul", [centred, centred], suffix=".sq")], {"axes": axes, "keepdim": True},
                 suffix=".var")  # fmt: skip
    if node.op_type == "MeanVarianceNormalization":
        return im.add("div", [centred, im.add("sqrt", [var], suffix=".std")])  # eps below f32 resolution
    inv = im.add("rsqrt", [im.add("add", [var, _f(eps)], suffix=".var_eps")], suffix=".inv_std")
    y = im.add("mul", [centred, inv], suffix=".normed")
    per_channel = [x.type.shape[1]] + [1] * (x.type.rank - 2)
    scale = _reshape_to(im, ins[1], per_channel)
    bias = _reshape_to(im, ins[2], per_channel)
    return im.add("add", [im.add("mul", [y, scale], suffix=".scaled"), bias])


@handles("DepthToSpace", "SpaceToDepth")
def _depth_space(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    if x.type.rank != 4:
        raise im.unsupported(f"{node.op_type} of a {x.type.rank}-D input")
    b = int(im.attr("blocksize"))
    n, c, h, w = x.type.shape
    mode = im.attr("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if node.op_type == "SpaceToDepth":
        perm = [0, 3, 5, 1, 2, 4] if mode == "DCR" else [0, 1, 3, 5, 2, 4]
        split, out = [n, c, h // b, b, w // b, b], [n, c * b * b, h // b, w // b]
    elif mode == "DCR":
        split, perm, out = [n, b, b, c // (b * b), h, w], [0, 3, 4, 1, 5, 2], [n, c // (b * b), h * b, w * b]
    else:
        split, perm, out = [n, c // (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3], [n, c // (b * b), h * b, w * b]
    y = im.add("reshape", [x], {"shape": split}, suffix=".split")
    y = im.add("permute", [y], {"dims": perm}, suffix=".moved")
    return im.add("reshape", [y], {"shape": out})


@handles("Tile")
def _tile(im: _Importer, node: Any, ins: list) -> Value:
    y = im.value(ins[0])
    repeats = [int(r) for r in im.known(ins[1], "Tile's repeats").reshape(-1)]
    for axis, r in enumerate(repeats):
        if r != 1:
            y = im.add("concat", [y] * r, {"axis": axis}, suffix=f".tile{axis}")
    return y


@handles("Trilu")
def _trilu(im: _Importer, node: Any, ins: list) -> Value:
    x = im.value(ins[0])
    k = int(im.known(ins[1], "Trilu's k").reshape(())) if len(ins) > 1 and ins[1] is not None else 0
    rows, cols = x.type.shape[-2:]
    keep = np.triu(np.ones((rows, cols), bool), k) if im.attr("upper", 1) else np.tril(np.ones((rows, cols), bool), k)
    zero = np.zeros((), x.type.dtype.np)
    return im.add("where", [keep, x, zero])


# -- quantised operators (QOperator format) -----------------------------------------------------------------------


def _as_quantized(im: _Importer, x: Any, scale: np.ndarray, zp: np.ndarray, what: str) -> Value:
    """Run-time integers ``x`` meaning ``scale * (x - zp)`` as a value of mcir's quantised type.

    A value that already has that type (from a QuantizeLinear or a quantised layer) is used as it is;
    plain integers (a graph input) are re-typed through their real values (exact: the same integers)."""
    x = im.value(x)
    if scale.size != 1:
        raise im.unsupported(f"{what} with per-axis activation scales")
    dt = {np.dtype(np.uint8): dtypes.u8, np.dtype(np.int8): dtypes.i8}.get(np.asarray(zp).dtype)
    if dt is None:
        raise im.unsupported(f"{what} on {np.asarray(zp).dtype} values")
    enc = Quant(scale=float(scale.reshape(())), zero_point=int(np.asarray(zp).reshape(())))
    want = TensorType(x.type.shape, dt, enc)
    if x.type == want:
        return x
    if x.type.dtype.is_float:  # already real values (a dequantized or float value): quantise them
        return im.add("quantize", [x], type=want, suffix=".q")
    real = im.add("cast", [x], {"dtype": "f32"}, suffix=".int")
    real = im.add("mul", [im.add("sub", [real, np.float32(enc.zero_point)], suffix=".centred"), np.float32(enc.scale)],
                  suffix=".real")  # fmt: skip
    return im.add("quantize", [real], type=want, suffix=".q")


def _int8_weight(im: _Importer, w: Any, scale: np.ndarray, zp: np.ndarray, axis: int, what: str) -> Value:
    """A constant int8 weight with per-tensor or per-``axis`` scales as an mcir quantised constant."""
    w = im.known(w, f"the weight of {what}")
    if w.dtype != np.int8:
        raise im.unsupported(f"{what} with {w.dtype} weights (mcir's int8 kernels take int8 weights)")
    if np.any(np.asarray(zp) != 0):
        raise im.unsupported(f"{what} with a non-zero weight zero point (mcir's int8 weights are symmetric)")
    name = _ir_name(im.array_name(w, "weight"))
    if scale.size == 1:
        return im.g.const(name, w, TensorType(w.shape, dtypes.i8, Quant(scale=float(scale.reshape(())))), loc=im.loc())
    if axis == 0:
        data = {"data": w, "scale": scale.reshape(-1).astype(np.float32)}
        return im.g.const(name, data, TensorType(w.shape, dtypes.i8, Quant(axis=0)), loc=im.loc())
    raise im.unsupported(f"{what} with weight scales along axis {axis}")


def _int32_bias(im: _Importer, b: Any, scale: np.ndarray, what: str) -> Value:
    b = im.known(b, f"the bias of {what}")
    data = {"data": b.astype(np.int32), "scale": np.broadcast_to(scale.reshape(-1), b.shape).astype(np.float32)}
    return im.g.const(_ir_name(im.array_name(b, "bias")), data, TensorType(b.shape, dtypes.i32, Quant(axis=0)))


def _result_type(im: _Importer, shape: tuple[int, ...], scale: Any, zp: Any) -> TensorType:
    scale, zp = im.known(scale, "the output scale"), im.known(zp, "the output zero point")
    dt = dtypes.u8 if zp.dtype == np.uint8 else dtypes.i8
    return TensorType(shape, dt, Quant(scale=float(scale.reshape(())), zero_point=int(zp.reshape(()))))


@handles("QLinearConv")
def _qlinear_conv(im: _Importer, node: Any, ins: list) -> Value:
    """conv2d on u8 activations and int8 weights with a u8 result: mcir's int8 conv, as after quant8."""
    x_scale, x_zp = im.known(ins[1], "x_scale"), im.known(ins[2], "x_zero_point")
    w_scale, w_zp = im.known(ins[4], "w_scale"), im.known(ins[5], "w_zero_point")
    x = _as_quantized(im, ins[0], x_scale, x_zp, "QLinearConv")
    w = _int8_weight(im, ins[3], w_scale, w_zp, 0, "QLinearConv")
    operands = [x, w]
    if len(ins) > 8 and ins[8] is not None:
        operands.append(
            _int32_bias(im, ins[8], (x_scale.astype(np.float64) * w_scale).astype(np.float32), "QLinearConv")
        )
    kernel = tuple(im.attr("kernel_shape", w.type.shape[2:]))
    if len(kernel) != 2:
        raise im.unsupported("QLinearConv that is not 2-D")
    strides, dilations = list(im.attr("strides", [1, 1])), list(im.attr("dilations", [1, 1]))
    before, after = _spatial(im, x, kernel, strides, dilations)
    if before != after:
        raise im.unsupported("QLinearConv with asymmetric padding")
    attrs = {"stride": strides, "padding": before, "dilation": dilations, "groups": int(im.attr("group", 1))}
    # infer the float shape first, then give the quantised result type
    from mcir.ops import registry

    conv = registry.get("conv2d")
    full = conv.complete_attrs(dict(attrs), where=im.where())
    shape = conv.infer_type([v.type.logical for v in operands], full, where=im.where()).shape
    return im.add("conv2d", operands, attrs, type=_result_type(im, shape, ins[6], ins[7]))


@handles("QLinearMatMul")
def _qlinear_matmul(im: _Importer, node: Any, ins: list) -> Value:
    """a @ b with a constant int8 right side: ``linear`` on u8 activations with a u8 result."""
    a_scale, a_zp = im.known(ins[1], "a_scale"), im.known(ins[2], "a_zero_point")
    b_scale, b_zp = im.known(ins[4], "b_scale"), im.known(ins[5], "b_zero_point")
    b = im.known(ins[3], "QLinearMatMul's b (a run-time right side is not supported)")
    if b.ndim != 2:
        raise im.unsupported("QLinearMatMul with a right side that is not 2-D")
    a = _as_quantized(im, ins[0], a_scale, a_zp, "QLinearMatMul")
    wt = np.ascontiguousarray(b.T)
    im.name_array(wt, "weight", like=b)
    w = _int8_weight(im, wt, b_scale, b_zp, 0, "QLinearMatMul")
    shape = a.type.shape[:-1] + (wt.shape[0],)
    return im.add("linear", [a, w], type=_result_type(im, shape, ins[6], ins[7]))


@handles("MatMulInteger")
def _matmul_integer(im: _Importer, node: Any, ins: list) -> Value:
    """int32 a @ b of (a - a_zp) and (b - b_zp), computed exactly in float (products of 8-bit integers
    summed in float64 by the interpreter) and cast to int32."""
    a = im.value(ins[0])
    a_zp = ins[2] if len(ins) > 2 and ins[2] is not None else np.zeros((), np.uint8)
    b_zp = ins[3] if len(ins) > 3 and ins[3] is not None else np.zeros((), np.int8)
    real_a = im.add("cast", [a], {"dtype": "f32"}, suffix=".a")
    real_a = im.add("sub", [real_a, np.asarray(im.known(a_zp, "a_zero_point"), np.float32)], suffix=".a_c")
    b = ins[1]
    if isinstance(b, np.ndarray):
        b = (b.astype(np.float32) - np.asarray(im.known(b_zp, "b_zero_point"), np.float32)).astype(np.float32)
    else:
        b_zp = np.asarray(im.known(b_zp, "b_zero_point"), np.float32)
        b = im.add("sub", [im.add("cast", [b], {"dtype": "f32"}, suffix=".b"), b_zp], suffix=".b_c")
    y = im.add("matmul", [real_a, b], suffix=".real")
    return im.add("cast", [y], {"dtype": "i32"})


@handles("Resize", "Upsample")
def _resize(im: _Importer, node: Any, ins: list) -> Value:
    """Nearest-neighbour upsampling by integer factors: every pixel repeated (reshape, expand, reshape).

    For integer factors the ONNX coordinate modes ``asymmetric`` (with ``floor``) and ``half_pixel``,
    ``pytorch_half_pixel`` (with either rounding to nearest: no position falls on a tie) pick input pixel i // s."""
    x = im.value(ins[0])
    mode = im.attr("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    coord = im.attr("coordinate_transformation_mode", b"half_pixel")
    coord = coord.decode() if isinstance(coord, bytes) else coord
    rounding = im.attr("nearest_mode", b"round_prefer_floor")
    rounding = rounding.decode() if isinstance(rounding, bytes) else rounding
    if node.op_type == "Upsample":
        coord, rounding = "asymmetric", "floor"
    if mode != "nearest":
        raise im.unsupported(f"{node.op_type} mode '{mode}' (mcir resizes with mode nearest by integer factors)")
    rounds = rounding in ("round_prefer_floor", "round_prefer_ceil")
    if not (
        (coord in ("half_pixel", "pytorch_half_pixel") and rounds) or (coord == "asymmetric" and rounding == "floor")
    ):
        raise im.unsupported(f"{node.op_type} with coordinate_transformation_mode={coord}, nearest_mode={rounding}")
    shape = x.type.shape
    scale_input = 1 if node.op_type == "Upsample" else 2
    if len(ins) > 3 and ins[3] is not None and np.asarray(ins[3]).size:
        sizes = [int(d) for d in im.known(ins[3], f"{node.op_type}'s sizes").reshape(-1)]
        factors = [o / i for o, i in zip(sizes, shape)]
    else:
        factors = [float(f) for f in im.known(ins[scale_input], f"{node.op_type}'s scales").reshape(-1)]
    if len(factors) != len(shape) or any(f < 1 or f != int(f) for f in factors) or any(f != 1 for f in factors[:2]):
        raise im.unsupported(f"{node.op_type} by factors {factors} (integer factors >= 1 on the spatial axes only)")
    factors = [int(f) for f in factors]
    if all(f == 1 for f in factors):
        return x
    spread = [d for d in shape[:2]] + [v for d in shape[2:] for v in (d, 1)]
    wide = [d for d in shape[:2]] + [v for d, f in zip(shape[2:], factors[2:]) for v in (d, f)]
    y = im.add("reshape", [x], {"shape": spread}, suffix=".spread")
    y = im.add("expand", [y], {"shape": wide}, suffix=".repeated")
    return im.add("reshape", [y], {"shape": [d * f for d, f in zip(shape, factors)]})


@handles("ConvTranspose")
def _conv_transpose(im: _Importer, node: Any, ins: list) -> Value:
    """A transposed convolution as an ordinary one: zeros inserted between input pixels (stride), padded by
    dilation * (kernel - 1) - pads, convolved with the flipped, transposed kernel. Exact (the same sums)."""
    x = im.value(ins[0])
    w = im.known(ins[1], "ConvTranspose's weight")
    if x.type.rank != 4 or w.ndim != 4:
        raise im.unsupported("ConvTranspose that is not 2-D")
    auto = im.attr("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID", "") or im.attr("output_shape") is not None:
        raise im.unsupported("ConvTranspose with auto_pad or output_shape (give explicit pads)")
    groups = int(im.attr("group", 1))
    c_in, c_out_g, kh, kw = w.shape
    strides = list(im.attr("strides", [1, 1]))
    dilations = list(im.attr("dilations", [1, 1]))
    pads = list(im.attr("pads", [0, 0, 0, 0])) if auto != "VALID" else [0, 0, 0, 0]
    extra = list(im.attr("output_padding", [0, 0]))
    n, c, h, wd = x.type.shape
    y = x
    if strides != [1, 1]:
        sh, sw = strides
        y = im.add("reshape", [y], {"shape": [n, c, h, 1, wd, 1]}, suffix=".spread")
        y = im.add("pad", [y], {"pads": [0, 0, 0, 0, 0, 0, 0, sh - 1, 0, 0, 0, sw - 1]}, suffix=".zeros")
        y = im.add("reshape", [y], {"shape": [n, c, h * sh, wd * sw]}, suffix=".dilated")
    grow = []
    for i, k in enumerate((kh, kw)):
        span = dilations[i] * (k - 1)
        grow += [span - pads[i], span - pads[2 + i] + extra[i] - (strides[i] - 1)]
    if any(grow):
        y = im.add("pad", [y], {"pads": [0, 0, 0, 0, *grow]}, suffix=".padded")
    # [C_in, C_out/g, kh, kw] -> [C_out, C_in/g, kh, kw], flipped in space
    wg = w.reshape(groups, c_in // groups, c_out_g, kh, kw).transpose(0, 2, 1, 3, 4)
    kernel = np.ascontiguousarray(wg.reshape(groups * c_out_g, c_in // groups, kh, kw)[:, :, ::-1, ::-1])
    im.name_array(kernel, "weight", like=w)
    operands = [y, kernel] + ([ins[2]] if len(ins) > 2 and ins[2] is not None else [])
    attrs = {"stride": [1, 1], "padding": [0, 0], "dilation": dilations, "groups": groups}
    return im.add("conv2d", operands, attrs)


# -- patterns of exported models ------------------------------------------------------------------------------


def _scalar(v: Value) -> float | None:
    """The value of a one-element constant, else None."""
    if v.is_constant and v.type.encoding is None and v.producer.data is not None and v.type.numel == 1:
        return float(np.asarray(v.producer.data).reshape(()))
    return None


def _other(op: Any, v: Value) -> Value | None:
    """The operand of binary ``op`` that is not ``v`` (None if ``v`` is not an operand)."""
    a, b = op.operands
    return b if a is v else a if b is v else None


def _sole_user(v: Value, name: str) -> Any:
    users = v.users
    if len(users) == 1 and users[0].name == name and v not in (users[0].graph.outputs if users[0].graph else []):
        return users[0]
    return None


def _fuse_gelu(graph: Graph) -> None:
    """x * 0.5 * (1 + erf(x / sqrt 2)), as exporters write GELU, becomes one ``gelu`` op (same function).

    Matched: erf of div(x, sqrt 2) or mul(x, 1/sqrt 2); + 1; times x then 0.5, or times mul(x, 0.5)."""
    from mcir.rewriter import Rewriter

    rw = Rewriter(graph)
    for erf in [op for op in graph.ops if op.name == "erf"]:
        if erf.graph is None:
            continue
        scaled = erf.operands[0].producer
        if scaled is None or scaled.name not in ("div", "mul"):
            continue
        x, c = scaled.operands
        k = _scalar(c)
        if k is None or not math.isclose(k if scaled.name == "div" else 1 / k, math.sqrt(2), rel_tol=1e-4):
            continue
        plus = _sole_user(erf.result, "add")
        if plus is None or _scalar(_other(plus, erf.result)) != 1.0:
            continue
        times = _sole_user(plus.result, "mul")
        if times is None:
            continue
        factor = _other(times, plus.result)
        if factor is x:  # x * (1 + erf) * 0.5
            last = _sole_user(times.result, "mul")
            if last is None or _scalar(_other(last, times.result)) != 0.5:
                continue
        elif (
            factor.producer is not None
            and factor.producer.name == "mul"
            and _scalar(_other(factor.producer, x) or x) == 0.5
        ):
            last = times  # (x * 0.5) * (1 + erf)
        else:
            continue
        gelu = rw.insert_before(last, "gelu", [x], {"approximate": "none"})
        rw.replace_op(last, gelu)
    dead_code_elimination(graph)


def _fuse_layer_norm(graph: Graph) -> None:
    """LayerNorm as exporters before opset 17 write it becomes one ``layer_norm`` op (same function)::

    d = x - mean(x); y = d / sqrt(mean(d ** 2) + eps) [* weight] [+ bias]   (means over trailing axes)
    """
    from mcir.rewriter import Rewriter

    rw = Rewriter(graph)

    def producer(v: Value, name: str) -> Any:
        return v.producer if v.producer is not None and v.producer.name == name else None

    for div in [op for op in graph.ops if op.name == "div"]:
        if div.graph is None:
            continue
        d, root = div.operands
        sub, sqrt = producer(d, "sub"), producer(root, "sqrt")
        if sub is None or sqrt is None:
            continue
        x, mu = sub.operands
        mean1 = producer(mu, "mean")
        if mean1 is None or mean1.operands[0] is not x or not mean1.attrs["keepdim"]:
            continue
        rank = x.type.rank
        axes = sorted(a % rank for a in mean1.attrs["axes"])
        dims = len(axes)
        if axes != list(range(rank - dims, rank)):
            continue
        plus = producer(sqrt.operands[0], "add")
        if plus is None:
            continue
        var = next((v for v in plus.operands if producer(v, "mean") is not None), None)
        eps = _scalar(_other(plus, var)) if var is not None else None
        if eps is None:
            continue
        mean2 = var.producer
        square = producer(mean2.operands[0], "pow")
        if square is None or square.attrs["exponent"] != 2.0 or square.operands[0] is not d:
            continue
        if sorted(a % rank for a in mean2.attrs["axes"]) != axes:
            continue
        last, operands = div, [x]
        scale = _sole_user(div.result, "mul")
        trailing = x.type.shape[rank - dims :]
        w = _other(scale, div.result) if scale is not None else None
        if w is not None and w.is_constant and w.type.shape == trailing:
            last, operands = scale, [x, w]
            shift = _sole_user(scale.result, "add")
            b = _other(shift, scale.result) if shift is not None else None
            if b is not None and b.is_constant and b.type.shape == trailing:
                last, operands = shift, [x, w, b]
        norm = rw.insert_before(last, "layer_norm", operands, {"dims": dims, "eps": eps})
        rw.replace_op(last, norm)
    dead_code_elimination(graph)
