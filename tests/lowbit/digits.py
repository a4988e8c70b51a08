"""The digits MLP of issue #14's acceptance: scikit-learn's 8x8 digits, 25 % held out
(``train_test_split(test_size=0.25, random_state=0)``), 64-256-128-10 trained in torch for a
couple of seconds, traced with the whole test set as one batch."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
from torch import nn

import mcir


@functools.cache
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target.astype(np.int64), test_size=0.25, random_state=0)
    return x_tr, y_tr, x_te, y_te


def train_classifier(widths: tuple[int, ...], epochs: int = 30, seed: int = 0) -> nn.Module:
    """A ReLU MLP of ``widths`` trained on the digits training quarter with Adam (seeded)."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # tiny batches: threads only contend on the shared test machine
    x_tr, y_tr, _, _ = digits_split()
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


@functools.cache
def trained_mlp(epochs: int = 30, seed: int = 0) -> nn.Module:
    """64-256-128-10 ReLU MLP trained with Adam (seeded, about 2 s on one core)."""
    return train_classifier((64, 256, 128, 10), epochs, seed)


def digits_graph() -> mcir.Graph:
    """The trained MLP traced with the test set's batch size."""
    _, _, x_te, _ = digits_split()
    return mcir.trace(trained_mlp(), (torch.from_numpy(x_te),), name="digits")


def fp32_param_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters in f32 (the denominator of every byte ratio)."""
    return 4 * sum(p.numel() for p in model.parameters())


def accuracy(logits: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == digits_split()[3]).mean())
