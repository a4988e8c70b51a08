"""Pruned models (issue #6): latency of the sparse kernels, library bytes, and the density
sweep behind the cost rule (``mcir.analysis.sparse_cost``).

    python benchmarks/bench_sparse.py                       # everything (several minutes)
    python benchmarks/bench_sparse.py --models mlp --batches 1 --markdown
    python benchmarks/bench_sparse.py --only sweep          # the cost-rule sweep only

Sections (each contender is compiled, checked against the interpreter, then all contenders of
a row group are timed interleaved in one process, single thread; latencies are medians over
rounds, ratios medians of per-round paired ratios, timing.py; > 1 means faster):

* **unstructured**: Linear 4096 and the MLP 784-1024-1024-10 at batch 1 and 32. Contenders:
  PyTorch fp32 eager, mcir fp32 (dense), mcir int8 (``quant8``, only if this checkout has the
  dense int8 kernels), and per sparsity s in 50/80/90/95 %: ``prune(sparsity=s,skip=none,
  storage=sparse)`` (sparse f32: the sparse kernel at every s, whatever the cost rule would
  pick) and ``prune(sparsity=s,skip=none),quant8`` (int8: quant8 keeps #csr int8 where the cost
  rule says it pays, dense int8 otherwise; "storage" names what it chose).
* **channel**: the benchmark CNN pruned ``prune(sparsity=0.5,granularity=channel)``: the
  tensors shrink, dense kernels run it; against the unpruned mcir fp32 library and PyTorch.
* **sizes**: weight bytes embedded in each MLP library (``Library.weight_bytes``: every constant
  global as packed for its kernel, i.e. values, indices, per-row scales/offsets, biases) and the
  ``.so`` file size, against the dense fp32 library.
* **sweep**: one Linear N x K with a random pruned weight, sparse kernel vs the dense kernel of
  the same dtype (f32: mcir fp32 GEMM/GEMV; int8: the dense int8 kernel) for densities
  2..70 % and N:M patterns, batch 1 and 32. Int8 graphs are built directly (u8 input, #csr/#nm
  i8 weight), bypassing the cost rule they measure.
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
from models import prepare  # noqa: E402

import mcir  # noqa: E402
from mcir import dtypes  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402
from mcir.encodings import Quant, to_csr, to_nm  # noqa: E402
from mcir.errors import CodegenError  # noqa: E402
from mcir.ir import Graph  # noqa: E402
from mcir.report import format_table, human_bytes  # noqa: E402
from mcir.types import TensorType, tensor  # noqa: E402

SPARSITIES = (0.5, 0.8, 0.9, 0.95)


def _render(head: list[str], body: list[list[str]], markdown: bool) -> str:
    if not markdown:
        return format_table(head, body)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(lines)


def _compile(g: Graph, path: Path):
    """The library, or None (with a note) when this checkout lacks a kernel it needs."""
    try:
        return compile_graph(g, path)
    except CodegenError as e:
        print(f"  {path.name}: skipped ({str(e)[:100]}...)", file=sys.stderr)
        return None


def _storage(g: Graph) -> str:
    """What the weights of a graph became: csr/nm/quant/dense, per distinct kind."""
    kinds = []
    for op in g.compute_ops():
        if op.name in ("linear", "conv2d"):
            t = op.operands[1].type
            kinds.append(f"{t.dtype.name}#{t.encoding.name}" if t.encoding else t.dtype.name)
    return ", ".join(dict.fromkeys(kinds))


# -- unstructured pruning and the channel-pruned CNN -----------------------------------------------


def _contenders(model_name: str) -> list[tuple[str, str]]:
    out = [("mcir fp32", ""), ("mcir int8", "quant8")]
    for s in SPARSITIES:
        pct = f"{round(s * 100)}%"
        out.append((f"sparse f32 {pct}", f"prune(sparsity={s},skip=none,storage=sparse)"))
        out.append((f"pruned int8 {pct}", f"prune(sparsity={s},skip=none),quant8"))
    if model_name == "mlp":  # issue #6's size bar is on the default pipeline (classifier kept dense)
        out.append(("issue #6 int8 90%", "prune(sparsity=0.9),quant8"))
    return out


def bench_model(model_name: str, batch: int, contenders: list[tuple[str, str]], build: Path, rounds: int) -> list[dict]:
    """Compile and time every contender of one model at one batch size; one row each."""
    model, x, calibration, graph = prepare(model_name, batch)
    xn = x.numpy()
    fns: dict = {}
    rows = []
    with torch.inference_mode():
        fns["torch fp32"] = lambda: model(x)
    rows.append({"model": model_name, "batch": batch, "who": "torch fp32", "pipeline": "", "storage": "f32"})
    for who, pipeline in contenders:
        g = mcir.run_passes(graph, pipeline, calibration=calibration) if pipeline else graph
        t0 = time.perf_counter()
        lib = _compile(g, build / f"{model_name}_b{batch}_{who.replace(' ', '_').replace('%', '')}")
        if lib is None:
            continue
        compile_s = time.perf_counter() - t0
        y = np.empty(lib.outputs[0].shape, lib.outputs[0].dtype)
        fns[who] = lib.bind([xn], [y])
        fns[who]()
        ref = mcir.interpret(g, xn)[0]
        rows.append(
            {
                "model": model_name,
                "batch": batch,
                "who": who,
                "pipeline": pipeline,
                "storage": _storage(g),
                "weights": lib.weight_bytes,
                "so": lib.file_size,
                "compile_s": compile_s,
                "err": float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30)),
            }
        )
    with torch.inference_mode():
        samples = interleaved(fns, rounds=rounds)
    for r in rows:
        mine = samples[r["who"]]
        r["time"] = median(mine)
        r["vs_torch"] = paired_ratio(samples["torch fp32"], mine)
        r["vs_fp32"] = paired_ratio(samples["mcir fp32"], mine)
        r["vs_int8"] = paired_ratio(samples["mcir int8"], mine) if "mcir int8" in samples else None
    return rows


def latency_table(rows: list[dict], markdown: bool) -> str:
    head = ["model", "batch", "contender", "storage", "latency", "vs torch", "vs mcir fp32", "vs mcir int8"]
    head += ["weights", "native err"]
    body = [
        [
            r["model"],
            str(r["batch"]),
            r["who"],
            r["storage"],
            fmt_time(r["time"]),
            f"{r['vs_torch']:.2f}x",
            f"{r['vs_fp32']:.2f}x",
            f"{r['vs_int8']:.2f}x" if r["vs_int8"] is not None else "-",
            human_bytes(r["weights"]) if "weights" in r else "-",
            f"{r['err']:.1e}" if "err" in r else "-",
        ]
        for r in rows
    ]
    return _render(head, body, markdown)


def sizes_table(rows: list[dict], markdown: bool) -> str:
    """Weight bytes and .so size of each MLP library against the dense fp32 one (batch 1 rows)."""
    base = {r["model"]: r for r in rows if r["who"] == "mcir fp32" and r["batch"] == 1}
    body = []
    for r in rows:
        if r["batch"] != 1 or "weights" not in r:
            continue
        d = base[r["model"]]
        body.append(
            [
                r["model"],
                r["who"],
                f"`{r['pipeline']}`" if r["pipeline"] else "-",
                r["storage"],
                f"{r['weights']:,}",
                f"{r['weights'] / d['weights']:.2%}",
                f"{r['so']:,}",
                f"{r['so'] / d['so']:.2%}",
            ]
        )
    head = ["model", "contender", "pipeline", "storage", "weight bytes", "of fp32", ".so bytes", "of fp32 .so"]
    return _render(head, body, markdown)


# -- the cost-rule sweep ---------------------------------------------------------------------------


def _pruned(rng: np.random.Generator, n: int, k: int, density: float, nm: tuple[int, int] | None) -> np.ndarray:
    w = rng.standard_normal((n, k)).astype(np.float32) * np.float32(k**-0.5)
    if nm is None:
        w[rng.random((n, k)) >= density] = 0
        return w
    keep, group = nm
    g = w.reshape(n, k // group, group)
    order = np.argsort(-np.abs(g), axis=2)
    mask = np.zeros(g.shape, bool)
    np.put_along_axis(mask, order[:, :, :keep], True, axis=2)
    return (g * mask).reshape(n, k)


def _linear(w: np.ndarray, m: int, kind: str, nm: tuple[int, int] | None) -> Graph:
    """One linear on an f32 input: kind f32 (dense), f32s (sparse f32), i8 (dense int8), i8s (sparse int8)."""
    n, k = w.shape
    g = Graph("lin")
    x = g.add_input("x", tensor([m, k]))
    bias = np.zeros(n, np.float32)
    if kind in ("f32", "f32s"):
        if kind == "f32":
            wc = g.const("w", w)
        else:
            t, parts = to_csr(w) if nm is None else to_nm(w, *nm)
            wc = g.const("w", parts, t)
        g.set_outputs([g.add("linear", [x, wc, g.const("b", bias)])])
        return g
    xq = g.add("quantize", [x], type=TensorType((m, k), dtypes.u8, Quant(scale=8 / 255, zero_point=128)))
    if kind == "i8":
        amax = np.abs(w).max(axis=1)
        scale = np.where(amax > 0, amax / 127, 1).astype(np.float32)
        q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
        wc = g.const("w", {"data": q, "scale": scale}, TensorType((n, k), dtypes.i8, Quant(axis=0)))
    else:
        t, parts = to_csr(w, dtypes.i8) if nm is None else to_nm(w, *nm, dtype=dtypes.i8)
        wc = g.const("w", parts, t)
        scale = parts["scale"]
    bscale = (np.float32(8 / 255) * scale).astype(np.float32)
    bq = g.const("b", {"data": np.zeros(n, np.int32), "scale": bscale}, TensorType((n,), dtypes.i32, Quant(axis=0)))
    g.set_outputs([g.add("linear", [xq, wc, bq])])
    return g


SWEEP_DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7)
SWEEP_NM = ((2, 4), (1, 4), (1, 8))


def sweep(shapes: list[tuple[int, int]], batches: list[int], build: Path, rounds: int) -> list[dict]:
    """Sparse / dense latency ratios per dtype, shape, batch and density (see the docstring)."""
    rng = np.random.default_rng(0)
    rows = []
    for n, k in shapes:
        for m in batches:
            x = rng.standard_normal((m, k)).astype(np.float32)
            for dtype in ("f32", "i8"):
                fns = {}
                dense = _compile(_linear(_pruned(rng, n, k, 1.0, None), m, dtype, None), build / f"sw_{dtype}_{n}_{m}")
                if dense is None:
                    continue
                fns["dense"] = dense.bind([x], [np.empty((m, n), np.float32)])
                cases = [(f"{d:.0%}", d, None) for d in SWEEP_DENSITIES] + [
                    (f"{a}:{b}", a / b, (a, b)) for a, b in SWEEP_NM
                ]
                for label, d, nm in cases:
                    g = _linear(_pruned(rng, n, k, d, nm), m, dtype + "s", nm)
                    lib = compile_graph(g, build / f"sw_{dtype}s_{n}_{m}_{label.replace(':', '-').replace('%', '')}")
                    fns[label] = lib.bind([x], [np.empty((m, n), np.float32)])
                samples = interleaved(fns, rounds=rounds)
                row = {"dtype": dtype, "shape": f"{n}x{k}", "batch": m, "dense": median(samples["dense"])}
                row.update(
                    {label: paired_ratio(samples["dense"], v) for label, v in samples.items() if label != "dense"}
                )
                rows.append(row)
                print(f"  sweep {dtype} {n}x{k} batch {m}: done", file=sys.stderr, flush=True)
    return rows


def sweep_table(rows: list[dict], markdown: bool) -> str:
    labels = [f"{d:.0%}" for d in SWEEP_DENSITIES] + [f"{a}:{b}" for a, b in SWEEP_NM]
    head = ["dtype", "N x K", "batch", "dense"] + labels
    body = [
        [r["dtype"], r["shape"], str(r["batch"]), fmt_time(r["dense"])] + [f"{r[c]:.2f}x" for c in labels] for r in rows
    ]
    return _render(head, body, markdown)


# -- main ----------------------------------------------------------------------------------------------


def main() -> None:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["linear4096", "mlp"], choices=["linear4096", "mlp"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--only", choices=["unstructured", "channel", "sweep"], help="run one section")
    ap.add_argument("--sweep-shapes", nargs="+", default=["256x256", "1024x1024", "4096x4096"])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (median taken)")
    ap.add_argument("--build", type=Path, default=Path("build/bench_sparse"))
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = ap.parse_args()
    print(machine_description(), flush=True)
    if args.only in (None, "unstructured"):
        rows = []
        for name in args.models:
            for batch in args.batches:
                rows += bench_model(name, batch, _contenders(name), args.build, args.rounds)
                print(f"  {name} batch {batch}: done", file=sys.stderr, flush=True)
        print(latency_table(rows, args.markdown), end="\n\n")
        print(sizes_table(rows, args.markdown), end="\n\n")
    if args.only in (None, "channel"):
        rows = []
        channel = [("mcir fp32", ""), ("channel 50%", "prune(sparsity=0.5,granularity=channel)")]
        for batch in args.batches:
            rows += bench_model("cnn", batch, channel, args.build, args.rounds)
        print(latency_table(rows, args.markdown), end="\n\n")
    if args.only in (None, "sweep"):
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.sweep_shapes]
        rows = sweep(shapes, args.batches, args.build, max(5, args.rounds // 2))
        print(sweep_table(rows, args.markdown))


if __name__ == "__main__":
    main()
