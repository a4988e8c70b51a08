"""prune(granularity=layer): whole transformer layers / residual blocks go, the rest stays exact."""

from __future__ import annotations

import copy

import models
import numpy as np
import torch
from torch import nn

import mcir
from mcir.passes.prune_layers import find_layers


def encoder_graph():
    model, inputs = models.build("encoder")
    x = inputs[0][:1]
    return model, x, mcir.trace(model, (x,))


def test_finds_the_transformer_layers_and_nothing_inside_them():
    _, _, g = encoder_graph()
    assert [layer.path for layer in find_layers(g)] == ["encoder.layers.0", "encoder.layers.1"]


def test_a_pruned_layer_is_the_identity_and_the_rest_is_unchanged():
    model, x, g = encoder_graph()
    pruned = mcir.run_passes(g, "prune(granularity=layer,sparsity=0.5)")
    removed = [w for w in pruned.meta["report"].warnings if "removed layer" in w]
    assert len(removed) == 1
    index = int(removed[0].split("encoder.layers.")[1].split(" ")[0])
    reference = copy.deepcopy(model)
    reference.encoder.layers = nn.ModuleList([m for i, m in enumerate(reference.encoder.layers) if i != index])
    with torch.no_grad():
        want = reference(x).numpy()
    (got,) = mcir.interpret(pruned, x.numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert not any(f"encoder.layers.{index}." in op.result.name for op in pruned.ops)


def test_at_least_one_layer_stays():
    _, _, g = encoder_graph()
    pruned = mcir.run_passes(g, "prune(granularity=layer,sparsity=0.9)")
    assert len(find_layers(pruned)) == 1


def test_a_network_without_residual_layers_is_left_alone_with_a_note():
    model, inputs = models.build("cnn")
    g = mcir.trace(model, (inputs[0][:1],))
    pruned = mcir.run_passes(g, "prune(granularity=layer,sparsity=0.5)")
    assert len(pruned.ops) == len(g.ops)
    assert any("no removable layer" in w for w in pruned.meta["report"].warnings)
