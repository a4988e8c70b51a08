"""quantize (quant8 = quantize(bits=8)): post-training INT8 quantisation with calibration.

Weights become symmetric int8 per output channel, ``w ≈ s_c · q`` with
``s_c = max|w_c| / 127``; activations entering an int8 layer become u8 with an affine
scale and zero point calibrated on sample inputs, ``x ≈ s · (q - z)``; biases become int32
in the accumulator's scale ``s_x · s_c``. Before (after ``fold``)::

    %fc1.weight = const : f32[256,64]
    %fc1.bias = const : f32[256]
    %h = linear(%x, %fc1.weight, %fc1.bias) : f32[1,256]
    %r = relu(%h) : f32[1,256]
    %y = linear(%r, %fc2.weight, %fc2.bias) : f32[1,10]

After::

    %fc1.weight = const : i8[256,64] #quant<axis=0>
    %fc1.bias = const : i32[256] #quant<axis=0>
    %x.q = quantize(%x) : u8[1,64] #quant<scale=0.0039, zero_point=0>
    %h = linear(%x.q, %fc1.weight, %fc1.bias) : u8[1,256] #quant<scale=0.051, zero_point=0>
    %y = linear(%h, %fc2.weight, %fc2.bias) : f32[1,10]

The fusion rules (``mcir.passes.quant_fusion``) keep consecutive int8 layers integer: the
requantisation moves into the producing layer, ReLU/ReLU6 become the saturation of the u8
output, and data movement and max-pooling run on u8 values. Before quantising, BatchNorm is
folded into its conv/linear and dropout removed (exact), so conv+BN is one int8 layer.

Sparse weights (``#csr``/``#nm`` in f32, from ``prune``) stay sparse when the cost rule
(``mcir.passes.sparse_cost.prefer_sparse``) says the int8 sparse form pays: the same encoding
in i8 with one scale per row, ``to_csr(w, i8)``; otherwise they become dense int8 (with zeros).

Preserves: approximate; the pipeline report gives max |Δ| and SQNR against the float model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from mcir import dtypes
from mcir.errors import McirError
from mcir.ir import Graph, Op, Value
from mcir.pass_manager import Pass, PassContext, option
from mcir.passes.calibration import affine_params, check_method, choose_range, observe
from mcir.passes.layers import check_skip, is_skipped, weighted_layers
from mcir.patterns import RuleSet, apply_rules, constant_array
from mcir.rewriter import Rewriter
from mcir.sparse import NM, Csr, to_csr, to_nm
from mcir.types import Quant, TensorType

#: ops whose weights are quantised (operand 1) and whose activation input (operand 0) is u8
WEIGHTED = {"linear", "conv2d"}
#: ops that run on u8 activations when their result feeds int8 layers anyway
ACTIVATION_OPS = {"add", "avg_pool2d", "adaptive_avg_pool2d", "mean"}
#: ops a u8 value passes through unchanged in meaning (data movement, monotonic ops)
TRANSPARENT = {"reshape", "permute", "slice", "select", "max_pool2d", "relu", "clamp", "dropout"}


@dataclass(frozen=True)
class Quantize(Pass):
    """Post-training INT8 quantisation: int8 per-channel weights, calibrated u8 activations, integer fusion."""

    name: ClassVar[str] = "quantize"
    preserves: ClassVar[str] = "approximate: max |delta| and SQNR vs the float model are reported"
    bits: int = option(8, "weight/activation bits (8)")
    weights: Literal["per_channel", "per_tensor"] = option("per_channel", "weight scale granularity")
    activations: Literal["static"] = option("static", "activation scales: calibrated ahead of time")
    calibration: str = option("minmax", "range estimator: minmax, percentile(99.99) or entropy")
    skip: str = option("none", "layers kept in float: none, first, last, ends or a regex")
    attention: bool = option(False, "also quantise attention matmuls (matmul ops)")
    fuse: bool = option(True, "keep consecutive int8 layers integer (fuse requantisation, ReLU, pooling)")
    samples: int = option(16, "random calibration batches used when no calibration data is given")
    qat: int = option(0, "quantisation-aware training: epochs of finetuning through fake quantisation (needs data=)")

    def __post_init__(self) -> None:
        if self.bits != 8:
            raise McirError(f"bits={self.bits} is not supported: the int8 kernels need bits=8")
        check_method(self.calibration)
        check_skip(self.skip)
        if self.samples < 1:
            raise McirError(f"samples={self.samples} must be at least 1")
        if self.qat < 0:
            raise McirError(f"qat={self.qat} must be a number of epochs >= 0")

    @property
    def needs_data(self) -> bool:
        return self.qat > 0

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        from mcir.passes.fold import NOOPS, FoldBatchNorm
        from mcir.passes.quant_fusion import FUSION, remaining_conversions

        if self.qat:
            from mcir.train.run import require_data

            require_data(ctx, f"quantize(qat={self.qat})")  # before changing anything
        apply_rules(graph, NOOPS + RuleSet("fold.batch_norm", [FoldBatchNorm()]))
        batches = ctx.get("calibration")
        if not batches:
            batches = random_batches(graph, self.samples)
            ctx.warn(
                f"quantize: no calibration data given; calibrated on {self.samples} random batches "
                "(pass calibration=... or --calibration FILE for representative ranges)"
            )
        stats = observe(graph, check_batches(graph, batches), histograms=self.calibration != "minmax")
        ranges = {name: choose_range(s, self.calibration) for name, s in stats.items()}
        _Quantizer(graph, self, ranges).run()
        if self.fuse:
            apply_rules(graph, FUSION)
        notes = remaining_conversions(graph)
        if notes:
            ctx.warn("quantize: " + "; ".join(notes))
        if self.qat:
            from mcir.train.run import train_graph

            # a small lr: the int8 grid is already close; training mostly moves weights across rounding steps
            train_graph(graph, ctx, label="qat", epochs=self.qat, lr=1e-4, batch_size=64, optimizer="adam", seed=0)


def check_batches(graph: Graph, batches) -> list[tuple[np.ndarray, ...]]:
    """Calibration batches as tuples of arrays matching the graph inputs; McirError naming the bad one."""
    from mcir.interp import check_input

    out = []
    for i, batch in enumerate(batches):
        arrays = tuple(batch) if isinstance(batch, tuple | list) else (batch,)
        if len(arrays) != len(graph.inputs):
            raise McirError(
                f"calibration batch {i} has {len(arrays)} arrays; the graph takes "
                f"{len(graph.inputs)} input(s) ({', '.join('%' + v.name for v in graph.inputs)})"
            )
        try:
            out.append(tuple(check_input(v, np.asarray(a)) for v, a in zip(graph.inputs, arrays)))
        except McirError as e:
            raise McirError(f"calibration batch {i}: {e}") from None
    return out


def random_batches(graph: Graph, count: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """Standard-normal float inputs, quantised integers over their range, indices in range for the
    embedding they index."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        batch = []
        for v in graph.inputs:
            t = v.type
            if t.dtype.is_float:
                batch.append(rng.standard_normal(t.shape).astype(t.dtype.np))
            elif t.encoding is not None:  # already-quantised integers: anywhere in their range
                info = np.iinfo(t.dtype.np)
                batch.append(rng.integers(info.min, int(info.max) + 1, t.shape).astype(t.dtype.np))
            else:  # indices: in range for the embedding they select from (0/1 when they feed none)
                high = min((u.operands[1].type.shape[0] for u in v.users if u.name == "embedding"), default=2)
                batch.append(rng.integers(0, high, t.shape).astype(t.dtype.np))
        out.append(tuple(batch))
    return out


def feeds_int8(value: Value, graph: Graph, int8_ops: set[str], _memo: dict[int, bool] | None = None) -> bool:
    """Whether every consumer of ``value`` (looking through transparent and activation ops) is an
    int8 layer reading it as its activation, so quantising ``value`` costs no extra conversion."""
    memo = {} if _memo is None else _memo
    if id(value) in memo:
        return memo[id(value)]
    ok = bool(value.uses) and not any(v is value for v in graph.outputs)
    for user in value.users if ok else ():
        if user.name in int8_ops and user.operands[0] is value and value not in user.operands[1:]:
            continue
        if (user.name in TRANSPARENT or user.name in ACTIVATION_OPS) and feeds_int8(user.result, graph, int8_ops, memo):
            continue
        ok = False
        break
    memo[id(value)] = ok
    return ok


class _Quantizer:
    def __init__(self, graph: Graph, opts: Quantize, ranges: dict[str, tuple[float, float]]) -> None:
        self.graph = graph
        self.opts = opts
        self.ranges = ranges
        self.rw = Rewriter(graph)
        self.quantized: dict[int, Value] = {}  # float value -> its quantize op result
        self.weights: dict[int, tuple[Value, np.ndarray]] = {}  # float weight -> (int8 weight, scales)
        self.layers = weighted_layers(graph)

    def skipped(self, op: Op) -> bool:
        return is_skipped(op, self.opts.skip, self.layers)

    def run(self) -> None:
        int8_ops = WEIGHTED | ({"matmul"} if self.opts.attention else set())
        for op in list(self.graph.compute_ops()):
            if op.graph is not self.graph or self.skipped(op):
                continue
            if op.name in WEIGHTED:
                self.weighted(op)
            elif op.name == "matmul" and self.opts.attention:
                self.activations(op, range(2))
            elif op.name in ACTIVATION_OPS and feeds_int8(op.result, self.graph, int8_ops):
                self.activations(op, range(2) if op.name == "add" else range(1))

    def quantize_value(self, v: Value) -> Value | None:
        """The u8 version of float activation ``v`` (one quantize op per value), None if it has no range."""
        if id(v) in self.quantized:
            return self.quantized[id(v)]
        if v.type.encoding is not None or not v.type.dtype.is_float or v.name not in self.ranges:
            return None
        scale, zp = affine_params(*self.ranges[v.name])
        t = TensorType(v.type.shape, dtypes.u8, Quant(scale=scale, zero_point=zp))
        anchor = v.producer
        if anchor is None or anchor.name == "const":
            first = next(op for op in self.graph.ops if op.name != "const")
            q = self.rw.insert_before(first, "quantize", [v], type=t, result=f"{v.name}.q")
        else:
            q = self.rw.insert_after(anchor, "quantize", [v], type=t, result=f"{v.name}.q")
        self.quantized[id(v)] = q
        return q

    def activations(self, op: Op, indices) -> None:
        qs = [self.quantize_value(op.operands[i]) for i in indices]
        if any(q is None for q in qs):
            return
        for i, q in zip(indices, qs):
            self.rw.set_operand(op, i, q)

    def weighted(self, op: Op) -> None:
        x, w = op.operands[0], op.operands[1]
        sparse_f32 = isinstance(w.type.encoding, Csr | NM) and w.type.dtype == dtypes.f32
        if not (w.is_constant and w.producer.data is not None and w.type.dtype.is_float):
            return  # a weight computed at run time: leave the layer as it is
        if w.type.encoding is not None and not sparse_f32:
            return  # already compressed (quantised, packed): leave the layer as it is
        b = op.operands[2] if len(op.operands) == 3 else None
        if b is not None and not (b.is_constant and b.producer.data is not None and b.type.encoding is None):
            return
        xq = self.quantize_value(x)
        if xq is None:
            return
        wq, w_scale = self.weight(w)
        self.rw.set_operand(op, 0, xq)
        self.rw.set_operand(op, 1, wq)
        if b is not None:
            x_scale = xq.type.encoding.scale
            self.rw.set_operand(op, 2, self.bias(b, x_scale * w_scale, op))

    def weight(self, w: Value) -> tuple[Value, np.ndarray]:
        """Symmetric int8 weights with one scale per output channel (axis 0) or per tensor."""
        if id(w) in self.weights:
            return self.weights[id(w)]
        a = constant_array(w).astype(np.float64)
        sparse = self.sparse_weight(w, a)
        if sparse is not None:
            t, data = sparse
            if len(w.uses) == 1:
                self.rw.set_data(w.producer, data, t)
                wq = w
            else:
                wq = self.rw.const(f"{w.name}.q", data, t)
            self.weights[id(w)] = (wq, data["scale"])
            return wq, data["scale"]
        per_channel = self.opts.weights == "per_channel"
        amax = np.abs(a).reshape(a.shape[0], -1).max(axis=1) if per_channel else np.array([np.abs(a).max()])
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        bshape = (-1,) + (1,) * (a.ndim - 1)
        q = np.clip(np.rint(a / scale.astype(np.float64).reshape(bshape if per_channel else ())), -127, 127)
        q = q.astype(np.int8)
        if per_channel:
            t = TensorType(w.type.shape, dtypes.i8, Quant(axis=0))
            data = {"data": q, "scale": scale}
        else:
            t = TensorType(w.type.shape, dtypes.i8, Quant(scale=float(scale[0]), zero_point=0))
            data = q
        if len(w.uses) == 1:
            self.rw.set_data(w.producer, data, t)
            wq = w
        else:
            wq = self.rw.const(f"{w.name}.q", data, t)
        result = (wq, scale if per_channel else np.full(a.shape[0], scale[0], np.float32))
        self.weights[id(w)] = result
        return result

    @staticmethod
    def sparse_weight(w: Value, a: np.ndarray) -> tuple[TensorType, dict] | None:
        """A pruned (#csr/#nm f32) weight as the same encoding in i8 with per-row scales, when that pays."""
        from mcir.passes.sparse_cost import prefer_sparse

        enc = w.type.encoding
        rows, cols = a.shape[0], a.size // a.shape[0]
        if isinstance(enc, Csr) and prefer_sparse("csr", rows, cols, int(np.count_nonzero(a)), dtypes.i8):
            return to_csr(a, dtypes.i8)
        if isinstance(enc, NM) and prefer_sparse("nm", rows, cols, 0, dtypes.i8, enc.n, enc.m):
            return to_nm(a, enc.n, enc.m, dtypes.i8)
        return None  # dense int8 (zeros included) is smaller or faster

    def bias(self, b: Value, scale: np.ndarray, op: Op) -> Value:
        """int32 bias in the accumulator's scale s_x * s_w[c] (so it adds straight to the int32 sum)."""
        scale = scale.astype(np.float32)
        q = np.clip(np.rint(constant_array(b).astype(np.float64) / scale.astype(np.float64)), -(2**31), 2**31 - 1)
        t = TensorType(b.type.shape, dtypes.i32, Quant(axis=0))
        data = {"data": q.astype(np.int32), "scale": scale}
        if len(b.uses) == 1:
            self.rw.set_data(b.producer, data, t)
            return b
        return self.rw.const(f"{b.name}.q", data, t, loc=op.loc)
