"""Each encoding's training form, and its write-back.

For every compressed form a pass can produce (pruned zeros, ``#csr``, ``#nm``, int8 ``#quant``
with u8 activations, sparse int8, ``#binary`` weights and activations, ``#ternary``, low-rank
factors, shared constants, channel-pruned layers) the module built by ``mcir.to_torch``:

1. equals the interpreter on a batch of inputs (``1e-5 · max|output|``: float32 vs the
   references' float64), sample by sample, with any batch size (vmap over the batch-1 graph);
2. trains: a few SGD steps change the weights, but never a pruned or pattern-excluded one;
3. writes back with the same types: same nnz and positions, same sharing, same shapes; the
   written-back graph computes what the trained module computes (within float32 rounding, and
   for int8 layers within ``3e-3 · max|output|``: the i32 biases move to the grid of the new
   scales ``s_x·s_w``).
"""

from __future__ import annotations

import models
import numpy as np
import pytest
import torch

import mcir
from mcir.encodings.bits import unpack_bits
from mcir.train.writeback import write_back

RTOL = 1e-5


@pytest.fixture(scope="module")
def mlp_graph():
    model, inputs = models.build("mlp")
    return mcir.trace(model, (inputs[0][:1],))  # traced at batch 1, trained at any batch size


@pytest.fixture(scope="module")
def cnn_graph():
    model, inputs = models.build("cnn")
    return mcir.trace(model, (inputs[0][:1],))


def batch_for(g: mcir.Graph, n: int, seed: int = 0) -> np.ndarray:
    shape = g.inputs[0].type.shape[1:]
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def interpret_batch(g: mcir.Graph, x: np.ndarray) -> np.ndarray:
    outs = []
    for i in range(len(x)):
        (y,) = mcir.interpret(g, x[i : i + 1])
        outs.append(np.asarray(g.outputs[0].type.decode(y))[0])
    return np.stack(outs)


def assert_matches(got: np.ndarray, want: np.ndarray, rtol: float = RTOL) -> None:
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * float(np.abs(want).max()))


def sgd_steps(module, x: np.ndarray, steps: int = 3, lr: float = 0.05) -> None:
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    target = torch.randn(len(x), *module.graph.outputs[0].type.shape[1:], generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        loss = ((module(x) - target) ** 2).mean()
        loss.backward()
        opt.step()


def const_data(g: mcir.Graph) -> dict[str, object]:
    return {op.result.name: op.data for op in g.constants()}


PIPELINES = {
    "dense-zeros": "prune(sparsity=0.7,storage=dense)",
    "csr": "prune(sparsity=0.9,storage=sparse)",
    "nm": "prune(pattern=2:4,storage=sparse)",
    "quant8": "quant8",
    "quant8-per-tensor": "quantize(weights=per_tensor)",
    "csr-int8": "prune(sparsity=0.9,storage=sparse),quant8",
    "binary": "binarize(activations=binary)",
    "binary-all": "binarize(skip=none)",
    "ternary": "ternarize",
    "lowrank": "lowrank(rank=8)",
    "neuron": "prune(granularity=neuron,sparsity=0.5)",
}


@pytest.mark.parametrize("name", PIPELINES)
def test_mlp_form_equals_interpreter_trains_and_writes_back(mlp_graph, name):
    g = mcir.run_passes(mlp_graph, PIPELINES[name], calibration=[(batch_for(mlp_graph, 1, s),) for s in range(4)])
    x = batch_for(g, 5, seed=3)
    module = mcir.to_torch(g)
    with torch.no_grad():
        assert_matches(module(x).numpy(), interpret_batch(g, x))
    before_types = {op.result.name: op.result.type for op in g.constants()}
    before = const_data(g)
    sgd_steps(module, x)
    trained = g.copy()
    write_back(module, trained)
    for op in trained.constants():
        old_t = before_types[op.result.name]
        assert op.result.type.shape == old_t.shape and op.result.type.dtype == old_t.dtype
        assert type(op.result.type.encoding) is type(old_t.encoding)
        if old_t.encoding is not None and old_t.encoding.name in ("csr", "nm", "binary", "ternary"):
            assert op.result.type == old_t  # nnz, n:m and axis are part of the type
    changed = [n for n, d in const_data(trained).items() if not _same(d, before[n])]
    assert changed, "training changed no constant"
    with torch.no_grad():
        want = module(x).numpy()
    # int8 layers: the i32 bias is re-quantised in the new s_x·s_w, a shift of up to half a grid step per
    # bias (1e-4 with per-tensor weight scales), carried through the following layers
    assert_matches(interpret_batch(trained, x), want, rtol=3e-3 if "int8" in name or "quant8" in name else 1e-5)


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return all(np.array_equal(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


def test_pruned_zeros_and_sparse_patterns_survive_training(mlp_graph):
    for pipeline in ("prune(sparsity=0.9,storage=dense)", "prune(sparsity=0.9,storage=sparse)"):
        g = mcir.run_passes(mlp_graph, pipeline)
        before = {op.result.name: np.asarray(op.result.type.decode(op.data)) for op in g.constants()}
        module = mcir.to_torch(g)
        sgd_steps(module, batch_for(g, 8), steps=5, lr=0.5)
        write_back(module, g)
        for op in g.constants():
            after = np.asarray(op.result.type.decode(op.data))
            old = before[op.result.name]
            if op.result.name.endswith("weight") and (old == 0).mean() > 0.5:
                assert np.array_equal(after == 0, old == 0), f"{pipeline}: {op.result.name} changed its zeros"
                assert not np.array_equal(after, old)


def test_csr_write_back_keeps_indices_and_rowptr(mlp_graph):
    g = mcir.run_passes(mlp_graph, "prune(sparsity=0.9,storage=sparse)")
    before = {op.result.name: op.data for op in g.constants() if op.result.type.encoding is not None}
    module = mcir.to_torch(g)
    sgd_steps(module, batch_for(g, 8))
    write_back(module, g)
    for name, data in before.items():
        new = g.value(name).producer.data
        assert np.array_equal(new["indices"], data["indices"]) and np.array_equal(new["rowptr"], data["rowptr"])
        assert not np.array_equal(new["values"], data["values"])


def test_binary_alpha_is_rederived_and_bits_follow_the_signs(mlp_graph):
    g = mcir.run_passes(mlp_graph, "binarize(skip=none)")
    module = mcir.to_torch(g)
    sgd_steps(module, batch_for(g, 8), steps=5, lr=0.5)
    write_back(module, g)
    for name, form in module.forms.items():
        t = g.value(name).type
        if t.encoding is None or t.encoding.name != "binary":
            continue
        latent = form.params[""].detach().numpy().reshape(t.shape[0], -1)
        data = g.value(name).producer.data
        assert np.array_equal(unpack_bits(data["bits"], latent.shape[1]), latent >= 0)
        np.testing.assert_allclose(data["alpha"], np.abs(latent).mean(axis=1), rtol=1e-6)


def test_shared_constant_is_one_parameter_and_stays_shared():
    g = mcir.Graph("tied")
    x = g.add_input("x", mcir.tensor([1, 8]))
    w = g.const("shared.weight", np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32))
    h = g.add("relu", [g.add("linear", [x, w])])
    g.set_outputs([g.add("linear", [h, w])])
    module = mcir.to_torch(g)
    assert [n for n, _ in module.named_parameters()] == ["shared.weight"]
    sgd_steps(module, batch_for(g, 4))
    write_back(module, g)
    (const,) = list(g.constants())
    assert len(const.result.users) == 2
    np.testing.assert_array_equal(const.data, module.get_parameter("shared.weight").detach().numpy())


def test_parameters_keep_module_paths(mlp_graph):
    names = [n for n, _ in mcir.to_torch(mlp_graph).named_parameters()]
    assert names == [op.result.name for op in mlp_graph.constants()]


def test_quant_weights_learn_their_scales(mlp_graph):
    g = mcir.run_passes(mlp_graph, "quant8", calibration=[(batch_for(mlp_graph, 1, s),) for s in range(4)])
    module = mcir.to_torch(g)
    scales = {n: p.detach().clone() for n, p in module.named_parameters() if n.endswith("_scale")}
    assert scales, "no learnable scale"
    sgd_steps(module, batch_for(g, 8))
    assert any(not torch.equal(p, scales[n]) for n, p in module.named_parameters() if n in scales)


def test_cnn_channel_pruned_and_int8_forms_equal_interpreter(cnn_graph):
    for pipeline in ("fold,prune(granularity=channel,sparsity=0.5)", "fold,quant8"):
        g = mcir.run_passes(cnn_graph, pipeline, calibration=[(batch_for(cnn_graph, 1, s),) for s in range(2)])
        x = batch_for(g, 3)
        with torch.no_grad():
            assert_matches(mcir.to_torch(g)(x).numpy(), interpret_batch(g, x))


def test_any_batch_size(mlp_graph):
    module = mcir.to_torch(mlp_graph)
    for n in (1, 7, 64):
        assert module(batch_for(mlp_graph, n)).shape == (n, 10)


def test_wrong_batch_shape_is_a_clear_error(mlp_graph):
    with pytest.raises(mcir.McirError, match=r"input %x: a batch must have shape \['B', 32\]"):
        mcir.to_torch(mlp_graph)(np.zeros((4, 31), np.float32))


def test_encoder_with_heads_pruned_equals_interpreter_and_trains():
    model, inputs = models.build("encoder")
    g = mcir.run_passes(mcir.trace(model, (inputs[0][:1],)), "prune(granularity=head,sparsity=0.5)")
    x = np.concatenate([inputs[0].numpy()] * 2)[:3]
    module = mcir.to_torch(g)
    with torch.no_grad():
        assert_matches(module(x).numpy(), interpret_batch(g, x))
    sgd_steps(module, x, steps=1)
    write_back(module, g)
    with torch.no_grad():
        assert_matches(interpret_batch(g, x), module(x).numpy())
