"""Structured pruning shrinks tensors exactly: the CNN (residual + depthwise) and the encoder
(attention heads, FFN neurons) lose the expected parameters and MACs, the pruned graph
verifies and runs, and its output equals the unpruned torch model's with the same channels
zeroed (within 1e-5): removing a channel is the same as zeroing it everywhere it lives."""

from __future__ import annotations

import models
import numpy as np
import pytest
import torch

import mcir
from mcir.analysis.dependency import dependency_groups, find_seeds, reshape_labels
from mcir.pass_manager import GraphStats
from mcir.passes.prune import Prune, plan_structured


@pytest.fixture(scope="module")
def cnn():
    model, inputs = models.build("cnn")
    return model, inputs, mcir.trace(model, inputs)


@pytest.fixture(scope="module")
def encoder():
    model, inputs = models.build("encoder")
    return model, inputs, mcir.trace(model, inputs)


def zeroed_model(model: torch.nn.Module, graph: mcir.Graph, opts: Prune) -> torch.nn.Module:
    """A copy of ``model`` whose parameters are zero at every position the structured plan removes
    (constants in the IR are named after the state_dict keys)."""
    import copy

    plan = plan_structured(graph, opts)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    touched = 0
    for value, axes in plan.deps.keep_masks(plan.removed).values():
        if value.is_constant:
            assert value.name in state, value.name
            for axis, keep in axes.items():
                state[value.name].index_fill_(axis, torch.from_numpy(np.flatnonzero(~keep)), 0.0)
            touched += 1
    assert touched
    zeroed = copy.deepcopy(model)
    zeroed.load_state_dict(state)
    return zeroed.eval()


def check_exact(model, inputs, graph, passes: list[str]) -> mcir.Graph:
    """Run ``passes`` (each one prune pass); the interpreter output of the result must equal
    torch's on ``model`` with the same channels zeroed, pass after pass."""
    pruned = mcir.run_passes(graph, ",".join(passes))
    mcir.verify(pruned)
    current, reference = graph, model
    for text in passes:
        (opts,) = mcir.pass_manager.build_pipeline(text)
        reference = zeroed_model(reference, current, opts)
        current = mcir.run_passes(current, text)
    with torch.no_grad():
        want = reference(*inputs).numpy()
    got = mcir.interpret(pruned, *[t.numpy() for t in inputs])[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    return pruned


def test_cnn_channels_half(cnn):
    model, inputs, g = cnn
    pruned = check_exact(model, inputs, g, ["prune(granularity=channel)"])
    before, after = GraphStats.of(g), GraphStats.of(pruned)
    # stem 432, BN 4x16, conv1/conv2 2304 each (+BN), depthwise 144 (+BN), pointwise 512+32, fc 5120+10
    assert before.params == 11114
    # every coupled dimension halves: 16 -> 8 and 32 -> 16 channels; fc keeps its 10 outputs
    assert after.params == 216 + 32 + 576 + 32 + 576 + 32 + 72 + 32 + (16 * 8 + 16) + (10 * 256 + 10)
    # MACs = output elements x (weights per output): stem, conv1, conv2, depthwise, pointwise, fc (batch 2)
    assert before.macs == 8192 * 27 + 2 * 8192 * 144 + 2048 * 9 + 4096 * 16 + 20 * 512
    # outputs halve everywhere; inputs per output halve too except for the stem (3 channels) and depthwise
    assert after.macs == 4096 * 27 + 2 * 4096 * 72 + 1024 * 9 + 2048 * 8 + 20 * 256
    w = {op.result.name: op.result.type.shape for op in pruned.constants()}
    assert w["stem.0.weight"] == (8, 3, 3, 3)
    assert w["block.conv1.0.weight"] == (8, 8, 3, 3)
    assert w["depthwise.0.weight"] == (8, 1, 3, 3)
    assert w["pointwise.weight"] == (16, 8, 1, 1)
    assert w["fc.weight"] == (10, 256)  # the flatten maps each channel to a block of 16 columns
    dw = next(op for op in pruned.compute_ops() if op.loc.module == "depthwise.0")
    assert dw.attrs["groups"] == 8
    report = pruned.meta["prune"][0]
    assert report.groups == [
        "stem.0, block.conv2: 8 of 16 channels removed",
        "block.conv1.0: 8 of 16 channels removed",
        "pointwise: 16 of 32 channels removed",
    ]
    assert report.total_before[0] == before.params and report.total_after[0] == after.params
    assert "group stem.0, block.conv2: 8 of 16 channels removed" in report.table()


def test_cnn_groups(cnn):
    _, _, g = cnn
    deps = dependency_groups(g, find_seeds(g, "channel"))
    by_name = {grp.name: grp for grp in deps.groups}
    # the residual ties the stem's and conv2's channels: one group of 16, both producers
    assert set(by_name) == {"stem.0, block.conv2", "block.conv1.0", "pointwise", "fc"}
    assert len(by_name["stem.0, block.conv2"].channels) == 16
    assert all(len(ch) == 2 for ch in by_name["stem.0, block.conv2"].channels)
    out = g.outputs[0].name
    assert by_name["fc"].blocked == [f"%{out} is a graph output (its shape is part of the interface)"]
    members = {(v.name, ax) for v, ax in deps.members(by_name["stem.0, block.conv2"])}
    assert {("depthwise.0.weight", 0), ("pointwise.weight", 1), ("block.bn2.running_var", 0)} <= members


def test_cnn_filter_global_and_round_to(cnn):
    model, inputs, g = cnn
    check_exact(model, inputs, g, ["prune(granularity=filter,scope=global,sparsity=0.4)"])
    pruned = mcir.run_passes(g, "prune(granularity=filter,sparsity=0.3,round_to=4)")
    shapes = {op.result.name: op.result.type.shape for op in pruned.constants()}
    # 30% of 16 = 5 -> 11 kept, rounded up to 12; 30% of 32 = 10 -> 22 kept, rounded up to 24
    assert shapes["stem.0.weight"][0] == 12 and shapes["pointwise.weight"][0] == 24


def test_encoder_heads_and_neurons(encoder):
    model, inputs, g = encoder
    pruned = check_exact(model, inputs, g, ["prune(granularity=head)", "prune(granularity=neuron)"])
    before, after = GraphStats.of(g), GraphStats.of(pruned)
    # per layer: 2 of 4 heads (in_proj 96x32+96 -> 48x32+48, out_proj 32 columns -> 16),
    # 32 of 64 FFN neurons (linear1 rows + bias, linear2 columns); the residual stream stays 32 wide
    saved = (3168 - 1584) + 32 * 16 + (64 * 32 + 64 - 32 * 32 - 32) + 32 * 32
    assert before.params - after.params == 2 * saved
    # per layer over 24 tokens: in_proj, attention (4 heads x 12 x 12 x (8 + 8) per batch), out_proj, FFN
    layer = 24 * 96 * 32 + 2 * 4 * 12 * 12 * 16 + 24 * 32 * 32 + 2 * 24 * 64 * 32
    assert before.macs == 2 * layer + 2 * 5 * 32
    assert after.macs == 2 * layer // 2 + 2 * 5 * 32  # every per-layer term halves
    shapes = {op.result.name: op.result.type.shape for op in pruned.constants()}
    assert shapes["encoder.layers.0.self_attn.in_proj_weight"] == (48, 32)
    assert shapes["encoder.layers.1.self_attn.out_proj.weight"] == (32, 16)
    assert shapes["encoder.layers.0.linear1.weight"] == (32, 32)
    att = next(op for op in pruned.compute_ops() if op.name == "scaled_dot_product_attention")
    assert att.result.type.shape == (2, 2, 12, 8)  # [batch, heads, seq, head_dim]: 2 heads left


def test_encoder_head_groups_tie_q_k_v(encoder):
    _, _, g = encoder
    deps = dependency_groups(g, find_seeds(g, "head"))
    assert len(deps.groups) == 2 and not any(grp.blocked for grp in deps.groups)
    for grp in deps.groups:
        assert len(grp.channels) == 4  # 4 heads, each one atom (q, k, v rows come from one packed weight)
    members = {(v.name, ax) for v, ax in deps.members(deps.groups[0])}
    assert ("encoder.layers.0.self_attn.out_proj.weight", 1) in members


def test_encoder_neurons_leave_the_residual_stream_alone(encoder):
    _, _, g = encoder
    plan = plan_structured(g, Prune(granularity="neuron"))
    text = "\n".join(plan.notes)
    assert "layer_norm normalises over this axis" in text
    assert "reshape to [12, 2, 3, 32] splits the channels over several axes" in text  # in_proj: prune heads
    assert "is a graph output" in text
    live = [grp for grp in plan.deps.groups if not grp.blocked]
    assert sorted(grp.name for grp in live) == ["encoder.layers.0.linear1", "encoder.layers.1.linear1"]


def test_blocked_groups_are_reported(cnn):
    _, _, g = cnn
    out = mcir.run_passes(g, "prune(granularity=channel,skip='pointwise')")
    notes = out.meta["prune"][0].notes
    assert any("left alone pointwise (32 channels): layer 'pointwise' is skipped" in n for n in notes)
    assert any("prune: left alone fc" in w for w in out.meta["report"].warnings)
    shapes = {op.result.name: op.result.type.shape for op in out.constants()}
    assert shapes["pointwise.weight"] == (32, 8, 1, 1)  # its inputs follow the stem group, its outputs stay


@pytest.mark.parametrize(
    "in_shape, axis, out_shape, expect",
    [
        ((2, 4, 3), 1, (2, 12), (1, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])),  # flatten: a block per channel
        ((2, 4), 1, (2, 2, 2), None),  # the channels split over two axes
        ((3, 8), 1, (3, 2, 4), None),
        ((6, 8), 0, (2, 3, 8), None),
    ],
)
def test_reshape_labels(in_shape, axis, out_shape, expect):
    labels = np.arange(in_shape[axis])
    got = reshape_labels(in_shape, axis, labels, out_shape)
    if expect is None:
        assert got is None
    else:
        assert got[0] == expect[0] and got[1].tolist() == expect[1]


def test_packed_heads_land_on_one_axis():
    # [seq, batch, 3*heads*dim] -> [seq, batch, 3, heads*dim]: head h of q, k and v share positions
    labels = (np.arange(24) // 2) % 4
    axis, got = reshape_labels((5, 1, 24), 2, labels, (5, 1, 3, 8))
    assert axis == 3 and got.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_head_granularity_needs_attention(cnn):
    _, _, g = cnn
    with pytest.raises(mcir.McirError, match=r"granularity=head: no attention heads found"):
        mcir.run_passes(g, "prune(granularity=head)")


def test_filter_granularity_needs_convs():
    model, inputs = models.build("mlp")
    g = mcir.trace(model, inputs)
    with pytest.raises(mcir.McirError, match=r"granularity=filter: the graph has no conv2d layer.*granularity=neuron"):
        mcir.run_passes(g, "prune(granularity=filter)")
