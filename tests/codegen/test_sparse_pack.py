"""The compile-time sparse layouts round-trip: every kept weight lands where the kernels will read
it, exactly once (window and CSR rows for f32, the compact gap layout for int8 with its window
invariant), and the int8 view of #csr / #nm constants is exact."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mcir import dtypes
from mcir.codegen.kernels import sparse_pack as sp
from mcir.ir import Graph

from .sparse_cases import nm_pruned, pruned, sparse_const

shapes = st.tuples(st.integers(1, 70), st.integers(1, 700), st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.4, 1.0]))


@settings(max_examples=30)
@given(shape=shapes, lanes=st.sampled_from([4, 8, 16]), group=st.sampled_from([1, 4]))
def test_window_layout_round_trip(shape, lanes, group):
    n, k, density = shape
    w = pruned(np.random.default_rng(n * k), n, k, density, empty_rows=0.2)
    blob = sp.pack_window(w, lanes, 2 * lanes, group)
    np.testing.assert_array_equal(sp.unpack_window(blob, n, k, lanes, group), w)


@settings(max_examples=30)
@given(shape=shapes)
def test_rows_layout_round_trip(shape):
    n, k, density = shape
    w = pruned(np.random.default_rng(n + k), n, k, density, empty_rows=0.2)
    np.testing.assert_array_equal(sp.unpack_rows(sp.pack_rows(w), n, k), w)


@settings(max_examples=30)
@given(shape=shapes)
def test_gap_layout_round_trip(shape):
    n, k, density = shape
    rng = np.random.default_rng(3 * n + k)
    q = rng.integers(-127, 128, (n, k)).astype(np.int8) * (rng.random((n, k)) < density)
    q[rng.random(n) < 0.2] = 0
    blob = sp.pack_gap(q, np.zeros(n), np.ones(n), np.zeros(n))
    np.testing.assert_array_equal(sp.unpack_gap(blob, n, k), q)  # also checks the 256-byte window


def test_gap_layout_is_compact_at_90_percent_sparsity():
    rng = np.random.default_rng(0)
    q = (rng.integers(1, 128, (1024, 1024)) * (rng.random((1024, 1024)) < 0.1)).astype(np.int8)
    blob = sp.pack_gap(q, np.zeros(1024), np.ones(1024), np.zeros(1024))
    nnz = np.count_nonzero(q)
    # 13 bits per entry, ~8 % escapes and padding, 10 bytes of per-row constants: ~1.85 bytes/non-zero
    assert blob.nbytes / nnz < 1.9, blob.nbytes / nnz
    assert sp.header_field(blob, 1) == 0  # no float bias stored when none is needed


def test_gap_layout_keeps_long_gaps_and_sorted_rows():
    q = np.zeros((20, 5000), np.int8)
    q[3, [0, 4999]] = [5, -7]  # one gap of 4999 columns: 161 escapes
    q[17, 2500] = 127  # 81 entries (80 escapes)
    q[0, :64] = 1  # 64 entries
    blob = sp.pack_gap(q, np.arange(20), np.ones(20), np.zeros(20))
    np.testing.assert_array_equal(sp.unpack_gap(blob, 20, 5000), q)
    perm = sp.part(blob, 6, np.uint16, 32)
    assert list(perm[:3]) == [3, 17, 0]  # sorted by entries (escapes count), longest first
    assert set(perm[20:]) == {0xFFFF}  # lanes of the last block without a row


def test_int8_views_of_csr_and_nm():
    rng = np.random.default_rng(1)
    g = Graph("views")
    dense = pruned(rng, 9, 12, 0.4)
    dense_nm = nm_pruned(rng, 9, 12, 1, 4)
    for enc, d in (("csr", dense), ("nm", dense_nm)):
        v = sparse_const(g, enc, d, enc, dtypes.i8, nm=(1, 4))
        q, scale = sp.dense_int8(v.type, v.producer.data)
        exact = q.astype(np.float64) * scale.astype(np.float64)[:, None]
        np.testing.assert_array_equal(exact, v.type.decode(v.producer.data))
        assert 0 < np.count_nonzero(q) <= np.count_nonzero(d)  # tiny weights may round to 0


@settings(max_examples=15)
@given(shape=shapes, lanes=st.sampled_from([8, 16]))
def test_int8_window_layout_round_trip(shape, lanes):
    """The int8 window layout (targets without VBMI) with its per-row constants after the parts."""
    n, k, density = shape
    rng = np.random.default_rng(n * 7 + k)
    q = rng.integers(-127, 128, (n, k)).astype(np.int8) * (rng.random((n, k)) < density)
    offset, mult = np.arange(n, dtype=np.int32), np.full(n, 0.5, np.float32)
    blob = sp.pack_window(q.astype(np.int8), lanes, 2 * lanes, 4, (0,), (offset, mult))
    np.testing.assert_array_equal(sp.unpack_window(blob, n, k, lanes, 4, np.int8, extra_fields=1), q)
    np.testing.assert_array_equal(sp.part(blob, 6, np.int32, n), offset)
    np.testing.assert_array_equal(sp.part(blob, 7, np.float32, n), mult)
