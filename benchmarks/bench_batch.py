"""Batched GEMM performance: mcir vs PyTorch vs ONNX Runtime at batch 8 and 32, with 1 and 2 threads (issue #16).

    python benchmarks/bench_batch.py                         # linear4096 and mlp, batch 32, 1 and 2 threads
    python benchmarks/bench_batch.py --models linear4096 encoder --batch 8 32 --threads 1 2 --rounds 5

Contenders, interleaved in one process (see timing.py), each given the same thread count:

* ``mcir fp32`` / ``mcir int8``: the traced model, and ``quant8`` of it (calibrated), compiled for
  ``native``; threads through ``Library.set_threads`` (mcir's pthreads pool behind
  ``mcir_NAME_set_parallel``). On a CPU with AMX the int8 GEMMs use tiles (``gemm_amx.py``);
* ``torch fp32`` (``torch.set_num_threads``) and ``torch dyn`` (``quantize_dynamic``, int8 Linear;
  for the encoder only ``linear1``/``linear2`` are quantised, as torch leaves the attention's
  projections float, and the layers run with torch's MHA fast path off: its eligibility check
  reads ``.weight.device``, which a dynamically quantised Linear does not have);
* ``ORT fp32`` and ``ORT static`` (QDQ u8/s8 per channel, calibrated), ``intra_op_num_threads``.

Efficiency is achieved ops / peak ops, with peak = threads x clock x ops per cycle per core;
the clock is the ``cpu MHz`` of /proc/cpuinfo (the nominal clock here; turbo may run higher, so
percentages can overstate), ops per cycle: fp32 2 FMA ports x 16 lanes x 2 flops = 64; int8
VNNI 2 ports x 64 MACs x 2 = 256; AMX-INT8 1024 MACs x 2 = 2048 (one 16x16x64 ``tdpbusd``
per 16 cycles, Intel's published figure). A model's ops are 2 x its multiply-adds in Linear
and Conv2d layers and in attention (projections, scores and the weighted sum), counted from
the shapes one forward pass sees (activations, norms, pooling and biases not counted). "% measured
peak" divides by the fp32 FMA rate ``fma_peak.py`` measures on this core (turbo clock): the honest
fp32 figure.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fma_peak
from timing import fmt_time, interleaved, machine_description, median, paired_ratio, single_thread

single_thread()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from models import MODELS, example  # noqa: E402
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: E402

import mcir  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402

warnings.filterwarnings("ignore")


def clock_ghz() -> float:
    """The clock /proc/cpuinfo reports (``cpu MHz`` of the first core)."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    raise RuntimeError("no 'cpu MHz' in /proc/cpuinfo")


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":")[1].split())
    return set()


OPS_PER_CYCLE = {"fp32": 64, "vnni": 256, "amx": 2048}


def model_ops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """2 x the multiply-adds of the Linear, Conv2d and attention layers on input ``x`` (forward hooks)."""
    macs = [0]

    def linear(m, inp, out):
        macs[0] += out.numel() * m.in_features

    def conv(m, inp, out):
        macs[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def attention(m, inp, out):
        # batch_first (B, L, E): in-projection 3 E^2, out-projection E^2 per token (MHA applies both with
        # F.linear, so the Linear hooks do not see them), scores and weighted sum L x S x E per batch
        q, k = inp[0], inp[1]
        bsz, L, e = q.shape
        macs[0] += bsz * L * 4 * e * e + 2 * bsz * L * k.shape[1] * e

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            hooks.append(m.register_forward_hook(attention))
        elif isinstance(m, torch.nn.Linear) and not isinstance(
            m, torch.nn.modules.linear.NonDynamicallyQuantizableLinear
        ):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return 2 * macs[0]


def without_mha_fastpath(fn):
    """``fn`` with torch's MHA fast path off (a dynamically quantised encoder cannot take it)."""

    def run():
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return fn()
        finally:
            torch.backends.mha.set_fastpath_enabled(True)

    return run


class _Reader(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]) -> None:
        self.it = iter([{"x": b} for b in batches])

    def get_next(self):
        return next(self.it, None)


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's idle workers spin after a run and take the second core from whichever contender the
    # interleaved timing runs next (measured: mcir fp32 Linear-4096 b32 on 2 threads 9.6-10.1 ms
    # right after a spinning ORT session, 4.9 ms after a non-spinning one); ORT's own time is the
    # same either way (6.09 vs 5.93 ms), so its workers sleep between runs here
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bench(
    name: str, batch: int, thread_counts: list[int], build: Path, rounds: int, tmp: Path, cpu_time: bool = False
) -> list[dict]:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = example(name, batch)
    calib = [example(name, batch) for _ in range(2)]
    xn = x.numpy()
    graph = mcir.trace(model, (x,), tracer="export", name=name)
    q = mcir.run_passes(graph, "quant8", calibration=[(c.numpy(),) for c in calib])
    lib8 = compile_graph(q, build / f"{name}_int8_b{batch}")
    lib32 = compile_graph(graph, build / f"{name}_fp32_b{batch}")
    y8 = np.empty(lib8.outputs[0].shape, lib8.outputs[0].dtype)
    y32 = np.empty(lib32.outputs[0].shape, lib32.outputs[0].dtype)
    run8, run32 = lib8.bind([xn], [y8]), lib32.bind([xn], [y32])
    dyn = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])
    f32 = tmp / f"{name}.onnx"
    f32.write_bytes(buf.getvalue())
    static = tmp / f"{name}_static.onnx"
    quantize_static(
        str(f32),
        str(static),
        _Reader([c.numpy() for c in calib]),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    ops = model_ops(model, x)
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        lib8.set_threads(threads)
        lib32.set_threads(threads)
        s32, s8 = session(f32, threads), session(static, threads)
        fns = {
            "mcir fp32": run32,
            "torch fp32": lambda: model(x),
            "ORT fp32": lambda s=s32: s.run(None, {"x": xn}),
            "mcir int8": run8,
            "torch dyn": without_mha_fastpath(lambda: dyn(x)),
            "ORT static": lambda s=s8: s.run(None, {"x": xn}),
        }
        with torch.inference_mode():
            # CPU time of the calling thread only where every contender runs on it (1 thread)
            clock = time.thread_time if cpu_time and threads == 1 else time.perf_counter
            samples = interleaved(fns, rounds=rounds, target_s=0.05, clock=clock)
        rows.append(
            {
                "model": name,
                "batch": batch,
                "threads": threads,
                "ops": ops,
                "times": {k: median(v) for k, v in samples.items()},
                "fp32 vs ORT": paired_ratio(samples["ORT fp32"], samples["mcir fp32"]),
                "int8 vs best": paired_ratio(
                    [min(a, b) for a, b in zip(samples["torch dyn"], samples["ORT static"])], samples["mcir int8"]
                ),
            }
        )
    lib8.set_threads(1)
    lib32.set_threads(1)
    torch.set_num_threads(1)
    return rows


def table(rows: list[dict], ghz: float, int8_path: str, fp32_peak: float) -> str:
    """Markdown rows; ``fp32_peak`` is the measured FMA peak of one core in flop/s (fma_peak.py)."""
    cols = ["mcir fp32", "torch fp32", "ORT fp32", "mcir int8", "torch dyn", "ORT static"]
    out = [
        "| model | batch | threads | " + " | ".join(cols) + " | fp32 mcir/ORT | int8 mcir/best peer "
        f"| mcir fp32 % peak | mcir fp32 % measured peak | mcir int8 % {int8_path} peak |",
        "|" + "---|" * (len(cols) + 8),
    ]
    for r in rows:
        t = r["times"]
        peak32 = r["threads"] * ghz * 1e9 * OPS_PER_CYCLE["fp32"]
        peak8 = r["threads"] * ghz * 1e9 * OPS_PER_CYCLE[int8_path]
        eff32 = 100 * r["ops"] / t["mcir fp32"] / peak32
        eff8 = 100 * r["ops"] / t["mcir int8"] / peak8
        eff32m = 100 * r["ops"] / t["mcir fp32"] / (r["threads"] * fp32_peak)
        out.append(
            f"| {r['model']} | {r['batch']} | {r['threads']} | "
            + " | ".join(fmt_time(t[c]) for c in cols)
            + f" | {r['fp32 vs ORT']:.2f}x | {r['int8 vs best']:.2f}x | {eff32:.0f} % | {eff32m:.0f} % | {eff8:.0f} % |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["linear4096", "mlp"], choices=sorted(MODELS))
    ap.add_argument("--batch", nargs="+", type=int, default=[32])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--build", default="build/bench")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time 1-thread rows by the calling thread's CPU time (steadier on a loaded machine)",
    )
    args = ap.parse_args()
    build = Path(args.build)
    build.mkdir(parents=True, exist_ok=True)
    ghz = clock_ghz()
    int8_path = "amx" if "amx_int8" in cpu_flags() else "vnni"
    print(machine_description())
    with open("/proc/loadavg") as f:
        print(f"load average before: {f.read().split()[:3]}; clock {ghz:.2f} GHz; int8 peak path: {int8_path}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for batch in args.batch:
                rows += bench(name, batch, args.threads, build, args.rounds, Path(tmp), args.cpu_time)
    fp32_peak = fma_peak.measure() * 1e9
    print(f"measured fp32 FMA peak of one core: {fp32_peak / 1e9:.1f} GFLOP/s (fma_peak.py; turbo clock)")
    print(table(rows, ghz, int8_path, fp32_peak))
    with open("/proc/loadavg") as f:
        print(f"load average after: {f.read().split()[:3]}")


if __name__ == "__main__":
    main()
