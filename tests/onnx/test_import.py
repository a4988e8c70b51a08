"""ONNX import: torch-exported models, constant folding, names, shapes, and the errors users see."""

from __future__ import annotations

from collections import Counter

import models
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import mcir
from mcir.errors import McirError, ModelFileError, UnsupportedError


def counts(graph) -> Counter:
    return Counter(op.name for op in graph.compute_ops())


@pytest.mark.parametrize("name", ["mlp", "cnn", "encoder"])
def test_torch_exported_models_match_torch_natively(name, exported, tmp_path):
    model, inputs, path = exported(name)
    graph = mcir.from_onnx(path)
    xs = [t.numpy() for t in inputs]
    with torch.no_grad():
        want = model(*inputs).numpy()
    np.testing.assert_allclose(mcir.interpret(graph, *xs)[0], want, rtol=0, atol=1e-5)
    lib = mcir.compile(graph, tmp_path / name)
    np.testing.assert_allclose(lib(*xs)[0], want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_onnx_route_gives_the_layers_of_tracing_torch_directly(name, exported):
    # torch's exporter folds BatchNorm into the convs; after `fold` the direct trace has done the same
    model, inputs, path = exported(name)
    direct = mcir.run_passes(mcir.trace(model, inputs), "fold")
    via_onnx = mcir.run_passes(mcir.from_onnx(path), "fold")
    for op in ("linear", "conv2d", "relu", "max_pool2d", "avg_pool2d", "add"):
        assert counts(via_onnx)[op] == counts(direct)[op], op
    assert set(counts(via_onnx)) <= set(counts(direct))


def test_initializers_keep_their_names_and_layers_their_module_paths(exported):
    _, _, path = exported("mlp")
    graph = mcir.from_onnx(path)
    consts = {op.result.name for op in graph.constants()}
    assert {"layers.0.weight", "layers.0.bias", "layers.4.weight"} <= consts
    linears = [op for op in graph.compute_ops() if op.name == "linear"]
    assert [op.loc.module for op in linears] == ["layers.0", "layers.2", "layers.4"]
    assert linears[0].result.name == "layers.0"


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_shape_chains_are_folded_at_import():
    # x.view(x.shape[0], -1) as exporters write it: Shape -> Gather -> Unsqueeze -> Concat -> Reshape
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    m = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    graph = mcir.from_onnx(m)
    assert [op.name for op in graph.compute_ops()] == ["reshape"]
    assert graph.outputs[0].type.shape == (2, 12)


def test_symbolic_dimensions_need_input_shapes():
    m = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
    )
    with pytest.raises(McirError, match=r"input 'x' has shape batchx8 .*--input x=1x"):
        mcir.from_onnx(m)
    graph = mcir.from_onnx(m, input_shapes={"x": (3, 8)})
    assert graph.inputs[0].type.shape == (3, 8)


def test_unsupported_op_names_op_and_node():
    m = _model(
        [helper.make_node("Sin", ["x"], ["y"], name="act1")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(UnsupportedError, match=r"unsupported ONNX op Sin \(node act1\)"):
        mcir.from_onnx(m)


def test_old_opsets_are_converted():
    m = _model(
        [helper.make_node("Unsqueeze", ["x"], ["y"], axes=[0])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        opset=9,
    )
    graph = mcir.from_onnx(m)
    assert graph.outputs[0].type.shape == (1, 3)


def test_malformed_and_truncated_files_are_one_line_errors(exported, tmp_path):
    _, _, path = exported("mlp")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:200])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all \xff\xff")
    for bad in (truncated, garbage):
        with pytest.raises(ModelFileError, match=str(bad)) as e:
            mcir.from_onnx(bad)
        assert "\n" not in str(e.value)


def _external_model(tmp_path, location: str):
    weight = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    weight.ClearField("raw_data")
    m = _model(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [weight],
    )
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir()
    path.write_bytes(m.SerializeToString())
    return path


def test_external_data_is_read_from_the_model_folder(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    graph = mcir.from_onnx(path)
    np.testing.assert_array_equal(mcir.interpret(graph, np.ones(4, np.float32))[0], np.arange(1, 5))


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    path = _external_model(tmp_path, "../secret.bin")
    with pytest.raises(ModelFileError, match=r"outside the model's folder"):
        mcir.from_onnx(path)


def test_cli_dumps_compiles_and_runs_onnx_files(exported, tmp_path, capsys):
    from mcir.cli import main

    _, inputs, path = exported("mlp")
    assert main(["dump", str(path)]) == 0
    assert "linear(" in capsys.readouterr().out
    x = tmp_path / "x.npy"
    np.save(x, inputs[0].numpy())
    out = tmp_path / "y.npz"
    assert main(["run", str(path), "--input", str(x), "-o", str(out)]) == 0
    assert main(["compile", str(path), "-o", str(tmp_path / "mlp"), "--no-compare"]) == 0
    assert (tmp_path / "mlp.so").exists()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08")
    assert main(["dump", str(bad)]) == 2
    assert "bad.onnx" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("coord", "rounding", "scale"),
    [
        ("asymmetric", "floor", 2),
        ("half_pixel", "round_prefer_floor", 3),
        ("pytorch_half_pixel", "round_prefer_ceil", 2),
    ],
)
def test_nearest_resize_by_integer_factors_matches_onnx(coord, rounding, scale):
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node(
        "Resize",
        ["x", "", "scales"],
        ["y"],
        mode="nearest",
        coordinate_transformation_mode=coord,
        nearest_mode=rounding,
    )
    scales = numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales")
    m = _model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [scales],
    )
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 4)).astype(np.float32)
    (want,) = ReferenceEvaluator(m).run(None, {"x": x})
    np.testing.assert_array_equal(mcir.interpret(mcir.from_onnx(m), x)[0], want)


def test_resize_modes_that_do_not_repeat_pixels_are_refused():
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest", nearest_mode="ceil")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    m = _model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [scales],
    )
    with pytest.raises(UnsupportedError, match="nearest_mode=ceil"):
        mcir.from_onnx(m)


def test_conv_transpose_is_an_ordinary_conv_of_the_spread_input(tmp_path):
    from conftest import export_torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2).eval()
    x = torch.randn(1, 4, 5, 5, generator=torch.Generator().manual_seed(1))  # the global RNG stays as it was
    graph = mcir.from_onnx(export_torch(model, (x,), tmp_path / "deconv.onnx"))
    assert "conv2d" in counts(graph)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(mcir.interpret(graph, x.numpy())[0], want, rtol=0, atol=1e-5)


def test_cli_input_gives_symbolic_dimensions_their_sizes(tmp_path, capsys):
    from mcir.cli import main

    m = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
    )
    path = tmp_path / "dynamic.onnx"
    path.write_bytes(m.SerializeToString())
    assert main(["dump", str(path)]) == 2
    assert "--input x=1x" in capsys.readouterr().err
    assert main(["dump", str(path), "--input", "x=5x8"]) == 0
    assert "f32[5,8]" in capsys.readouterr().out
    assert main(["dump", str(path), "--input", "3x8"]) == 0  # an unnamed spec applies to the inputs in order
    assert "f32[3,8]" in capsys.readouterr().out


def test_encoder_via_onnx_has_the_layers_of_the_direct_trace(exported):
    # the exporter writes GELU as erf arithmetic (fused back into gelu) and attention as matmul/softmax
    model, inputs, path = exported("encoder")
    direct, via_onnx = counts(mcir.trace(model, inputs)), counts(mcir.from_onnx(path))
    for op in ("linear", "layer_norm", "gelu", "embedding", "mean"):
        assert via_onnx[op] == direct[op], op
    assert via_onnx["erf"] == 0
    assert via_onnx["softmax"] == direct["scaled_dot_product_attention"]


def test_layer_norm_written_out_by_older_opsets_is_one_op_again(tmp_path):
    from conftest import export_torch

    model, inputs = models.build("encoder")
    graph = mcir.from_onnx(export_torch(model, inputs, tmp_path / "enc14.onnx", opset=14))  # no LayerNormalization
    ops = counts(graph)
    assert ops["layer_norm"] == 4 and ops["pow"] == 0 and ops["sqrt"] == 0
    with torch.no_grad():
        want = model(*inputs).numpy()
    np.testing.assert_allclose(mcir.interpret(graph, *[t.numpy() for t in inputs])[0], want, rtol=0, atol=1e-5)
