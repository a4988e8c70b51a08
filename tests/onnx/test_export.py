"""ONNX export: compressed graphs run in ONNX Runtime like in mcir's interpreter, and come back."""

from __future__ import annotations

from collections import Counter

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import mcir
from mcir.encodings import Quant


def _run_ort(model: onnx.ModelProto, xs) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: x for i, x in zip(session.get_inputs(), xs)})[0]


def _compressed(name: str, pipeline: str):
    model, inputs = models.build(name)
    xs = [t.numpy() for t in inputs]
    graph = mcir.trace(model, inputs)
    if pipeline:
        graph = mcir.run_passes(graph, pipeline, calibration=[tuple(xs)])
    return graph, xs


@pytest.mark.parametrize("name", ["mlp", "cnn", "encoder"])
@pytest.mark.parametrize("pipeline", ["", "fold,quant8", "prune", "lowrank"])
def test_exported_graphs_run_in_onnx_runtime_like_the_interpreter(name, pipeline, tmp_path):
    graph, xs = _compressed(name, pipeline)
    path = tmp_path / f"{name}.onnx"
    model = mcir.to_onnx(graph, path)
    assert path.exists()
    want = graph.outputs[0].type.decode(mcir.interpret(graph, *xs)[0])
    got = _run_ort(model, xs)
    assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()
    if "quant8" in pipeline:  # int8 layers: the same integers up to one rounding step of the output
        step = max((op.result.type.encoding.scale for op in graph.ops
                    if isinstance(op.result.type.encoding, Quant) and op.result.type.encoding.axis is None),
                   default=0.0)  # fmt: skip
        assert np.abs(got - want).max() <= max(step, 1e-5)


def test_int8_weights_are_qdq_with_per_channel_scales():
    graph, _ = _compressed("mlp", "fold,quant8")
    model = mcir.to_onnx(graph)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "layers.0.weight_quantized"]
    assert len(dq) == 1
    assert inits["layers.0.weight_quantized"].dtype == np.int8
    assert inits[dq[0].input[1]].shape == (64,)  # one scale per output channel
    assert onnx.helper.get_attribute_value(dq[0].attribute[0]) == 0  # axis 0
    assert Counter(n.op_type for n in model.graph.node)["QuantizeLinear"] >= 1


def test_pruned_and_low_rank_graphs_export_their_smaller_shapes():
    graph, _ = _compressed("mlp", "prune(granularity=channel,sparsity=0.5)")
    model = mcir.to_onnx(graph)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert shapes["layers.0.weight"][0] < 64
    low, _ = _compressed("mlp", "lowrank")
    ops = Counter(n.op_type for n in mcir.to_onnx(low).graph.node)
    assert ops["Gemm"] + ops["MatMul"] == sum(1 for op in low.compute_ops() if op.name in ("linear", "matmul"))


def test_binary_weights_export_as_their_decoded_values():
    graph, xs = _compressed("mlp", "binarize")
    model = mcir.to_onnx(graph)
    docs = [t.doc_string for t in model.graph.initializer if t.doc_string]
    assert any("#binary" in d for d in docs)
    want = mcir.interpret(graph, *xs)[0]
    np.testing.assert_allclose(_run_ort(model, xs), want, rtol=1e-4, atol=1e-5)


def test_names_and_module_paths_survive_for_netron():
    graph, _ = _compressed("cnn", "")
    model = mcir.to_onnx(graph)
    by_name = {n.name: n for n in model.graph.node}
    conv = next(op for op in graph.compute_ops() if op.name == "conv2d")
    assert by_name[conv.result.name].op_type == "Conv"
    assert conv.loc.module in by_name[conv.result.name].doc_string
    assert {op.result.name for op in graph.constants()} <= {t.name for t in model.graph.initializer}


@pytest.mark.parametrize("pipeline", ["", "fold,quant8"])
def test_mcir_to_onnx_to_mcir_gives_an_equivalent_graph(pipeline):
    graph, xs = _compressed("cnn", pipeline)
    back = mcir.from_onnx(mcir.to_onnx(graph))
    want = graph.outputs[0].type.decode(mcir.interpret(graph, *xs)[0])
    got = back.outputs[0].type.decode(mcir.interpret(back, *xs)[0])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    layers = ("conv2d", "linear", "max_pool2d", "avg_pool2d", "add")
    assert [op.name for op in back.compute_ops() if op.name in layers] == [
        op.name for op in graph.compute_ops() if op.name in layers
    ]


def test_cli_export(tmp_path, capsys):
    from mcir.cli import main

    graph, xs = _compressed("mlp", "")
    mcir.save(graph, tmp_path / "saved")
    out = tmp_path / "mlp_int8.onnx"
    assert main(["export", str(tmp_path / "saved"), "--passes", "fold,quant8", "-o", str(out)]) == 0
    model = onnx.load(str(out))
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    assert _run_ort(model, xs).shape == (4, 10)


def test_external_data_export_loads_back_from_the_folder(tmp_path):
    graph, xs = _compressed("mlp", "")
    path = tmp_path / "mlp.onnx"
    mcir.to_onnx(graph, path, external_data=True)
    assert (tmp_path / "mlp.onnx.data").stat().st_size > path.stat().st_size
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = mcir.interpret(graph, *xs)[0]
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: xs[0]})[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mcir.interpret(mcir.from_onnx(path), *xs)[0], want)  # mcir reads it back too
