"""Calibration: observe the float values of a graph on sample inputs and choose ranges.

``observe(graph, batches)`` runs the reference interpreter and records, for every float
value, its min/max and a histogram; ``choose_range(stats, method)`` turns that into the
[lo, hi] interval that an 8-bit affine quantisation will cover:

* ``minmax``: the observed extremes;
* ``percentile(p)``: clip both tails at the p-th percentile of |x| mass (e.g. 99.99);
* ``entropy``: the clip threshold minimising the KL divergence between the observed
  distribution and its 8-bit quantised version (TensorRT's calibration idea).

The interval always contains 0, so zero is exactly representable (padding, ReLU).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from mcir.errors import McirError
from mcir.interp import Interpreter
from mcir.ir import Graph, Op

BINS = 2048


@dataclass
class ValueStats:
    """Running statistics of one value over the calibration batches."""

    lo: float = np.inf
    hi: float = -np.inf
    hist: np.ndarray | None = None  # counts over [-amax, amax], BINS bins
    amax: float = 0.0
    samples: list[np.ndarray] = field(default_factory=list)


class _Observer(Interpreter):
    def __init__(self, graph: Graph, stats: dict[str, ValueStats], phase: int) -> None:
        super().__init__(graph)
        self.stats = stats
        self.phase = phase

    def run_op(self, op: Op, args: list):
        out = super().run_op(op, args)
        if op.name != "const" and op.result.type.encoding is None and op.result.type.dtype.is_float:
            self._record(op.result.name, np.asarray(out, np.float32))
        return out

    def record_inputs(self, inputs) -> None:
        for v, x in zip(self.graph.inputs, inputs):
            if v.type.encoding is None and v.type.dtype.is_float:
                self._record(v.name, np.asarray(x, np.float32))

    def _record(self, name: str, x: np.ndarray) -> None:
        s = self.stats.setdefault(name, ValueStats())
        finite = x[np.isfinite(x)]
        if finite.size == 0:
            return
        if self.phase == 0:
            s.lo = min(s.lo, float(finite.min()))
            s.hi = max(s.hi, float(finite.max()))
        else:
            s.amax = max(abs(s.lo), abs(s.hi), 1e-12)
            h, _ = np.histogram(finite, bins=BINS, range=(-s.amax, s.amax))
            s.hist = h if s.hist is None else s.hist + h


def observe(graph: Graph, batches: list[tuple[np.ndarray, ...]], *, histograms: bool = True) -> dict[str, ValueStats]:
    """Statistics of every float value (by name) over the calibration batches."""
    if not batches:
        raise McirError("calibration needs at least one input batch")
    stats: dict[str, ValueStats] = {}
    for phase in (0, 1) if histograms else (0,):
        obs = _Observer(graph, stats, phase)
        for batch in batches:
            obs.record_inputs(batch)
            obs.run(*batch)
    return stats


_PERCENTILE = re.compile(r"^percentile\((\d+(\.\d+)?)\)$")


def check_method(method: str) -> None:
    """Raise McirError unless ``method`` is minmax, entropy or percentile(P) with 50 < P <= 100."""
    if method in ("minmax", "entropy"):
        return
    m = _PERCENTILE.match(method)
    if not m or not 50.0 < float(m.group(1)) <= 100.0:
        raise McirError(f"calibration '{method}' is not one of minmax, entropy, percentile(P) with 50 < P <= 100")


def choose_range(s: ValueStats, method: str) -> tuple[float, float]:
    """[lo, hi] to quantise a value with these statistics; always contains 0."""
    lo, hi = (s.lo, s.hi) if np.isfinite(s.lo) else (0.0, 0.0)
    if method != "minmax" and s.hist is not None and s.hist.sum() > 0:
        m = _PERCENTILE.match(method)
        if m:
            lo, hi = _percentile_range(s, float(m.group(1)))
        elif method == "entropy":
            t = _entropy_threshold(s)
            lo, hi = max(lo, -t), min(hi, t)
    return min(lo, 0.0), max(hi, 0.0)


def _percentile_range(s: ValueStats, p: float) -> tuple[float, float]:
    edges = np.linspace(-s.amax, s.amax, BINS + 1)
    cdf = np.cumsum(s.hist) / s.hist.sum()
    tail = (100.0 - p) / 100.0
    lo_i = int(np.searchsorted(cdf, tail, side="left"))
    hi_i = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    lo = max(s.lo, float(edges[lo_i]))
    hi = min(s.hi, float(edges[min(hi_i + 1, BINS)]))
    return lo, hi


def _entropy_threshold(s: ValueStats, levels: int = 128) -> float:
    """Clip threshold T on |x| minimising KL(P || Q), P the |x| histogram clipped at T and Q
    its requantisation to ``levels`` levels."""
    half = BINS // 2
    absolute = s.hist[half:] + s.hist[:half][::-1]  # |x| histogram over [0, amax]
    total = absolute.sum()
    if total == 0:
        return s.amax
    best_t, best_kl = s.amax, np.inf
    for i in range(levels, half + 1, 8):
        ref = absolute[:i].astype(np.float64)
        p = ref.copy()
        p[i - 1] += absolute[i:].sum()  # P: the clipped mass lands in the last bin
        # Q: the unclipped bins quantised to `levels` groups, each group's mass spread over its non-zero bins
        q = np.zeros(i)
        for g in np.array_split(np.arange(i), levels):
            nz = ref[g] > 0
            if nz.any():
                q[g[nz]] = ref[g].sum() / nz.sum()
        pn, qn = p / p.sum(), q / max(q.sum(), 1e-300)
        mask = pn > 0
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_t = kl, (i / half) * s.amax
    return best_t


def affine_params(lo: float, hi: float, dtype_min: int = 0, dtype_max: int = 255) -> tuple[float, int]:
    """(scale, zero_point) covering [lo, hi] (which contains 0) with integers in [dtype_min, dtype_max]."""
    span = hi - lo
    if span <= 0 or not np.isfinite(span):
        return 1.0, int(np.clip(0, dtype_min, dtype_max))
    scale = span / (dtype_max - dtype_min)
    zero_point = int(np.clip(round(dtype_min - lo / scale), dtype_min, dtype_max))
    return float(str(np.float32(scale))), zero_point  # the shortest text of the f32 scale
