"""The int8 transformer ops, native against the interpreter (contract of test_int8_gemm: u8/i8 results
within 1 LSB, f32 results within 1e-5 relative to the largest output):

* ``layer_norm`` with a u8/i8 operand and/or result: decode a row, normalise in f32, encode;
* ``scaled_dot_product_attention`` on u8 q, k, v: exact integer QK^T, softmax of the dequantised
  scores, probabilities on the u8 grid k/255 (``u8_probs``), exact integer P·V, requantised result;
  padding (bool and additive) and causal masks, a fully masked row (zeros).
"""

from __future__ import annotations

import numpy as np
import pytest

from mcir import dtypes
from mcir.encodings import Quant
from mcir.ir import Graph
from mcir.types import TensorType, tensor

from .test_int8_gemm import check_int8


def q8(shape, enc: Quant, dtype: str = "u8") -> TensorType:
    return TensorType(tuple(shape), dtypes.by_name(dtype), enc)


def stored(rng, shape, dtype: str = "u8") -> np.ndarray:
    info = np.iinfo(dtypes.by_name(dtype).np)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtypes.by_name(dtype).np)


LN_IN = Quant(scale=0.04, zero_point=131)
LN_OUT = Quant(scale=0.03, zero_point=128)


@pytest.mark.parametrize("d", [32, 45])  # a whole number of vectors, and a masked tail
@pytest.mark.parametrize(("x_kind", "y_kind"), [("u8", "u8"), ("u8", "f32"), ("f32", "u8"), ("i8", "u8")])
def test_layer_norm_on_the_int8_path(tmp_path, rng, d, x_kind, y_kind):
    g = Graph("qln")
    x_t = tensor([3, 5, d]) if x_kind == "f32" else q8((3, 5, d), LN_IN if x_kind == "u8" else Quant(0.04, 3), x_kind)
    x = g.add_input("x", x_t)
    w = g.const("w", (1 + 0.3 * rng.standard_normal(d)).astype(np.float32))
    b = g.const("b", (0.2 * rng.standard_normal(d)).astype(np.float32))
    y_t = None if y_kind == "f32" else q8((3, 5, d), LN_OUT)
    g.set_outputs([g.add("layer_norm", [x, w, b], {"eps": 1e-12}, type=y_t)])
    xs = (rng.standard_normal((3, 5, d)) * 2).astype(np.float32) if x_kind == "f32" else stored(rng, (3, 5, d), x_kind)
    check_int8(g, tmp_path, xs)


def test_layer_norm_without_affine_parameters(tmp_path, rng):
    g = Graph("qln_plain")
    x = g.add_input("x", q8((4, 64), LN_IN))
    g.set_outputs([g.add("layer_norm", [x], type=q8((4, 64), LN_OUT))])
    check_int8(g, tmp_path, stored(rng, (4, 64)))


QQ, QK, QV = Quant(scale=0.02, zero_point=128), Quant(scale=0.025, zero_point=120), Quant(scale=0.03, zero_point=131)
Y = Quant(scale=0.012, zero_point=128)


def _attention(rng, L, S, E, mask: str, y_kind: str = "u8", u8_probs: bool = True, heads: int = 2, q_kind="u8"):
    g = Graph("qsdpa")
    q = g.add_input("q", q8((1, heads, L, E), QQ if q_kind == "u8" else Quant(0.02, -3), q_kind))
    k = g.add_input("k", q8((1, heads, S, E), QK))
    v = g.add_input("v", q8((1, heads, S, E), QV))
    operands, inputs = (
        [q, k, v],
        [stored(rng, (1, heads, L, E), q_kind), stored(rng, (1, heads, S, E)), stored(rng, (1, heads, S, E))],
    )
    attrs = {"u8_probs": u8_probs, "is_causal": mask == "causal"}
    if mask == "padding":  # the [B, 1, L, S] bool mask of an HF encoder: the last two keys are padding
        operands.append(g.add_input("m", TensorType((1, 1, L, S), dtypes.boolean)))
        m = np.ones((1, 1, L, S), bool)
        m[..., -2:] = False
        m[0, 0, 0, :] = False  # and a fully masked row: zeros
        inputs.append(m)
    elif mask == "additive":
        operands.append(g.add_input("m", tensor([1, 1, L, S])))
        inputs.append(np.where(rng.random((1, 1, L, S)) < 0.3, -1e4, 0.0).astype(np.float32))
    y_t = q8((1, heads, L, E), Y) if y_kind == "u8" else None
    g.set_outputs([g.add("scaled_dot_product_attention", operands, attrs, type=y_t)])
    return g, inputs


@pytest.mark.parametrize("mask", ["none", "padding", "additive", "causal"])
@pytest.mark.parametrize(("L", "S", "E"), [(8, 8, 16), (5, 19, 24)])
def test_int8_attention_within_one_lsb(tmp_path, rng, mask, L, S, E):
    g, inputs = _attention(rng, L, S, E, mask)
    out = check_int8(g, tmp_path, *inputs)[0]
    if mask == "padding":
        assert (out[0, :, 0] == Y.zero_point).all()  # the fully masked row attends to nothing: real 0


@pytest.mark.parametrize("u8_probs", [True, False])
def test_int8_attention_with_f32_result(tmp_path, rng, u8_probs):
    g, inputs = _attention(rng, 6, 10, 8, "padding", y_kind="f32", u8_probs=u8_probs)
    check_int8(g, tmp_path, *inputs)


def test_int8_attention_with_an_i8_operand(tmp_path, rng):
    g, inputs = _attention(rng, 7, 9, 16, "causal", q_kind="i8")
    check_int8(g, tmp_path, *inputs)


def test_u8_probabilities_are_the_reference_rounded_to_k_over_255(rng):
    # the meaning of u8_probs, stated on the reference: p -> rint(255 p) / 255 before @ v
    qf, kf = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    v = np.eye(5)[None].repeat(2, 0)  # v = I: the output is the probability matrix itself
    from mcir.ops import registry

    sdpa = registry.get("scaled_dot_product_attention").reference
    p = sdpa(qf, kf, v)
    pq = sdpa(qf, kf, v, u8_probs=True)
    np.testing.assert_allclose(pq, np.rint(p.astype(np.float64) * 255) / 255, atol=1e-6)
    assert np.abs(pq - p).max() <= 0.5 / 255 + 1e-6 and np.abs(pq - p).max() > 0


def test_long_reductions_stay_within_one_lsb(tmp_path, rng):
    # E, S > 258: the products leave f32's exact-integer range and round like an f32 GEMM
    g, inputs = _attention(rng, 4, 300, 272, "padding", heads=1)
    check_int8(g, tmp_path, *inputs)
