"""binarize / ternarize: 1-bit and 2-bit weights (and optionally 1-bit activations).

binarize (XNOR-Net, BinaryConnect): ``W ≈ α · sign(W)`` with α = mean|W_c| per output
channel, so ``W * X ≈ α (sign(W) ⊙ X)``. With ``activations=binary`` the layer input
becomes ``β · sign(x)`` with β = mean|x| per sample, and the product is computed with
XNOR + popcount: ``sign(w)·sign(x) summed over K = K - 2 · popcount(bits_w XOR bits_x)``.

ternarize (ternary weight networks): ``W ≈ α · t``, t ∈ {-1, 0, +1}, t = 0 where
``|w| <= Δ = delta · mean|W_c|`` (delta = 0.7), α = mean of |w| above Δ.

Before::

    %fc2.weight = const : f32[128,256]
    %fc2 = linear(%fc1, %fc2.weight, %fc2.bias) : f32[1,128]

After ``binarize(activations=binary)``::

    %fc2.weight = const : b1[128,256] #binary<axis=0>          # 32 bits -> 1 bit per weight
    %fc1.b = quantize(%fc1) : b1[1,256] #binary<axis=0>         # β · sign(x), β per sample
    %fc2 = linear(%fc1.b, %fc2.weight, %fc2.bias) : f32[1,128]

Binary activations of a ReLU network are all +1 (ReLU outputs are >= 0), so by default
(``center=true``) a linear layer's input is centred first on its per-feature mean μ,
calibrated on sample inputs: ``x ≈ μ + β·sign(x - μ)``, hence
``W_b x ≈ W_b μ + W_b (β·sign(x - μ))``, and ``W_b μ`` is folded into the bias. Convolutions
are not centred (zero padding would make the correction position-dependent).

By default the first and last weighted layers stay in float (partial binarisation keeps
most of the accuracy); ``skip=none`` binarises every layer, any other value is a regex of
layer names kept in float. Preserves: approximate (accuracy is measured, not bounded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from mcir import dtypes
from mcir.analysis.layers import check_skip, select_layers
from mcir.encodings import Binary, Ternary
from mcir.errors import McirError
from mcir.interp import Interpreter
from mcir.ir import Graph, Op
from mcir.pass_base import Pass, PassContext, option
from mcir.patterns import constant_array
from mcir.rewriter import Rewriter
from mcir.sample_inputs import random_batches
from mcir.types import TensorType


def _worse(op: Op, t: TensorType, stored, target: str) -> str:
    """Why storing ``op``'s weight as ``t`` would not pay ('' if it does): no native kernel for the
    layer in that form, or its kernel would embed no fewer weight bytes than the float one."""
    from mcir.stats import try_kernel

    trial = try_kernel(op, {1: (t, stored)}, target)
    if not trial.ok:
        return "no native kernel for it"
    before = try_kernel(op, target=target)
    if before.ok and trial.operand_bytes.get(1, 0) >= before.operand_bytes.get(1, 0):
        return f"{trial.operand_bytes.get(1, 0)} B packed vs {before.operand_bytes.get(1, 0)} B float"
    return ""


def _compress_weight(rw: Rewriter, op: Op, t: TensorType, stored) -> None:
    w = op.operands[1]
    if len(w.uses) == 1:
        rw.set_data(w.producer, stored, t)
    else:  # shared with a layer that stays float: give this layer its own packed copy
        rw.set_operand(op, 1, rw.const(f"{w.name}.packed", stored, t))


@dataclass(frozen=True)
class Binarize(Pass):
    """Binary weights W ≈ α·sign(W) (α per output channel), optionally binary activations (XNOR-popcount)."""

    name: ClassVar[str] = "binarize"
    preserves: ClassVar[str] = "approximate: accuracy and max |delta| are measured, not bounded"
    activations: Literal["float", "binary"] = option("float", "binary: also binarise layer inputs (β·sign(x))")
    center: bool = option(True, "with binary activations, centre linear inputs on their calibrated mean")
    skip: str = option("ends", "layers kept in float: none, first, last, ends (first and last) or a regex")

    def __post_init__(self) -> None:
        check_skip(self.skip)

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        rw = Rewriter(graph)
        layers = select_layers(graph, self.skip)
        if not layers:
            ctx.warn(f"binarize: no layer to binarise (skip={self.skip})")
        means = {}
        if self.activations == "binary" and self.center:
            means = self._input_means(graph, [op for op in layers if op.name == "linear"], ctx)
        kept = []
        for op in layers:
            w = op.operands[1]
            t = TensorType(w.type.shape, dtypes.b1, Binary(0))
            stored = t.encode(constant_array(w))
            why = _worse(op, t, stored, ctx.data.get("target", "native"))
            if why:
                kept.append(f"{op.loc.module or op.result.name} ({why})")
                continue
            _compress_weight(rw, op, t, stored)
            if self.activations == "binary":
                self._binarize_input(rw, op, means.get(id(op)), t.decode(stored))
        if kept:
            ctx.warn("binarize: kept in float: " + ", ".join(kept))

    def _binarize_input(self, rw: Rewriter, op: Op, mean, w_binary) -> None:
        x = op.operands[0]
        if x.type.encoding is not None or not x.type.dtype.is_float:
            return
        bias = op.operands[2] if len(op.operands) == 3 else None
        if bias is not None and not (bias.is_constant and bias.producer.data is not None):
            mean = None  # cannot fold the correction into a bias computed at run time
        src = x
        if mean is not None:  # x ≈ μ + β·sign(x - μ): binarise x - μ, fold W_b·μ into the bias
            mu = rw.const(f"{x.name}.mean", mean.astype(np.float32))
            src = rw.insert_before(op, "sub", [x, mu], result=f"{x.name}.centered")
            correction = w_binary.astype(np.float64) @ mean.astype(np.float64)
            base = constant_array(bias).astype(np.float64) if bias is not None else 0.0
            bias = rw.const(f"{op.result.name}.bias", (base + correction).astype(np.float32))
        xt = TensorType(src.type.shape, dtypes.b1, Binary(0))
        xb = rw.insert_before(op, "quantize", [src], type=xt, result=f"{x.name}.b")
        operands = [xb, op.operands[1]] + ([bias] if bias is not None else [])
        rw.replace_op(op, rw.insert_before(op, op.name, operands, op.attrs, loc=op.loc))

    @staticmethod
    def _input_means(graph: Graph, layers: list[Op], ctx: PassContext) -> dict[int, np.ndarray]:
        """Per-feature mean of each layer's input over the calibration batches."""
        batches = ctx.get("calibration")
        if not batches:
            batches = random_batches(graph, 16)
            ctx.warn("binarize: no calibration data given; activation means come from 16 random batches")
        wanted = {id(op.operands[0]): op for op in layers}
        sums: dict[int, np.ndarray] = {}
        count = 0

        class Observer(Interpreter):
            def run_op(self, o, args):
                out = super().run_op(o, args)
                if id(o.result) in wanted:
                    a = np.asarray(out, np.float64)
                    sums[id(o.result)] = sums.get(id(o.result), 0) + a.reshape(-1, a.shape[-1]).mean(axis=0)
                return out

        for batch in batches:
            Observer(graph).run(*batch)
            # a graph input feeding a layer is produced by no op, so the observer never sees it
            for v, x in zip(graph.inputs, batch):
                if id(v) in wanted:
                    a = np.asarray(x, np.float64)
                    sums[id(v)] = sums.get(id(v), 0) + a.reshape(-1, a.shape[-1]).mean(axis=0)
            count += 1
        return {id(wanted[k]): (v / count) for k, v in sums.items()}


@dataclass(frozen=True)
class Ternarize(Pass):
    """Ternary weights W ≈ α·t, t ∈ {-1, 0, +1}, Δ = delta·mean|W_c| (ternary weight networks)."""

    name: ClassVar[str] = "ternarize"
    preserves: ClassVar[str] = "approximate: accuracy and max |delta| are measured, not bounded"
    delta: float = option(0.7, "threshold factor: |w| <= delta * mean|w| becomes 0")
    skip: str = option("ends", "layers kept in float: none, first, last, ends (first and last) or a regex")

    def __post_init__(self) -> None:
        check_skip(self.skip)
        if not 0.0 <= self.delta < 10.0:
            raise McirError(f"delta={self.delta} must be in [0, 10): it multiplies mean|w|")

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        rw = Rewriter(graph)
        layers = select_layers(graph, self.skip)
        if not layers:
            ctx.warn(f"ternarize: no layer to ternarise (skip={self.skip})")
        kept = []
        for op in layers:
            w = op.operands[1]
            t = TensorType(w.type.shape, dtypes.t2, Ternary(0))
            stored = t.encoding.encode(t, constant_array(w), delta_factor=self.delta)
            why = _worse(op, t, stored, ctx.data.get("target", "native"))
            if why:
                kept.append(f"{op.loc.module or op.result.name} ({why})")
                continue
            _compress_weight(rw, op, t, stored)
        if kept:
            ctx.warn("ternarize: kept in float: " + ", ".join(kept))
