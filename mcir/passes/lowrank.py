"""lowrank: factorise a layer's weight with a truncated SVD, one linear (or conv2d) becomes two.

``W ≈ U_r Σ_r V_rᵀ`` (the r largest singular values), so ``x Wᵀ + b ≈ (x (Σ_r V_rᵀ)ᵀ) U_rᵀ + b``.
Before::

    %fc1.weight = const : f32[1024,1024]
    %fc1 = linear(%x, %fc1.weight, %fc1.bias) : f32[1,1024]

After ``lowrank(rank=128)``::

    %fc1.weight.v = const : f32[128,1024]        # Σ_r V_rᵀ
    %fc1.weight.u = const : f32[1024,128]        # U_r
    %fc1.low = linear(%x, %fc1.weight.v) : f32[1,128]
    %fc1 = linear(%fc1.low, %fc1.weight.u, %fc1.bias) : f32[1,1024]

Parameters and MACs per row fall from N·K to r·(N + K); a layer is only factorised when that
is smaller (r < N·K / (N + K)) and the two factors embed fewer bytes in the library than the
one weight (kernels pad packed panels: ``mcir.stats.try_kernel``), otherwise it is left as
it is and the report says so. The rank
is given directly (``rank=``) or chosen per layer as the smallest r keeping a fraction
``energy`` of Σσ² (the squared Frobenius norm). Preserves: approximate; the relative Frobenius
error of each factorised weight is ``sqrt(1 - kept energy)``, and the pipeline report measures
the outputs.

Convolutions (``conv2d``, groups 1) are factorised the same way on a matrix view of the weight
``W[o, i, y, x]``:

- ``conv=channel`` (default): ``M[o, (i,y,x)]`` ≈ ``U_r · (Σ_r V_rᵀ)``: a k×k conv to r channels
  (same stride, padding, dilation, no bias) then a 1×1 conv to Cout (with the bias); parameters
  fall from Cout·Cin·k² to r·(Cin·k² + Cout).
- ``conv=spatial``: ``M[(i,y), (o,x)]`` ≈ ``A_r · B_r``: a kh×1 conv to r channels (the vertical
  stride, padding, dilation) then a 1×kw conv to Cout (the horizontal ones, with the bias);
  parameters fall to r·(Cin·kh + Cout·kw). Exact at full rank: zero columns padded in between
  are what the first conv gives on padding (it has no bias).
- ``conv=off``: convolutions are left alone.

``budget=0.5`` chooses the ranks for the whole model instead: one energy threshold for every
layer, the largest whose factorisations (each layer's library bytes at its rank, from the kernel
registry, with the byte guard above applied) bring the model's weight bytes to at most that
fraction; the report gives the threshold and the fraction reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from mcir import dtypes
from mcir.analysis.layers import check_skip, is_skipped, weighted_layers
from mcir.errors import McirError
from mcir.ir import Graph, Op, Value
from mcir.pass_base import Pass, PassContext, option
from mcir.patterns import constant_array
from mcir.rewriter import Rewriter, dead_code_elimination
from mcir.stats import try_kernel
from mcir.types import TensorType


@dataclass(frozen=True)
class LowRank(Pass):
    """Truncated-SVD factorisation: a linear becomes two linears, a conv2d two convs (bottleneck or k×1 + 1×k)."""

    name: ClassVar[str] = "lowrank"
    preserves: ClassVar[str] = "approximate: per-layer relative Frobenius error sqrt(1 - kept energy)"
    rank: int = option(0, "rank r of every factorised layer (0: choose by energy or budget)")
    energy: float = option(0.9, "fraction of the squared singular values to keep when rank=0")
    budget: float = option(0.0, "whole-model target: weight bytes at most this fraction (0: off; overrides energy)")
    conv: Literal["channel", "spatial", "off"] = option(
        "channel", "convolutions: channel (kxk to r channels, then 1x1), spatial (kx1, then 1xk) or off"
    )
    skip: str = option("none", "layers left unfactorised: none, first, last, ends or a regex")
    min_saving: float = option(0.1, "factorise only if the factors embed at most (1 - min_saving) of the layer's bytes")

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise McirError(f"rank={self.rank} must be >= 0 (0 chooses the rank by energy)")
        if not 0.0 < self.energy <= 1.0:
            raise McirError(f"energy={self.energy} must be in (0, 1]")
        if not 0.0 <= self.budget < 1.0:
            raise McirError(f"budget={self.budget} must be in [0, 1) (a fraction of the weight bytes; 0: off)")
        if self.budget and self.rank:
            raise McirError("lowrank: give rank= or budget=, not both")
        if not 0.0 <= self.min_saving < 1.0:
            raise McirError(f"min_saving={self.min_saving} must be in [0, 1)")
        check_skip(self.skip)

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        rw = Rewriter(graph)
        layers = weighted_layers(graph)
        plans = [p for op in list(graph.compute_ops()) if (p := self._plan(op, layers)) is not None]
        energy = self._energy_for_budget(graph, plans, ctx) if self.budget else self.energy
        kept = []
        for plan in plans:
            op = plan.op
            r = min(self.rank or _rank_for_energy(plan.s, energy), len(plan.s))
            m, n = plan.u.shape[0], plan.vt.shape[1]
            if r * (m + n) >= m * n:
                kept.append(f"{op.result.name} (rank {r} would not shrink {plan.describe()})")
                continue
            first, second = plan.factors(r)
            why = _grows(op, plan.trial_ops(first, second), ctx.data.get("target", "native"), self.min_saving)
            if why:
                kept.append(f"{op.result.name} (rank {r}: {why})")
                continue
            plan.rewrite(rw, first, second)
        dead_code_elimination(graph, rw)  # the original weights
        if kept:
            ctx.warn("lowrank: left unfactorised: " + ", ".join(kept))

    def _plan(self, op: Op, layers: list[Op]) -> _Plan | None:
        if op.name not in ("linear", "conv2d") or (op.name == "conv2d" and self.conv == "off"):
            return None
        w = op.operands[1]
        if not (w.is_constant and w.producer.data is not None and w.type.encoding is None and w.type.dtype.is_float):
            return None
        if is_skipped(op, self.skip, layers):
            return None
        if op.name == "conv2d" and op.attrs.get("groups", 1) != 1:
            return None  # grouped and depthwise convs are already small per output channel
        mode = "linear" if op.name == "linear" else self.conv
        return _Plan(op, mode, constant_array(w).astype(np.float64))

    def _energy_for_budget(self, graph: Graph, plans: list[_Plan], ctx: PassContext) -> float:
        """The largest energy threshold whose layers, as this pass would store them, meet the budget.

        Each layer's bytes at a rank are the kernel registry's (``try_kernel``, padding included) for
        the factors when the pass would factorise at that rank, else the layer's own: so the bytes
        reached are the library's, not a parameter count.
        """
        from mcir.stats import stats

        target = ctx.data.get("target", "native")
        total = stats(graph, target).weight_bytes
        own = {id(p): try_kernel(p.op, target=target).weight_bytes for p in plans}
        rest = total - sum(own.values())
        cache: dict[tuple[int, int], int] = {}

        def layer_bytes(p: _Plan, r: int) -> int:
            key = (id(p), r)
            if key not in cache:
                m, n = p.u.shape[0], p.vt.shape[1]
                cache[key] = own[id(p)]
                if r * (m + n) < m * n:
                    trial = p.trial_ops(*p.factors(r))
                    if not _grows(p.op, trial, target, self.min_saving):
                        cache[key] = sum(try_kernel(t, target=target).weight_bytes for t in trial)
            return cache[key]

        def size(e: float) -> int:
            return rest + sum(layer_bytes(p, min(_rank_for_energy(p.s, e), len(p.s))) for p in plans)

        goal = self.budget * total
        if size(1e-9) > goal:
            raise McirError(
                f"lowrank: budget={self.budget} cannot be met by factorising alone: rank 1 everywhere still embeds "
                f"{size(1e-9) / total:.3f} of the {total} weight bytes; raise the budget or combine with "
                "quantize/prune"
            )
        lo, hi = 1e-9, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if size(mid) <= goal else (lo, mid)
        ctx.warn(f"lowrank: budget={self.budget}: energy {lo:.6f} per layer, {size(lo) / total:.3f} of the bytes")
        return lo


class _Plan:
    """One layer's SVD on its matrix view and how to rebuild the layer from two factors."""

    def __init__(self, op: Op, mode: str, w: np.ndarray) -> None:
        self.op, self.mode, self.shape = op, mode, w.shape
        if mode == "linear":
            matrix = w
        elif mode == "channel":
            matrix = w.reshape(w.shape[0], -1)  # [o, (i, y, x)]
        else:
            o, i, kh, kw = w.shape
            matrix = w.transpose(1, 2, 0, 3).reshape(i * kh, o * kw)  # [(i, y), (o, x)]
        self.u, self.s, self.vt = np.linalg.svd(matrix, full_matrices=False)

    def describe(self) -> str:
        return "x".join(map(str, self.shape))

    def factors(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Weights of the first and second layer at rank r."""
        a = self.u[:, :r]
        b = self.s[:r, None] * self.vt[:r]
        if self.mode == "linear":
            return b.astype(np.float32), a.astype(np.float32)  # x -> Σ Vᵀ -> U
        if self.mode == "channel":
            o, i, kh, kw = self.shape
            return b.reshape(r, i, kh, kw).astype(np.float32), a.reshape(o, r, 1, 1).astype(np.float32)
        o, i, kh, kw = self.shape
        first = a.reshape(i, kh, r).transpose(2, 0, 1)[..., None]  # [r, i, kh, 1]
        second = b.reshape(r, o, kw).transpose(1, 0, 2)[:, :, None, :]  # [o, r, 1, kw]
        return first.astype(np.float32), second.astype(np.float32)

    def attrs(self) -> tuple[dict, dict]:
        """Attributes of the two new ops."""
        if self.mode == "linear":
            return {}, {}
        a = dict(self.op.attrs)
        if self.mode == "channel":
            return a, {**a, "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1)}
        (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]
        first = {**a, "stride": (sh, 1), "padding": (ph, 0), "dilation": (dh, 1)}
        return first, {**a, "stride": (1, sw), "padding": (0, pw), "dilation": (1, dw)}

    def middle_type(self, r: int) -> TensorType:
        """The type of the first layer's result (r channels / features)."""
        out = self.op.result.type.shape
        if self.mode == "linear":
            return TensorType((*out[:-1], r), dtypes.f32)
        if self.mode == "channel":
            return TensorType((out[0], r, out[2], out[3]), dtypes.f32)
        return TensorType((out[0], r, out[2], self.op.operands[0].type.shape[3]), dtypes.f32)

    def trial_ops(self, first: np.ndarray, second: np.ndarray) -> list[Op]:
        """Free-standing copies of the two new ops, for the kernel registry's byte count."""
        op, w, f32 = self.op, self.op.operands[1], dtypes.f32
        a1, a2 = self.attrs()
        v1 = Op("const", [], {}, f"{w.name}.v", TensorType(first.shape, f32), data=first).result
        v2 = Op("const", [], {}, f"{w.name}.u", TensorType(second.shape, f32), data=second).result
        mid = self.middle_type(first.shape[0])
        one = Op(op.name, [op.operands[0], v1], a1, f"{op.result.name}.low", mid)
        two = Op(op.name, [Value("low", mid), v2, *op.operands[2:]], a2, op.result.name, op.result.type)
        return [one, two]

    def rewrite(self, rw: Rewriter, first: np.ndarray, second: np.ndarray) -> None:
        op, w = self.op, self.op.operands[1]
        a1, a2 = self.attrs()
        v_w = rw.const(f"{w.name}.v", first, loc=op.loc)
        u_w = rw.const(f"{w.name}.u", second, loc=op.loc)
        low = rw.insert_before(op, op.name, [op.operands[0], v_w], a1, result=f"{op.result.name}.low", loc=op.loc)
        rw.replace_op(op, rw.insert_before(op, op.name, [low, u_w, *op.operands[2:]], a2, loc=op.loc))


def _grows(op: Op, trial: list[Op], target: str, min_saving: float) -> str:
    """Why replacing ``op`` by the two ``trial`` ops would not pay in the library ('' if it pays).

    The two layers must have native kernels and embed at most ``1 - min_saving`` of the bytes
    of the one they replace (GEMM kernels pad their packed panels, so fewer parameters alone do
    not guarantee fewer bytes; and a second kernel call costs time and code, which a saving of
    a few per cent does not repay), and the original weight must not be kept alive by another
    user.
    """
    if len(op.operands[1].users) > 1:
        return "its weight is shared with another layer, which would keep the dense copy"
    before = try_kernel(op, target=target)
    after = [try_kernel(t, target=target) for t in trial]
    for t in after:
        if not t.ok:
            return f"no native kernel for the factors ({t.problem})"
    new_bytes = sum(t.weight_bytes for t in after)
    if before.ok and new_bytes > (1.0 - min_saving) * before.weight_bytes:
        return f"the factors would embed {new_bytes} B against {before.weight_bytes} B"
    return ""


def _rank_for_energy(s: np.ndarray, energy: float) -> int:
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2)."""
    e = np.cumsum(s.astype(np.float64) ** 2)
    if e[-1] == 0:
        return 1
    return int(np.searchsorted(e / e[-1], energy - 1e-12) + 1)
