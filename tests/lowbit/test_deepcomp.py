"""Deep Compression's storage, ``#sparse_codebook`` (issue #14), and what builds and runs it.

* the relative indexing: gaps of G bits, fillers where a skip is longer than a gap can say,
  the width with the fewest bytes chosen; decode puts ``centroids[code]`` at each position;
* the type prints, re-parses, saves and loads with its components; the verifier (through
  ``Graph.const``) rejects streams that would make the kernel read outside the weight;
* the native kernel equals the interpreter within 1e-5 relative, at batch 1 and batched;
* ``prune(sparsity=0.9),cluster(bits=5)`` stores pruned layers this way exactly when it embeds
  fewer bytes than ``#csr`` and ``#codebook``, and the digits MLP then embeds <= 0.05 of its fp32
  bytes (library bytes, equal to ``mcir.stats``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mcir
from mcir.encodings import SparseCodebook, to_sparse_codebook
from mcir.encodings.sparse_codebook import best_gap_bits, entries_for, pack_stream, unpack_stream
from mcir.errors import McirError
from mcir.stats import try_kernel


def random_sparse(n: int, k: int, density: float, seed: int = 0, bits: int = 5):
    """(type, components, dense) of an [n, k] weight with random non-zeros drawn from 2^bits centroids."""
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(rng.random(n * k) < density)
    centroids = rng.standard_normal(2**bits).astype(np.float32)
    codes = rng.integers(0, 2**bits, pos.size)
    t, stored = to_sparse_codebook((n, k), pos, codes, centroids)
    dense = np.zeros(n * k, np.float32)
    dense[pos] = centroids[codes]
    return t, stored, dense.reshape(n, k)


def test_gaps_and_fillers_follow_relative_indexing():
    # one row of 20, non-zeros at 3 and 19, 3-bit gaps (7 = filler): 3, then 4 + 7 + 7 + 1 = 19
    gaps, real = entries_for(np.array([3, 19]), 3)
    assert gaps.tolist() == [3, 7, 7, 1] and real.tolist() == [True, False, False, True]
    t, stored = to_sparse_codebook((1, 20), np.array([3, 19]), np.array([1, 2]), np.arange(4) * 0.5, gap_bits=3)
    assert t.encoding == SparseCodebook(bits=2, gap_bits=3, nnz=2, entries=4)
    assert t.decode(stored).reshape(-1).tolist() == [0] * 3 + [0.5] + [0] * 15 + [1.0]
    # a gap may cross a row end: positions are flat
    assert t.encoding.positions(stored)[0].tolist() == [3, 19]


def test_the_gap_width_is_the_one_with_fewest_bits():
    pos = np.flatnonzero(np.random.default_rng(1).random(5000) < 0.1)
    best = best_gap_bits(pos, 5)
    cost = {g: len(entries_for(pos, g)[0]) * (5 + g) for g in range(1, 9)}
    assert cost[best] == min(cost.values())
    assert unpack_stream(pack_stream(np.arange(100) % 8, 3), 100, 3).tolist() == (np.arange(100) % 8).tolist()


def test_decode_is_the_dense_weight_and_counts_only_nonzeros():
    t, stored, dense = random_sparse(24, 50, 0.1)
    np.testing.assert_array_equal(t.decode(stored), dense)
    assert t.encoding.nnz == int((dense != 0).sum())
    assert t.encoding.stored_fraction(t) == pytest.approx(t.encoding.nnz / dense.size)
    assert t.encoding.mac_kind == "sparse"


def _graph(t, stored, m: int = 1, activation: str | None = "relu") -> mcir.Graph:
    n, k = t.shape
    g = mcir.Graph("dc")
    x = g.add_input("x", mcir.tensor([m, k]))
    w = g.const("w", stored, t)
    b = g.const("b", np.linspace(-1, 1, n).astype(np.float32), mcir.tensor([n]))
    y = g.add("linear", [x, w, b], {}, result="y")
    g.set_outputs([g.add(activation, [y]) if activation else y])
    return g


def test_prints_parses_saves_and_loads(tmp_path):
    t, stored, _ = random_sparse(16, 40, 0.2)
    g = _graph(t, stored)
    text = str(g)
    assert "#sparse_codebook<bits=5, gap_bits=" in text
    assert str(mcir.parse(text)) == text
    mcir.save(g, tmp_path / "m")
    back = mcir.load(tmp_path / "m")
    assert str(back) == text
    for key, value in stored.items():
        np.testing.assert_array_equal(back.value("w").producer.data[key], value)


@pytest.mark.parametrize(
    "text",
    [
        "f32[4,8] #sparse_codebook<bits=5, gap_bits=9, nnz=3, entries=3>",
        "f32[4,8] #sparse_codebook<bits=0, gap_bits=4, nnz=3, entries=3>",
        "f32[4,8] #sparse_codebook<bits=5, gap_bits=4, nnz=40, entries=40>",  # more non-zeros than elements
        "f32[4,8] #sparse_codebook<bits=5, gap_bits=4, nnz=3, entries=2>",  # fewer entries than non-zeros
        "f32[4,8] #sparse_codebook<bits=5, gap_bits=4, nnz=3>",
    ],
)
def test_bad_parameters_are_errors(text):
    body = f"  %w = const : {text}\n  %y = linear(%x, %w) : f32[1,4]\n  return %y\n"
    src = "graph @g(%x: f32[1,8]) -> (f32[1,4]) {\n" + body + "}"
    with pytest.raises(McirError, match="sparse_codebook"):
        mcir.parse(src)


def _bad(stored: dict, **change) -> dict:
    return {**stored, **change}


def test_the_verifier_rejects_streams_the_kernel_cannot_trust():
    # 1 x 20, non-zeros at 3 and 19, G = 3: entries (3, c1) (7) (7) (1, c2)
    t, stored = to_sparse_codebook((1, 20), np.array([3, 19]), np.array([1, 2]), np.arange(4) * 0.5, gap_bits=3)
    g = mcir.Graph("v")
    g.const("ok", stored, t)
    cases = {
        # the last gap 1 -> 2: the walk ends at position 20, past the 20 elements
        "past the 20 elements": _bad(stored, gaps=pack_stream(np.array([3, 7, 7, 2]), 3)),
        # a filler last: fillers only ever precede a non-zero
        "ends with a filler": _bad(stored, gaps=pack_stream(np.array([3, 7, 1, 7]), 3)),
        # three fillers: only one non-zero entry, but the type says nnz=2
        "non-zero entries, not nnz": _bad(stored, gaps=pack_stream(np.array([7, 7, 7, 1]), 3)),
        "non-zero code on filler": _bad(stored, codes=pack_stream(np.array([1, 3, 0, 2]), 2)),
        "padding bits": _bad(stored, gaps=stored["gaps"] | np.array([0, 0x80], np.uint8)),  # 12 of 16 bits used
        "NaN or infinity": _bad(stored, centroids=np.array([0, np.nan, 1, 2], np.float32)),
    }
    for message, bad in cases.items():
        with pytest.raises(McirError, match=message):
            g.const(f"bad{len(g.ops)}", bad, t)


# batch 1 runs 16 entries per step: chunks inside one row (long rows), chunks across rows (short rows),
# dense (1-bit gaps) and very sparse (8-bit gaps, fillers) streams, fewer than 16 entries; batches run per entry
@pytest.mark.parametrize(
    "m, n, k, density, bits",
    [
        (1, 6, 3000, 0.3, 5),
        (1, 32, 64, 0.1, 5),
        (1, 5, 40, 0.9, 5),
        (1, 40, 1000, 0.002, 5),
        (1, 3, 5, 0.5, 5),
        (1, 16, 700, 0.1, 3),  # <= 16 centroids: one register table
        (1, 16, 700, 0.1, 7),  # > 32 centroids: a gather
        (5, 20, 96, 0.1, 5),
        (37, 24, 130, 0.2, 6),
    ],
)
def test_native_kernel_equals_the_interpreter(tmp_path, m, n, k, density, bits):
    t, stored, _ = random_sparse(n, k, density, seed=m, bits=bits)
    assert t.encoding.gap_bits == {0.9: 1, 0.002: 8}.get(density, t.encoding.gap_bits)
    g = _graph(t, stored, m)
    x = np.random.default_rng(3).standard_normal((m, k)).astype(np.float32)
    ref = mcir.interpret(g, x)[0]
    lib = mcir.compile(g, tmp_path / "dc")
    np.testing.assert_allclose(lib(x)[0], ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert lib.weight_bytes == mcir.stats(g).weight_bytes


def test_library_bytes_are_the_streams_and_the_table():
    t, stored, _ = random_sparse(64, 128, 0.1)
    layer = _graph(t, stored).value("y").producer
    enc = t.encoding
    expected = 4 * 2**enc.bits + -(-enc.entries * enc.bits // 8) + 1 + -(-enc.entries * enc.gap_bits // 8) + 1
    assert try_kernel(layer).operand_bytes[1] == expected


def _pruned_model() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval(), torch.randn(
        3, 96
    )


def test_prune_cluster_stores_pruned_layers_as_sparse_codebooks_when_smaller(tmp_path):
    model, x = _pruned_model()
    g = mcir.trace(model, (x,))
    pruned = mcir.run_passes(g, "prune(sparsity=0.9)")
    out = mcir.run_passes(pruned, "cluster(bits=5)")
    w = out.value("0.weight")
    assert isinstance(w.type.encoding, SparseCodebook)
    assert w.type.encoding.nnz == pruned.value("0.weight").type.encoding.nnz  # the same non-zeros
    layer = w.uses[0][0]
    dense = pruned.value("0.weight").producer
    from mcir.passes.cluster import cluster_weight

    csr_bytes = try_kernel(pruned.value("0").producer).operand_bytes[1]
    codebook = cluster_weight(pruned.value("0.weight").type.decode(dense.data), 5)
    codebook_bytes = try_kernel(layer, {1: codebook}).operand_bytes[1]
    assert try_kernel(layer).operand_bytes[1] < min(csr_bytes, codebook_bytes)
    # the unpruned last layer has no zeros: it stays a plain #codebook
    assert out.value("2.weight").type.encoding.name == "codebook"
    # zeros stay zeros, the non-zeros take at most 32 distinct values
    dec = w.type.decode(w.producer.data)
    assert ((dec != 0) == (pruned.value("0.weight").type.decode(dense.data) != 0)).all()
    assert len(np.unique(dec[dec != 0])) <= 32
    np.testing.assert_allclose(
        mcir.compile(out, tmp_path / "p")(x.numpy())[0], mcir.interpret(out, x.numpy())[0], atol=1e-4
    )


def test_digits_prune_cluster_embeds_at_most_five_percent_of_fp32_bytes(tmp_path):
    from tests.lowbit.digits import digits_graph, fp32_param_bytes, trained_mlp

    g = mcir.run_passes(digits_graph(), "prune(sparsity=0.9),cluster(bits=5)")
    lib = mcir.compile(g, tmp_path / "digits")
    assert lib.weight_bytes == mcir.stats(g).weight_bytes
    assert lib.weight_bytes <= 0.05 * fp32_param_bytes(trained_mlp())


# -- centroid fine-tuning (mcir.train.forms: CodebookForm, SparseCodebookForm) -------------------


@pytest.mark.parametrize(
    "pipeline", ["cluster(bits=3)", "cluster(bits=2,scope=channel)", "prune(sparsity=0.8),cluster(bits=4)"]
)
def test_each_centroid_gets_the_summed_gradient_of_the_weights_sharing_it(pipeline):
    from mcir.train import to_torch

    model, x = _pruned_model()
    g = mcir.run_passes(mcir.trace(model, (x[:1],)), pipeline)
    w = g.value("0.weight")
    module = to_torch(g)
    form = module.forms["0.weight"]
    assert "centroids" in form.params and "" not in form.params  # only the table trains
    weight = form.value()
    upstream = torch.randn_like(weight)
    (weight * upstream).sum().backward()
    grad = form.params["centroids"].grad.numpy().reshape(-1)
    # Deep Compression's rule, from the stored indices: dL/dc_k = sum of dL/dw over the weights w = c_k
    expected = np.zeros_like(grad)
    if isinstance(w.type.encoding, SparseCodebook):
        pos, codes = w.type.encoding.positions(w.producer.data)
        np.add.at(expected, codes, upstream.numpy().reshape(-1)[pos])
    else:
        enc = w.type.encoding
        idx = enc.indices(w.type, w.producer.data).astype(np.int64)  # [N, K]
        if enc.scope == "channel":
            idx = idx + np.arange(idx.shape[0])[:, None] * 2**enc.bits  # row n's table starts at n·2^B
        np.add.at(expected, idx.reshape(-1), upstream.numpy().reshape(-1))
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)
    # at construction the form is the stored weight, exactly
    np.testing.assert_array_equal(weight.detach().numpy(), w.type.decode(w.producer.data))


def test_prune_cluster_finetune_recovers_accuracy_by_training_only_the_centroids(digits):
    train, test = (digits["x_train"], digits["y_train"]), (digits["x_test"], digits["y_test"])
    clustered = mcir.run_passes(digits["graph"], "prune(sparsity=0.9),cluster(bits=5)")
    g = mcir.run_passes(clustered, "finetune(epochs=2,lr=0.003)", data=train, eval=test)
    before, after = [r.accuracy for r in g.meta["report"].rows]
    assert after > before + 0.15  # measured: 0.62 -> 0.96
    # the storage is untouched: same types (nnz, entries, gap width), same codes and gaps, new centroids
    assert [op.result.type for op in g.constants()] == [op.result.type for op in clustered.constants()]
    w, w0 = g.value("fc2.weight").producer.data, clustered.value("fc2.weight").producer.data
    assert isinstance(g.value("fc2.weight").type.encoding, SparseCodebook)
    np.testing.assert_array_equal(w["codes"], w0["codes"])
    np.testing.assert_array_equal(w["gaps"], w0["gaps"])
    assert not np.array_equal(w["centroids"], w0["centroids"])


@pytest.mark.slow  # trains the digits MLP, then four passes with two fine-tunings (~10 s on a loaded machine)
def test_deep_compression_recipe_on_digits_is_within_one_point_at_five_percent_of_the_bytes(tmp_path):
    from mcir.runtime import Library
    from mcir.train.run import native_accuracy
    from tests.lowbit.digits import digits_split, fp32_param_bytes, trained_mlp

    x_tr, y_tr, x_te, y_te = digits_split()
    model = trained_mlp()
    g = mcir.trace(model, (torch.zeros(1, 64),))
    fp32_acc = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    ft = "finetune(epochs=5,lr=0.003)"
    q = mcir.run_passes(g, f"prune(sparsity=0.9),{ft},cluster(bits=5),{ft}", data=(x_tr, y_tr))
    assert sum(isinstance(c.result.type.encoding, SparseCodebook) for c in q.constants()) == 2
    mcir.compile(q, tmp_path / "dc")
    lib = Library(str(tmp_path / "dc.so"))
    assert lib.weight_bytes == mcir.stats(q).weight_bytes <= 0.05 * fp32_param_bytes(model)
    assert native_accuracy(lib, (x_te, y_te)) >= fp32_acc - 0.01  # measured: 97.11 % vs 97.33 %


def test_centroids_on_an_int8_grid_stay_on_it_after_training():
    # cluster(activations=dynamic) stores s·q centroids, which its vpermb + VNNI kernel requires
    from mcir.train import to_torch
    from mcir.train.forms import on_int8_grid
    from mcir.train.writeback import write_back

    model, x = _pruned_model()
    g = mcir.run_passes(mcir.trace(model, (x[:1],)), "cluster(bits=4,activations=dynamic)")
    module = to_torch(g)
    form = module.forms["0.weight"]
    assert form.grid and on_int8_grid(g.value("0.weight").producer.data["centroids"])
    with torch.no_grad():
        form.params["centroids"].mul_(1.013).add_(0.0007)  # a training step's worth of drift off the grid
    write_back(module, g)
    table = g.value("0.weight").producer.data["centroids"]
    assert on_int8_grid(table)
    assert not np.array_equal(
        table,
        mcir.run_passes(mcir.trace(model, (x[:1],)), "cluster(bits=4,activations=dynamic)")
        .value("0.weight")
        .producer.data["centroids"],
    )
