"""The text form: printing is deterministic and parses back byte for byte; errors have line:col."""

from __future__ import annotations

import numpy as np
import pytest

import mcir
from mcir import dtypes
from mcir.encodings import Quant
from mcir.ir import Graph
from mcir.types import TensorType, tensor

SAMPLE = """\
graph @mlp(%x: f32[2,8]) -> (f32[2,4], f32[2,3,4,4]) {
  %fc1.weight = const : f32[4,8]
  %fc1.bias = const dense<[-0.5, 0.25, 1.0, 1e-07]> : f32[4]
  %h = linear(%x, %fc1.weight, %fc1.bias) : f32[2,4] loc("fc1", "model.py:12")
  %r = clamp(%h) {min=0.0, max=6.0} : f32[2,4]
  %q = quantize(%r) : u8[2,4] #quant<scale=0.05, zero_point=3>
  %d = dequantize(%q) : f32[2,4]
  %y = softmax(%d) : f32[2,4]
  %x4 = reshape(%x) {shape=[2, 2, 2, 2]} : f32[2,2,2,2]
  %cw = const dense<[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]> : f32[3,2,1,1]
  %c = conv2d(%x4, %cw) {padding=[1, 1]} : f32[2,3,4,4]
  return %y, %c
}
"""


def test_sample_round_trips_byte_for_byte():
    g = mcir.parse(SAMPLE)
    assert str(g) == SAMPLE
    assert str(mcir.parse(str(g))) == SAMPLE


def test_defaults_are_elided_and_locations_kept():
    g = mcir.parse(SAMPLE)
    conv = g.value("c").producer
    assert conv.attrs["stride"] == (1, 1) and conv.attrs["padding"] == (1, 1)
    assert g.value("h").producer.loc.module == "fc1"


def test_built_graph_prints_parses_and_interprets_identically(tmp_path):
    rng = np.random.default_rng(0)
    g = Graph("m")
    x = g.add_input("x", tensor([3, 5]))
    w = g.const("w", rng.standard_normal((7, 5)).astype(np.float32))
    h = g.add("linear", [x, w])
    q = g.add("quantize", [h], type=TensorType((3, 7), dtypes.i8, Quant(scale=0.1, zero_point=-2)))
    g.set_outputs([g.add("gelu", [g.add("dequantize", [q], type=tensor([3, 7]))], {"approximate": "tanh"})])
    mcir.verify(g)
    mcir.save(g, tmp_path / "m")
    g2 = mcir.load(tmp_path / "m")
    assert str(g2) == str(g)
    xs = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(mcir.interpret(g, xs)[0], mcir.interpret(g2, xs)[0])


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("graph @a(%x: f32[2]) -> (f32[2]) {\n  %y = relu(%x : f32[2]\n  return %y\n}", "2:16", "expected ')', ','"),
        ("graph @a(%x: f32[2]) -> (f32[2]) {\n  %y = relux(%x) : f32[2]\n  return %y\n}", "2:8", "unknown op 'relux'"),
        ("graph @a(%x: f32[2]) -> (f32[2]) {\n  %y = relu(%z) : f32[2]\n  return %y\n}", "2:13", "undefined value %z"),
        ("graph @a(%x: f32[2]) -> (f32[2]) {\n  %y = relu(%x) : f32[3]\n  return %y\n}", "2:19", "declared f32[3]"),
        ("graph @a(%x: f32[2]) -> (f32[2]) {\n  %y = relu(%x) : q7[2]\n  return %y\n}", "2:19", "unknown dtype 'q7'"),
        ("graph @a(%x: f32[2]) -> (f32[2]) {\n  %y = softmax(%x) {axis=3} : f32[2]\n  return %y\n}", "2:8", "axis 3"),
        (
            "graph @a(%x: f32[2]) -> (f32[2]) {\n  %y = relu(%x) {foo=1} : f32[2]\n  return %y\n}",
            "2:8",
            "unknown attribute foo",
        ),
        ("graph @a(%x: f32[2]) -> (f32[2]) {\n  %y = relu(%x) : f32[2]\n  return %y\n", "3:10", "end of input"),
        (
            "graph @a(%x: f32[2]) -> (f32[2]) {\n  %y = relu(%x) : f32[2]\n  %y = relu(%x) : f32[2]\n  return %y\n}",
            "3:3",
            "defined twice",
        ),
        (
            "graph @a(%x: f32[2]) -> (f32[2]) {\n  %y = relu(%x) : u8[2] #quant<scale=-1.0>\n  return %y\n}",
            "2:19",
            "positive",
        ),
    ],
)
def test_parse_errors_name_line_column_and_cause(text, where, message):
    with pytest.raises(mcir.ParseError) as info:
        mcir.parse(text, source="bad.mcir")
    assert f"bad.mcir:{where}:" in str(info.value)
    assert message in str(info.value)


def test_verify_catches_broken_graphs():
    g = mcir.parse(SAMPLE)
    h = g.value("h")
    h.type = tensor([2, 5])  # simulate a pass that forgot to update a type
    with pytest.raises(mcir.VerifyError, match=r"declared f32\[2,5\]|operands give"):
        mcir.verify(g)


def test_erase_refuses_used_values():
    g = mcir.parse(SAMPLE)
    with pytest.raises(mcir.McirError, match="still used"):
        g.erase(g.value("h").producer)


def test_interpreter_checks_inputs():
    g = mcir.parse(SAMPLE)
    with pytest.raises(mcir.McirError, match="shape \\[2, 8\\]"):
        mcir.interpret(g, np.zeros((3, 8), np.float32))
    with pytest.raises(mcir.McirError, match="no data"):
        mcir.interpret(g, np.zeros((2, 8), np.float32))


def test_scalar_constants_keep_rank_zero():
    text = """\
graph @a(%x: f32[2]) -> (f32[2]) {
  %s = const dense<[2.0]> : f32[]
  %y = mul(%x, %s) : f32[2]
  return %y
}
"""
    g = mcir.parse(text)
    assert g.value("s").producer.data.shape == ()
    assert str(g) == text
    np.testing.assert_array_equal(mcir.interpret(g, np.array([1.0, 3.0], np.float32))[0], [2.0, 6.0])
