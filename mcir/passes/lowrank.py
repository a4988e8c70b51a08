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
is smaller (r < N·K / (N + K)), otherwise it is left as it is and the report says so. The rank
is given directly (``rank=``) or chosen per layer as the smallest r keeping a fraction
``energy`` of Σσ² (the squared Frobenius norm). Preserves: approximate; the relative Frobenius
error of each factorised weight is ``sqrt(1 - kept energy)``, and the pipeline report measures
the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcir.analysis.layers import check_skip, is_skipped, weighted_layers
from mcir.errors import McirError
from mcir.ir import Graph
from mcir.pass_base import Pass, PassContext, option
from mcir.patterns import constant_array
from mcir.rewriter import Rewriter, dead_code_elimination


@dataclass(frozen=True)
class LowRank(Pass):
    """Truncated-SVD factorisation of linear layers: one [N,K] linear becomes [r,K] then [N,r]."""

    name: ClassVar[str] = "lowrank"
    preserves: ClassVar[str] = "approximate: per-layer relative Frobenius error sqrt(1 - kept energy)"
    rank: int = option(0, "rank r of every factorised layer (0: choose by energy)")
    energy: float = option(0.9, "fraction of the squared singular values to keep when rank=0")
    skip: str = option("none", "layers left unfactorised: none, first, last, ends or a regex")

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise McirError(f"rank={self.rank} must be >= 0 (0 chooses the rank by energy)")
        if not 0.0 < self.energy <= 1.0:
            raise McirError(f"energy={self.energy} must be in (0, 1]")
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
            v_w = rw.const(f"{w.name}.v", (s[:r, None] * vt[:r]).astype(np.float32), loc=op.loc)
            u_w = rw.const(f"{w.name}.u", u[:, :r].astype(np.float32), loc=op.loc)
            low = rw.insert_before(op, "linear", [op.operands[0], v_w], result=f"{op.result.name}.low", loc=op.loc)
            rw.replace_op(op, rw.insert_before(op, "linear", [low, u_w, *op.operands[2:]], loc=op.loc))
        dead_code_elimination(graph, rw)  # the original weights
        if kept:
            ctx.warn("lowrank: left unfactorised: " + ", ".join(kept))


def _rank_for_energy(s: np.ndarray, energy: float) -> int:
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2)."""
    e = np.cumsum(s.astype(np.float64) ** 2)
    if e[-1] == 0:
        return 1
    return int(np.searchsorted(e / e[-1], energy - 1e-12) + 1)
