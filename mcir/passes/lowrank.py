"""lowrank: factorise a linear layer's weight with a truncated SVD, one linear becomes two.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
    """Truncated-SVD factorisation of linear layers: one [N,K] linear becomes [r,K] then [N,r]."""

    name: ClassVar[str] = "lowrank"
    preserves: ClassVar[str] = "approximate: per-layer relative Frobenius error sqrt(1 - kept energy)"
    rank: int = option(0, "rank r of every factorised layer (0: choose by energy)")
    energy: float = option(0.9, "fraction of the squared singular values to keep when rank=0")
    skip: str = option("none", "layers left unfactorised: none, first, last, ends or a regex")
    min_saving: float = option(0.1, "factorise only if the factors embed at most (1 - min_saving) of the layer's bytes")

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise McirError(f"rank={self.rank} must be >= 0 (0 chooses the rank by energy)")
        if not 0.0 < self.energy <= 1.0:
            raise McirError(f"energy={self.energy} must be in (0, 1]")
        if not 0.0 <= self.min_saving < 1.0:
            raise McirError(f"min_saving={self.min_saving} must be in [0, 1)")
        check_skip(self.skip)

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        rw = Rewriter(graph)
        layers = weighted_layers(graph)
        kept = []
        for op in list(graph.compute_ops()):
            if op.name != "linear":
                continue
            w = op.operands[1]
            if not (
                w.is_constant and w.producer.data is not None and w.type.encoding is None and w.type.dtype.is_float
            ):
                continue
            if is_skipped(op, self.skip, layers):
                continue
            n, k = w.type.shape
            u, s, vt = np.linalg.svd(constant_array(w).astype(np.float64), full_matrices=False)
            r = self.rank or _rank_for_energy(s, self.energy)
            r = min(r, len(s))
            if r * (n + k) >= n * k:
                kept.append(f"{op.result.name} (rank {r} would not shrink {n}x{k})")
                continue
            v_data = (s[:r, None] * vt[:r]).astype(np.float32)
            u_data = u[:, :r].astype(np.float32)
            why = _grows(op, v_data, u_data, ctx.data.get("target", "native"), self.min_saving)
            if why:
                kept.append(f"{op.result.name} (rank {r}: {why})")
                continue
            v_w = rw.const(f"{w.name}.v", v_data, loc=op.loc)
            u_w = rw.const(f"{w.name}.u", u_data, loc=op.loc)
            low = rw.insert_before(op, "linear", [op.operands[0], v_w], result=f"{op.result.name}.low", loc=op.loc)
            rw.replace_op(op, rw.insert_before(op, "linear", [low, u_w, *op.operands[2:]], loc=op.loc))
        dead_code_elimination(graph, rw)  # the original weights
        if kept:
            ctx.warn("lowrank: left unfactorised: " + ", ".join(kept))


def _grows(op: Op, v: np.ndarray, u: np.ndarray, target: str, min_saving: float) -> str:
    """Why factorising ``op`` into ``v`` then ``u`` would not pay in the library ('' if it pays).

    The two linears must have native kernels and embed at most ``1 - min_saving`` of the bytes
    of the one they replace (GEMM kernels pad their packed panels, so fewer parameters alone do
    not guarantee fewer bytes; and a second kernel call costs time and code, which a saving of
    a few per cent does not repay), and the original weight must not be kept alive by another
    user.
    """
    w = op.operands[1]
    if len(w.users) > 1:
        return "its weight is shared with another layer, which would keep the dense copy"
    x = op.operands[0]
    f32 = dtypes.f32
    v_val = Op("const", [], {}, f"{w.name}.v", TensorType(v.shape, f32), data=v).result
    u_val = Op("const", [], {}, f"{w.name}.u", TensorType(u.shape, f32), data=u).result
    low_t = TensorType((*x.type.shape[:-1], v.shape[0]), f32)
    first = Op("linear", [x, v_val], {}, f"{op.result.name}.low", low_t)
    second = Op("linear", [Value("low", low_t), u_val, *op.operands[2:]], {}, op.result.name, op.result.type)
    before = try_kernel(op, target=target)
    after = [try_kernel(first, target=target), try_kernel(second, target=target)]
    for trial in after:
        if not trial.ok:
            return f"no native kernel for the factors ({trial.problem})"
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
