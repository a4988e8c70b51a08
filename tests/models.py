"""Small deterministic PyTorch models shared by the test suites and the benchmarks.

Every constructor seeds its own random stream (the global torch RNG is left as it
was), returns a model in eval mode, and has a matching ``*_inputs()`` function giving
deterministic example inputs. ``MODELS`` and ``BENCHMARKS`` map a short name to the
``(constructor, inputs)`` pair, for parametrised tests::

    model, inputs = models.build("cnn")
    g = mcir.trace(model, inputs)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

Inputs = tuple[torch.Tensor, ...]


def _seeded(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    """Build ``make()`` with a private RNG state so the weights are the same on every run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    return model.eval()


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _randomize_batch_norms(model: nn.Module) -> None:
    """Give BatchNorm layers non-trivial statistics: fresh ones (mean 0, var 1) would hide bugs."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)


# -- MLP ---------------------------------------------------------------------------


class MLP(nn.Module):
    """Linear layers with ReLU between them."""

    def __init__(self, sizes: tuple[int, ...] = (32, 64, 64, 10)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def mlp() -> nn.Module:
    """MLP 32-64-64-10."""
    return _seeded(0, MLP)


def mlp_inputs() -> Inputs:
    return (_randn(4, 32),)


# -- CNN ---------------------------------------------------------------------------


class ConvBNReLU(nn.Sequential):
    """conv -> batch norm -> ReLU (ReLU6 when ``six``)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, groups: int = 1, six: bool = False) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6() if six else nn.ReLU(),
        )


class ResidualBlock(nn.Module):
    """Two conv+BN layers with an identity shortcut: y = relu(x + bn(conv(relu(bn(conv(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn2(self.conv2(self.conv1(x))))


class CNN(nn.Module):
    """Conv+BN+ReLU stem, a residual block, a depthwise conv, max and average pooling, flatten, linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNReLU(3, 16)
        self.block = ResidualBlock(16)
        self.pool = nn.MaxPool2d(2)
        self.depthwise = ConvBNReLU(16, 16, groups=16, six=True)
        self.pointwise = nn.Conv2d(16, 32, 1)
        self.avg = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(self.stem(x)))
        x = self.avg(torch.relu(self.pointwise(self.depthwise(x))))
        return self.fc(self.flatten(x))


def cnn() -> nn.Module:
    """CNN on 3x16x16 images, 10 classes."""

    def make() -> nn.Module:
        model = CNN()
        _randomize_batch_norms(model)
        return model

    return _seeded(0, make)


def cnn_inputs() -> Inputs:
    return (_randn(2, 3, 16, 16),)


# -- Transformer encoder -------------------------------------------------------------


class EncoderClassifier(nn.Module):
    """Token ids -> embedding -> nn.TransformerEncoder (GELU, batch_first) -> mean over sequence -> linear."""

    def __init__(
        self, vocab: int = 100, d_model: int = 32, heads: int = 4, ffn: int = 64, layers: int = 2, classes: int = 5
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, ffn, dropout=0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(tokens))
        return self.head(h.mean(dim=1))


def encoder() -> nn.Module:
    """2-layer encoder, d_model 32, 4 heads, FFN 64, vocabulary 100."""
    return _seeded(0, EncoderClassifier)


def encoder_inputs() -> Inputs:
    gen = torch.Generator().manual_seed(1)
    return (torch.randint(0, 100, (2, 12), generator=gen, dtype=torch.int64),)


# -- benchmark models -----------------------------------------------------------------


def bench_mlp() -> nn.Module:
    """MLP 784-1024-1024-10."""
    return _seeded(0, lambda: MLP((784, 1024, 1024, 10)))


def bench_mlp_inputs() -> Inputs:
    return (_randn(1, 784),)


def bench_linear() -> nn.Module:
    """One Linear 4096x4096."""
    return _seeded(0, lambda: nn.Linear(4096, 4096))


def bench_linear_inputs() -> Inputs:
    return (_randn(1, 4096),)


class SmallCNN(nn.Module):
    """3->32->64->128 conv3x3+ReLU+maxpool2 on 32x32 images, then a linear classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for c_in, c_out in ((3, 32), (32, 64), (64, 128)):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Linear(128 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def bench_cnn() -> nn.Module:
    return _seeded(0, SmallCNN)


def bench_cnn_inputs() -> Inputs:
    return (_randn(1, 3, 32, 32),)


def bench_encoder() -> nn.Module:
    """4-layer encoder: hidden 256, 4 heads, FFN 1024, vocabulary 1000 (sequence length 128 in the inputs)."""
    return _seeded(0, lambda: EncoderClassifier(vocab=1000, d_model=256, heads=4, ffn=1024, layers=4, classes=10))


def bench_encoder_inputs() -> Inputs:
    gen = torch.Generator().manual_seed(1)
    return (torch.randint(0, 1000, (1, 128), generator=gen, dtype=torch.int64),)


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Inputs]]] = {
    "mlp": (mlp, mlp_inputs),
    "cnn": (cnn, cnn_inputs),
    "encoder": (encoder, encoder_inputs),
}

BENCHMARKS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Inputs]]] = {
    "mlp": (bench_mlp, bench_mlp_inputs),
    "linear": (bench_linear, bench_linear_inputs),
    "cnn": (bench_cnn, bench_cnn_inputs),
    "encoder": (bench_encoder, bench_encoder_inputs),
}


def build(name: str, benchmark: bool = False) -> tuple[nn.Module, Inputs]:
    """The model called ``name`` and its example inputs (from ``BENCHMARKS`` when ``benchmark``)."""
    table = BENCHMARKS if benchmark else MODELS
    make, inputs = table[name]
    return make(), inputs()
