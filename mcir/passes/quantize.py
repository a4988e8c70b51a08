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
(``mcir.analysis.sparse_cost.prefer_sparse``) says the int8 sparse form pays: the same encoding
in i8 with one scale per row, ``to_csr(w, i8)``; otherwise they become dense int8 (with zeros).

``bits=4`` / ``bits=2`` and ``scheme=pow2`` are weight-only (``weight_only``): linear weights
become ``#int4`` / ``#int2`` (per channel or per ``group``) or ``#pow2``, activations stay f32
and no calibration is needed.

Mixed precision: ``bits_for='fc1:4,head:16'`` gives layers their own bits, one ``REGEX:BITS`` per
comma (the regex is searched in the layer's module path, result name and weight name, as for
``skip``; the first matching rule wins; BITS is 16 = keep float, 8, 4 or 2). Layers no rule names
take ``bits``. The low-bit layers are encoded first, then the int8 layers are calibrated on that graph.

Preserves: approximate; the pipeline report gives max |Δ| and SQNR against the float model.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from mcir import dtypes
from mcir.analysis.calibration import affine_params, check_method, choose_range, observe
from mcir.analysis.layers import check_skip, is_skipped, layer_names, select_layers, weighted_layers
from mcir.analysis.sparse_cost import prefer_sparse
from mcir.encodings import NM, Csr, Quant, to_csr, to_nm
from mcir.encodings.rows import quantize_rows
from mcir.errors import McirError
from mcir.interp import check_input
from mcir.ir import Graph, Op, Value
from mcir.pass_base import Pass, PassContext, option
from mcir.passes.compressed_weight import dynamic_input, store_weight
from mcir.passes.fold import NOOPS, FoldBatchNorm
from mcir.passes.quant_fusion import FUSION, INT8_ACTIVATION_OPS, INT8_LAYERS, TRANSPARENT, remaining_conversions
from mcir.patterns import RuleSet, apply_rules, constant_array
from mcir.rewriter import Rewriter
from mcir.sample_inputs import random_batches
from mcir.types import TensorType

#: recurrences whose W_hh (second-to-last operand) becomes int8; their state meets it on a fixed u8 grid
RECURRENT = frozenset({"lstm", "gru"})
RECURRENT_WEIGHT = {"lstm": 3, "gru": 2}  # operand index of W_hh


@dataclass(frozen=True)
class Quantize(Pass):
    """Post-training INT8 quantisation: int8 per-channel weights, calibrated u8 activations, integer fusion."""

    name: ClassVar[str] = "quantize"
    preserves: ClassVar[str] = "approximate: max |delta| and SQNR vs the float model are reported"
    bits: int = option(8, "weight bits: 8 (int8 layers), 4 or 2 (weight-only, float activations)")
    weights: Literal["per_channel", "per_tensor"] = option("per_channel", "weight scale granularity")
    activations: Literal["static", "dynamic"] = option(
        "static", "static: u8 scales calibrated ahead of time; dynamic: per sample at run time (linear, f32 out)"
    )
    scheme: Literal["linear", "pow2"] = option("linear", "linear: w ≈ s·q; pow2: w ≈ ±2^k (bits=2..4)")
    group: int = option(0, "bits=4/2: elements per weight scale (32, 64, 128; 0: per output channel)")
    calibration: str = option("minmax", "range estimator: minmax, percentile(99.99) or entropy")
    skip: str = option("none", "layers kept in float: none, first, last, ends or a regex")
    attention: bool = option(False, "also quantise attention matmuls (matmul ops)")
    fuse: bool = option(True, "keep consecutive int8 layers integer (fuse requantisation, ReLU, pooling)")
    samples: int = option(16, "random calibration batches used when no calibration data is given")
    qat: int = option(0, "quantisation-aware training: epochs of finetuning through fake quantisation (needs data=)")
    bits_for: str = option("", "per-layer bits: 'REGEX:BITS,...' with BITS 16 (keep float), 8, 4 or 2")

    def __post_init__(self) -> None:
        check_low_bits(self)
        parse_bits_for(self.bits_for)
        check_method(self.calibration)
        check_skip(self.skip)
        if self.samples < 1:
            raise McirError(f"samples={self.samples} must be at least 1")
        if self.qat < 0:
            raise McirError(f"qat={self.qat} must be a number of epochs >= 0")
        if self.qat and (self.activations == "dynamic" or self.bits < 8 or self.scheme == "pow2"):
            raise McirError(
                f"qat={self.qat} trains the static int8 path only (bits=8, activations=static); for low-bit or "
                "dynamic weights, follow the pass with finetune(...)"
            )

    @property
    def needs_data(self) -> bool:
        return self.qat > 0

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        if self.bits_for:
            mixed_precision(graph, self, ctx)
            return
        if self.qat:
            from mcir.train.run import require_data

            require_data(ctx, f"quantize(qat={self.qat})")  # before changing anything
        apply_rules(graph, NOOPS + RuleSet("fold.batch_norm", [FoldBatchNorm()]))
        if self.activations == "dynamic":
            dynamic(graph, self, ctx)
            return
        if self.bits < 8 or self.scheme == "pow2":
            weight_only(graph, self, ctx)
            return
        batches = ctx.get("calibration")
        if not batches:
            batches = random_batches(graph, self.samples)
            ctx.warn(
                f"quantize: no calibration data given; calibrated on {self.samples} random batches "
                "(pass calibration=... or --calibration FILE for representative ranges)"
            )
        wanted = range_candidates(graph, self.attention) if self.calibration != "minmax" else set()
        stats = observe(graph, check_batches(graph, batches), histograms=wanted)
        ranges = {name: choose_range(s, self.calibration) for name, s in stats.items()}
        _Quantizer(graph, self, ranges).run()
        if self.fuse:
            apply_rules(graph, FUSION)
        notes = remaining_conversions(graph)
        notes += dense_where_sparse_int8_does_not_pay(graph, ctx.data.get("target", "native"))
        if notes:
            ctx.warn("quantize: " + "; ".join(notes))
        if self.qat:
            from mcir.train.run import train_graph

            # a small lr: the int8 grid is already close; training mostly moves weights across rounding steps
            train_graph(graph, ctx, label="qat", epochs=self.qat, lr=1e-4, batch_size=64, optimizer="adam", seed=0)


HOLD = "quantize.hold"  # op.meta key: a mixed-precision stage leaves this layer to another stage


def parse_bits_for(text: str) -> list[tuple[re.Pattern[str], int]]:
    """``'fc1:4,head:16'`` as (compiled regex, bits) rules; McirError naming the bad item."""
    rules = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        pattern, sep, bits = item.rpartition(":")
        if not sep or not pattern or bits not in ("16", "8", "4", "2"):
            raise McirError(
                f"quantize: bits_for item {item!r} must be REGEX:BITS with BITS 16 (keep float), 8, 4 or 2, "
                "e.g. bits_for='fc1:4,head:16'"
            )
        try:
            rules.append((re.compile(pattern), int(bits)))
        except re.error as e:
            raise McirError(f"quantize: bits_for item {item!r}: {pattern!r} is not a regular expression: {e}") from e
    return rules


def mixed_precision(graph: Graph, opts: Quantize, ctx: PassContext) -> None:
    """bits_for: one quantize stage per bit width, each on its own layers (the others held in float)."""
    # fold first, so the layers chosen here are the ops every stage sees (folding replaces conv+BN)
    apply_rules(graph, NOOPS + RuleSet("fold.batch_norm", [FoldBatchNorm()]))
    layers = select_layers(graph, opts.skip)
    rules = parse_bits_for(opts.bits_for)
    chosen: dict[int, int] = {}
    for pattern, bits in rules:
        matched = [op for op in layers if pattern.search(" ".join(layer_names(op))) and id(op) not in chosen]
        if not any(pattern.search(" ".join(layer_names(op))) for op in layers):
            names = ", ".join(op.loc.module or op.result.name for op in layers)
            raise McirError(f"quantize: bits_for pattern {pattern.pattern!r} names no layer; the layers are: {names}")
        for op in matched:
            chosen[id(op)] = bits
    level = {id(op): chosen.get(id(op), opts.bits) for op in layers}
    # low-bit layers first: their encodings are final, and the int8 stage then calibrates on that graph
    for bits in sorted({b for b in level.values() if b != 16}):
        for op in graph.ops:
            if op in layers and level[id(op)] != bits:
                op.meta[HOLD] = True
        stage = dataclasses.replace(opts, bits=bits, bits_for="", qat=opts.qat if bits == 8 else 0)
        try:
            stage.apply(graph, ctx)
        finally:
            for op in graph.ops:
                op.meta.pop(HOLD, None)
    counts = {b: sum(1 for v in level.values() if v == b) for b in sorted(set(level.values()), reverse=True)}
    ctx.warn("quantize: mixed precision, layers per bit width: " + ", ".join(f"{b}: {n}" for b, n in counts.items()))


def range_candidates(graph: Graph, attention: bool) -> set[str]:
    """Names of the float values ``_Quantizer`` may quantise (a superset): the activation operand
    of int8 layers, both operands of attention matmuls, the operands of the ops run on u8.
    Only these need histograms; every other value's range is never read."""
    names: set[str] = set()
    for op in graph.compute_ops():
        if op.name in INT8_LAYERS:
            names.add(op.operands[0].name)
        elif op.name in INT8_ACTIVATION_OPS or (attention and op.name == "matmul"):
            names.update(v.name for v in op.operands)
    return names


def dense_where_sparse_int8_does_not_pay(graph: Graph, target: str = "native") -> list[str]:
    """Store an int8 ``#csr``/``#nm`` weight densely (``#quant<axis=0>``, same per-row scales, so
    the values and the int32 bias are unchanged: exact) where the layer has no native kernel for
    the sparse form or its kernel would embed no fewer bytes than the dense int8 kernel."""
    from mcir.stats import try_kernel

    rw = Rewriter(graph)
    kept = []
    for op in list(graph.compute_ops()):
        if len(op.operands) < 2:
            continue
        w = op.operands[1]
        if not (isinstance(w.type.encoding, Csr | NM) and w.type.dtype == dtypes.i8 and w.is_constant):
            continue
        stored = w.producer.data
        scale = np.asarray(stored["scale"], np.float32)
        per_row = scale.astype(np.float64).reshape((-1,) + (1,) * (w.type.rank - 1))
        q = np.rint(w.type.decode(stored) / per_row).astype(np.int8)
        dense = (TensorType(w.type.shape, dtypes.i8, Quant(axis=0)), {"data": q, "scale": scale})
        sparse_trial, dense_trial = try_kernel(op, target=target), try_kernel(op, {1: dense}, target)
        if sparse_trial.ok and not (dense_trial.ok and dense_trial.weight_bytes <= sparse_trial.weight_bytes):
            continue
        why = (
            "no native kernel"
            if not sparse_trial.ok
            else f"{sparse_trial.weight_bytes} B vs dense {dense_trial.weight_bytes} B"
        )
        kept.append(f"{op.loc.module or op.result.name} ({why})")
        if len(w.uses) == 1:
            rw.set_data(w.producer, dense[1], dense[0])
        else:
            rw.set_operand(op, 1, rw.const(f"{w.name}.dense", dense[1], dense[0]))
    return [f"int8 sparse weights stored dense: {', '.join(kept)}"] if kept else []


def check_low_bits(opts: Quantize) -> None:
    """McirError for a bits / scheme / group combination no encoding stores."""
    if opts.scheme not in ("linear", "pow2"):
        raise McirError(f"quantize: scheme={opts.scheme!r} must be linear or pow2")
    if opts.scheme == "pow2":
        if opts.bits not in (2, 3, 4):
            raise McirError(
                f"quantize: scheme=pow2 stores a sign and exponent bits in 2..4 bits, not bits={opts.bits}; "
                "use quantize(scheme=pow2, bits=4)"
            )
    elif opts.bits not in (8, 4, 2):
        raise McirError(f"quantize: bits={opts.bits} is not supported: use 8 (int8 layers), 4 or 2 (weight-only)")
    if opts.activations not in ("static", "dynamic"):
        raise McirError(f"quantize: activations={opts.activations!r} must be static or dynamic")
    if opts.activations == "dynamic" and (opts.bits not in (8, 4) or opts.scheme != "linear"):
        raise McirError("quantize: activations=dynamic takes int8 (bits=8) or int4 (bits=4) linear weights")
    if opts.group not in (0, 32, 64, 128) or (opts.group and (opts.bits == 8 or opts.scheme == "pow2")):
        raise McirError(
            f"quantize: group={opts.group} must be 0, 32, 64 or 128, and applies to bits=4 or 2 linear weights only"
        )


def weight_only(graph: Graph, opts: Quantize, ctx: PassContext) -> None:
    """bits=4/2 or scheme=pow2: compress the weights of linear layers, activations stay f32.

    ``w ≈ s_g · q`` with q in [-7, 7] (``#int4``) or [-1, 1] (``#int2``), s_g = max|w_g| / qmax
    per output channel or per group of ``group`` weights; or ``w ≈ ±2^(offset_c + e - E)``
    (``#pow2``). No calibration: the table-lookup kernels take f32 activations.
    """
    from mcir.encodings import Int2, Int4, Pow2

    if opts.scheme == "pow2":
        enc, dt = Pow2(bits=opts.bits), dtypes.f32
    else:
        enc, dt = (Int4 if opts.bits == 4 else Int2)(group=opts.group), dtypes.i8
    done: dict[int, tuple[TensorType, dict]] = {}
    for op in select_layers(graph, opts.skip):
        if op.meta.get(HOLD):
            continue
        w = op.operands[1]
        if id(w) not in done:
            t = TensorType(w.type.shape, dt, enc)
            done[id(w)] = (t, t.encode(constant_array(w)))
        store_weight(Rewriter(graph), op, *done[id(w)], ctx, "quantize")


def dynamic(graph: Graph, opts: Quantize, ctx: PassContext) -> None:
    """activations=dynamic: int8 (or int4) weights, u8 activations quantised per sample at run time.

    Each linear layer's input gets ``quantize(x) : u8 #dynamic<axis=0>`` (scale and zero point
    computed by the kernel every call, no calibration) and its weight becomes symmetric int8 per
    output channel (``#quant<axis=0>``) or ``#int4``; the result and the bias stay f32.
    """
    from mcir.encodings import Dynamic, Int4

    rw = Rewriter(graph)
    inputs: dict[int, Value] = {}
    for op in select_layers(graph, opts.skip):
        if op.meta.get(HOLD):
            continue
        x, w = op.operands[0], op.operands[1]
        if op.name != "linear" or x.type.encoding is not None or not x.type.dtype.is_float:
            continue
        if opts.bits == 4:
            t = TensorType(w.type.shape, dtypes.i8, Int4(group=opts.group))
            stored = t.encode(constant_array(w))
        else:
            q, scale = quantize_rows(constant_array(w).astype(np.float64).reshape(w.type.shape[0], -1))
            t = TensorType(w.type.shape, dtypes.i8, Quant(axis=0))
            stored = {"data": q.reshape(w.type.shape), "scale": scale}
        xt = TensorType(x.type.shape, dtypes.u8, Dynamic(axis=0))
        if store_weight(rw, op, t, stored, ctx, "quantize", inputs={0: (xt, None)}):
            rw.set_operand(op, 0, dynamic_input(rw, graph, x, inputs))


def check_batches(graph: Graph, batches) -> list[tuple[np.ndarray, ...]]:
    """Calibration batches as tuples of arrays matching the graph inputs; McirError naming the bad one."""
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
        if (user.name in TRANSPARENT or user.name in INT8_ACTIVATION_OPS) and feeds_int8(
            user.result, graph, int8_ops, memo
        ):
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
        return op.meta.get(HOLD, False) or is_skipped(op, self.opts.skip, self.layers)

    def run(self) -> None:
        int8_ops = INT8_LAYERS | ({"matmul"} if self.opts.attention else set())
        for op in list(self.graph.compute_ops()):
            if op.graph is not self.graph or self.skipped(op):
                continue
            if op.name in INT8_LAYERS:
                self.weighted(op)
            elif op.name in RECURRENT:
                self.recurrent(op)
            elif op.name == "matmul" and self.opts.attention:
                self.activations(op, range(2))
            elif op.name in INT8_ACTIVATION_OPS and feeds_int8(op.result, self.graph, int8_ops):
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

    def recurrent(self, op: Op) -> None:
        """An LSTM/GRU recurrence: W_hh int8 per row; the hidden state, always inside (-1, 1), is
        fed on the fixed grid q/127 (``int8_state``), so it needs no calibration. An LSTM with a
        projection (``w_hr``) stays float: its projected state is not bounded by 1, so the fixed grid
        would clip it."""
        if op.name == "lstm" and len(op.operands) == 6:
            return
        index = RECURRENT_WEIGHT[op.name]
        w = op.operands[index]
        if not (w.is_constant and w.producer.data is not None and w.type.dtype.is_float and w.type.encoding is None):
            return
        wq, _ = self.weight(w)
        self.rw.set_operand(op, index, wq)
        self.rw.set_attrs(op, int8_state=True)

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
