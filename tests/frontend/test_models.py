"""Whole models traced into mcir: the interpreter matches torch, both tracers agree,
and the graph survives printing, parsing, saving and loading."""

from __future__ import annotations

import models
import numpy as np
import pytest
import torch

import mcir

RTOL = 1e-5  # max |mcir - torch| relative to max |torch output|


def rel_error(model: torch.nn.Module, graph: mcir.Graph, inputs: tuple[torch.Tensor, ...]) -> float:
    with torch.no_grad():
        expected = model(*inputs).numpy()
    got = mcir.interpret(graph, *[x.numpy() for x in inputs])[0]
    assert got.shape == expected.shape and got.dtype == expected.dtype
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module", params=sorted(models.MODELS))
def traced(request):
    model, inputs = models.build(request.param)
    return request.param, model, inputs, mcir.trace(model, inputs)


def test_export_matches_torch(traced):
    _, model, inputs, graph = traced
    assert rel_error(model, graph, inputs) <= RTOL


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_fx_matches_torch_and_gives_the_same_ir_as_export(name):
    model, inputs = models.build(name)
    graph = mcir.trace(model, inputs, tracer="fx")
    assert rel_error(model, graph, inputs) <= RTOL
    assert str(graph) == str(mcir.trace(model, inputs, tracer="export"))


def test_text_round_trip(traced):
    graph = traced[3]
    assert str(mcir.parse(str(graph))) == str(graph)


def test_save_and_load_give_identical_outputs(traced, tmp_path):
    name, _, inputs, graph = traced
    loaded = mcir.load(mcir.save(graph, tmp_path / name))
    assert str(loaded) == str(graph)
    xs = [x.numpy() for x in inputs]
    for a, b in zip(mcir.interpret(graph, *xs), mcir.interpret(loaded, *xs)):
        np.testing.assert_array_equal(a, b)


def test_names_inputs_after_forward_and_weights_after_module_paths():
    model, inputs = models.build("encoder")
    graph = mcir.trace(model, inputs)
    assert [v.name for v in graph.inputs] == ["tokens"]
    assert graph.inputs[0].type == mcir.tensor([2, 12], "i64")
    consts = {op.result.name for op in graph.constants()}
    assert {
        "embed.weight",
        "encoder.layers.0.linear1.weight",
        "encoder.layers.1.self_attn.in_proj_weight",
        "encoder.layers.1.norm2.bias",
        "head.weight",
    } <= consts
    # every parameter is one constant with its data, unchanged
    for path, p in model.named_parameters():
        np.testing.assert_array_equal(graph.value(path).producer.data, p.detach().numpy())


def test_locations_point_at_modules_and_user_source():
    model, inputs = models.build("cnn")
    graph = mcir.trace(model, inputs)
    conv = next(op for op in graph.ops if op.name == "conv2d")
    assert conv.loc.module == "stem.0"
    assert conv.loc.source.startswith("models.py:")
    add = next(op for op in graph.ops if op.name == "add")
    assert add.loc.module == "block"


def test_trace_restores_training_mode_and_uses_eval_semantics():
    model, inputs = models.build("encoder")
    model.train()
    graph = mcir.trace(model, inputs)
    assert model.training and all(m.training for m in model.modules())
    assert [op.attrs["p"] for op in graph.ops if op.name == "dropout"] == [0.1] * 6
    model.eval()
    assert rel_error(model, graph, inputs) <= RTOL


@pytest.mark.parametrize("name", sorted(models.BENCHMARKS))
def test_benchmark_models_trace_and_match_torch(name):
    model, inputs = models.build(name, benchmark=True)
    graph = mcir.trace(model, inputs)
    assert rel_error(model, graph, inputs) <= RTOL
    if name != "encoder":  # symbolic_trace keeps nn.TransformerEncoder whole
        assert str(mcir.trace(model, inputs, tracer="fx")) == str(graph)


class SharedAndBuffers(torch.nn.Module):
    """A layer used twice, a non-persistent buffer, a plain tensor attribute and in-place ops."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.act = torch.nn.ReLU(inplace=True)
        self.register_buffer("scale", torch.full((4,), 2.0), persistent=False)
        self.offset = torch.tensor([1.0, 2.0, 3.0, 4.0])

    def forward(self, x):
        h = self.fc(x).clone()
        h.mul_(3.0)
        y = self.act(h)  # overwrites h
        return self.fc(h + y) * self.scale + self.offset


@pytest.mark.parametrize("tracer", ["export", "fx"])
def test_shared_layers_buffers_attributes_and_inplace_ops(tracer):
    torch.manual_seed(0)
    model = SharedAndBuffers().eval()
    inputs = (torch.randn(2, 4),)
    graph = mcir.trace(model, inputs, tracer=tracer)
    assert rel_error(model, graph, inputs) <= RTOL
    assert [op.result.name for op in graph.constants() if op.result.type.rank] == [
        "fc.weight",
        "fc.bias",
        "scale",
        "offset",
    ]  # the shared layer's weights are one constant each
