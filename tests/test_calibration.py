"""Calibration statistics: what ``observe`` records and how ranges are chosen from it.

The fast paths (arrays kept in memory instead of a second run of the batches, histograms only
for the values a pass quantises, the vectorised entropy search) must give exactly what the
plain definitions give."""

from __future__ import annotations

import models
import numpy as np
import pytest

import mcir
from mcir.analysis import calibration
from mcir.analysis.calibration import BINS, ValueStats, choose_range, observe
from mcir.passes.quantize import range_candidates
from mcir.sample_inputs import random_batches


def entropy_threshold_by_definition(s: ValueStats, levels: int = 128, step: int = 8) -> float:
    """The entropy rule written as its definition: one candidate, one group at a time."""
    half = BINS // 2
    absolute = s.hist[half:] + s.hist[:half][::-1]
    best_t, best_kl = s.amax, np.inf
    for i in range(levels, half + 1, step):
        ref = absolute[:i].astype(np.float64)
        p = ref.copy()
        p[i - 1] += absolute[i:].sum()
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


@pytest.mark.parametrize(
    "draw",
    [
        lambda r: r.standard_normal(20000),
        lambda r: r.laplace(size=20000) ** 3,  # heavy tails: the clip lands well inside amax
        lambda r: np.maximum(r.standard_normal(3000), 0) * 7,  # post-ReLU: half the mass at 0
        lambda r: r.integers(0, 4, 500).astype(float),  # few distinct values: many empty bins
    ],
)
def test_entropy_threshold_equals_its_definition(rng, draw):
    x = draw(rng).astype(np.float32)
    s = ValueStats(lo=float(x.min()), hi=float(x.max()))
    s.add_histogram(x)
    assert calibration._entropy_threshold(s) == entropy_threshold_by_definition(s)


def _encoder_and_batches():
    model, inputs = models.build("encoder")
    graph = mcir.trace(model, inputs)
    return graph, random_batches(graph, 3)


def test_kept_arrays_and_a_second_run_give_the_same_histograms(monkeypatch):
    graph, batches = _encoder_and_batches()
    kept = observe(graph, batches)
    monkeypatch.setattr(calibration, "KEEP_BYTES", 1000)  # forces the second run of the batches
    rerun = observe(graph, batches)
    assert kept.keys() == rerun.keys()
    for name, s in kept.items():
        assert (s.lo, s.hi, s.amax) == (rerun[name].lo, rerun[name].hi, rerun[name].amax), name
        assert np.array_equal(s.hist, rerun[name].hist), name
        assert not s.samples and not rerun[name].samples  # nothing held after observe returns


@pytest.mark.parametrize("method", ["percentile(99.9)", "entropy"])
def test_histograms_of_the_candidates_only_give_the_same_ranges(method):
    graph, batches = _encoder_and_batches()
    wanted = range_candidates(graph, attention=True)
    assert wanted  # the encoder has int8 layers
    everything = observe(graph, batches)
    some = observe(graph, batches, histograms=wanted)
    for name in wanted:
        assert choose_range(some[name], method) == choose_range(everything[name], method), name
    others = set(some) - wanted
    assert others and all(some[n].hist is None for n in others)  # min/max only: their ranges are never read


def test_op_by_op_run_of_all_batches_records_what_the_interpreter_computes():
    # run_batches shares a linear's float64 weight across the batches: every value must still be,
    # bit for bit, what running each batch alone through the reference interpreter gives
    graph, batches = _encoder_and_batches()
    stats = observe(graph, batches, histograms=False)
    seen: dict[str, list[np.ndarray]] = {}

    class Recorder(mcir.interp.Interpreter):
        def run_op(self, op, args):
            out = super().run_op(op, args)
            if op.name != "const" and op.result.type.dtype.is_float:
                seen.setdefault(op.result.name, []).append(np.asarray(out))
            return out

    for batch in batches:
        Recorder(graph).run(*batch)
    assert any(op.name == "linear" for op in graph.ops)
    for name, outs in seen.items():
        assert stats[name].lo == min(float(o.min()) for o in outs), name
        assert stats[name].hi == max(float(o.max()) for o in outs), name
