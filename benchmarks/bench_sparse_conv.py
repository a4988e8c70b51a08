"""Sparse convolutions (issue #10): unstructured pruning of 3x3 / 7x7 convs and of a
ResNet-style CNN against mcir's dense convs and PyTorch, one thread.

    python benchmarks/bench_sparse_conv.py                  # every row (a few minutes)
    python benchmarks/bench_sparse_conv.py --only resnet --markdown

Rows (batch 1, each contender compiled, checked against the interpreter, then all contenders
of a row timed interleaved in one process; latencies are medians over rounds, ratios medians
of per-round paired ratios, ``timing.py``; > 1 means faster):

* **conv3x3**: Conv2d 64 -> 64, 3x3, padding 1, on 56x56 (a ResNet layer-1 conv);
* **conv7x7**: Conv2d 3 -> 64, 7x7, stride 2, padding 3, on 112x112 (a ResNet stem);
* **resnet**: a ResNet-style CNN on 3x96x96: 7x7/2 stem + BN + ReLU, 3x3/2 max pool, two 3x3
  residual blocks at 32 channels, a 3x3/2 conv to 64, two residual blocks at 64, global average
  pool, linear (BatchNorm folded).

Contenders: PyTorch fp32 eager; mcir fp32 (``fold``, dense im2col + GEMM); mcir int8
(``fold,quant8``); per sparsity s in 50 / 90 %: ``fold,prune(sparsity=s,skip=none,storage=sparse)``
(every conv #csr f32, whatever the cost rule would pick) and ``fold,prune(sparsity=s,skip=none),quant8``
(the cost rule decides: #csr int8 where it pays, dense int8 otherwise; "storage" says which).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import fmt_time, interleaved, machine_description, median, paired_ratio, single_thread

single_thread()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import mcir  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402
from mcir.report import format_table, human_bytes  # noqa: E402

SPARSITIES = (0.5, 0.9)


class Block(nn.Module):
    """y = relu(x + bn(conv(relu(bn(conv(x)))))), 3x3 convs."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


def resnet() -> nn.Module:
    """The ResNet-style CNN of the module docstring."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        Block(32),
        Block(32),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        Block(64),
        Block(64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


MODELS = {
    "conv3x3": (lambda: nn.Conv2d(64, 64, 3, padding=1), (1, 64, 56, 56)),
    "conv7x7": (lambda: nn.Conv2d(3, 64, 7, stride=2, padding=3), (1, 3, 112, 112)),
    "resnet": (resnet, (1, 3, 96, 96)),
}


def _contenders() -> list[tuple[str, str]]:
    out = [("mcir fp32", "fold"), ("mcir int8", "fold,quant8")]
    for s in SPARSITIES:
        pct = f"{round(s * 100)}%"
        out.append((f"sparse f32 {pct}", f"fold,prune(sparsity={s},skip=none,storage=sparse)"))
        out.append((f"pruned int8 {pct}", f"fold,prune(sparsity={s},skip=none),quant8"))
    return out


def _storage(g: mcir.Graph) -> str:
    kinds = []
    for op in g.compute_ops():
        if op.name == "conv2d":
            t = op.operands[1].type
            kinds.append(f"{t.dtype.name}#{t.encoding.name}" if t.encoding else t.dtype.name)
    return ", ".join(dict.fromkeys(kinds))


def bench(name: str, build: Path, rounds: int) -> list[dict]:
    """Compile, check and time every contender on model ``name``; one row each."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    for m in model.modules():  # BatchNorm statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(*shape)
    calibration = [(torch.randn(*shape).numpy(),) for _ in range(4)]
    graph = mcir.trace(model, (x,), name=name)
    xn = x.numpy()
    fns = {}
    with torch.inference_mode():
        fns["torch fp32"] = lambda: model(x)
    rows = [{"model": name, "who": "torch fp32", "storage": "f32"}]
    for who, pipeline in _contenders():
        g = mcir.run_passes(graph, pipeline, calibration=calibration)
        t0 = time.perf_counter()
        lib = compile_graph(g, build / f"{name}_{who.replace(' ', '_').replace('%', '')}")
        compile_s = time.perf_counter() - t0
        y = np.empty(lib.outputs[0].shape, lib.outputs[0].dtype)
        fns[who] = lib.bind([xn], [y])
        fns[who]()
        ref = mcir.interpret(g, xn)[0]
        err = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
        rows.append(
            {
                "model": name,
                "who": who,
                "storage": _storage(g),
                "weights": lib.weight_bytes,
                "err": err,
                "cs": compile_s,
            }
        )
    with torch.inference_mode():
        samples = interleaved(fns, rounds=rounds)
    for r in rows:
        mine = samples[r["who"]]
        r["time"] = median(mine)
        r["vs_torch"] = paired_ratio(samples["torch fp32"], mine)
        r["vs_fp32"] = paired_ratio(samples["mcir fp32"], mine)
        r["vs_int8"] = paired_ratio(samples["mcir int8"], mine)
    return rows


def table(rows: list[dict], markdown: bool) -> str:
    head = ["model", "contender", "storage", "latency", "vs torch", "vs mcir fp32", "vs mcir int8", "weights"]
    head += ["native err"]
    body = [
        [
            r["model"],
            r["who"],
            r["storage"],
            fmt_time(r["time"]),
            f"{r['vs_torch']:.2f}x",
            f"{r['vs_fp32']:.2f}x",
            f"{r['vs_int8']:.2f}x",
            human_bytes(r["weights"]) if "weights" in r else "-",
            f"{r['err']:.1e}" if "err" in r else "-",
        ]
        for r in rows
    ]
    if not markdown:
        return format_table(head, body)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])


def main() -> None:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (median taken)")
    ap.add_argument("--build", type=Path, default=Path("build/bench_sparse_conv"))
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args()
    print(machine_description(), flush=True)
    rows = []
    for name in args.only:
        rows += bench(name, args.build, args.rounds)
        print(f"  {name}: done", file=sys.stderr, flush=True)
    print(table(rows, args.markdown))


if __name__ == "__main__":
    main()
