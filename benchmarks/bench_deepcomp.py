"""Deep Compression in mcir (issue #14): prune + cluster + centroid fine-tuning, bytes and accuracy.

    python benchmarks/bench_deepcomp.py                  # all tables
    python benchmarks/bench_deepcomp.py --only digits    # one table

1. **Digits MLP** 64-256-128-10 (scikit-learn digits, ``train_test_split(test_size=0.25,
   random_state=0)``, the model of ``tests/lowbit/digits.py``): native accuracy on the held-out
   quarter and the library's embedded weight bytes (``lib.weight_bytes == mcir.stats``) as a share
   of the fp32 parameter bytes, for pruning, clustering, centroid-only fine-tuning and Deep
   Compression's recipe (prune, retrain, cluster, retrain the centroids).
2. **LeNet-300-100 on the digits** (64-300-100-10: the 784 MNIST pixels become the 64 digits pixels;
   the same split): the paper's 40x at no loss is the target.
3. **Linear 4096 x 4096 at 90 % sparsity, batch 1 and 32**: latency of ``#sparse_codebook`` against
   ``#csr`` (f32 sparse kernel), the dense ``#codebook`` and fp32.

Fine-tuning uses the training quarter only (no ``eval=``: no epoch is chosen on the test set).
Accuracy is the compiled library's, one call for the whole test set. Timing: minimum thread CPU
time per call over interleaved rounds (one thread); the machine is shared, so compare within a run.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import fmt_time, machine_description, single_thread

single_thread()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_lowbit import time_all  # noqa: E402
from torch import nn  # noqa: E402

import mcir  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402

warnings.filterwarnings("ignore")

FT = "finetune(epochs={e},lr=0.003)"
DIGITS = [
    ("fp32", ""),
    ("prune(0.9)", "prune(sparsity=0.9)"),
    ("prune(0.9), cluster(5)", "prune(sparsity=0.9),cluster(bits=5)"),
    ("prune(0.9), cluster(5), finetune(10) [centroids]", "prune(sparsity=0.9),cluster(bits=5)," + FT.format(e=10)),
    (
        "prune(0.9), finetune(5), cluster(5), finetune(5)",
        f"prune(sparsity=0.9),{FT.format(e=5)},cluster(bits=5),{FT.format(e=5)}",
    ),
    (
        "prune(0.9), finetune(5), cluster(4), finetune(5)",
        f"prune(sparsity=0.9),{FT.format(e=5)},cluster(bits=4),{FT.format(e=5)}",
    ),
]
LENET = [
    ("fp32", ""),
    ("prune(0.92), cluster(5)", "prune(sparsity=0.92),cluster(bits=5)"),
    (
        "prune(0.92), finetune(5), cluster(5), finetune(5)",
        f"prune(sparsity=0.92),{FT.format(e=5)},cluster(bits=5),{FT.format(e=5)}",
    ),
    (
        "prune(0.94), finetune(10), cluster(5), finetune(10)",
        f"prune(sparsity=0.94),{FT.format(e=10)},cluster(bits=5),{FT.format(e=10)}",
    ),
    (
        "prune(0.95, skip=none, steps=3), finetune(10), cluster(4), finetune(10)",
        f"prune(sparsity=0.95,skip=none,steps=3),{FT.format(e=10)},cluster(bits=4),{FT.format(e=10)}",
    ),
    # gradual pruning (3 steps, 5 epochs of fine-tuning after each), longer fine-tuning: the 40x rows
    (
        "prune(0.96, steps=3), finetune(20), cluster(4), finetune(20)",
        f"prune(sparsity=0.96,steps=3,step_epochs=5),{FT.format(e=20)},cluster(bits=4),{FT.format(e=20)}",
    ),
    (
        "prune(0.96, steps=3), finetune(20), cluster(3), finetune(20)",
        f"prune(sparsity=0.96,steps=3,step_epochs=5),{FT.format(e=20)},cluster(bits=3),{FT.format(e=20)}",
    ),
    (
        "prune(0.97, steps=3), finetune(20), cluster(4), finetune(20)",
        f"prune(sparsity=0.97,steps=3,step_epochs=5),{FT.format(e=20)},cluster(bits=4),{FT.format(e=20)}",
    ),
]


@functools.cache
def lenet_300_100(epochs: int = 30, seed: int = 0) -> nn.Module:
    """LeNet-300-100 with 64 inputs, trained on the digits training quarter like the digits MLP."""
    from tests.lowbit.digits import train_classifier

    return train_classifier((64, 300, 100, 10), epochs, seed)


def accuracy_table(model: nn.Module, pipelines: list[tuple[str, str]], build: Path) -> str:
    """Native accuracy and library bytes of each pipeline: trained on a batch-1 trace, run on the test set."""
    from tests.lowbit.digits import accuracy, digits_split, fp32_param_bytes

    x_tr, y_tr, x_te, _ = digits_split()
    one = mcir.trace(model, (torch.zeros(1, 64),))
    fp32 = fp32_param_bytes(model)
    rows = [
        "| pipeline | accuracy | Δ vs fp32 | weight bytes | of fp32 | compression | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = None
    for label, pipe in pipelines:
        t0 = time.perf_counter()
        g = mcir.run_passes(one, pipe, data=(x_tr, y_tr)) if pipe else one
        seconds = time.perf_counter() - t0
        batch = with_batch(g, len(x_te))
        lib = compile_graph(batch, build / f"acc_{abs(hash(label))}")
        assert lib.weight_bytes == mcir.stats(batch).weight_bytes
        acc = accuracy(lib(x_te)[0])
        base = acc if base is None else base
        rows.append(
            f"| `{label}` | {acc:.2%} | {100 * (acc - base):+.2f} pt | {lib.weight_bytes:,} | "
            f"{lib.weight_bytes / fp32:.3f} | {fp32 / lib.weight_bytes:.1f}x | {seconds:.1f} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


def with_batch(g: mcir.Graph, batch: int) -> mcir.Graph:
    """The batch-1 graph re-stated for ``batch`` rows: the same text with the leading 1 replaced
    (an MLP's shapes are [1, F] everywhere), the same constants."""
    text = str(g).replace("[1,", f"[{batch},")
    out = mcir.parse(text)
    for op in out.ops:
        if op.name == "const":
            op.data = g.value(op.result.name).producer.data
    mcir.verify(out)
    return out


def latency_table(build: Path, rounds: int) -> str:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 4096))
    g1 = mcir.trace(model, (torch.randn(1, 4096),))
    pipes = [
        ("fp32", ""),
        ("#csr f32 (prune 0.9)", "prune(sparsity=0.9,skip=none,storage=sparse)"),
        ("#codebook 5-bit (unpruned)", "cluster(bits=5)"),
        ("#sparse_codebook 5-bit (prune 0.9)", "prune(sparsity=0.9,skip=none),cluster(bits=5)"),
    ]
    rows = [
        "| Linear 4096, 90 % zeros | batch | CPU time (min) | vs fp32 | weight bytes |",
        "|---|---:|---:|---:|---:|",
    ]
    for batch in (1, 32):
        x = np.random.default_rng(0).standard_normal((batch, 4096)).astype(np.float32)
        fns, sizes = {}, {}
        for label, pipe in pipes:
            g = with_batch(mcir.run_passes(g1, pipe) if pipe else g1, batch)
            enc = g.value("0.weight").type.encoding
            lib = compile_graph(g, build / f"lin_{batch}_{len(fns)}")
            fns[label], sizes[label] = (lambda lib=lib, x=x: lib(x)), (lib.weight_bytes, enc.name if enc else "f32")
        res = time_all(fns, rounds)
        ref = res["fp32"][0]
        for label, (cpu, _) in res.items():
            rows.append(
                f"| {label} [{sizes[label][1]}] | {batch} | {fmt_time(cpu)} | {ref / cpu:.2f}x | {sizes[label][0]:,} |"
            )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--build", type=Path, default=None)
    ap.add_argument("--only", choices=["digits", "lenet", "linear"], nargs="+", default=["digits", "lenet", "linear"])
    args = ap.parse_args()
    print(machine_description(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        build = args.build or Path(tmp)
        build.mkdir(parents=True, exist_ok=True)
        if "digits" in args.only:
            from tests.lowbit.digits import trained_mlp

            print("\n### Digits MLP 64-256-128-10\n\n" + accuracy_table(trained_mlp(), DIGITS, build), flush=True)
        if "lenet" in args.only:
            print("\n### LeNet-300-100 on the digits\n\n" + accuracy_table(lenet_300_100(), LENET, build), flush=True)
        if "linear" in args.only:
            print("\n" + latency_table(build, args.rounds), flush=True)


if __name__ == "__main__":
    main()
