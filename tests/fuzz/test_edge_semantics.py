"""Edge semantics that fuzzing found natively and in the interpreter to differ, now defined once and
the same in both (issue #17, docs/ir.md "Edge values").

* An int8 layer's bias is added in accumulator units: ``rint(b / (s_x·s_w[n]))`` (only a bias that
  the quant8 pass stored at exactly that scale is exact; an f32 bias or an i32 bias at another
  scale, e.g. after the input scale was edited, is rounded, natively and in the interpreter).
"""

from __future__ import annotations

import numpy as np
import pytest

import mcir
from mcir import dtypes
from mcir.encodings.csr import to_csr
from mcir.ir import _freeze_data

# 0·inf and inf-inf inside the references are the point of some tests here
pytestmark = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")

X_SCALE, X_ZP = 0.05, 7


def graph_with(text: str, data: dict[str, object]) -> mcir.Graph:
    g = mcir.parse(text, verify=False)
    for op in g.constants():
        op.data = _freeze_data(data[op.result.name], op.result.type)
    return mcir.verify(g)


def int8_layer(weight_type: str, weight: object, bias_type: str, bias: object) -> mcir.Graph:
    text = f"""graph @g(%x: u8[3,16] #quant<scale={X_SCALE}, zero_point={X_ZP}>) -> (f32[3,4]) {{
  %w = const : {weight_type}
  %b = const : {bias_type}
  %y = linear(%x, %w, %b) : f32[3,4]
  return %y
}}"""
    return graph_with(text, {"w": weight, "b": bias})


RNG = np.random.default_rng(0)
Q_W = RNG.integers(-127, 128, (4, 16)).astype(np.int8)
S_W = np.array([0.01, 0.02, 0.03, 0.04], np.float32)
X_U8 = RNG.integers(0, 256, (3, 16)).astype(np.uint8)


def acc_scale_dense() -> np.ndarray:
    return (np.float64(X_SCALE) * S_W.astype(np.float64)).astype(np.float32)


def reference(acc: np.ndarray, bias_units: np.ndarray) -> np.ndarray:
    """x·wᵀ in float64 plus the bias as whole accumulator units."""
    x = (X_U8.astype(np.float64) - X_ZP) * X_SCALE
    w = Q_W.astype(np.float64) * S_W.astype(np.float64)[:, None]
    return x @ w.T + bias_units * acc.astype(np.float64)


# bias values between accumulator units (k + 0.4 units): the kernels cannot add them exactly
BIAS_UNITS = np.array([3.4, -7.4, 12.4, 0.4])


@pytest.mark.parametrize("bias_kind", ["f32", "i32 at 2.7x the accumulator scale"])
def test_an_int8_layer_rounds_its_bias_to_accumulator_units_natively_and_in_the_interpreter(
    tmp_path, bias_kind: str
) -> None:
    acc = acc_scale_dense()
    real_bias = BIAS_UNITS * acc
    if bias_kind == "f32":
        bias_type, bias = "f32[4]", real_bias.astype(np.float32)
    else:
        # an i32 bias stored at another scale: q * s_b = k.4 units
        s_b = (acc * np.float32(2.7)).astype(np.float32)
        q = np.round(real_bias / s_b).astype(np.int32)
        bias_type, bias = "i32[4] #quant<axis=0>", {"data": q, "scale": s_b}
        real_bias = q * s_b.astype(np.float64)
    g = int8_layer("i8[4,16] #quant<axis=0>", {"data": Q_W, "scale": S_W}, bias_type, bias)
    expected = reference(acc, np.rint(real_bias / acc.astype(np.float64)))
    (ref,) = mcir.interpret(g, X_U8)
    np.testing.assert_allclose(ref, expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(ref, reference(acc, real_bias / acc), rtol=1e-6, atol=1e-7)  # rounding mattered
    (native,) = mcir.compile(g, tmp_path / "lin")(X_U8)
    np.testing.assert_allclose(native, ref, rtol=1e-6, atol=1e-7)  # the f32 of the same integers


def test_a_sparse_int8_layer_rounds_its_bias_the_same_way(tmp_path) -> None:
    dense = Q_W.astype(np.float32) * S_W[:, None]
    dense[:, ::2] = 0  # half the weights pruned
    t, parts = to_csr(dense, dtypes.i8)
    acc = np.float32(X_SCALE) * parts["scale"].astype(np.float32)
    bias = (BIAS_UNITS * acc).astype(np.float32)
    g = int8_layer(str(t), parts, "f32[4]", bias)
    (ref,) = mcir.interpret(g, X_U8)
    x = (X_U8.astype(np.float64) - X_ZP) * X_SCALE
    w = t.decode(parts)
    expected = x @ w.T + np.rint(bias.astype(np.float64) / acc) * acc
    np.testing.assert_allclose(ref, expected, rtol=1e-6, atol=1e-7)
    (native,) = mcir.compile(g, tmp_path / "sparse")(X_U8)
    np.testing.assert_allclose(native, ref, rtol=1e-6, atol=1e-7)


# ---- sparse f32 layers and non-finite inputs --------------------------------------------------------
# A sparse kernel skips absent weights, but unevenly (window padding multiplies 0 by some x), so 0·inf
# has no single answer: the defined result is NaN for every output of a sample whose input holds an
# inf or NaN, in the interpreter and natively; other samples are untouched.


def sparse_linear(batch: int) -> tuple[mcir.Graph, np.ndarray]:
    rng = np.random.default_rng(1)
    dense = rng.standard_normal((40, 96)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.8] = 0
    t, parts = to_csr(dense)
    text = f"""graph @g(%x: f32[{batch},96]) -> (f32[{batch},40]) {{
  %w = const : {t}
  %y = linear(%x, %w) : f32[{batch},40]
  %r = relu(%y) : f32[{batch},40]
  return %r
}}"""
    x = rng.standard_normal((batch, 96)).astype(np.float32)
    return graph_with(text, {"w": parts}), x


@pytest.mark.parametrize("batch", [1, 8], ids=["window GEMV", "batched CSR"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_input_makes_its_sample_nan_through_a_sparse_linear(tmp_path, batch: int, bad: float) -> None:
    g, x = sparse_linear(batch)
    x[0, 5] = bad
    (ref,) = mcir.interpret(g, x)
    assert np.isnan(ref[0]).all()
    assert np.isfinite(ref[1:]).all()
    (native,) = mcir.compile(g, tmp_path / "sp")(x)
    np.testing.assert_array_equal(np.isnan(native), np.isnan(ref))
    np.testing.assert_allclose(native[1:], ref[1:], rtol=1e-5, atol=1e-5)


def test_a_non_finite_pixel_makes_its_image_nan_through_a_sparse_conv(tmp_path) -> None:
    rng = np.random.default_rng(2)
    dense = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.7] = 0
    t, parts = to_csr(dense)
    text = f"""graph @g(%x: f32[2,3,6,6]) -> (f32[2,8,6,6]) {{
  %w = const : {t}
  %y = conv2d(%x, %w) {{padding=[1, 1]}} : f32[2,8,6,6]
  return %y
}}"""
    g = graph_with(text, {"w": parts})
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    x[1, 2, 0, 4] = np.inf
    (ref,) = mcir.interpret(g, x)
    assert np.isnan(ref[1]).all() and np.isfinite(ref[0]).all()
    (native,) = mcir.compile(g, tmp_path / "spc")(x)
    np.testing.assert_array_equal(np.isnan(native), np.isnan(ref))
    np.testing.assert_allclose(native[0], ref[0], rtol=1e-5, atol=1e-5)


# ---- f32 overflow ------------------------------------------------------------------------------------
# The interpreter computes a float op in float64 and rounds its result to f32; natively the same op
# computes in f32. A result beyond the f32 range (|y| > 3.4028235e38) is ±inf in both, whether a
# product or only the sum overflows. (Where only a *partial* sum overflows and later terms bring the
# exact result back into range, f32 arithmetic depends on the order of the sum: docs/ir.md.)


@pytest.mark.parametrize(
    ("w", "x", "expected"),
    [
        ([[3.0e38, 3.0e38]], [[1.0, 1.0]], np.inf),  # only the sum overflows
        ([[3.0e38, 1.0]], [[-2.0, 1.0]], -np.inf),  # a product overflows
        ([[3.0e38, -3.0e38]], [[1.0, 1.0]], 0.0),  # in range all along
    ],
)
def test_a_linear_result_beyond_the_f32_range_is_inf_in_both(tmp_path, w, x, expected) -> None:
    text = """graph @g(%x: f32[1,2]) -> (f32[1,1]) {
  %w = const : f32[1,2]
  %y = linear(%x, %w) : f32[1,1]
  return %y
}"""
    g = graph_with(text, {"w": np.array(w, np.float32)})
    xs = np.array(x, np.float32)
    with np.errstate(over="ignore"):
        (ref,) = mcir.interpret(g, xs)
    (native,) = mcir.compile(g, tmp_path / "ovf")(xs)
    assert ref[0, 0] == expected and native[0, 0] == expected


def test_an_elementwise_overflow_is_inf_in_both(tmp_path) -> None:
    text = """graph @g(%a: f32[4], %b: f32[4]) -> (f32[4]) {
  %s = add(%a, %b) : f32[4]
  %p = mul(%s, %b) : f32[4]
  return %p
}"""
    g = mcir.parse(text)
    a = np.array([3e38, -3e38, 1e38, 1.0], np.float32)
    b = np.array([1e38, -1e38, 1.0, 2.0], np.float32)
    with np.errstate(over="ignore"):
        (ref,) = mcir.interpret(g, a, b)
    (native,) = mcir.compile(g, tmp_path / "ew")(a, b)
    np.testing.assert_array_equal(ref, np.array([np.inf, np.inf, 1e38, 6.0], np.float32))
    np.testing.assert_array_equal(native, ref)


# ---- scales whose decoded values leave the f32 range ----------------------------------------------------
# Every encoding expresses f32 values: a scale that makes a decoded value beyond the f32 range is refused
# (kernels decode in f32, the interpreter in float64: an int4 row scaled by 3.4e38 was NaN natively and
# finite in the interpreter, found by fuzzing)


@pytest.mark.parametrize(
    ("kind", "largest"),
    [("int4", 7), ("quant i8", 128), ("quant i32", 2**31), ("csr i8", 128), ("nm i8", 128)],
)
def test_a_scale_whose_decoded_values_overflow_f32_is_refused(kind: str, largest: int) -> None:
    from mcir.encodings import Int4, Quant
    from mcir.encodings.nm import to_nm
    from mcir.types import TensorType

    dense = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    dense[:, 1::2] = 0
    if kind == "int4":
        t = TensorType((4, 32), dtypes.i8, Int4(0))  # (#int2 multiplies by at most 1: any f32 scale is fine)
        stored = dict(t.encode(dense))
    elif kind.startswith("quant"):
        dt = dtypes.i8 if kind.endswith("i8") else dtypes.i32
        t = TensorType((4, 32), dt, Quant(axis=0))
        stored = {"data": np.ones((4, 32), dt.np), "scale": np.ones(4, np.float32)}
    else:
        t, stored = to_csr(dense, dtypes.i8) if kind.startswith("csr") else to_nm(dense, 2, 4, dtypes.i8)
        stored = dict(stored)
    limit = 3.4028234663852886e38 / largest
    ok = np.array(stored["scale"], np.float32)
    ok[1] = np.nextafter(np.float32(limit), np.float32(0))  # the largest allowed: still checks
    t.encoding.check_stored(t, {**stored, "scale": ok})
    over = np.array(stored["scale"], np.float32)
    over[1] = np.float32(limit * 1.01) if limit * 1.01 < 3.4e38 else np.float32(3.4e38)
    with pytest.raises(mcir.McirError, match=rf"'scale'\[1(, 0)?\] is .*so that {largest} x scale is a finite f32"):
        t.encoding.check_stored(t, {**stored, "scale": over})


def test_a_per_tensor_quant_scale_that_overflows_f32_is_refused() -> None:
    def identity(scale: str) -> str:
        t = f"u8[2] #quant<scale={scale}, zero_point=0>"
        return f"graph @g(%x: {t}) -> ({t}) {{\n  return %x\n}}"

    with pytest.raises(mcir.McirError, match="beyond the f32 range"):
        mcir.parse(identity("3e36"))  # 255 x 3e36 > 3.4e38
    mcir.parse(identity("1e36"))
