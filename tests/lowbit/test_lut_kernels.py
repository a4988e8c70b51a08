"""Table-lookup linear kernels (``kernels/lut.py``) against the interpreter.

Contract: f32 outputs within ``1e-5 x max|reference|`` (helpers.RTOL) for every encoding
(``#codebook`` layer/channel at 1..8 bits, ``#int4``/``#int2`` per channel and per group,
``#pow2``), batch 1 and batched (several row tiles), K not a multiple of the block, with and
without bias and a fused ReLU; and the library embeds exactly ``lut_pack.packed_bytes``.
With ``#pow2`` weights and activations that are small integers, every product and partial
sum is exact in f32, so native equals the interpreter bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mcir
from mcir import dtypes
from mcir.codegen.kernels import lut_pack
from mcir.encodings import Codebook, Int2, Int4, Pow2
from mcir.encodings.codebook import pack_indices
from mcir.ir import Graph
from mcir.types import TensorType, tensor
from tests.codegen.helpers import build, check_native, randn


def lut_weight(rng, n: int, k: int, enc) -> tuple[TensorType, dict]:
    """A weight of encoding ``enc`` with random content."""
    if isinstance(enc, Codebook):
        t = TensorType((n, k), dtypes.f32, enc)
        idx = rng.integers(0, 2**enc.bits, (n, k))
        cents = randn(rng, enc.tables(t), 2**enc.bits)
        return t, {"indices": pack_indices(idx, enc.bits), "centroids": cents}
    dt = dtypes.f32 if isinstance(enc, Pow2) else dtypes.i8
    t = TensorType((n, k), dt, enc)
    return t, t.encode(randn(rng, n, k))


def linear_graph(rng, m: int, n: int, k: int, enc, bias: bool, relu: bool) -> Graph:
    g = Graph("lut")
    x = g.add_input("x", tensor([m, k]))
    t, stored = lut_weight(rng, n, k, enc)
    ops = [x, g.const("w", stored, t)]
    if bias:
        ops.append(g.const("b", randn(rng, n)))
    y = g.add("linear", ops)
    g.set_outputs([g.add("relu", [y]) if relu else y])
    return g


ENCODINGS = [
    *(Codebook(bits=b, scope=s) for b in (1, 2, 3, 4, 5, 6, 8) for s in ("layer", "channel")),
    Int4(0),
    Int4(16),
    Int4(32),
    Int4(128),
    Int2(0),
    Int2(64),
    Pow2(4),
    Pow2(3),
    Pow2(2),
]


@pytest.mark.parametrize("enc", ENCODINGS, ids=str)
def test_each_encoding_matches_the_interpreter(tmp_path, enc):
    rng = np.random.default_rng(0)
    g = linear_graph(rng, 5, 19, 150, enc, bias=True, relu=True)
    lib = build(g, tmp_path)
    x = randn(rng, 5, 150)
    check_native(g, tmp_path, x)
    wt = next(op for op in g.constants() if op.result.name == "w").result.type
    assert lib.weight_bytes == lut_pack.packed_bytes(wt) + 19 * 4  # the blob + the f32 bias
    assert lib.weight_bytes == mcir.stats(g).weight_bytes


@settings(max_examples=20, deadline=None)
@given(
    m=st.sampled_from([1, 2, 4, 7]),
    n=st.integers(1, 40),
    k=st.sampled_from([1, 15, 16, 31, 32, 33, 64, 100, 257]),
    enc=st.sampled_from([Codebook(4, "layer"), Codebook(2, "channel"), Codebook(6, "layer"), Int4(16), Pow2(4)]),
    bias=st.booleans(),
)
def test_shapes(tmp_path_factory, m, n, k, enc, bias):
    rng = np.random.default_rng(1)
    g = linear_graph(rng, m, n, k, enc, bias=bias, relu=False)
    check_native(g, tmp_path_factory.mktemp("lut"), randn(rng, m, k))


def test_pow2_is_bit_exact_when_the_arithmetic_is(tmp_path):
    rng = np.random.default_rng(2)
    g = linear_graph(rng, 3, 24, 200, Pow2(4), bias=False, relu=False)
    x = rng.integers(-8, 9, (3, 200)).astype(np.float32)  # products 2^j·int, sums of < 2^24 in 1/64ths
    native = build(g, tmp_path)(x)[0]
    np.testing.assert_array_equal(native, mcir.interpret(g, x)[0])


@pytest.mark.parametrize("target", ["x86-64-v3"])
def test_without_avx512_the_gather_path_matches(tmp_path, target):
    from tests.codegen.helpers import runnable_targets

    if target not in runnable_targets():
        pytest.skip(f"{target} does not run here")
    rng = np.random.default_rng(3)
    for enc in (Codebook(4, "channel"), Codebook(6, "layer"), Int4(32), Pow2(4)):
        g = linear_graph(rng, 2, 9, 70, enc, bias=True, relu=False)
        check_native(g, tmp_path, randn(rng, 2, 70), target=target)


def test_groups_end_inside_the_last_block(tmp_path):
    # K = 150 with 2-bit codes: the last 64-weight block reaches k = 191, past the last group of 32
    rng = np.random.default_rng(4)
    for enc in (Int2(32), Int4(16)):
        g = linear_graph(rng, 1, 7, 150, enc, bias=False, relu=False)
        check_native(g, tmp_path, randn(rng, 1, 150))
