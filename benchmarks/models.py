"""The PyTorch models of the fp32 benchmark (issue #4), with their example inputs."""

from __future__ import annotations

import torch
from torch import nn


def mlp() -> nn.Module:
    """MLP 784-1024-1024-10 with ReLU."""
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def linear4096() -> nn.Module:
    """One Linear 4096 x 4096."""
    return nn.Sequential(nn.Linear(4096, 4096))


def cnn() -> nn.Module:
    """3 -> 32 -> 64 -> 128 conv3x3 + ReLU + 2x2 max pool on 32x32, then a linear classifier."""
    layers: list[nn.Module] = []
    for cin, cout in ((3, 32), (32, 64), (64, 128)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 10))


def encoder() -> nn.Module:
    """4-layer nn.TransformerEncoder: hidden 256, 4 heads, FFN 1024, batch_first."""
    layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)


def example(name: str, batch: int) -> torch.Tensor:
    shapes = {"mlp": (batch, 784), "linear4096": (batch, 4096), "cnn": (batch, 3, 32, 32), "encoder": (batch, 128, 256)}
    return torch.randn(*shapes[name])


MODELS = {"mlp": mlp, "linear4096": linear4096, "cnn": cnn, "encoder": encoder}


def prepare(name: str, batch: int, calibration_batches: int = 4):
    """(model, input, calibration batches, traced graph) of a benchmark model, seeded."""
    import mcir

    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = example(name, batch)
    calibration = [(example(name, batch).numpy(),) for _ in range(calibration_batches)]
    return model, x, calibration, mcir.trace(model, (x,), name=name)
