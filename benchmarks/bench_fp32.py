"""fp32 latency of mcir-compiled libraries vs PyTorch eager and ONNX Runtime (issue #4).

    python benchmarks/bench_fp32.py                 # all models, batch 1 and 32
    python benchmarks/bench_fp32.py --models mlp cnn --batches 1 --markdown

Graphs come from ``mcir.trace`` (torch.export). Single thread everywhere
(torch.set_num_threads(1), ORT intra/inter-op threads 1); the three contenders run
interleaved in the same process and each figure is a median (see timing.py). Ratios (medians of
per-round ratios) > 1 mean mcir is faster. mcir's outputs are checked against torch.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import fmt_time, interleaved, median, paired_ratio, single_thread, suite_main

single_thread()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from models import MODELS, example  # noqa: E402

import mcir  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402


def ort_session(model: torch.nn.Module, x: torch.Tensor) -> ort.InferenceSession:
    buf = io.BytesIO()
    # the TorchScript exporter: the dynamo one needs onnxscript, which is not a dependency
    torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def bench(name: str, batch: int, build: Path, rounds: int) -> dict:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = example(name, batch)
    graph = mcir.trace(model, (x,), tracer="export", name=name)
    t0 = time.perf_counter()
    lib = compile_graph(graph, build / f"{name}_b{batch}")
    compile_s = time.perf_counter() - t0
    xn = x.numpy()
    y = np.empty(lib.outputs[0].shape, lib.outputs[0].dtype)
    run_mcir = lib.bind([xn], [y])
    sess = ort_session(model, x)
    feed = {"x": xn}
    with torch.inference_mode():
        ref = model(x).numpy()
        run_mcir()
        err = float(np.abs(y - ref).max() / np.abs(ref).max())
        samples = interleaved(
            {"mcir": run_mcir, "torch": lambda: model(x), "ort": lambda: sess.run(None, feed)}, rounds=rounds
        )
    times = {k: median(v) for k, v in samples.items()}
    times["vs_torch"] = paired_ratio(samples["torch"], samples["mcir"])
    times["vs_ort"] = paired_ratio(samples["ort"], samples["mcir"])
    return {"model": name, "batch": batch, **times, "compile_s": compile_s, "err": err, "lib_bytes": lib.file_size}


def table(rows: list[dict], markdown: bool) -> str:
    head = ["model", "batch", "mcir", "torch eager", "ORT", "vs torch", "vs ORT", "compile", "max rel err"]
    body = [
        [
            r["model"],
            str(r["batch"]),
            fmt_time(r["mcir"]),
            fmt_time(r["torch"]),
            fmt_time(r["ort"]),
            f"{r['vs_torch']:.2f}x",
            f"{r['vs_ort']:.2f}x",
            f"{r['compile_s']:.1f} s",
            f"{r['err']:.1e}",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    if markdown:
        lines = [
            "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |" for b in body]
    else:
        lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def main() -> None:
    suite_main(__doc__, bench, table, list(MODELS))


if __name__ == "__main__":
    main()
