"""The ``bf16`` pass: what it converts, what it preserves, and its numbers on the test models.

Specification:

* each selected ``linear`` reads ``quantize(x) : bf16 #round<>`` (one per activation) and a bf16
  weight; ``conv2d`` gets a bf16 weight only (f32 activations, the ``half`` kernel); results,
  biases and everything between layers stay f32; layers an earlier pass quantised stay as they are;
* error bounds against torch fp32 on the MLP, the CNN and the encoder (native library, batch of the
  test inputs): max |Δ| <= 1e-2 of the largest output and SQNR >= 40 dB (measured 0.13-0.27 % and
  48.9-56.0 dB: each bf16 factor carries up to 2^-9 relative error, a product about 2^-8);
* native against the interpreter of the same bf16 graph: within 1e-3 of the largest output, not
  1e-5: the kernels sum in another order than numpy, and an activation that lands on the other side
  of a bf16 rounding boundary moves by one bf16 step (2^-8 relative) in the next layer;
* the library embeds at most 0.52 of the fp32 weight bytes (biases, norms and embeddings stay
  f32), and ``mcir.stats`` reports exactly the library's bytes;
* the graph survives save/load and the text form unchanged (the golden files cover the text).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mcir
from mcir import dtypes
from mcir.encodings import Round
from mcir.errors import McirError
from tests import models
from tests.metrics import sqnr_db


def _compiled(graph: mcir.Graph, tmp_path, name: str):
    return mcir.compile(graph, tmp_path / name)


@pytest.mark.parametrize("name", ["mlp", "cnn", "encoder"])
def test_error_bounds_against_torch_fp32(tmp_path, name):
    model, inputs = models.build(name)
    graph = mcir.trace(model, inputs)
    bf = mcir.run_passes(graph, "bf16(min_elements=1)")
    xs = [i.numpy() for i in inputs]
    got = _compiled(bf, tmp_path, name)(*xs)[0]
    with torch.no_grad():
        ref = model(*inputs).numpy()
    scale = float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) <= 1e-2 * scale
    assert sqnr_db(ref, got) >= 40.0
    interp = mcir.interpret(bf, *xs)[0]
    assert float(np.abs(got - interp).max()) <= 1e-3 * scale
    # and bf16 is really in use: the result is not the fp32 one
    assert sqnr_db(ref, got) < 80.0


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_library_embeds_about_half_the_weight_bytes(tmp_path, name):
    model, inputs = models.build(name)
    graph = mcir.trace(model, inputs)
    bf = mcir.run_passes(graph, "bf16(min_elements=1)")
    lib32, lib16 = _compiled(graph, tmp_path, "f32"), _compiled(bf, tmp_path, "bf16")
    assert lib16.weight_bytes <= 0.52 * lib32.weight_bytes
    assert mcir.stats(bf).weight_bytes == lib16.weight_bytes


def test_linear_rounds_its_input_and_conv_gets_bf16_weights_only():
    model, inputs = models.build("cnn")
    bf = mcir.run_passes(mcir.trace(model, inputs), "bf16(min_elements=1)")
    for op in bf.compute_ops():
        if op.name == "linear":
            assert op.operands[0].type == mcir.TensorType(op.operands[0].type.shape, dtypes.bf16, Round())
            assert op.operands[1].type.dtype == dtypes.bf16
        if op.name == "conv2d":
            assert op.operands[0].type.dtype == dtypes.f32 and op.operands[0].type.encoding is None
            assert op.operands[1].type.dtype == dtypes.bf16
        assert op.result.type.dtype == dtypes.f32 or op.name == "quantize"
    convs = mcir.run_passes(mcir.trace(model, inputs), "bf16(min_elements=1, ops=linear)")
    assert {op.operands[1].type.dtype for op in convs.compute_ops() if op.name == "conv2d"} == {dtypes.f32}


def test_layers_quantised_before_stay_int8():
    model, inputs = models.build("mlp")
    graph = mcir.trace(model, inputs)
    q = mcir.run_passes(graph, "quant8(skip=last)", calibration=[(inputs[0].numpy(),)])
    both = mcir.run_passes(q, "bf16(min_elements=1)")
    linears = [op for op in both.compute_ops() if op.name == "linear"]
    assert [op.operands[1].type.dtype.name for op in linears] == ["i8", "i8", "bf16"]


def test_save_and_load_keep_the_bf16_graph(tmp_path):
    model, inputs = models.build("mlp")
    bf = mcir.run_passes(mcir.trace(model, inputs), "bf16(min_elements=1)")
    mcir.save(bf, tmp_path / "g")
    back = mcir.load(tmp_path / "g")
    x = inputs[0].numpy()
    np.testing.assert_array_equal(mcir.interpret(back, x)[0], mcir.interpret(bf, x)[0])
    assert mcir.parse(str(back)).ops[-1].result.type == bf.ops[-1].result.type


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("ops=matmul", "matmul not supported"),
        ("ops=''", "empty not supported"),
        ("skip='('", "valid regular expression"),
        ("min_elements=0", "must be >= 1"),
    ],
)
def test_bad_options_are_refused_with_what_to_do(options, message):
    model, inputs = models.build("mlp")
    with pytest.raises(McirError, match=message):
        mcir.run_passes(mcir.trace(model, inputs), f"bf16({options})")


def test_small_weights_stay_f32_by_default():
    model, inputs = models.build("mlp")  # 32-64-64-10: the last weight has 640 elements
    bf = mcir.run_passes(mcir.trace(model, inputs), "bf16")
    kinds = [op.operands[1].type.dtype.name for op in bf.compute_ops() if op.name == "linear"]
    assert kinds == ["bf16", "bf16", "f32"]


@pytest.mark.parametrize("pipeline", ["bf16(min_elements=1)", "half(dtype=bf16, min_elements=1)"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_torch_module_and_onnx_export_compute_what_the_interpreter_does(tmp_path, name, pipeline):
    """``#round`` trains as round-to-bf16 forward / identity backward and exports as Cast(bf16) -> Cast(f32);
    16-bit weights of f32 layers widen exactly in both (ONNX keeps them 16-bit in the file)."""
    ort = pytest.importorskip("onnxruntime")
    model, inputs = models.build(name)
    bf = mcir.run_passes(mcir.trace(model, inputs), pipeline)
    xs = [i.numpy() for i in inputs]
    ref = mcir.interpret(bf, *xs)[0]
    with torch.no_grad():
        trained_form = mcir.to_torch(bf)(*inputs).numpy()
    np.testing.assert_allclose(trained_form, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))
    mcir.to_onnx(bf, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    exported = session.run(None, {i.name: x for i, x in zip(session.get_inputs(), xs)})[0]
    np.testing.assert_allclose(exported, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))


def test_gradients_pass_straight_through_the_rounding():
    model, inputs = models.build("mlp")
    module = mcir.to_torch(mcir.run_passes(mcir.trace(model, inputs), "bf16(min_elements=1)"))
    x = inputs[0].clone().requires_grad_(True)
    module(x).square().sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is not None and float(p.grad.float().abs().sum()) > 0 for p in module.parameters())


def test_finetune_after_bf16_keeps_bf16_weights_and_trains_them():
    model, inputs = models.build("mlp")
    graph = mcir.trace(model, inputs)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 32)).astype(np.float32), rng.integers(0, 10, 64)
    before = mcir.run_passes(graph, "bf16(min_elements=1)")
    after = mcir.run_passes(graph, "bf16(min_elements=1),finetune(epochs=2, lr=0.01)", data=(x, y))
    assert {op.operands[1].type.dtype for op in after.compute_ops() if op.name == "linear"} == {dtypes.bf16}
    x0 = inputs[0].numpy()
    assert float(np.abs(mcir.interpret(after, x0)[0] - mcir.interpret(before, x0)[0]).max()) > 1e-3


def test_running_the_pass_twice_changes_nothing_more():
    model, inputs = models.build("encoder")
    once = mcir.run_passes(mcir.trace(model, inputs), "bf16(min_elements=1)")
    assert str(mcir.run_passes(once, "bf16(min_elements=1)")) == str(once)


def test_a_weight_shared_with_an_f32_reader_gets_a_bf16_copy():
    """%w feeds a converted linear and an add (which needs f32): the linear reads its own bf16 copy."""
    g = mcir.parse(
        """graph @g(%x: f32[1,4]) -> (f32[1,4], f32[4,4]) {
  %w = const dense<[1.1, 2.2, 3.3, 4.4, 5.5, 6.6, 7.7, 8.8, 9.9, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8]> : f32[4,4]
  %y = linear(%x, %w) : f32[1,4]
  %z = add(%w, %w) : f32[4,4]
  return %y, %z
}"""
    )
    bf = mcir.run_passes(g, "bf16(min_elements=1)")
    linear = next(op for op in bf.ops if op.name == "linear")
    add = next(op for op in bf.ops if op.name == "add")
    assert linear.operands[1].name == "w.bf16" and linear.operands[1].type.dtype == dtypes.bf16
    assert add.operands[0].name == "w" and add.operands[0].type.dtype == dtypes.f32
    x = np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)
    y, z = mcir.interpret(bf, x)
    np.testing.assert_array_equal(z, mcir.interpret(g, x)[1])
    np.testing.assert_allclose(y, mcir.interpret(g, x)[0], rtol=1e-2)
