"""Bit-packed linear kernels and binary quantize/dequantize, native against the interpreter.

What is exact (the contract of ``mcir/codegen/kernels/binary.py``):

* ``quantize`` to ``b1 #binary``: the bits and β = mean|x| equal the interpreter's
  (checked through ``dequantize``, whose output α·(±1) is exact): bit-exact.
* binary/ternary weights x binary activations (XNOR/popcount): the integer sum is exact
  and the float epilogue ``(α·β)·S + b`` runs in double, like the interpreter's float64
  sum. With α, β powers of two and integer biases every step is exact: outputs are
  **bit-identical**. With arbitrary scales the two float64 computations may round
  differently in the last double bit; the f32 outputs then agree within **1 ulp**
  (in practice they are identical).
* packed weights x float activations (sign-select): an f32 sum in another order than
  the interpreter's float64 one: the backend's usual tolerance (helpers.RTOL relative
  to the largest output).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mcir
from mcir import dtypes
from mcir.codegen.kernels.binary import RowPanels
from mcir.encodings import Binary, Ternary
from mcir.ir import Graph, Value
from mcir.types import TensorType, tensor

from .helpers import assert_close, build, check_native, randn


def packed_type(shape: tuple[int, ...], kind: str) -> TensorType:
    return TensorType(shape, dtypes.b1, Binary(0)) if kind == "binary" else TensorType(shape, dtypes.t2, Ternary(0))


def packed_weight(g: Graph, rng, shape: tuple[int, ...], kind: str, pow2: bool = False, name: str = "w") -> Value:
    """A packed constant encoded from random floats; ``pow2``: its scales are powers of two."""
    t = packed_type(shape, kind)
    stored = t.encode(randn(rng, *shape))
    if pow2:
        stored["alpha"] = (2.0 ** rng.integers(-3, 4, size=shape[0])).astype(np.float32)
    return g.const(name, stored, t)


def binarize_input(g: Graph, x: Value) -> Value:
    return g.add("quantize", [x], type=packed_type(x.type.shape, "binary"))


def pow2_signs(rng, shape: tuple[int, ...]) -> np.ndarray:
    """±2^e with one e per slice along axis 0: β = mean|x| = 2^e exactly."""
    signs = rng.choice(np.float32([-1.0, 1.0]), size=shape)
    scale = 2.0 ** rng.integers(-2, 3, size=(shape[0],) + (1,) * (len(shape) - 1))
    return (signs * scale).astype(np.float32)


def ordinal(a: np.ndarray) -> np.ndarray:
    """f32 values as integers that count ulps monotonically across zero."""
    i = np.asarray(a, np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def assert_ulps(native: np.ndarray, ref: np.ndarray, ulps: int) -> None:
    assert native.shape == ref.shape
    diff = np.abs(ordinal(native) - ordinal(ref))
    assert diff.max(initial=0) <= ulps, f"{diff.max()} ulps apart (allowed {ulps})"


def linear_graph(rng, lead, n, k, weights, act_binary, bias, pow2=False, act=None) -> Graph:
    g = Graph("blin")
    x = g.add_input("x", tensor([*lead, k]))
    xin = binarize_input(g, x) if act_binary else x
    ops = [xin, packed_weight(g, rng, (n, k), weights, pow2)]
    if bias:
        b = rng.integers(-8, 9, size=n).astype(np.float32) if pow2 else randn(rng, n)
        ops.append(g.const("b", b))
    y = g.add("linear", ops)
    g.set_outputs([g.add(act, [y]) if act else y])
    return g


shapes = st.tuples(
    st.sampled_from([(1,), (3,), (2, 3), (1, 1)]),  # leading dims: rank 3 puts several rows in one β slice
    st.integers(1, 70),  # N
    st.sampled_from([1, 5, 63, 64, 65, 100, 128, 200, 300]),  # K, often K % 64 != 0
)


# -- quantize / dequantize --------------------------------------------------------------------


@settings(max_examples=12)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple), k_extra=st.sampled_from([0, 1, 63, 64, 70])
)
def test_quantize_dequantize_bit_exact(tmp_path_factory, shape, k_extra):
    shape = shape[:-1] + (shape[-1] + k_extra,)
    g = Graph("q")
    x = g.add_input("x", tensor(list(shape)))
    g.set_outputs([g.add("dequantize", [binarize_input(g, x)], type=tensor(list(shape)))])
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    xs = randn(rng, *shape)
    xs.reshape(-1)[:: max(1, xs.size // 5)] = 0.0  # zeros are +1, as x >= 0 says
    (native,) = build(g, tmp_path_factory.mktemp("q"))(xs)
    np.testing.assert_array_equal(native, mcir.interpret(g, xs)[0])


def test_quantize_signs_of_zero_and_nan(tmp_path):
    g = Graph("q")
    x = g.add_input("x", tensor([2, 4]))
    g.set_outputs([g.add("dequantize", [binarize_input(g, x)], type=tensor([2, 4]))])
    xs = np.float32([[0.0, -0.0, -2.0, 2.0], [np.nan, 1.0, -1.0, 0.5]])
    (native,) = build(g, tmp_path)(xs)
    np.testing.assert_array_equal(native[0], [1.0, 1.0, -1.0, 1.0])  # β = 1, -0.0 >= 0
    assert np.isnan(native[1]).all()  # β = mean|x| is NaN for the whole slice
    np.testing.assert_array_equal(native, mcir.interpret(g, xs)[0])


@pytest.mark.parametrize("kind", ["binary", "ternary"])
def test_dequantize_packed_constant(tmp_path, rng, kind):
    g = Graph("dq")
    w = packed_weight(g, rng, (5, 3, 7), kind)
    g.set_outputs([g.add("dequantize", [w], type=tensor([5, 3, 7]))])
    np.testing.assert_array_equal(build(g, tmp_path)()[0], mcir.interpret(g)[0])


# -- XNOR / popcount: binary activations ------------------------------------------------------


@settings(max_examples=20)
@given(shape=shapes, weights=st.sampled_from(["binary", "ternary"]), bias=st.booleans(), seed=st.integers(0, 99))
def test_xnor_linear_bit_exact(tmp_path_factory, shape, weights, bias, seed):
    """α, β powers of two, integer biases: native == interpreter bit for bit."""
    lead, n, k = shape
    rng = np.random.default_rng(seed)
    g = linear_graph(rng, lead, n, k, weights, act_binary=True, bias=bias, pow2=True)
    xs = pow2_signs(rng, (*lead, k))
    (native,) = build(g, tmp_path_factory.mktemp("x"))(xs)
    np.testing.assert_array_equal(native, mcir.interpret(g, xs)[0])


@settings(max_examples=20)
@given(shape=shapes, weights=st.sampled_from(["binary", "ternary"]), bias=st.booleans(), seed=st.integers(0, 99))
def test_xnor_linear_general_scales_within_one_ulp(tmp_path_factory, shape, weights, bias, seed):
    lead, n, k = shape
    rng = np.random.default_rng(seed)
    g = linear_graph(rng, lead, n, k, weights, act_binary=True, bias=bias)
    xs = randn(rng, *lead, k)
    (native,) = build(g, tmp_path_factory.mktemp("x"))(xs)
    assert_ulps(native, mcir.interpret(g, xs)[0], 1)


@pytest.mark.parametrize("weights", ["binary", "ternary"])
@pytest.mark.parametrize("lead, k", [((2, 3), 1), ((2, 3), 65), ((1, 6), 1), ((1, 6), 3)])
def test_xnor_linear_on_repacked_rows_within_one_ulp(tmp_path, lead, k, weights):
    """Slices of several rows whose K is not a multiple of 64 are repacked into word-aligned rows
    first; every row must then read its own bits (AVX-512 codegen once merged neighbouring rows,
    seed 2 below: rows 4 and 5 of a [2, 3, 1] ternary product came out equal)."""
    rng = np.random.default_rng(2)
    g = linear_graph(rng, lead, 2, k, weights, act_binary=True, bias=False)
    xs = randn(rng, *lead, k)
    (native,) = build(g, tmp_path)(xs)
    assert_ulps(native, mcir.interpret(g, xs)[0], 1)


def test_xnor_linear_fused_activation(tmp_path, rng):
    g = linear_graph(rng, (4,), 33, 130, "binary", act_binary=True, bias=True, act="relu")
    native = check_native(g, tmp_path, randn(rng, 4, 130), rtol=0.0)
    assert (native[0] >= 0).all()


# -- sign-select: float activations -------------------------------------------------------------


@settings(max_examples=20)
@given(shape=shapes, weights=st.sampled_from(["binary", "ternary"]), bias=st.booleans(), seed=st.integers(0, 99))
def test_select_linear_random_shapes(tmp_path_factory, shape, weights, bias, seed):
    lead, n, k = shape
    rng = np.random.default_rng(seed)
    g = linear_graph(rng, lead, n, k, weights, act_binary=False, bias=bias)
    check_native(g, tmp_path_factory.mktemp("s"), randn(rng, *lead, k))


@pytest.mark.parametrize("weights", ["binary", "ternary"])
def test_select_linear_positive_inputs_long_rows(tmp_path, rng, weights):
    """ReLU-like inputs (all >= 0) and K = 4096: y = α(2·Σ_bit x - Σx) cancels the most here."""
    g = linear_graph(rng, (2,), 40, 4096, weights, act_binary=False, bias=False)
    check_native(g, tmp_path, np.abs(randn(rng, 2, 4096)))


# -- layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "tail", "row_bytes"), [(784, 16, 12 * 8 + 2), (4096, 0, 512), (100, 0, 16), (96, 32, 12)]
)
def test_row_panels_store_the_last_word_narrow(rng, k, tail, row_bytes):
    """Bits per row: whole words, then the last partial word as u16/u32 when it fits."""
    rp = RowPanels(n=10, k=k, nr=8, planes=1)
    assert rp.tail_bits == tail
    assert rp.wf * 8 + rp.tail_bits // 8 == row_bytes
    packed = rp.pack([np.zeros((10, -(-k // 64)), np.uint64)], np.ones(10, np.float32))
    # sections A, B and alpha (one f32 per row, no padding rows), each 64-byte aligned
    assert len(packed) == sum(-(-size // 64) * 64 for size in (10 * rp.wf * 8, 10 * tail // 8, 10 * 4))


def test_panels_hold_every_bit_once(rng):
    """Packing is a permutation of the rows' words (plus narrowing of zero-padded tails)."""
    n, k = 19, 150
    bits = Binary(0).encode(TensorType((n, k), dtypes.b1, Binary(0)), randn(rng, n, k))["bits"]
    rp = RowPanels(n, k, nr=8, planes=1)
    blob = rp.pack([bits], np.ones(n, np.float32))
    a = blob[: n * rp.wf * 8].view(np.uint64)
    tail = blob[rp.offsets[1] : rp.offsets[1] + n * 4].view(np.uint32)
    assert sorted(a.tolist()) == sorted(bits[:, : rp.wf].reshape(-1).tolist())
    assert sorted(tail.tolist()) == sorted(bits[:, rp.wf].tolist())
    assert_close(blob[rp.offsets[2] : rp.offsets[2] + 4 * n].view(np.float32), np.ones(n, np.float32))
