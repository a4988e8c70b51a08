"""The bundled example: an MLP classifying scikit-learn's 8x8 digits (no downloads).

``make_model()`` is the factory mcir uses with ``--model-def examples/digits/model.py:make_model``;
``train()`` fits it in a few seconds on one core.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class DigitsMLP(nn.Module):
    """64 pixels -> 256 -> 128 -> 10 classes, ReLU activations."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def make_model() -> DigitsMLP:
    """The untrained model (the factory for ``--model-def``)."""
    return DigitsMLP()


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1] as f32, labels as i64; a fixed split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.75 * len(x))
    return x[:split], y[:split], x[split:], y[split:]


def train(epochs: int = 25, seed: int = 0) -> tuple[DigitsMLP, float]:
    """Train the MLP with Adam; returns (model in eval mode, test accuracy)."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_data()
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    return model, float(acc)
