"""Regression tests of issue #17's audit: every hostile or careless input it found ends in a
clean ``McirError`` naming the problem (never ValueError/TypeError/OverflowError/struct.error),
or in the same answer from the interpreter and the native library.
"""

from __future__ import annotations

import warnings

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


# ---- edge semantics: the same in the interpreter and natively ---------------------------------


def unary_graph(input_type: str, op: str, result_type: str) -> mcir.Graph:
    return mcir.parse(f"graph @g(%x: {input_type}) -> ({result_type}) {{\n  %y = {op} : {result_type}\n  return %y\n}}")


EDGE_FLOATS = np.array([-1.0, -3.7, 255.9, 256.0, 300.0, -200.0, 1e30, -1e30, np.nan, np.inf, -np.inf, 0.5], np.float32)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        # truncate toward zero, saturate to int64 (NaN -> 0), wrap to the width: -1.0 -> 255 as in torch
        ("u8", [255, 253, 255, 0, 44, 56, 255, 0, 0, 255, 0, 0]),
        ("i8", [-1, -3, -1, 0, 44, 56, -1, 0, 0, -1, 0, 0]),
        ("i32", [-1, -3, 255, 256, 300, -200, -1, 0, 0, -1, 0, 0]),
        ("i64", [-1, -3, 255, 256, 300, -200, 2**63 - 1, -(2**63), 0, 2**63 - 1, -(2**63), 0]),
    ],
)
def test_cast_of_out_of_range_floats_is_defined_and_native_agrees(tmp_path, dtype: str, expected: list[int]) -> None:
    g = unary_graph("f32[12]", f'cast(%x) {{dtype="{dtype}"}}', f"{dtype}[12]")
    with np.errstate(invalid="ignore"):
        (ref,) = mcir.interpret(g, EDGE_FLOATS)
    np.testing.assert_array_equal(ref, np.array(expected, dtype=ref.dtype))
    (native,) = mcir.compile(g, tmp_path / "cast")(EDGE_FLOATS)
    np.testing.assert_array_equal(native, ref)


def test_cast_of_negative_floats_to_u8_wraps_like_torch() -> None:
    torch = pytest.importorskip("torch")
    x = np.array([-1.0, -3.7, -200.0, 2.9], np.float32)
    (ref,) = mcir.interpret(unary_graph("f32[4]", 'cast(%x) {dtype="u8"}', "u8[4]"), x)
    np.testing.assert_array_equal(ref, torch.from_numpy(x).to(torch.uint8).numpy())


@pytest.mark.parametrize(
    "op",
    ["pow(%x) {exponent=inf}", "pow(%x) {exponent=nan}", "clamp(%x) {min=nan}", "clamp(%x) {max=-inf}"],
)
def test_non_finite_attributes_that_kernels_fold_are_refused(op: str) -> None:
    with pytest.raises(McirError, match="needs a finite number"):
        unary_graph("f32[4]", op, "f32[4]")


@pytest.mark.parametrize(
    ("input_type", "op", "result_type"),
    [
        ("f32[2,0]", "softmax(%x)", "f32[2,0]"),
        ("f32[2,0]", "log_softmax(%x)", "f32[2,0]"),
        ("f32[]", "softmax(%x) {axis=0}", "f32[]"),
        ("f32[2,0]", "layer_norm(%x)", "f32[2,0]"),
    ],
)
def test_degenerate_normalisations_run_natively_like_the_interpreter(tmp_path, input_type, op, result_type) -> None:
    g = unary_graph(input_type, op, result_type)
    x = np.full(g.inputs[0].type.shape, 1.5, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "mean of empty slice" on the empty case
        (ref,) = mcir.interpret(g, x)
    (native,) = mcir.compile(g, tmp_path / "deg")(x)
    np.testing.assert_array_equal(native, ref)


def test_interpreter_handles_zero_length_attention_and_binary_quantize() -> None:
    g = mcir.parse(
        "graph @g(%q: f32[1,2,4], %k: f32[1,0,4], %v: f32[1,0,4]) -> (f32[1,2,4]) {\n"
        "  %y = scaled_dot_product_attention(%q, %k, %v) : f32[1,2,4]\n  return %y\n}"
    )
    (y,) = mcir.interpret(
        g, np.ones((1, 2, 4), np.float32), np.zeros((1, 0, 4), np.float32), np.zeros((1, 0, 4), np.float32)
    )
    np.testing.assert_array_equal(y, np.zeros((1, 2, 4), np.float32))  # no keys: attends to nothing
    gb = mcir.parse(
        "graph @g(%x: f32[0,8]) -> (f32[0,8]) {\n  %b = quantize(%x) : b1[0,8] #binary<axis=0>\n"
        "  %y = dequantize(%b) : f32[0,8]\n  return %y\n}"
    )
    (yb,) = mcir.interpret(gb, np.zeros((0, 8), np.float32))
    assert yb.shape == (0, 8)


@pytest.mark.parametrize(
    ("inputs", "op", "result"),
    [
        ("%a: f32[2,0], %b: f32[0,3]", "matmul(%a, %b)", "f32[2,3]"),
        ("%q: f32[1,2,4], %k: f32[1,0,4], %v: f32[1,0,4]", "scaled_dot_product_attention(%q, %k, %v)", "f32[1,2,4]"),
    ],
)
def test_native_reductions_over_zero_length_axes_are_refused_cleanly(tmp_path, inputs, op, result) -> None:
    g = mcir.parse(f"graph @g({inputs}) -> ({result}) {{\n  %y = {op} : {result}\n  return %y\n}}")
    with pytest.raises(McirError, match="reduces over a zero-length axis"):
        mcir.compile(g, tmp_path / "empty")


def test_interpreter_out_of_memory_is_a_mcir_error(monkeypatch) -> None:
    g = unary_graph("f32[4]", "relu(%x)", "f32[4]")

    # a huge attention's scores raised a raw MemoryError; simulate the allocation failing
    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(mcir.interp.Interpreter, "run_op", no_memory)
    with pytest.raises(McirError, match="not enough memory to interpret"):
        mcir.interpret(g, np.ones(4, np.float32))


# ---- resource limits ----------------------------------------------------------------------------


def test_an_op_with_too_many_operands_is_refused_before_llvm() -> None:
    # an 80 KB text concatenating 20,000 operands made LLVM run out of memory
    n = 20_000
    operands = ", ".join(["%x"] * n)
    text = f"graph @g(%x: f32[1]) -> (f32[{n}]) {{\n  %y = concat({operands}) {{axis=0}} : f32[{n}]\n  return %y\n}}"
    assert len(text) > 80_000
    with pytest.raises(McirError, match="has 20000 operands; mcir allows at most 1024"):
        mcir.parse(text)


def test_too_many_graph_inputs_are_refused(monkeypatch) -> None:
    from mcir import verifier

    monkeypatch.setattr(verifier, "MAX_INPUTS", 3)
    with pytest.raises(McirError, match="has 4 inputs; mcir allows at most 3"):
        mcir.parse("graph @g(%a: f32[1], %b: f32[1], %c: f32[1], %d: f32[1]) -> (f32[1]) {\n  return %a\n}")


def run_function_text(n_inputs: int) -> str:
    from mcir.codegen.lowering import lower
    from mcir.codegen.target import resolve

    ins = ", ".join(f"%x{i}: f32[4]" for i in range(n_inputs))
    g = mcir.parse(f"graph @g({ins}) -> (f32[4]) {{\n  %y = relu(%x{n_inputs - 1}) : f32[4]\n  return %y\n}}")
    text = lower(g, resolve("native"), "g").ir_text
    start = text.index('define i32 @"mcir_g_run"')
    return text[start : text.index("\n}", start)]


def test_the_run_function_does_not_grow_with_the_number_of_inputs() -> None:
    # a load, compare and branch per input pointer made LLVM's O3 quadratic (4,000 inputs: 22.7 s);
    # the pointers are now checked by one loop and only used ones are loaded
    small, large = run_function_text(2), run_function_text(600)
    assert large.count("br ") == small.count("br ")
    assert large.count("load ") == small.count("load ")


# ---- the runtime loader -----------------------------------------------------------------------


def test_library_on_a_truncated_so_is_a_mcir_error(tmp_path) -> None:
    g = unary_graph("f32[4]", "relu(%x)", "f32[4]")
    mcir.compile(g, tmp_path / "m")
    data = (tmp_path / "m.so").read_bytes()
    from mcir.runtime import Library

    for keep in (len(data) // 2, 100, 0x41):
        (tmp_path / "cut.so").write_bytes(data[:keep])
        with pytest.raises(McirError):
            Library(tmp_path / "cut.so")


def test_a_non_utf8_graph_file_is_a_mcir_error(tmp_path) -> None:
    folder = tmp_path / "m"
    mcir.save(unary_graph("f32[4]", "relu(%x)", "f32[4]"), folder)
    (folder / "graph.mcir").write_bytes(b"graph @g(%x: f32[4]) \xff\xfe -> (f32[4])")
    with pytest.raises(McirError):
        mcir.load(folder)


@pytest.mark.parametrize(
    ("op", "x", "expected"),
    [
        ("clamp(%x) {min=1e30}", [1, 2, 3, 250], [255, 255, 255, 255]),  # bounds saturate to the dtype
        ("clamp(%x) {min=-1e30, max=3.5}", [1, 2, 3, 250], [1, 2, 3, 3]),
    ],
)
def test_clamp_bounds_beyond_an_integer_dtype_saturate_the_same_natively(tmp_path, op, x, expected) -> None:
    g = unary_graph("u8[4]", op, "u8[4]")
    x = np.array(x, np.uint8)
    (ref,) = mcir.interpret(g, x)
    np.testing.assert_array_equal(ref, np.array(expected, np.uint8))
    np.testing.assert_array_equal(mcir.compile(g, tmp_path / "clamp")(x)[0], ref)
