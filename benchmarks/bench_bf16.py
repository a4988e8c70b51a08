"""bf16 compute (the ``bf16`` pass) against fp32 and torch's bf16 autocast, 1 thread (issue #16, branch bf16).

    python benchmarks/bench_bf16.py                                   # the default rows below
    python benchmarks/bench_bf16.py --rows linear4096:1 mlp:32 --rounds 9

Rows (model:batch): Linear-4096 at batch 1 and 32, the MLP 784-1024-1024-10 and the 4-layer
encoder at batch 32 (benchmarks/models.py). Contenders, interleaved in one process (timing.py):

* ``mcir fp32``: the traced model compiled for ``native``;
* ``mcir bf16``: ``bf16`` of it (linear layers on bf16 inputs and weights, f32 sums); on a CPU
  with AMX-BF16 batches of 16 rows or more use ``tdpbf16ps`` tiles, else ``vdpbf16ps``;
* ``mcir bf16 noamx``: the same graph compiled with ``-amx-bf16`` (the AVX-512 BF16 path), on
  CPUs with AMX only;
* ``torch fp32`` and ``torch bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` (oneDNN's
  bf16 kernels; activations between layers are bf16 there, mcir keeps them f32);
* ``ORT fp32``.

``--cpu-time`` times the calling thread's CPU time instead of wall time (every contender runs on
it at 1 thread), which other processes on a shared machine inflate far less.

Error columns: max |y - y_fp32| / max |y_fp32| and SQNR in dB against torch fp32 on the same input.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import fmt_time, interleaved, machine_description, median, paired_ratio, single_thread

single_thread()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from models import MODELS, example  # noqa: E402

import mcir  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402

warnings.filterwarnings("ignore")

DEFAULT_ROWS = ("linear4096:1", "linear4096:32", "mlp:32", "encoder:32")


def errors(y: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max |y - ref| / max |ref|, SQNR in dB)."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    noise = float(np.sum((y - ref) ** 2))
    sqnr = float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref**2)) / noise)
    return float(np.abs(y - ref).max() / np.abs(ref).max()), sqnr


def as_array(result, out: np.ndarray | None) -> np.ndarray:
    """What a contender returned, as a float32 array (a bound mcir call writes into ``out``)."""
    if out is not None:
        return out.copy()
    if isinstance(result, list):  # ORT
        return result[0]
    return result.float().numpy()


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bench(name: str, batch: int, rounds: int, tmp: Path, amx: bool, cpu_time: bool) -> list[dict]:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = example(name, batch)
    xn = x.numpy()
    graph = mcir.trace(model, (x,), tracer="export", name=name)
    bf = mcir.run_passes(graph, "bf16")
    libs = {
        "mcir fp32": compile_graph(graph, tmp / f"{name}_fp32_b{batch}"),
        "mcir bf16": compile_graph(bf, tmp / f"{name}_bf16_b{batch}"),
    }
    if amx:
        libs["mcir bf16 noamx"] = compile_graph(bf, tmp / f"{name}_bf16n_b{batch}", features="-amx-bf16")
    outs = {k: np.empty(lib.outputs[0].shape, lib.outputs[0].dtype) for k, lib in libs.items()}
    fns = {k: lib.bind([xn], [outs[k]]) for k, lib in libs.items()}

    def autocast():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])
    onnx_path = tmp / f"{name}_b{batch}.onnx"
    onnx_path.write_bytes(buf.getvalue())
    s32 = session(onnx_path)
    fns.update({"torch fp32": lambda: model(x), "torch bf16": autocast, "ORT fp32": lambda: s32.run(None, {"x": xn})})
    with torch.inference_mode():
        ref = model(x).numpy()
        results = {k: as_array(fn(), outs.get(k)) for k, fn in fns.items()}
        # every contender runs on the calling thread (1 thread): its CPU time is what a loaded machine inflates least
        clock = time.thread_time if cpu_time else time.perf_counter
        samples = interleaved(fns, rounds=rounds, target_s=0.05, clock=clock)
    rows = []
    for k, s in samples.items():
        rel, sqnr = errors(results[k], ref)
        rows.append(
            {
                "row": f"{name} b{batch}",
                "who": k,
                "time": median(s),
                "vs_bf16": paired_ratio(s, samples["mcir bf16"]),
                "rel": rel,
                "sqnr": sqnr,
                "wbytes": libs[k].weight_bytes if k in libs else None,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="model:batch, e.g. linear4096:32")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cpu-time", action="store_true", help="time the calling thread's CPU time, not wall time")
    args = ap.parse_args()
    flags = Path("/proc/cpuinfo").read_text()
    amx = "amx_bf16" in flags
    print(machine_description())
    print(f"bf16 features: avx512_bf16={'avx512_bf16' in flags} amx_bf16={amx}; load average {os.getloadavg()}")
    clock = "CPU time of the calling thread" if args.cpu_time else "wall time"
    print(f"1 thread, {clock}; median over interleaved rounds; 'x mcir bf16' = median per-round time / mcir bf16's")
    print()
    head = (
        f"{'row':<16} {'contender':<16} {'time':>10} {'x mcir bf16':>12} {'max rel err':>12} {'SQNR dB':>8} "
        f"{'weights':>10}"
    )
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as d:
        for spec in args.rows:
            name, batch = spec.split(":")
            for r in bench(name, int(batch), args.rounds, Path(d), amx, args.cpu_time):
                wb = f"{r['wbytes'] / 2**20:.2f} MiB" if r["wbytes"] is not None else ""
                print(
                    f"{r['row']:<16} {r['who']:<16} {fmt_time(r['time']):>10} {r['vs_bf16']:>11.2f}x "
                    f"{r['rel']:>12.2e} {r['sqnr']:>8.1f} {wb:>10}"
                )
            sys.stdout.flush()
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
