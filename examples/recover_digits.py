"""Compress, then recover: native accuracy of compressed digits classifiers, with and without training.

scikit-learn's 8x8 digits, split with ``train_test_split(test_size=0.25, random_state=0)``; a
64-256-128-10 MLP and a small CNN are trained in torch, traced, compressed by mcir pipelines
(with and without ``finetune``/``distill`` on the training three quarters), compiled
to native libraries, and measured on the held-out quarter one sample at a time (batch 1, as
the libraries are built). Prints a markdown table (the one in docs/benchmarks.md)::

    python examples/recover_digits.py            # ~ a few minutes on one core
    python examples/recover_digits.py --quick    # fewer epochs, for a smoke run

Weight bytes are those embedded in the compiled library (``Library.weight_bytes``: the
kernels' packed layouts, sparse indices and scales included), compared with the uncompressed
f32 library; the graph's own count (``GraphStats.weight_bytes``, CSR with i32 column indices)
is printed beside them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcir
from mcir.stats import GraphStats
from mcir.train.run import native_accuracy


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): pixels / 16 as f32, labels i64, the issue's split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=0)


class MLP(nn.Module):
    """64 -> 256 -> 128 -> 10, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 256), nn.Linear(256, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class CNN(nn.Module):
    """1x8x8 -> conv 32 -> conv 64 -> pool -> conv 64 -> pool -> linear 10 (BatchNorm + ReLU after each conv)."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(1, 32), block(32, 64), nn.MaxPool2d(2), block(64, 64), nn.MaxPool2d(2))
        self.head = nn.Linear(64 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def train_torch(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> nn.Module:
    """Adam, batch 64, cross-entropy; returns the model in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few epochs: a smoke run, not the documented numbers")
    parser.add_argument("--only", metavar="TEXT", help="run only the pipelines containing TEXT (and the baselines)")
    args = parser.parse_args()
    e = 2 if args.quick else 1  # epoch divisor

    x_train, x_test, y_train, y_test = load()
    cases = [
        ("MLP", None, "", 0.0),
        ("MLP", None, "prune(sparsity=0.9),quant8", None),
        ("MLP", None, f"prune(sparsity=0.9),finetune(epochs={30 // e}),quant8", 1.5),
        ("MLP", None, "prune(sparsity=0.9,skip=none),quant8", None),
        ("MLP", None, f"prune(sparsity=0.9,skip=none),finetune(epochs={30 // e}),quant8", 1.5),
        ("MLP", None, "prune(sparsity=0.92),quant8", None),
        ("MLP", None, f"prune(sparsity=0.92),finetune(epochs={30 // e}),quant8", 1.5),
        ("MLP", None, "prune(sparsity=0.97),quant8", None),
        ("MLP", None, f"prune(sparsity=0.97),finetune(epochs={40 // e},lr=0.003),quant8", 1.5),
        ("MLP", None, "prune(granularity=neuron,sparsity=0.5),quant8", None),
        ("MLP", None, f"prune(granularity=neuron,sparsity=0.5),distill(epochs={30 // e}),quant8", 1.5),
        ("MLP", None, "binarize(activations=binary)", None),
        ("MLP", None, f"binarize(activations=binary),finetune(epochs={30 // e})", 3.0),
        ("MLP", None, f"quant8(qat={5 // e})", None),
        ("CNN", None, "fold", 0.0),
        ("CNN", None, "fold,prune(granularity=channel,sparsity=0.5)", None),
        ("CNN", None, f"fold,prune(granularity=channel,sparsity=0.5),finetune(epochs={15 // e})", 1.5),
        ("CNN", None, f"fold,prune(granularity=channel,sparsity=0.5),finetune(epochs={15 // e}),quant8", 1.5),
    ]
    if args.only:
        cases = [c for c in cases if c[3] == 0.0 or args.only in c[2]]
    graphs = {}
    if any(c[0] == "MLP" for c in cases[1:]):
        graphs["MLP"] = mcir.trace(train_torch(MLP(), x_train, y_train, epochs=40 // e), (torch.zeros(1, 64),))
    if any(c[0] == "CNN" for c in cases[1:] if c[2] != "fold"):
        cnn = train_torch(CNN(), x_train.reshape(-1, 1, 8, 8), y_train, epochs=20 // e)
        graphs["CNN"] = mcir.trace(cnn, (torch.zeros(1, 1, 8, 8),))
    cases = [c for c in cases if c[0] in graphs]
    data = {"MLP": (x_train, y_train), "CNN": (x_train.reshape(-1, 1, 8, 8), y_train)}
    evals = {"MLP": (x_test, y_test), "CNN": (x_test.reshape(-1, 1, 8, 8), y_test)}
    baseline: dict[str, tuple[float, int]] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (model, _, pipeline, bar) in enumerate(cases):
            g0 = graphs[model]
            calibration = [(data[model][0][j : j + 1],) for j in range(64)]
            t0 = time.perf_counter()
            g = mcir.run_passes(g0, pipeline, data=data[model], calibration=calibration) if pipeline else g0
            seconds = time.perf_counter() - t0
            lib = mcir.compile(g, Path(tmp) / f"m{i}")
            acc = 100 * native_accuracy(lib, evals[model])
            wbytes, gbytes = lib.weight_bytes, GraphStats.of(g).weight_bytes
            if model not in baseline:
                baseline[model] = (acc, wbytes)
            base_acc, base_bytes = baseline[model]
            drop = base_acc - acc
            verdict = "" if bar is None or not pipeline or bar == 0.0 else ("yes" if drop <= bar else "NO")
            rows.append(
                (model, pipeline or "(none)", wbytes, gbytes, base_bytes / wbytes, acc, -drop, bar, verdict, seconds)
            )
            print(
                f"{model} {pipeline or '(none)'}: {acc:.2f}% ({-drop:+.2f} pt), {wbytes} B, {seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    print(
        "| model | pipeline | library weights | smaller | graph weights | native accuracy | vs uncompressed "
        "| bar | met |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    for model, pipeline, wbytes, gbytes, ratio, acc, delta, bar, verdict, _ in rows:
        bar_text = "" if bar is None or bar == 0.0 else f"within {bar:g} pt"
        print(
            f"| {model} | `{pipeline}` | {wbytes / 1024:.1f} KiB | {ratio:.1f}x | {gbytes / 1024:.1f} KiB | {acc:.2f}% "
            f"| {delta:+.2f} pt | {bar_text} | {verdict} |"
        )


if __name__ == "__main__":
    main()
