"""The kernel registry chooses exactly: one entry per operand and result signature.

Specification:

* every entry spells its operands like the op registry (same count, ``?`` on the same
  optional operands, ``*`` for variadic ops), so a no-bias layer matches the entry that
  declares the bias optional and never one with more or fewer operands;
* no two entries of one op accept a common signature, so registration order cannot
  change the choice, and every entry is reachable;
* lookup never crosses encodings, for operands *or* the result: a verified graph whose
  result is stored differently from what a kernel writes is refused with a CodegenError
  (issue #17, finding 1), and so is a weight that a kernel packs at compile time but that
  is a graph input (finding 2). Each regression case either refuses or equals the
  interpreter (integers exactly, u8 within 1 LSB).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import mcir
from mcir import ops
from mcir.codegen import kernels
from mcir.codegen.kernels import expand, format_kernel_table, kernel_table, overlapping, registered
from mcir.codegen.target import resolve
from mcir.errors import CodegenError

from .helpers import build


def _entries():
    return [g for gens in registered().values() for g in gens]


def _sample(gen, n: int) -> tuple[list[str], str]:
    """A concrete signature with ``n`` operands that ``gen`` accepts (the first of each pattern's set)."""
    return [sorted(expand(gen.pattern_at(i)))[0] for i in range(n)], sorted(expand(gen.result))[0]


def _arities(gen) -> range:
    lo, hi = gen.arity
    return range(lo, (hi if hi is not None else lo + 2) + 1)


def test_entries_spell_operands_like_the_op_registry():
    for gen in _entries():
        opdef = ops.get(gen.op)
        if opdef.variadic:
            assert gen.variadic, f"{gen.name}: {gen.op} is variadic, the entry is {gen.describe()}"
            continue
        assert len(gen.operands) == len(opdef.operands), f"{gen.name}: {gen.describe()} vs {opdef.operands}"
        for pat, spec in zip(gen.operands, opdef.operands):
            assert pat.endswith("?") == spec.endswith("?"), f"{gen.name}: {gen.describe()} vs {opdef.operands}"


def test_no_two_entries_of_an_op_accept_the_same_signature():
    assert overlapping() == [], "\n".join(
        f"{a.name} {a.describe()} / {b.name} {b.describe()}" for a, b in overlapping()
    )


def test_overlap_check_sees_optional_operands_and_results():
    # the check itself must be able to fail: two entries that share a no-bias form overlap
    a = kernels.KernelGen("linear", ("f32", "f32", "f32?"), lambda k: None)
    b = kernels.KernelGen("linear", ("f32", "float", "i8?"), lambda k: None)
    assert a.overlaps(b)
    c = kernels.KernelGen("linear", ("f32", "f32", "f32?"), lambda k: None, result="u8#quant")
    assert not a.overlaps(c)


def test_every_entry_is_chosen_for_its_own_signatures_whatever_the_order():
    for op, gens in registered().items():
        for gen in gens:
            for n in _arities(gen):
                sigs, res = _sample(gen, n)
                for order in (gens, gens[::-1]):
                    chosen = [g for g in order if g.matches_signatures(sigs, res)]
                    assert chosen == [gen], f"{op} {sigs} -> {res}: {[g.name for g in chosen]}"


def test_arity_is_exact():
    linear = next(g for g in registered()["linear"] if g.operands == ("f32", "f32", "f32?"))
    assert linear.matches_signatures(["f32", "f32"], "f32")
    assert linear.matches_signatures(["f32", "f32", "f32"], "f32")
    assert not linear.matches_signatures(["f32"], "f32")
    assert not linear.matches_signatures(["f32", "f32", "f32", "f32"], "f32")


def test_plain_patterns_never_accept_encoded_results():
    for gen in _entries():
        if gen.result == "any":
            assert all("#" not in s for s in expand(gen.result))
    relu = registered()["relu"][0]
    assert relu.matches_signatures(["f32"], "f32")
    assert not relu.matches_signatures(["f32"], "u8#quant")
    assert not relu.matches_signatures(["u8#quant"], "u8#quant")


def test_has_kernel_answers_for_types_without_compiling():
    from mcir import dtypes
    from mcir.encodings import Quant
    from mcir.types import TensorType

    f32 = TensorType((2, 8), dtypes.f32)
    u8 = TensorType((2, 8), dtypes.u8, Quant(scale=0.1, zero_point=3))
    assert kernels.has_kernel("relu", [f32], f32)
    assert not kernels.has_kernel("relu", [f32], u8)
    assert not kernels.has_kernel("reshape", [f32], f32)  # a view, never a kernel


def test_misspelt_patterns_fail_at_registration():
    for bad in ("f23", "flaot|int", "q8#quant"):
        with pytest.raises(ValueError, match="kernel pattern"):
            kernels.expand(bad)


def test_kernel_table_lists_every_entry_aligned_and_filters_by_op():
    rows = kernel_table(target=resolve("native"))
    assert len(rows) == len(_entries())
    text = format_kernel_table(rows).splitlines()
    assert text[0].split() == ["op", "operands", "result", "target", "kernel", "const"]
    start = text[0].index("kernel")
    assert all(line[start - 2 : start] == "  " for line in text[2:]), "columns are not aligned"
    conv = kernel_table("conv2d")
    assert conv and {r.op for r in conv} == {"conv2d"}
    assert any(r.operands == "f32, f32, f32?" for r in conv)


Q = "#quant<scale=0.019, zero_point=115>"


def _graph(body: str, inputs: str, out: str) -> mcir.Graph:
    g = mcir.parse(f"graph @g({inputs}) -> ({out}) {{\n{body}\n}}")
    mcir.verify(g)
    return g


def _refuses_or_matches(tmp_path, g: mcir.Graph, *xs: np.ndarray, atol: int = 1) -> str:
    """Compile ``g``: a CodegenError is fine; a library must equal the interpreter."""
    try:
        lib = build(g, tmp_path)
    except CodegenError as e:
        return str(e)
    ref = mcir.interpret(g, *xs)
    for n, r in zip(lib(*xs), ref):
        assert n.dtype == r.dtype
        np.testing.assert_allclose(n.astype(np.float64), r.astype(np.float64), atol=atol, rtol=1e-5)
    return ""


UNARY = ["relu", "neg", "abs", "sigmoid", "silu", "clamp"]


@pytest.mark.parametrize("name", UNARY)
def test_f32_kernel_never_writes_a_quantised_result(tmp_path, name):
    g = _graph(f"  %y = {name}(%x) : u8[2,8] {Q}\n  return %y", "%x: f32[2,8]", f"u8[2,8] {Q}")
    x = np.linspace(-2, 2, 16, dtype=np.float32).reshape(2, 8)
    msg = _refuses_or_matches(tmp_path, g, x)
    assert "no native kernel" in msg and "result u8#quant" in msg


@pytest.mark.parametrize(
    ("body", "inputs", "out", "args"),
    [
        (
            f"  %y = minimum(%a, %b) : u8[2,8] {Q}",
            "%a: f32[2,8], %b: f32[2,8]",
            f"u8[2,8] {Q}",
            lambda r: (r.standard_normal((2, 8)).astype(np.float32),) * 2,
        ),
        (
            f"  %y = where(%c, %a, %b) : u8[2,8] {Q}",
            "%c: bool[2,8], %a: f32[2,8], %b: f32[2,8]",
            f"u8[2,8] {Q}",
            lambda r: (r.random((2, 8)) > 0.5, *(r.standard_normal((2, 8)).astype(np.float32),) * 2),
        ),
        (
            f"  %y = softmax(%x) : u8[2,8] {Q}",  # (layer_norm f32 -> u8 has a kernel: norm_i8.py)
            "%x: f32[2,8]",
            f"u8[2,8] {Q}",
            lambda r: (r.standard_normal((2, 8)).astype(np.float32),),
        ),
        (
            f"  %y = batch_norm(%x, %w, %b, %m, %v) : u8[1,2,2,2] {Q}",
            "%x: f32[1,2,2,2], %w: f32[2], %b: f32[2], %m: f32[2], %v: f32[2]",
            f"u8[1,2,2,2] {Q}",
            lambda r: (r.standard_normal((1, 2, 2, 2)).astype(np.float32), *(np.ones(2, np.float32),) * 4),
        ),
        (
            f"  %y = mean(%x) {{axes=[1]}} : u8[2] {Q}",
            "%x: f32[2,8]",
            f"u8[2] {Q}",
            lambda r: (r.standard_normal((2, 8)).astype(np.float32),),
        ),
        (
            f"  %y = adaptive_avg_pool2d(%x) {{output_size=[1, 1]}} : u8[1,2,1,1] {Q}",
            "%x: f32[1,2,4,4]",
            f"u8[1,2,1,1] {Q}",
            lambda r: (r.standard_normal((1, 2, 4, 4)).astype(np.float32),),
        ),
        (
            f"  %y = embedding(%i, %t) : u8[3,4] {Q}",
            "%i: i64[3], %t: f32[5,4]",
            f"u8[3,4] {Q}",
            lambda r: (np.array([0, 4, 2]), r.standard_normal((5, 4)).astype(np.float32)),
        ),
        (
            "  %y = dropout(%x) : f32[2,8]",
            f"%x: u8[2,8] {Q}",
            "f32[2,8]",
            lambda r: (r.integers(0, 256, (2, 8)).astype(np.uint8),),
        ),
        (
            "  %y = reshape(%x) {shape=[16]} : f32[16]",
            f"%x: u8[2,8] {Q}",
            "f32[16]",
            lambda r: (r.integers(0, 256, (2, 8)).astype(np.uint8),),
        ),
        (
            "  %y = linear(%x, %w) : f32[2,4]",
            f"%x: u8[2,8] {Q}, %w: f32[4,8]",
            "f32[2,4]",
            lambda r: (r.integers(0, 256, (2, 8)).astype(np.uint8), r.standard_normal((4, 8)).astype(np.float32)),
        ),
        (
            f"  %y = linear(%x, %w) : u8[2,4] {Q}",
            "%x: f32[2,8], %w: f32[4,8]",
            f"u8[2,4] {Q}",
            lambda r: (r.standard_normal((2, 8)).astype(np.float32), r.standard_normal((4, 8)).astype(np.float32)),
        ),
        (
            f"  %y = conv2d(%x, %w) : u8[1,2,3,3] {Q}",
            "%x: f32[1,1,5,5], %w: f32[2,1,3,3]",
            f"u8[1,2,3,3] {Q}",
            lambda r: (
                r.standard_normal((1, 1, 5, 5)).astype(np.float32),
                r.standard_normal((2, 1, 3, 3)).astype(np.float32),
            ),
        ),
    ],
    ids=[
        "minimum",
        "where",
        "softmax",
        "batch_norm",
        "mean",
        "adaptive_avg_pool2d",
        "embedding",
        "dropout",
        "reshape",
        "linear_f32_weight_u8_input",
        "linear_f32_to_u8",
        "conv2d_f32_to_u8",
    ],
)
def test_kernels_never_cross_encodings(tmp_path, body, inputs, out, args):
    g = _graph(body + "\n  return %y", inputs, out)
    msg = _refuses_or_matches(tmp_path, g, *args(np.random.default_rng(0)))
    assert "no native kernel" in msg


def test_a_view_stored_like_its_operand_is_still_free(tmp_path):
    g = _graph(f"  %y = dropout(%x) : u8[2,8] {Q}\n  return %y", f"%x: u8[2,8] {Q}", f"u8[2,8] {Q}")
    x = np.arange(16, dtype=np.uint8).reshape(2, 8)
    np.testing.assert_array_equal(build(g, tmp_path)(x)[0], x)


W8 = "#quant<scale=0.02, zero_point=0>"


@pytest.mark.parametrize(
    ("body", "inputs", "out"),
    [
        ("  %y = linear(%x, %w) : f32[2,4]", f"%x: u8[2,8] {Q}, %w: i8[4,8] {W8}", "f32[2,4]"),
        (
            "  %y = conv2d(%x, %w) : f32[1,4,3,3]",
            f"%x: u8[1,2,5,5] {Q}, %w: i8[4,2,3,3] {W8}",
            "f32[1,4,3,3]",
        ),
    ],
    ids=["linear", "conv2d"],
)
def test_int8_weights_that_are_graph_inputs_are_refused(tmp_path, body, inputs, out):
    g = _graph(body + "\n  return %y", inputs, out)
    with pytest.raises(CodegenError, match=r"its weight %w : i8\[.*\] #quant<.*> must be a compile-time constant"):
        build(g, tmp_path)


def test_every_constant_position_names_an_operand():
    for gen, i in itertools.chain.from_iterable(((g, i) for i in g.constant) for g in _entries()):
        assert 0 < i < len(gen.operands), f"{gen.name}: constant operand {i} of {gen.describe()}"


def test_mcir_kernels_prints_the_table_and_filters_by_op(capsys):
    from mcir.cli import main

    assert main(["kernels"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["op", "operands", "result", "target", "kernel", "const"]
    assert len(out) == 2 + len(_entries())
    assert main(["kernels", "--op", "linear"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    assert lines and all(line.startswith("linear ") for line in lines)
    assert any("(u8#quant, i8#quant, i32#quant|f32?)" in line and "1,2" in line for line in lines)


def test_mcir_kernels_names_unknown_and_kernel_less_ops(capsys):
    from mcir.cli import main

    assert main(["kernels", "--op", "lineer"]) != 0
    assert "did you mean linear" in capsys.readouterr().err
    assert main(["kernels", "--op", "reshape"]) == 0
    assert "no native kernel for op 'reshape'" in capsys.readouterr().out
