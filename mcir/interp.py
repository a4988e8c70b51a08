"""The numpy reference interpreter: the semantics every backend is measured against.

Values are held in their *stored* form (a u8 array for a quantised activation, a dict
of components for a packed constant). Each op decodes its operands to logical values,
runs the op's numpy reference ("dequantize, compute in float") and encodes the result
into its declared type. Subclass ``Interpreter`` and override ``run_op`` to observe or
change values (calibration, profiling), as with ``torch.fx.Interpreter``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcir import dtypes
from mcir.encodings import NM, Csr, Quant
from mcir.encodings.quant import bias_accumulator_units
from mcir.encodings.rows import row_scales
from mcir.errors import McirError
from mcir.ir import Graph, Op, Value
from mcir.ops import registry


class Interpreter:
    """Runs a graph on numpy arrays."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def run(self, *inputs: np.ndarray) -> list[Any]:
        """Outputs (stored form) of the graph for ``inputs`` (one array per graph input)."""
        g = self.graph
        if len(inputs) != len(g.inputs):
            names = ", ".join(f"%{v.name}: {v.type}" for v in g.inputs)
            raise McirError(f"graph @{g.name} takes {len(g.inputs)} input(s) ({names}), got {len(inputs)}")
        env: dict[int, Any] = {}
        for v, x in zip(g.inputs, inputs):
            env[id(v)] = check_input(v, x)
        last_use = _last_uses(g)
        for i, op in enumerate(g.ops):
            try:
                env[id(op.result)] = self.run_op(op, [env[id(v)] for v in op.operands])
            except McirError as e:
                if op.name == "const" or op.where() in str(e):  # the message already names the value
                    raise
                raise type(e)(f"{e} (while running {describe(op)})") from None
            except MemoryError:
                # a verified graph may still need more memory than this machine has (huge attention scores)
                raise McirError(
                    f"not enough memory to interpret {describe(op)}; run the compiled library or smaller shapes"
                ) from None
            except Exception as e:
                # a failing reference is an mcir bug: keep the exception and its traceback, add where
                if hasattr(e, "add_note"):  # Python 3.11+; on 3.10 the exception goes up unchanged
                    e.add_note(f"while running {describe(op)}")
                raise
            for v in last_use.get(i, ()):
                env.pop(id(v), None)
        return [env[id(v)] for v in g.outputs]

    def run_op(self, op: Op, args: list[Any]) -> Any:
        """Stored result of ``op`` given its operands' stored values."""
        if op.name == "const":
            if op.data is None:
                raise McirError(
                    f"constant %{op.result.name} has no data: load the graph with its weights "
                    "(mcir.load) or attach them before running"
                )
            return op.data
        logical = [v.type.decode(a) for v, a in zip(op.operands, args)]
        if len(args) == 3 and op.name in ("linear", "conv2d"):
            logical[2] = int8_layer_bias(op, args, logical[2])
        out = np.asarray(registry.get(op.name).reference(*logical, **op.attrs))
        if op.name in ("linear", "conv2d") and _sparse_f32_weight(op):
            out = nan_samples_with_non_finite_input(op, logical[0], out)
        t = op.result.type
        if out.shape != t.shape:
            raise McirError(f"internal error: reference of {op.where()} gave shape {list(out.shape)}, type says {t}")
        return t.encode(out)


def int8_layer_bias(op: Op, args: list[Any], bias: Any) -> Any:
    """The bias of an int8 layer (u8 ``#quant`` input, i8 ``#quant``/``#csr``/``#nm`` weight) as the
    layer adds it: rounded to accumulator units ``s_x·s_w[n]`` (``bias_accumulator_units``, shared
    with the native kernels), so a bias not stored at that scale gives the same result in both.
    Any other layer's bias is returned unchanged."""
    x, w, b = (v.type for v in op.operands)
    if not (x.dtype == dtypes.u8 and isinstance(x.encoding, Quant) and x.encoding.axis is None):
        return bias
    if w.dtype != dtypes.i8 or w.rank < 2:
        return bias
    n = w.shape[0]
    if isinstance(w.encoding, Quant) and w.encoding.zero_point == 0:
        if w.encoding.axis is None:
            sw = np.full(n, w.encoding.scale, np.float32)
        elif w.encoding.axis % w.rank == 0:
            sw = np.asarray(args[1]["scale"], np.float32).reshape(n)
        else:
            return bias  # no kernel takes it (CodegenError natively): keep the exact float meaning
    elif isinstance(w.encoding, (Csr, NM)):
        sw = row_scales(w, args[1])
    else:
        return bias
    if b.numel != n:
        return bias
    # the accumulator scale exactly as the kernels form it: the dense ones round the f64 product of
    # the type's scale and the weight's, the sparse ones multiply in f32 (gemm_i8, sparse_i8)
    if isinstance(w.encoding, Quant):
        acc = (np.float64(x.encoding.scale) * sw.astype(np.float64)).astype(np.float32)
    else:
        acc = np.float32(x.encoding.scale) * sw.astype(np.float32)
    units = bias_accumulator_units(b, args[2], acc)
    return (units.astype(np.float64) * acc.astype(np.float64)).reshape(b.shape)


def _sparse_f32_weight(op: Op) -> bool:
    w = op.operands[1].type
    return op.operands[0].type.dtype == dtypes.f32 and w.dtype == dtypes.f32 and isinstance(w.encoding, (Csr, NM))


def nan_samples_with_non_finite_input(op: Op, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """A layer with a sparse f32 weight gives NaN for every result of a sample (a row of x for
    ``linear``, an image for ``conv2d``) whose input holds an inf or NaN, as its native kernel does:
    the kernels skip absent weights unevenly, so 0·inf has no single dense answer there (docs/ir.md)."""
    x = np.asarray(x)
    if op.name == "linear":
        k = x.shape[-1] if x.ndim else 1
        bad = ~np.isfinite(x.reshape(-1, k)).all(axis=1)
        out = np.array(out, copy=True).reshape(bad.shape[0], -1)
    else:
        bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
        out = np.array(out, copy=True).reshape(bad.shape[0], -1)
    if bad.any():
        out[bad] = np.nan
    return out.reshape(op.result.type.shape)


def describe(op: Op) -> str:
    """The op, its module path and source line, and its operand types, for error messages."""
    operands = ", ".join(f"%{v.name}: {v.type}" for v in op.operands) or "no operands"
    return f"{op.where()} on ({operands})"


def _last_uses(g: Graph) -> dict[int, list[Value]]:
    """Op index -> values whose last use is that op (freed to keep memory flat)."""
    outputs = {id(v) for v in g.outputs}
    last: dict[int, tuple[int, Value]] = {}
    for i, op in enumerate(g.ops):
        for v in op.operands:
            last[id(v)] = (i, v)
    out: dict[int, list[Value]] = {}
    for key, (i, v) in last.items():
        if key not in outputs:
            out.setdefault(i, []).append(v)
    return out


def check_input(v: Value, x: Any) -> np.ndarray:
    """``x`` as an array of ``v``'s type; McirError naming the input when shape or dtype differ."""
    arr = np.asarray(x)
    t = v.type
    want = t.dtype.np
    if arr.shape != t.shape:
        raise McirError(f"input %{v.name} must have shape {list(t.shape)}, got {list(arr.shape)}")
    if arr.dtype != want:
        if arr.dtype.kind == want.kind == "f" or (
            arr.dtype.kind in "iu"
            and want.kind in "iu"
            and np.can_cast(arr.dtype, want, "same_kind")
            and arr.size
            and arr.min() >= np.iinfo(want).min
            and arr.max() <= np.iinfo(want).max
        ):
            return arr.astype(want)
        raise McirError(f"input %{v.name} must be {t.dtype} ({want}), got {arr.dtype}")
    return arr


def interpret(graph: Graph, *inputs: np.ndarray) -> list[Any]:
    """Run ``graph`` with the reference interpreter; returns the list of outputs."""
    return Interpreter(graph).run(*inputs)
