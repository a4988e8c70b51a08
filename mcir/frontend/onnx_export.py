"""Exporting mcir graphs to ONNX, so ONNX Runtime, Netron and other backends can use them.

``to_onnx(graph, path)`` writes one ONNX node (or a short fixed sequence) per IR op, opset 17.
What each kind of value becomes:

* plain constants: initializers with the constant's name;
* quantised constants (``i8``/``u8``/``i32 #quant``): the integer initializer (``NAME_quantized``)
  and a ``DequantizeLinear`` with its per-tensor scale and zero point, or per-axis scales along
  axis 0 (int8 weights per output channel, int32 biases in the accumulator's scale): the QDQ
  form ONNX Runtime runs with its int8 kernels;
* quantised run-time values (``quantize`` results, int8 layers with u8 results after fusion): the
  float computation followed by ``QuantizeLinear`` and ``DequantizeLinear``, which is exactly the
  interpreter's "compute in float, round into the result type";
* every other encoding (``#binary``, ``#ternary``, ``#csr``, ``#nm``, codebooks, ...): a float
  initializer holding the decoded values (ONNX has no such types), with the encoding named in the
  initializer's doc string, so ONNX Runtime reproduces the interpreter's numbers (not its bytes).

Structured pruning and low-rank factorisation need nothing special: they are already smaller
or more ops. Node names are the IR value names, and each node's doc string holds the op's module
path, so Netron shows the user's layers. Run-time values with packed encodings (binary
activations) have no ONNX form and raise ``UnsupportedError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mcir import dtypes
from mcir.encodings import Quant, Round
from mcir.errors import UnsupportedError
from mcir.ir import Graph, Op
from mcir.types import TensorType

OPSET = 17
#: the IR version ONNX Runtime reads for opset 17 models
IR_VERSION = 8

_ONNX_DTYPES = {"f32": 1, "u8": 2, "i8": 3, "i16": 5, "i32": 6, "i64": 7, "bool": 9, "f16": 10, "bf16": 16}


#: above this many bytes of initializers the weights go to a file beside the model (protobuf's limit is 2 GiB)
EXTERNAL_DATA_BYTES = 1 << 30


def to_onnx(
    graph: Graph, path: str | Path | None = None, opset: int | None = None, external_data: bool | None = None
) -> Any:
    """The ``onnx.ModelProto`` of ``graph``; written to ``path`` when given.

    ``external_data`` writes the initializers to ``PATH.data`` beside the model (default: only when
    they exceed ``EXTERNAL_DATA_BYTES``, as a single protobuf cannot hold more than 2 GiB)."""
    import onnx
    from onnx import helper

    ex = _Exporter(graph)
    ex.run()
    onnx_graph = helper.make_graph(ex.nodes, graph.name, ex.inputs, ex.outputs, initializer=ex.initializers)
    model = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid("", opset or OPSET)], producer_name="mcir", ir_version=IR_VERSION
    )
    pipeline = graph.meta.get("pipeline")
    if pipeline:
        helper.set_model_props(model, {"mcir.pipeline": str(pipeline)})
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if external_data is None:
        external_data = weight_bytes > EXTERNAL_DATA_BYTES
    if weight_bytes <= EXTERNAL_DATA_BYTES:  # the checker serialises the model: only below protobuf's limit
        onnx.checker.check_model(model)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if external_data:
            onnx.save_model(
                model, str(path), save_as_external_data=True, location=f"{path.name}.data", size_threshold=0
            )
        else:
            onnx.save(model, str(path))
    return model


def onnx_elem_type(t: TensorType, where: str) -> int:
    """The ONNX element type of a (logical, unencoded) IR type."""
    if t.dtype.name not in _ONNX_DTYPES:
        raise UnsupportedError(f"{where}: dtype {t.dtype} has no ONNX element type")
    return _ONNX_DTYPES[t.dtype.name]


class _Exporter:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.used: set[str] = set()  # tensor names
        self.node_names: set[str] = set()
        self.op: Op | None = None

    def run(self) -> None:
        from onnx import helper

        for v in self.g.inputs:
            self._reserve(v.name)
            if v.type.encoding is not None:
                raise UnsupportedError(f"graph input %{v.name} has an encoded type {v.type}: ONNX inputs are plain")
            elem = onnx_elem_type(v.type, f"input %{v.name}")
            self.inputs.append(helper.make_tensor_value_info(v.name, elem, list(v.type.shape)))
        for op in self.g.ops:
            self.op = op
            if op.name == "const":
                self._const(op)
            else:
                self._compute(op)
        for v in self.g.outputs:
            t = v.type.logical if isinstance(v.type.encoding, Quant) else v.type
            elem = onnx_elem_type(t, f"output %{v.name}")
            self.outputs.append(helper.make_tensor_value_info(v.name, elem, list(v.type.shape)))

    # -- names and nodes ------------------------------------------------------------
    def _reserve(self, name: str) -> str:
        self.used.add(name)
        return name

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        return self._reserve(name)

    def node(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        """Append a node for the current op; returns its output name (fresh unless given).

        The node computing an IR value is named like the value; helper nodes ``VALUE/OpType``."""
        from onnx import helper

        base = self.op.result.name
        out = output if output is not None else self.fresh(f"{base}.{op_type}")
        name = base if output == base else f"{base}/{op_type}"
        i = 1
        while name in self.node_names:
            name, i = f"{base}/{op_type}_{i}", i + 1
        self.node_names.add(name)
        node = helper.make_node(op_type, inputs, [out], name=name, **attrs)
        if self.op.loc.module:
            node.doc_string = f"module {self.op.loc.module}"
        self.nodes.append(node)
        return out

    def constant(self, base: str, array: np.ndarray, doc: str = "") -> str:
        """An initializer (named after ``base``) holding ``array``."""
        from onnx import numpy_helper

        name = self.fresh(base)
        tensor = numpy_helper.from_array(np.asarray(array), name)
        if doc:
            tensor.doc_string = doc
        self.initializers.append(tensor)
        return name

    # -- constants ---------------------------------------------------------------
    def _const(self, op: Op) -> None:
        v = op.result
        t = v.type
        if op.data is None:
            raise UnsupportedError(f"constant %{v.name} has no data: load the graph with its weights before exporting")
        enc = t.encoding
        if enc is None and t.dtype in (dtypes.f16, dtypes.bf16) and _widened_by_users(v):
            # 16-bit weights of f32 layers (half, bf16): kept 16-bit in the file, widened exactly by a Cast
            stored = self.constant(f"{v.name}_{t.dtype.name}", np.asarray(op.data))
            self._reserve(v.name)
            self.node("Cast", [stored], output=v.name, to=1)
        elif enc is None:
            self._reserve(v.name)
            self.constant_named(v.name, np.asarray(op.data))
        elif isinstance(enc, Quant):
            data = op.data["data"] if isinstance(op.data, dict) else op.data
            q = self.constant(f"{v.name}_quantized", np.asarray(data))
            if enc.axis is None:
                scale = self.constant(f"{v.name}_scale", np.asarray(enc.scale, np.float32))
                zp = self.constant(f"{v.name}_zero_point", np.asarray(enc.zero_point, t.dtype.np))
                self._reserve(v.name)
                self.node("DequantizeLinear", [q, scale, zp], output=v.name)
            else:
                scale = self.constant(f"{v.name}_scale", np.asarray(op.data["scale"], np.float32))
                zp = self.constant(f"{v.name}_zero_point", np.zeros(len(op.data["scale"]), t.dtype.np))
                self._reserve(v.name)
                self.node("DequantizeLinear", [q, scale, zp], output=v.name, axis=enc.axis)
        else:
            # ONNX has no packed or sparse types: the decoded values, named, with the encoding noted
            decoded = np.asarray(t.decode(op.data), np.float32)
            self._reserve(v.name)
            self.constant_named(v.name, decoded, doc=f"mcir: decoded from {t}")

    def constant_named(self, name: str, array: np.ndarray, doc: str = "") -> None:
        from onnx import numpy_helper

        tensor = numpy_helper.from_array(np.asarray(array), name)
        if doc:
            tensor.doc_string = doc
        self.initializers.append(tensor)

    # -- compute ops --------------------------------------------------------------
    def _compute(self, op: Op) -> None:
        v = op.result
        enc = v.type.encoding
        rule = EXPORTS.get(op.name)
        if rule is None:
            raise UnsupportedError(
                f"{op.where()}: op '{op.name}' has no ONNX export rule; add one in mcir/frontend/onnx_export.py"
            )
        ins = [o.name for o in op.operands]
        if isinstance(enc, Round) and op.name == "quantize":
            # f32 -> bf16 -> f32: ONNX's Cast rounds to nearest even, so the float tensor holds the rounded values
            rounded = self.node("Cast", ins, to=16)
            self._reserve(v.name)
            self.node("Cast", [rounded], output=v.name, to=1)
            return
        if enc is not None and not isinstance(enc, Quant):
            raise UnsupportedError(f"{op.where()}: a run-time value of type {v.type} has no ONNX form")
        if op.name == "dequantize":
            self._reserve(v.name)
            self.node("Identity", ins, output=v.name)
            return
        if isinstance(enc, Quant):
            # compute in float, then round into the result type: Q -> DQ (ORT fuses the pattern into int8 kernels)
            real = ins[0] if op.name == "quantize" else rule(self, op, ins, None)
            scale = self.constant(f"{v.name}_scale", np.asarray(enc.scale, np.float32))
            zp = self.constant(f"{v.name}_zero_point", np.asarray(enc.zero_point, v.type.dtype.np))
            q = self.node("QuantizeLinear", [real, scale, zp])
            self._reserve(v.name)
            self.node("DequantizeLinear", [q, scale, zp], output=v.name)
            return
        self._reserve(v.name)
        rule(self, op, ins, v.name)

    def ints(self, base: str, values: Any) -> str:
        return self.constant(f"{self.op.result.name}.{base}", np.asarray(values, np.int64))

    def floats(self, base: str, value: float) -> str:
        return self.constant(f"{self.op.result.name}.{base}", np.asarray(value, np.float32))


def _widened_by_users(v) -> bool:
    """Whether every op reading a 16-bit float constant computes in f32 (a ``half``/``bf16`` weight),
    so ONNX, which does not mix element types in one node, must see it as f32."""
    return bool(v.uses) and all(u.result.type.logical.dtype == dtypes.f32 for u in v.users)


Rule = Callable[[_Exporter, Op, list[str], str | None], str]
EXPORTS: dict[str, Rule] = {}


def exports(*names: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for n in names:
            EXPORTS[n] = fn
        return fn

    return deco


_SAME = {
    "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "neg": "Neg",
    "abs": "Abs", "erf": "Erf", "hardswish": "HardSwish", "logical_not": "Not", "add": "Add", "sub": "Sub",
    "mul": "Mul", "div": "Div", "maximum": "Max", "minimum": "Min", "eq": "Equal", "lt": "Less", "le": "LessOrEqual",
    "gt": "Greater", "ge": "GreaterOrEqual", "logical_and": "And", "logical_or": "Or", "where": "Where",
    "matmul": "MatMul", "concat": "Concat", "dropout": "Identity", "quantize": "Identity",
}  # fmt: skip


@exports(*_SAME)
def _same(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    attrs = {"axis": op.attrs["axis"]} if op.name == "concat" else {}
    if op.name == "div" and op.result.type.dtype.is_integer:
        raise UnsupportedError(f"{op.where()}: integer div floors in mcir and truncates in ONNX")
    return ex.node(_SAME[op.name], ins, out, **attrs)


@exports("ne")
def _ne(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("Not", [ex.node("Equal", ins)], out)


@exports("rsqrt")
def _rsqrt(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("Reciprocal", [ex.node("Sqrt", ins)], out)


@exports("silu")
def _silu(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("Mul", [ins[0], ex.node("Sigmoid", ins)], out)


@exports("hardsigmoid")
def _hardsigmoid(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("HardSigmoid", ins, out, alpha=1.0 / 6.0, beta=0.5)


@exports("gelu")
def _gelu(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    x = ins[0]
    half = ex.node("Mul", [x, ex.floats("half", 0.5)])
    if op.attrs["approximate"] == "tanh":  # x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = ex.node("Mul", [ex.node("Mul", [x, x]), x])
        inner = ex.node("Add", [x, ex.node("Mul", [cube, ex.floats("c", 0.044715)])])
        t = ex.node("Tanh", [ex.node("Mul", [inner, ex.floats("k", math.sqrt(2 / math.pi))])])
    else:  # x/2 (1 + erf(x / sqrt 2))
        t = ex.node("Erf", [ex.node("Mul", [x, ex.floats("inv_sqrt2", 1 / math.sqrt(2))])])
    return ex.node("Mul", [half, ex.node("Add", [t, ex.floats("one", 1.0)])], out)


@exports("pow")
def _pow(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("Pow", [ins[0], ex.floats("exponent", op.attrs["exponent"])], out)


@exports("clamp")
def _clamp(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    lo, hi = op.attrs["min"], op.attrs["max"]
    bounds = ["" if lo is None else ex.floats("min", lo), "" if hi is None else ex.floats("max", hi)]
    while bounds and bounds[-1] == "":
        bounds.pop()
    return ex.node("Clip", [ins[0], *bounds], out)


@exports("cast")
def _cast(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("Cast", ins, out, to=onnx_elem_type(op.result.type.logical, op.where()))


@exports("softmax", "log_softmax")
def _softmax(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("Softmax" if op.name == "softmax" else "LogSoftmax", ins, out, axis=op.attrs["axis"])


@exports("linear")
def _linear(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    x = op.operands[0]
    if x.type.rank == 2:
        return ex.node("Gemm", ins, out, transB=1)
    y = ex.node("MatMul", [ins[0], ex.node("Transpose", [ins[1]], perm=[1, 0])], None if len(ins) > 2 else out)
    return ex.node("Add", [y, ins[2]], out) if len(ins) > 2 else y


@exports("conv2d")
def _conv(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    a = op.attrs
    ph, pw = a["padding"]
    return ex.node(
        "Conv",
        ins,
        out,
        strides=list(a["stride"]),
        pads=[ph, pw, ph, pw],
        dilations=list(a["dilation"]),
        group=a["groups"],
    )


@exports("batch_norm")
def _batch_norm(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("BatchNormalization", ins, out, epsilon=op.attrs["eps"])


@exports("layer_norm")
def _layer_norm(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    dims = op.attrs["dims"]
    shape = op.operands[0].type.shape[-dims:]
    scale = ins[1] if len(ins) > 1 else ex.constant(f"{op.result.name}.scale", np.ones(shape, np.float32))
    bias = [ins[2]] if len(ins) > 2 else []
    return ex.node("LayerNormalization", [ins[0], scale, *bias], out, axis=-dims, epsilon=op.attrs["eps"])


@exports("max_pool2d")
def _max_pool(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    a = op.attrs
    ph, pw = a["padding"]
    return ex.node(
        "MaxPool", ins, out, kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=[ph, pw, ph, pw],
        dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]),
    )  # fmt: skip


@exports("avg_pool2d")
def _avg_pool(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    a = op.attrs
    ph, pw = a["padding"]
    kh, kw = a["kernel"]
    if a["divisor"] is not None and (ph or pw):
        raise UnsupportedError(f"{op.where()}: avg_pool2d with a divisor and padding has no ONNX form")
    y = ex.node(
        "AveragePool", ins, out if a["divisor"] is None else None, kernel_shape=[kh, kw], strides=list(a["stride"]),
        pads=[ph, pw, ph, pw], ceil_mode=int(a["ceil_mode"]), count_include_pad=int(a["count_include_pad"]),
    )  # fmt: skip
    if a["divisor"] is None:
        return y
    return ex.node("Mul", [y, ex.floats("window_over_divisor", kh * kw / a["divisor"])], out)


@exports("adaptive_avg_pool2d")
def _adaptive_avg(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    h, w = op.operands[0].type.shape[2:]
    oh, ow = op.attrs["output_size"]
    if (oh, ow) == (1, 1):
        return ex.node("GlobalAveragePool", ins, out)
    if h % oh or w % ow:
        raise UnsupportedError(
            f"{op.where()}: adaptive pooling of {h}x{w} to {oh}x{ow} (uneven windows) has no ONNX op"
        )
    return ex.node("AveragePool", ins, out, kernel_shape=[h // oh, w // ow], strides=[h // oh, w // ow])


@exports("mean", "sum", "amax")
def _reduce(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    axes = list(op.attrs["axes"]) or list(range(op.operands[0].type.rank))
    keep = int(op.attrs["keepdim"])
    if op.name == "sum":
        return ex.node("ReduceSum", [ins[0], ex.ints("axes", axes)], out, keepdims=keep)
    return ex.node("ReduceMean" if op.name == "mean" else "ReduceMax", ins, out, axes=axes, keepdims=keep)


@exports("argmax")
def _argmax(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("ArgMax", ins, out, axis=op.attrs["axis"], keepdims=int(op.attrs["keepdim"]))


@exports("reshape")
def _reshape(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("Reshape", [ins[0], ex.ints("shape", op.attrs["shape"])], out)


@exports("permute")
def _permute(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("Transpose", ins, out, perm=list(op.attrs["dims"]))


@exports("expand")
def _expand(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("Expand", [ins[0], ex.ints("shape", op.attrs["shape"])], out)


@exports("slice")
def _slice(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    a = op.attrs
    end = min(a["end"], 2**63 - 1)
    return ex.node(
        "Slice",
        [ins[0], ex.ints("starts", [a["start"]]), ex.ints("ends", [end]), ex.ints("axes", [a["axis"]]),
         ex.ints("steps", [a["step"]])],
        out,
    )  # fmt: skip


@exports("select")
def _select(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("Gather", [ins[0], ex.ints("index", op.attrs["index"])], out, axis=op.attrs["axis"])


@exports("embedding")
def _embedding(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    return ex.node("Gather", [ins[1], ins[0]], out, axis=0)


@exports("pad")
def _pad(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    pads = list(op.attrs["pads"])
    onnx_pads = pads[0::2] + pads[1::2]  # ONNX: all befores, then all afters
    value = ex.constant(f"{op.result.name}.value", np.asarray(op.attrs["value"], op.operands[0].type.logical.dtype.np))
    return ex.node("Pad", [ins[0], ex.ints("pads", onnx_pads), value], out, mode="constant")


@exports("scaled_dot_product_attention")
def _attention(ex: _Exporter, op: Op, ins: list[str], out: str | None) -> str:
    q, k = op.operands[0], op.operands[1]
    rank = q.type.rank
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scale = op.attrs["scale"] if op.attrs["scale"] is not None else 1.0 / math.sqrt(q.type.shape[-1])
    scores = ex.node("MatMul", [ins[0], ex.node("Transpose", [ins[1]], perm=perm)])
    scores = ex.node("Mul", [scores, ex.floats("scale", scale)])
    length, source = q.type.shape[-2], k.type.shape[-2]
    if op.attrs["is_causal"]:
        keep = np.tril(np.ones((length, source), bool))
        scores = ex.node("Where", [ex.constant(f"{op.result.name}.causal", keep), scores, ex.floats("ninf", -np.inf)])
    if len(ins) > 3:
        if op.operands[3].type.dtype == dtypes.boolean:
            scores = ex.node("Where", [ins[3], scores, ex.floats("ninf_mask", -np.inf)])
        else:
            scores = ex.node("Add", [scores, ins[3]])
    weights = ex.node("Softmax", [scores], axis=-1)
    if op.attrs["u8_probs"]:  # the probabilities on the u8 grid k/255, as the reference rounds them
        step, zero = ex.floats("prob_scale", 1.0 / 255.0), ex.constant(f"{op.result.name}.prob_zp", np.uint8(0))
        weights = ex.node("DequantizeLinear", [ex.node("QuantizeLinear", [weights, step, zero]), step, zero])
    return ex.node("MatMul", [weights, ins[2]], out)


def op_names_without_export() -> list[str]:
    """Registered IR ops ``to_onnx`` cannot write (for docs and tests)."""
    from mcir.ops import registry

    return sorted(n for n in registry.all_ops() if n not in EXPORTS and n not in ("const", "dequantize"))
