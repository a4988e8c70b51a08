"""A language task: distil a small BERT-style teacher into a student with half its layers.

Data without downloads: the translated messages of the gettext catalogs installed on the
machine (``/usr/share/locale/<lang>/LC_MESSAGES/*.mo``: coreutils, apt, git, bash, ...; the
ISO country/language name catalogs are left out). The task is language identification of a
message among 8 languages written in the Latin alphabet. Messages are lower-cased, read as
characters (a vocabulary of the 250 most frequent characters) and cut or padded to 32.

The teacher is a 4-layer transformer encoder (d=64, 4 heads, feed-forward 128, learned
positions, mean pooling, linear head), trained in torch. The student is the teacher after
``prune(granularity=layer,sparsity=0.5),distill(...),quant8``: two layers, trained towards the
teacher's soft outputs, then int8. Both are compiled natively and measured on held-out
messages (accuracy, weight bytes, median latency at batch 1)::

    python examples/recover_language.py [--quick]

The catalogs depend on which packages are installed, so the numbers are for this machine.
"""

from __future__ import annotations

import argparse
import collections
import gettext
import glob
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcir
from mcir.compile_driver import time_call
from mcir.stats import GraphStats
from mcir.train.run import native_accuracy

LANGUAGES = ["de", "fr", "es", "it", "nl", "pl", "sv", "pt"]
LENGTH = 32
PER_LANGUAGE = 1000


def messages(lang: str) -> list[str]:
    """Distinct translated messages of at least four words, from the installed catalogs."""
    out = set()
    for path in sorted(glob.glob(f"/usr/share/locale/{lang}/LC_MESSAGES/*.mo")):
        if Path(path).name.startswith("iso_"):
            continue  # country and language names: mostly proper nouns, not sentences
        try:
            with open(path, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog
        except Exception:
            continue
        for key, text in catalog.items():
            if isinstance(key, str) and isinstance(text, str) and text != key and len(text.split()) >= 4:
                out.add(" ".join(text.lower().split()))
    return sorted(out)


def dataset(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i, lang in enumerate(LANGUAGES):
        msgs = messages(lang)
        if len(msgs) < 200:
            raise SystemExit(f"only {len(msgs)} messages for '{lang}': install more translated packages")
        pick = rng.choice(len(msgs), size=min(PER_LANGUAGE, len(msgs)), replace=False)
        texts += [msgs[j] for j in pick]
        labels += [i] * len(pick)
    counts = collections.Counter("".join(texts))
    vocab = {c: k + 2 for k, (c, _) in enumerate(counts.most_common(250))}  # 0 padding, 1 unknown
    tokens = np.zeros((len(texts), LENGTH), np.int64)
    for n, text in enumerate(texts):
        ids = [vocab.get(c, 1) for c in text[:LENGTH]]
        tokens[n, : len(ids)] = ids
    return train_test_split(tokens, np.array(labels, np.int64), test_size=0.25, random_state=0)


class Teacher(nn.Module):
    def __init__(self, layers: int = 4, d: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(252, d)
        self.pos = nn.Parameter(torch.zeros(1, LENGTH, d))
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, len(LANGUAGES))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(dim=1))


def train_teacher(x: np.ndarray, y: np.ndarray, epochs: int) -> Teacher:
    torch.manual_seed(0)
    model = Teacher()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        print(f"teacher epoch {epoch + 1}/{epochs}", file=sys.stderr, flush=True)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs: a smoke run")
    args = parser.parse_args()
    x_train, x_test, y_train, y_test = dataset()
    print(f"{len(x_train)} training / {len(x_test)} test messages, {len(LANGUAGES)} languages", file=sys.stderr)
    teacher = train_teacher(x_train, y_train, epochs=2 if args.quick else 4)
    graph = mcir.trace(teacher, (torch.from_numpy(x_train[:1]),))
    epochs = 1 if args.quick else 2
    pipelines = {
        "teacher (4 layers, f32)": "fold",
        "teacher, quant8": "fold,quant8",
        "student: prune(layer, 0.5),quant8 (no training)": "fold,prune(granularity=layer,sparsity=0.5),quant8",
        "student: prune(layer, 0.5),distill,quant8": (
            f"fold,prune(granularity=layer,sparsity=0.5),distill(epochs={epochs},lr=0.001),quant8"
        ),
    }
    calibration = [(x_train[i : i + 1],) for i in range(32)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, pipeline) in enumerate(pipelines.items()):
            t0 = time.perf_counter()
            g = mcir.run_passes(graph, pipeline, data=(x_train, y_train), calibration=calibration)
            seconds = time.perf_counter() - t0
            lib = mcir.compile(g, Path(tmp) / f"m{i}")
            acc = 100 * native_accuracy(lib, (x_test, y_test))
            sample = x_test[:1]
            latency = float(np.median(time_call(lambda lib=lib, s=sample: lib(s), runs=200)))
            layers = sum(1 for op in g.ops if op.name == "scaled_dot_product_attention")
            rows.append((label, layers, GraphStats.of(g).weight_bytes, acc, latency, seconds))
            print(f"{label}: {acc:.2f}%, {latency * 1e6:.0f} us, {seconds:.0f} s", file=sys.stderr, flush=True)
    teacher_acc = rows[0][3]
    print("| model | layers | weight bytes | native accuracy | of the teacher's | latency (batch 1) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, layers, wbytes, acc, latency, _ in rows:
        print(
            f"| {label} | {layers} | {wbytes / 1024:.1f} KiB | {acc:.2f}% | {100 * acc / teacher_acc:.1f}% "
            f"| {latency * 1e6:.0f} µs |"
        )


if __name__ == "__main__":
    main()
