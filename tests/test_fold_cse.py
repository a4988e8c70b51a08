"""fold's common-subexpression elimination of constants: merged only when every byte is equal.

Constants are grouped by a cheap key (type and a few sampled elements) and compared in full
within a group, so two weights that agree on the sampled elements but differ elsewhere stay apart."""

from __future__ import annotations

import numpy as np

import mcir
from mcir.passes.fold import SAMPLE, constant_sample


def _two_weights(w1: np.ndarray, w2: np.ndarray) -> mcir.Graph:
    text = """graph @g(%x: f32[1,256]) -> (f32[1,4], f32[1,4]) {
  %w1 = const : f32[4,256]
  %w2 = const : f32[4,256]
  %a = linear(%x, %w1) : f32[1,4]
  %b = linear(%x, %w2) : f32[1,4]
  return %a, %b
}"""
    g = mcir.parse(text)
    consts = {op.result.name: op for op in g.ops if op.name == "const"}
    consts["w1"].data, consts["w2"].data = w1, w2
    return g


def test_constants_equal_on_the_sample_but_not_elsewhere_are_kept_apart():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 256)).astype(np.float32)
    w2 = w1.copy()
    w2[1, 7] += 1.0  # not one of the SAMPLE evenly spaced elements of 1024
    ops = {op.result.name: op for op in _two_weights(w1, w2).ops}
    assert w1.size > SAMPLE and constant_sample(ops["w1"]) == constant_sample(ops["w2"])
    folded = mcir.run_passes(_two_weights(w1, w2), "fold")
    assert len([op for op in folded.ops if op.name == "const"]) == 2
    x = rng.standard_normal((1, 256)).astype(np.float32)
    a, b = mcir.interpret(folded, x)
    assert not np.array_equal(a, b)


def test_identical_constants_become_one():
    w = np.random.default_rng(1).standard_normal((4, 256)).astype(np.float32)
    folded = mcir.run_passes(_two_weights(w, w.copy()), "fold")
    assert len([op for op in folded.ops if op.name == "const"]) == 1


def test_negative_zero_is_not_zero_for_merging():
    # bit-for-bit equality, as the digest it replaces: -0.0 and 0.0 differ (1/x tells them apart)
    w1 = np.zeros((4, 256), np.float32)
    w2 = w1.copy()
    w2[2, 100] = -0.0
    assert len([op for op in mcir.run_passes(_two_weights(w1, w2), "fold").ops if op.name == "const"]) == 2
