"""Regression tests of issue #17's audit: every hostile or careless input it found ends in a
clean ``McirError`` naming the problem (never ValueError/TypeError/OverflowError/struct.error),
or in the same answer from the interpreter and the native library.
"""

from __future__ import annotations

import numpy as np
import pytest

import mcir
from mcir.encodings import to_csr, to_nm
from mcir.errors import McirError
from mcir.ir import _freeze_data
from mcir.types import MAX_TENSOR_BYTES, TensorType


def graph_with_weight(weight_type: str) -> str:
    """A one-input graph that also declares a (dataless) constant of ``weight_type``."""
    return f"graph @g(%x: f32[1,8]) -> (f32[1,8]) {{\n  %w = const : {weight_type}\n  return %x\n}}"


def identity_graph(input_type: str) -> str:
    return f"graph @g(%x: {input_type}) -> ({input_type}) {{\n  return %x\n}}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (graph_with_weight('f32[4,8] #nm<n="a", m=4>'), "#nm n must be an integer"),
        (graph_with_weight("f32[4,8] #nm<n=inf, m=4>"), "#nm n must be an integer"),
        (graph_with_weight("f32[4,8] #nm<n=2.7, m=4>"), "#nm n must be an integer"),  # was silently 2
        (graph_with_weight("f32[4,8] #nm<n=2, m=true>"), "#nm m must be an integer"),
        (graph_with_weight("b1[4,8] #binary<axis=none>"), "#binary axis must be an integer"),
        (graph_with_weight('t2[4,8] #ternary<axis="x">'), "#ternary axis must be an integer"),
        (graph_with_weight("f32[4,8] #csr<nnz=1.5>"), "#csr nnz must be an integer"),
        (graph_with_weight("f32[4,8] #codebook<bits=2.0>"), "#codebook bits must be an integer"),
        (graph_with_weight("f32[4,8] #pow2<bits=nan>"), "#pow2 bits must be an integer"),
        (graph_with_weight("i8[4,8] #int4<group=-inf>"), "#int4 group must be one of"),
        (identity_graph("u8[1,8] #dynamic<axis=false>"), "#dynamic takes exactly axis=0"),
        (identity_graph("u8[1,8] #quant<scale=nan, zero_point=0>"), "scale must be a positive finite"),
        (identity_graph("u8[1,8] #quant<scale=-0.5, zero_point=0>"), "scale must be a positive finite"),
        (identity_graph("u8[1,8] #quant<scale=0.0, zero_point=0>"), "scale must be a positive finite"),
        (identity_graph("u8[1,8] #quant<scale=1e999, zero_point=0>"), "scale"),
        (identity_graph("u8[1,8] #quant<scale=0.1, zero_point=256>"), "zero_point 256 outside"),
    ],
)
def test_encoding_parameters_are_typed_and_in_range(text: str, message: str) -> None:
    with pytest.raises(McirError, match=message):
        mcir.verify(mcir.parse(text))


@pytest.mark.parametrize(
    "shape",
    ["4611686018427387904", "4294967296,4294967296", "99999999999999999999999", "1048576,1048576,1"],
)
def test_tensor_sizes_beyond_the_stated_maximum_are_refused(shape: str) -> None:
    # f32[2^62] used to compile to a library reporting nbytes=0 that wrote past its workspace
    with pytest.raises(McirError, match="2\\^40"):
        mcir.parse(identity_graph(f"f32[{shape}]"))


def test_the_largest_allowed_tensor_is_exactly_the_stated_maximum() -> None:
    assert TensorType((MAX_TENSOR_BYTES,), mcir.dtypes.u8).nbytes == 2**40
    with pytest.raises(McirError):
        TensorType((MAX_TENSOR_BYTES + 1,), mcir.dtypes.u8)
    with pytest.raises(McirError, match="rank"):
        TensorType((1,) * 17, mcir.dtypes.f32)


# ---- component arrays consistent with the type ------------------------------------------------


def csr_weight() -> tuple[TensorType, dict[str, np.ndarray]]:
    dense = np.array([[1.0, 0, 0, 2.0], [0, 0, 3.0, 0], [0, 0, 0, 0]], np.float32)
    return to_csr(dense)


def mutated(stored: dict[str, np.ndarray], key: str, index: tuple[int, ...], value: float) -> dict[str, np.ndarray]:
    out = {k: np.array(v) for k, v in stored.items()}
    out[key][index] = value
    return out


def test_valid_components_pass() -> None:
    t, stored = csr_weight()
    _freeze_data(stored, t)


@pytest.mark.parametrize(
    ("key", "index", "value", "message"),
    [
        ("indices", (0,), 4, "'indices' holds"),  # column past K: the kernel reads past the input row
        ("indices", (1,), -1, "'indices' holds"),
        ("rowptr", (1,), 3, "decreases at row 1"),  # replaced below by [0, 3, 2, 3]
        ("rowptr", (0,), 1, "must start at 0"),
        ("rowptr", (3,), 2, "end at nnz"),
    ],
)
def test_csr_indices_and_row_pointers_must_be_in_range_and_monotone(key, index, value, message) -> None:
    t, stored = csr_weight()
    bad = mutated(stored, key, index, value)
    if message.startswith("decreases"):
        bad["rowptr"] = np.array([0, 3, 2, 3], np.int32)
    with pytest.raises(McirError, match=message):
        _freeze_data(bad, t)


def test_nm_positions_must_be_inside_their_group() -> None:
    t, stored = to_nm(np.array([[1.0, 0, 0, 2.0, 0, 3.0, 0, 0]], np.float32), 2, 4)
    _freeze_data(stored, t)
    with pytest.raises(McirError, match="'index' holds 4, must be < 4"):
        _freeze_data(mutated(stored, "index", (0, 1), 4), t)


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan, np.inf])
def test_per_row_scales_must_be_finite_and_positive(scale: float) -> None:
    t, stored = to_nm(np.array([[1.0, 0, 0, 2.0]], np.float32), 2, 4, dtype=mcir.dtypes.i8)
    with pytest.raises(McirError, match="scales must be finite and > 0"):
        _freeze_data(mutated(stored, "scale", (0,), scale), t)
    qt = TensorType((2, 3), mcir.dtypes.i8, mcir.encodings.Quant(axis=0))
    q = {"data": np.ones((2, 3), np.int8), "scale": np.array([0.5, scale], np.float32)}
    with pytest.raises(McirError, match="scales must be finite and > 0"):
        _freeze_data(q, qt)


def test_binary_padding_bits_must_be_zero() -> None:
    # set padding bits changed native results by 0.447 while verify said ok
    t = TensorType((2, 10), mcir.dtypes.b1, mcir.encodings.Binary(axis=0))
    stored = t.encode(np.random.default_rng(0).standard_normal((2, 10)).astype(np.float32))
    _freeze_data(stored, t)
    bad = mutated(stored, "bits", (1, 0), 0)
    bad["bits"][1, 0] = np.uint64(1) << np.uint64(12)  # bit 12 of a 10-element slice
    with pytest.raises(McirError, match="row 1 has padding bits set past bit 10"):
        _freeze_data(bad, t)


def test_ternary_and_low_bit_padding_must_be_zero() -> None:
    t = TensorType((1, 3), mcir.dtypes.t2, mcir.encodings.Ternary(axis=0))
    stored = t.encode(np.array([[1.0, -1.0, 0.0]], np.float32))
    stored["sign"] = np.array([[1 << 40]], np.uint64)
    with pytest.raises(McirError, match="'sign' row 0 has padding bits"):
        _freeze_data(stored, t)
    t4 = TensorType((1, 3), mcir.dtypes.i8, mcir.encodings.Int4())
    s4 = t4.encoding.encode(t4, np.array([[1.0, -1.0, 0.5]], np.float32))
    s4["data"] = np.array(s4["data"])
    s4["data"][0, -1] |= np.uint8(0xF0)  # 3 codes of 4 bits fill 12 of the row's 16 bits
    with pytest.raises(McirError, match="padding bits set past bit 12"):
        _freeze_data(s4, t4)


def test_saved_folder_with_out_of_range_csr_indices_is_refused_on_load(tmp_path) -> None:
    t, stored = csr_weight()
    g = mcir.parse(
        "graph @g(%x: f32[1,4]) -> (f32[1,3]) {\n  %w = const : " + str(t) + "\n"
        "  %y = linear(%x, %w) : f32[1,3]\n  return %y\n}",
        verify=False,
    )
    next(g.constants()).data = _freeze_data(stored, t)
    mcir.save(g, tmp_path / "m")
    import safetensors.numpy

    weights = safetensors.numpy.load_file(str(tmp_path / "m" / "weights.safetensors"))
    key = next(k for k in weights if k.endswith("indices"))
    weights[key] = np.array([0, 3, 99], np.int32)
    safetensors.numpy.save_file(weights, str(tmp_path / "m" / "weights.safetensors"))
    with pytest.raises(McirError, match="'indices' holds 0..99"):
        mcir.load(tmp_path / "m")
