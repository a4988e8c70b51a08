"""Calibration: observe the float values of a graph on sample inputs and choose ranges.

``observe(graph, batches)`` runs the reference interpreter and records, for every float
value, its min/max and (for the values named in ``histograms``) a histogram;
``choose_range(stats, method)`` turns that into the [lo, hi] interval that an 8-bit affine
quantisation will cover:

* ``minmax``: the observed extremes;
* ``percentile(p)``: clip both tails at the p-th percentile of |x| mass (e.g. 99.99);
* ``entropy``: the clip threshold minimising the KL divergence between the observed
  distribution and its 8-bit quantised version (TensorRT's calibration idea).

The interval always contains 0, so zero is exactly representable (padding, ReLU).

Cost. A histogram's range is the value's |x| maximum over *all* batches, known only after the
last one, so histograms need the values twice. The observer keeps the arrays of the values it
must histogram while they fit in ``KEEP_BYTES`` (one interpreter run), and runs the batches a
second time only beyond that; histograms are taken only for the values a pass will quantise
(the others need min/max alone). The entropy search evaluates all candidate thresholds in a few
array operations instead of a Python loop per candidate and group.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcir.errors import McirError
from mcir.interp import Interpreter, _last_uses, check_input, describe
from mcir.ir import Graph, Op

BINS = 2048
#: bytes of observed arrays kept for histograms before falling back to a second run of the batches
KEEP_BYTES = 512 * 2**20


@dataclass
class ValueStats:
    """Running statistics of one value over the calibration batches."""

    lo: float = np.inf
    hi: float = -np.inf
    hist: np.ndarray | None = None  # counts over [-amax, amax], BINS bins
    amax: float = 0.0
    samples: list[np.ndarray] = field(default_factory=list)  # finite values kept until the histogram is taken

    def add_histogram(self, finite: np.ndarray) -> None:
        """Add ``finite`` to the histogram over [-amax, amax] (amax from the final min/max)."""
        self.amax = max(abs(self.lo), abs(self.hi), 1e-12)
        h, _ = np.histogram(finite, bins=BINS, range=(-self.amax, self.amax))
        self.hist = h if self.hist is None else self.hist + h


class _Observer(Interpreter):
    """Records min/max of every float value and keeps the arrays of ``wanted`` values (phase 0),
    or adds the ``wanted`` values to their histograms (phase 1, the second run)."""

    def __init__(self, graph: Graph, stats: dict[str, ValueStats], wanted: set[str], phase: int) -> None:
        super().__init__(graph)
        self.stats = stats
        self.wanted = wanted
        self.phase = phase
        self.kept = 0  # bytes held in ValueStats.samples
        self.overflow = False  # kept arrays exceeded KEEP_BYTES: histograms need the second run

    def run_batches(self, batches: list[tuple[np.ndarray, ...]]) -> None:
        """Run every batch op by op (each op on all batches before the next op).

        Same values as ``run`` per batch, bit for bit; the order lets an op share work across the
        batches: a ``linear``'s f32 weight is widened to float64 (what its reference computes in)
        once instead of once per batch, which was a third of BERT-base's calibration time."""
        g = self.graph
        envs: list[dict[int, Any]] = []
        for batch in batches:
            if len(batch) != len(g.inputs):
                raise McirError(f"graph @{g.name} takes {len(g.inputs)} input(s), a calibration batch has {len(batch)}")
            self.record_inputs(batch)
            envs.append({id(v): check_input(v, x) for v, x in zip(g.inputs, batch)})
        last_use = _last_uses(g)
        for i, op in enumerate(g.ops):
            shared = self._shared_operands(op)
            for env in envs:
                args = [shared.get(j, env.get(id(v))) for j, v in enumerate(op.operands)]
                try:
                    env[id(op.result)] = self.run_op(op, args)
                except McirError as e:
                    if op.name == "const" or op.where() in str(e):
                        raise
                    raise type(e)(f"{e} (while running {describe(op)})") from None
                for v in last_use.get(i, ()):
                    env.pop(id(v), None)

    @staticmethod
    def _shared_operands(op: Op) -> dict[int, np.ndarray]:
        """Operands computed once for all batches: a plain f32 constant weight of ``linear`` in float64
        (its logical value unchanged; the reference widens it anyway)."""
        if op.name != "linear":
            return {}
        w = op.operands[1]
        if w.type.encoding is not None or w.producer is None or w.producer.name != "const":
            return {}
        if w.producer.data is None:
            return {}
        return {1: np.asarray(w.producer.data, np.float64)}

    def run_op(self, op: Op, args: list):
        out = super().run_op(op, args)
        if op.name != "const" and op.result.type.encoding is None and op.result.type.dtype.is_float:
            self._record(op.result.name, out)
        return out

    def record_inputs(self, inputs) -> None:
        for v, x in zip(self.graph.inputs, inputs):
            if v.type.encoding is None and v.type.dtype.is_float:
                self._record(v.name, x)

    def _record(self, name: str, x) -> None:
        if self.phase == 1 and name not in self.wanted:
            return
        x = np.asarray(x, np.float32)
        finite = x.ravel() if np.isfinite(x).all() else x[np.isfinite(x)]  # no copy in the usual case
        if finite.size == 0:
            return
        s = self.stats.setdefault(name, ValueStats())
        if self.phase == 1:
            s.add_histogram(finite)
            return
        s.lo = min(s.lo, float(finite.min()))
        s.hi = max(s.hi, float(finite.max()))
        if name in self.wanted and not self.overflow:
            self.kept += finite.nbytes
            if self.kept > KEEP_BYTES:
                self.overflow = True
                for t in self.stats.values():
                    t.samples.clear()
            else:
                s.samples.append(finite)


def observe(
    graph: Graph, batches: list[tuple[np.ndarray, ...]], *, histograms: bool | Iterable[str] = True
) -> dict[str, ValueStats]:
    """Statistics of every float value (by name) over the calibration batches.

    ``histograms``: True for every float value, False for none, or the names of the values that
    need one (percentile and entropy ranges read it; min/max is recorded for all values)."""
    if not batches:
        raise McirError("calibration needs at least one input batch")
    if histograms is True:
        wanted = {v.name for v in graph.inputs} | {op.result.name for op in graph.ops}
    else:
        wanted = set(histograms or ())
    stats: dict[str, ValueStats] = {}
    obs = _Observer(graph, stats, wanted, phase=0)
    obs.run_batches(batches)
    if not wanted:
        return stats
    if obs.overflow:  # arrays did not fit: take the histograms on a second run of the batches
        obs = _Observer(graph, stats, wanted, phase=1)
        obs.run_batches(batches)
        return stats
    for s in stats.values():
        for finite in s.samples:
            s.add_histogram(finite)
        s.samples.clear()
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


def _entropy_threshold(s: ValueStats, levels: int = 128, step: int = 8) -> float:
    """Clip threshold T on |x| minimising KL(P || Q), P the |x| histogram clipped at T and Q
    its requantisation to ``levels`` levels.

    Candidates are T = i/half * amax for i = levels, levels + step, ... half bins; all are
    evaluated at once on a [candidates, bins] grid (bins past a candidate's i are masked)."""
    half = BINS // 2
    absolute = (s.hist[half:] + s.hist[:half][::-1]).astype(np.float64)  # |x| histogram over [0, amax]
    total = absolute.sum()
    if total == 0:
        return s.amax
    cuts = np.arange(levels, half + 1, step)  # i: bins kept by each candidate
    j = np.arange(half)
    inside = j[None, :] < cuts[:, None]
    ref = np.where(inside, absolute[None, :], 0.0)
    # P: the clipped mass lands in the last kept bin
    tails = total - np.cumsum(absolute)[cuts - 1]
    p = ref.copy()
    p[np.arange(len(cuts)), cuts - 1] += tails
    # Q: kept bins split into `levels` consecutive groups as np.array_split does (the first i % levels
    # groups one bin longer), each group's mass spread evenly over its non-zero bins
    size, longer = np.divmod(cuts, levels)
    edge = (longer * (size + 1))[:, None]
    group = np.where(
        j[None, :] < edge, j[None, :] // (size + 1)[:, None], longer[:, None] + (j - edge) // size[:, None]
    )
    key = (np.arange(len(cuts))[:, None] * levels + np.clip(group, 0, levels - 1))[inside]
    mass = np.bincount(key, weights=ref[inside], minlength=len(cuts) * levels)
    count = np.bincount(key, weights=(ref[inside] > 0), minlength=len(cuts) * levels)
    spread = np.zeros_like(ref)
    spread[inside] = mass[key] / np.maximum(count[key], 1)
    q = np.where(ref > 0, spread, 0.0)
    pn = p / p.sum(axis=1, keepdims=True)
    qn = q / np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pn > 0, pn * np.log(pn / np.maximum(qn, 1e-12)), 0.0)
    kl = terms.sum(axis=1)
    return float(cuts[int(np.argmin(kl))] / half * s.amax)


def affine_params(lo: float, hi: float, dtype_min: int = 0, dtype_max: int = 255) -> tuple[float, int]:
    """(scale, zero_point) covering [lo, hi] (which contains 0) with integers in [dtype_min, dtype_max]."""
    span = hi - lo
    if span <= 0 or not np.isfinite(span):
        return 1.0, int(np.clip(0, dtype_min, dtype_max))
    scale = span / (dtype_max - dtype_min)
    zero_point = int(np.clip(round(dtype_min - lo / scale), dtype_min, dtype_max))
    return float(str(np.float32(scale))), zero_point  # the shortest text of the f32 scale
