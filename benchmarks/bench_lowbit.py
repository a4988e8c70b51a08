"""Low-bit weights and dynamic quantisation (issue #14): accuracy, library bytes and latency.

    python benchmarks/bench_lowbit.py              # all three tables
    python benchmarks/bench_lowbit.py --rounds 9   # fewer timing rounds

1. **Digits MLP** (scikit-learn digits, ``train_test_split(test_size=0.25, random_state=0)``,
   64-256-128-10 trained in torch for a few seconds, no fine-tuning): test accuracy of each
   pipeline's *native* library and its embedded weight bytes (``lib.weight_bytes``, equal to
   ``mcir.stats``) as a share of the fp32 parameter bytes.
2. **Linear 4096 x 4096, batch 1**: latency of each weight format against mcir int8 (``quant8``),
   torch ``quantize_dynamic`` and ONNX Runtime ``quantize_dynamic``.
3. **Benchmark MLP 784-1024-1024-10, batch 1**: mcir ``quantize(activations=dynamic)`` against
   torch ``quantize_dynamic`` and ORT dynamic.

Timing: every contender runs in turn within each round (one thread each); a sample is the
*CPU time of this thread* per call (``time.thread_time``) over ~20 ms of calls, and the table
gives the minimum over rounds (plus the wall-clock median), because on a shared machine other
processes inflate wall time. Ratios compare minima of the same run.
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import fmt_time, machine_description, single_thread

single_thread()

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from models import prepare  # noqa: E402
from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: E402

import mcir  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402

warnings.filterwarnings("ignore")

DIGITS = [
    ("fp32", ""),
    ("cluster(bits=4)", "cluster(bits=4)"),
    ("cluster(bits=4, kmeans++)", "cluster(bits=4,init='kmeans++')"),
    ("cluster(bits=4, scope=channel)", "cluster(bits=4,scope=channel)"),
    ("cluster(bits=3)", "cluster(bits=3)"),
    ("cluster(bits=4, activations=dynamic)", "cluster(bits=4,activations=dynamic)"),
    ("quantize(bits=4)", "quantize(bits=4)"),
    ("quantize(bits=4, group=64)", "quantize(bits=4,group=64)"),
    ("quantize(bits=2, group=32)", "quantize(bits=2,group=32)"),
    ("quantize(scheme=pow2, bits=4)", "quantize(scheme=pow2,bits=4)"),
    ("quantize(activations=dynamic)", "quantize(activations=dynamic)"),
    ("quantize(activations=dynamic, bits=4)", "quantize(activations=dynamic,bits=4)"),
    ("quant8 (static, calibrated)", "quant8"),
    ("prune(0.9, dense), cluster(bits=5)", "prune(sparsity=0.9,storage=dense),cluster(bits=5)"),
]

LINEAR = [
    ("mcir int8 (quant8)", "quant8"),
    ("mcir dynamic int8", "quantize(activations=dynamic)"),
    ("mcir W4A8 dynamic (int4)", "quantize(activations=dynamic,bits=4)"),
    ("mcir W4A8 dynamic (int4, group=128)", "quantize(activations=dynamic,bits=4,group=128)"),
    ("mcir int4 weight-only (f32 act)", "quantize(bits=4)"),
    ("mcir codebook 4-bit (f32 act)", "cluster(bits=4)"),
    ("mcir codebook 4-bit, dynamic u8 act", "cluster(bits=4,activations=dynamic)"),
    ("mcir pow2 4-bit (f32 act)", "quantize(scheme=pow2,bits=4)"),
]


def time_all(fns: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """(min CPU seconds per call, median wall seconds per call) of each function, interleaved."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(3):
            fn()
        t = time.perf_counter()
        fn()
        inner[name] = max(1, int(0.02 / max(time.perf_counter() - t, 1e-7)))
    cpu = {n: [] for n in fns}
    wall = {n: [] for n in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = inner[name]
            c, w = time.thread_time(), time.perf_counter()
            for _ in range(n):
                fn()
            cpu[name].append((time.thread_time() - c) / n)
            wall[name].append((time.perf_counter() - w) / n)
    return {n: (min(cpu[n]), statistics.median(wall[n])) for n in fns}


def ort_dynamic(model: torch.nn.Module, x: torch.Tensor, tmp: Path):
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])
    (tmp / "f32.onnx").write_bytes(buf.getvalue())
    quantize_dynamic(str(tmp / "f32.onnx"), str(tmp / "dyn.onnx"), weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(tmp / "dyn.onnx"), opts, providers=["CPUExecutionProvider"])
    return lambda xs: sess.run(None, {"x": xs})


def torch_dynamic(model: torch.nn.Module):
    q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)

    def run(x):
        with torch.no_grad():
            return q(x)

    return run


def digits_table(build: Path) -> str:
    from tests.lowbit.digits import accuracy, digits_graph, digits_split, fp32_param_bytes, trained_mlp

    x = digits_split()[2]
    g = digits_graph()
    fp32_bytes = fp32_param_bytes(trained_mlp())
    rows = ["| pipeline | accuracy | Δ vs fp32 | weight bytes | of fp32 |", "|---|---:|---:|---:|---:|"]
    base = None
    for label, pipe in DIGITS:
        q = mcir.run_passes(g, pipe) if pipe else g
        lib = compile_graph(q, build / f"digits_{len(rows)}")
        acc = accuracy(lib(x)[0])
        base = acc if base is None else base
        rows.append(
            f"| `{label}` | {acc:.2%} | {100 * (acc - base):+.2f} pt | {lib.weight_bytes:,} | "
            f"{lib.weight_bytes / fp32_bytes:.3f} |"
        )
    return "\n".join(rows)


def latency_table(name: str, contenders: list[tuple[str, str]], build: Path, rounds: int) -> str:
    model, x, calib, g = prepare(name, 1)
    xs = x.numpy()
    fns, sizes = {}, {}
    for label, pipe in contenders:
        lib = compile_graph(mcir.run_passes(g, pipe, calibration=calib), build / f"{name}_{len(fns)}")
        fns[label], sizes[label] = (lambda lib=lib: lib(xs)), lib.weight_bytes
    tq = torch_dynamic(model)
    fns["torch quantize_dynamic"] = lambda: tq(x)
    with tempfile.TemporaryDirectory() as tmp:
        run_ort = ort_dynamic(model, x, Path(tmp))
        fns["ORT quantize_dynamic"] = lambda: run_ort(xs)
        res = time_all(fns, rounds)
    ref = res[contenders[0][0]][0]
    rows = [
        f"| {name}, batch 1 | CPU time (min) | wall (median) | vs {contenders[0][0]} | weight bytes |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, (cpu, wall) in res.items():
        size = f"{sizes[label]:,}" if label in sizes else "-"
        rows.append(f"| {label} | {fmt_time(cpu)} | {fmt_time(wall)} | {ref / cpu:.2f}x | {size} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--build", type=Path, default=Path("build/bench_lowbit"))
    ap.add_argument("--only", choices=["digits", "linear", "mlp"], nargs="+", default=["digits", "linear", "mlp"])
    args = ap.parse_args()
    args.build.mkdir(parents=True, exist_ok=True)
    print(machine_description(), flush=True)
    if "digits" in args.only:
        print("\n" + digits_table(args.build), flush=True)
    if "linear" in args.only:
        print("\n" + latency_table("linear4096", LINEAR, args.build, args.rounds), flush=True)
    if "mlp" in args.only:
        mlp = [
            ("mcir dynamic int8", "quantize(activations=dynamic)"),
            ("mcir int8 (quant8)", "quant8"),
            ("mcir W4A8 dynamic (int4)", "quantize(activations=dynamic,bits=4)"),
        ]
        print("\n" + latency_table("mlp", mlp, args.build, args.rounds), flush=True)


if __name__ == "__main__":
    main()
