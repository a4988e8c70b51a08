"""share(layers=..., keep=..., embeddings=...): ALBERT-style cross-layer sharing.

Structurally identical blocks (the layers of an encoder, repeated residual blocks) are tied to
one set of weights; the library then holds one copy. The tied graph computes exactly what a
torch model whose blocks hold the kept weights computes: native == interpreter == torch within
float rounding (1e-4 of the output's scale: the kernels sum in a different order).
"""

from __future__ import annotations

import copy

import models
import numpy as np
import pytest
import torch
from torch import nn

import mcir

LAYER_CONSTS = 12  # constants per nn.TransformerEncoderLayer (in_proj, out_proj, linear1/2, norm1/2: weight+bias)


def encoder4() -> nn.Module:
    """The test suite's encoder with 4 layers (d_model 32, 4 heads, FFN 64, vocabulary 100)."""
    return models._seeded(0, lambda: models.EncoderClassifier(layers=4))


def tied_copy(model: nn.Module, keep: int | None = None) -> nn.Module:
    """``model`` with every encoder layer holding layer ``keep``'s weights (the mean of all when None)."""
    tied = copy.deepcopy(model)
    layers = tied.encoder.layers
    states = [layer.state_dict() for layer in layers]
    if keep is None:
        kept = {k: torch.stack([s[k] for s in states]).mean(dim=0) for k in states[0]}
    else:
        kept = states[keep]
    for layer in layers:
        layer.load_state_dict(kept)
    return tied.eval()


def layer_constants(g: mcir.Graph) -> list[str]:
    return [op.result.name for op in g.constants() if op.result.name.startswith("encoder.layers.")]


def test_four_encoder_layers_become_one_copy_under_045_of_the_bytes_and_compute_the_tied_model(tmp_path):
    model, x = encoder4(), models.encoder_inputs()
    g = mcir.trace(model, x)
    shared = mcir.run_passes(g, "share(layers=auto)")
    assert layer_constants(shared) == layer_constants(g)[:LAYER_CONSTS]  # layer 0's constants, once
    assert all(name.startswith("encoder.layers.0.") for name in layer_constants(shared))
    assert "encoder.layers.{0,1,2,3} -> encoder.layers.0" in shared.meta["report"].warnings[0]

    lib = mcir.compile(shared, tmp_path / "shared")
    before = mcir.stats(g).weight_bytes
    assert mcir.stats(shared).weight_bytes == lib.weight_bytes
    assert lib.weight_bytes <= 0.45 * before

    want = tied_copy(model, keep=0)(*x).detach().numpy()
    interp = mcir.interpret(shared, x[0].numpy())[0]
    (native,) = lib(x[0].numpy())
    scale = np.abs(want).max()
    np.testing.assert_allclose(interp, want, atol=1e-4 * scale)
    np.testing.assert_allclose(native, interp, atol=1e-4 * scale)


def test_keep_mean_stores_the_average_of_the_layers():
    model, x = encoder4(), models.encoder_inputs()
    g = mcir.trace(model, x)
    shared = mcir.run_passes(g, "share(layers=auto,keep=mean)")
    layers = model.encoder.layers
    want = torch.stack([layer.linear1.weight for layer in layers]).mean(dim=0).detach().numpy()
    np.testing.assert_allclose(shared.value("encoder.layers.0.linear1.weight").producer.data, want, rtol=1e-6)
    ref = tied_copy(model, keep=None)(*x).detach().numpy()
    np.testing.assert_allclose(mcir.interpret(shared, x[0].numpy())[0], ref, atol=1e-4 * np.abs(ref).max())


def test_keep_index_keeps_that_layer_and_a_missing_index_is_refused():
    model, x = encoder4(), models.encoder_inputs()
    g = mcir.trace(model, x)
    shared = mcir.run_passes(g, "share(layers=auto,keep=2)")
    assert all(name.startswith("encoder.layers.2.") for name in layer_constants(shared))
    ref = tied_copy(model, keep=2)(*x).detach().numpy()
    np.testing.assert_allclose(mcir.interpret(shared, x[0].numpy())[0], ref, atol=1e-4 * np.abs(ref).max())
    with pytest.raises(
        mcir.McirError, match=r"keep=7 is not one of the identical blocks of encoder.layers \(0, 1, 2, 3\)"
    ):
        mcir.run_passes(g, "share(layers=auto,keep=7)")


def test_a_regex_names_the_blocks_and_must_have_a_group_and_match():
    g = mcir.trace(encoder4(), models.encoder_inputs())
    by_regex = mcir.run_passes(g, r"share(layers='encoder\.layers\.(\d+)')")
    auto = mcir.run_passes(g, "share(layers=auto)")
    assert layer_constants(by_regex) == layer_constants(auto)
    with pytest.raises(mcir.McirError, match="has no group"):
        mcir.run_passes(g, r"share(layers='encoder\.layers')")
    with pytest.raises(mcir.McirError, match="matched no group of identical blocks"):
        mcir.run_passes(g, r"share(layers='decoder\.(\d+)')")
    with pytest.raises(mcir.McirError, match="keep='last' must be first, mean or a block index"):
        mcir.run_passes(g, "share(layers=auto,keep=last)")


class Blocks(nn.Module):
    """A stem, three residual blocks of 8 channels (identical structure), a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*[models.ResidualBlock(8) for _ in range(3)])
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.blocks(self.stem(x)), 1))


def test_repeated_residual_blocks_are_tied_and_different_blocks_are_not():
    model = models._seeded(0, Blocks)
    models._randomize_batch_norms(model)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    g = mcir.trace(model, (x,))
    shared = mcir.run_passes(g, "share(layers=auto)")
    names = [op.result.name for op in shared.constants() if op.result.name.startswith("blocks.")]
    assert names and all(n.startswith("blocks.0.") for n in names)
    tied = copy.deepcopy(model)
    for block in tied.blocks[1:]:
        block.load_state_dict(tied.blocks[0].state_dict())
    ref = tied.eval()(x).detach().numpy()
    np.testing.assert_allclose(mcir.interpret(shared, x.numpy())[0], ref, atol=1e-4 * np.abs(ref).max())

    # SmallCNN's features.0/3/6 are convolutions of different shapes: nothing to tie
    cnn, inputs = models.build("cnn", benchmark=True)
    plain = mcir.trace(cnn, inputs)
    untouched = mcir.run_passes(plain, "share(layers=auto)")
    assert [op.result.name for op in untouched.constants()] == [op.result.name for op in plain.constants()]
    assert "found no structurally identical blocks" in untouched.meta["report"].warnings[0]


class TinyLM(nn.Module):
    """Embedding -> linear -> tanh -> output projection back to the vocabulary."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.embed(tokens))))


def test_embeddings_true_ties_the_output_projection_to_the_embedding_table():
    model = models._seeded(0, TinyLM)
    tokens = torch.tensor([[1, 7, 49, 3]])
    g = mcir.trace(model, (tokens,))
    shared = mcir.run_passes(g, "share(embeddings=true)")
    assert "out.weight" not in [op.result.name for op in shared.constants()]
    assert mcir.stats(shared).params == mcir.stats(g).params - 50 * 16
    # one constant, but two layouts in the library today (the lookup reads it raw, the GEMM packed):
    # the bytes do not grow, and do not shrink either (stats counts what the library embeds)
    assert mcir.stats(shared).weight_bytes == mcir.stats(g).weight_bytes
    tied = copy.deepcopy(model)
    tied.out.weight = tied.embed.weight
    ref = tied(tokens).detach().numpy()
    np.testing.assert_allclose(mcir.interpret(shared, tokens.numpy())[0], ref, atol=1e-5 * np.abs(ref).max())


def band_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of 8 tokens whose first 4 come from the label's band of 20 ids (5 classes)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    tokens = rng.integers(0, 100, (n, 8))
    tokens[:, :4] = y[:, None] * 20 + rng.integers(0, 20, (n, 4))
    return tokens.astype(np.int64), y.astype(np.int64)


@pytest.mark.slow
def test_finetune_recovers_the_accuracy_sharing_costs():
    batch = 32  # the graph is traced at this batch size, so the data comes as batches of it
    x_train, y_train = band_task(512, 0)
    x_test, y_test = band_task(256, 1)
    model = encoder4().train()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(2):
        for i in range(0, len(x_train), batch):
            opt.zero_grad()
            out = model(torch.from_numpy(x_train[i : i + batch]))
            nn.functional.cross_entropy(out, torch.from_numpy(y_train[i : i + batch])).backward()
            opt.step()
    g = mcir.trace(model.eval(), (torch.from_numpy(x_test[:batch]),))
    train = [(x_train[i : i + batch], y_train[i : i + batch]) for i in range(0, len(x_train), batch)]
    test = [(x_test[i : i + batch], y_test[i : i + batch]) for i in range(0, len(x_test), batch)]
    tuned = mcir.run_passes(g, "share(layers=auto),finetune(epochs=2,lr=0.003)", data=train, eval=test)
    untied_acc, shared_acc, tuned_acc = [r.accuracy for r in tuned.meta["report"].rows]
    assert shared_acc < untied_acc  # tying four trained layers to the first costs accuracy
    assert tuned_acc > shared_acc + 0.05
    assert tuned_acc >= untied_acc - 0.02
    assert len(layer_constants(tuned)) == LAYER_CONSTS  # still one copy after training
