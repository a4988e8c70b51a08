"""Binary / ternary networks (issue #7): latency of the bit-packed kernels, weight bytes,
and the accuracy of a binarised digits MLP.

    python benchmarks/bench_binary.py                          # Linear 4096 and MLP, batch 1 and 32
    python benchmarks/bench_binary.py --models mlp --batches 1 --markdown
    python benchmarks/bench_binary.py --accuracy-only           # digits accuracy table only

Contenders, all in one process, timed interleaved (timing.py), single thread, the same
input: PyTorch fp32 eager, mcir fp32, mcir int8 (``quantize``, if the int8 kernels exist
in this checkout), mcir binary weights x float activations (``binarize(skip=none)``) and
mcir binary weights x binary activations, XNOR + popcount
(``binarize(activations=binary, skip=none)``; for the lone Linear without the mean
centring, which is a model-level accuracy device). Latencies are medians over rounds;
ratios are medians of the per-round ratios (pairs timed back to back, timing.py).
Ratios > 1 mean faster.

"weights" is the bytes of the layer weights as embedded in the library (packed bits,
their scales, biases); "native err" compares each library with the mcir interpreter
running the same compressed graph (the kernels' contract), not with torch: a binarised
model is an approximation of the float one and its accuracy is measured separately.
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
from models import MODELS, example, prepare  # noqa: E402

import mcir  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402
from mcir.errors import CodegenError  # noqa: E402
from mcir.report import format_table, human_bytes  # noqa: E402

CONTENDERS = {
    "mcir fp32": "",
    "mcir int8": "quantize",
    "bin w, f32 x": "binarize(skip=none)",
    "XNOR": "binarize(activations=binary, skip=none)",
}


def pipeline_for(model: str, name: str) -> str:
    """The pass pipeline of a contender on a model."""
    if model == "linear4096" and name == "XNOR":
        return "binarize(activations=binary, skip=none, center=false)"
    return CONTENDERS[name]


def bench(model_name: str, batch: int, build: Path, rounds: int) -> list[dict]:
    """Time every contender on one model and batch size; one row per contender."""
    model, x, calibration, graph = prepare(model_name, batch)
    xn = x.numpy()
    fns, rows = {}, []
    with torch.inference_mode():
        fns["torch fp32"] = lambda: model(x)
    rows.append({"model": model_name, "batch": batch, "who": "torch fp32", "weights": 4 * _params(model)})
    for who in CONTENDERS:
        pipeline = pipeline_for(model_name, who)
        g = mcir.run_passes(graph, pipeline, calibration=calibration) if pipeline else graph
        t0 = time.perf_counter()
        try:
            lib = compile_graph(g, build / f"{model_name}_b{batch}_{who.replace(' ', '_').replace(',', '')}")
        except CodegenError as e:  # e.g. int8 kernels not merged into this checkout yet
            print(f"  {model_name} b{batch} {who}: skipped ({str(e)[:90]}...)", file=sys.stderr)
            continue
        compile_s = time.perf_counter() - t0
        y = np.empty(lib.outputs[0].shape, lib.outputs[0].dtype)
        fns[who] = lib.bind([xn], [y])
        fns[who]()
        ref = mcir.interpret(g, xn)[0]
        err = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
        rows.append(
            {
                "model": model_name,
                "batch": batch,
                "who": who,
                "pipeline": pipeline,
                "weights": lib.metadata["weight_bytes"],
                "so": lib.file_size,
                "compile_s": compile_s,
                "err": err,
            }
        )
    with torch.inference_mode():
        samples = interleaved(fns, rounds=rounds)
    for r in rows:
        mine = samples[r["who"]]
        r["time"] = median(mine)
        r["vs_torch"] = paired_ratio(samples["torch fp32"], mine)
        r["vs_fp32"] = paired_ratio(samples["mcir fp32"], mine) if "mcir fp32" in samples else float("nan")
    return rows


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def latency_table(rows: list[dict], markdown: bool) -> str:
    """The latency rows as an aligned text or markdown table."""
    head = ["model", "batch", "contender", "latency", "vs torch", "vs mcir fp32", "weights", ".so", "native err"]
    body = [
        [
            r["model"],
            str(r["batch"]),
            r["who"],
            fmt_time(r["time"]),
            f"{r['vs_torch']:.1f}x",
            f"{r['vs_fp32']:.1f}x",
            human_bytes(r["weights"]),
            human_bytes(r["so"]) if "so" in r else "-",
            f"{r['err']:.1e}" if "err" in r else "-",
        ]
        for r in rows
    ]
    return _render(head, body, markdown)


def _render(head: list[str], body: list[list[str]], markdown: bool) -> str:
    if not markdown:
        return format_table(head, body)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(lines)


# -- weight bytes per layer ---------------------------------------------------------------------


def sizes_table(models: list[str], markdown: bool) -> str:
    """Bytes of each binarised weight as embedded in the library (bits, tail words, α) vs f32."""
    import re

    from mcir.codegen.lowering import lower
    from mcir.codegen.target import resolve

    body = []
    for name in models:
        torch.manual_seed(0)
        model = MODELS[name]().eval()
        x = example(name, 1)
        g = mcir.run_passes(mcir.trace(model, (x,), name=name), "binarize(activations=binary, skip=none)")
        text = lower(g, resolve("native"), name).ir_text
        sizes = dict(re.findall(r'^@"w\.([^"]+)" = internal constant \[(\d+) x i8\]', text, flags=re.M))
        for op in g.compute_ops():
            w = op.operands[1] if op.name in ("linear", "conv2d") else None
            if w is None or w.type.encoding is None:
                continue
            packed, fp32 = int(sizes[w.name]), 4 * w.type.numel
            shape = "x".join(str(d) for d in w.type.shape)
            body.append([name, f"{w.name} [{shape}]", human_bytes(fp32), human_bytes(packed), f"1/{fp32 / packed:.1f}"])
    return _render(["model", "binarised weight", "f32 bytes", "in the library", "ratio"], body, markdown)


# -- digits accuracy ---------------------------------------------------------------------------

ACCURACY_PIPELINES = [
    ("binary weights, first/last float, float activations", "binarize"),
    ("binary weights, first/last float, binary activations", "binarize(activations=binary)"),
    ("binary weights, all layers, float activations", "binarize(skip=none)"),
    ("binary weights, all layers, binary activations", "binarize(activations=binary, skip=none)"),
    ("ternary weights, first/last float", "ternarize"),
]


def digits_accuracy(build: Path, markdown: bool) -> str:
    """Test accuracy of the digits MLP in fp32 and binarised, from the compiled libraries."""
    from examples.digits.model import load_data, train

    model, acc_torch = train()
    x_train, _, x_test, y_test = load_data()
    graph = mcir.trace(model, (torch.from_numpy(x_test),), name="digits")
    calibration = [(x_train[i : i + len(x_test)],) for i in range(0, len(x_train) - len(x_test) + 1, len(x_test))]
    body = [["fp32 (torch)", "-", f"{acc_torch:.1%}", "-"]]
    for label, pipeline in ACCURACY_PIPELINES:
        g = mcir.run_passes(graph, pipeline, calibration=calibration)
        lib = compile_graph(g, build / f"digits_{len(body)}")
        (logits,) = lib(x_test)
        acc = float((logits.argmax(1) == y_test).mean())
        acc_interp = float((mcir.interpret(g, x_test)[0].argmax(1) == y_test).mean())
        body.append([label, f"`{pipeline}`", f"{acc:.1%}", f"{acc_interp:.1%}"])
    return _render(["digits MLP 64-256-128-10", "pipeline", "accuracy (native)", "(interpreter)"], body, markdown)


def main() -> None:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["linear4096", "mlp"], choices=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds (median taken)")
    ap.add_argument("--build", type=Path, default=Path("build/bench_binary"))
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    ap.add_argument("--accuracy-only", action="store_true", help="only the digits accuracy table")
    args = ap.parse_args()
    print(machine_description(), flush=True)
    if not args.accuracy_only:
        rows = []
        for name in args.models:
            for batch in args.batches:
                rows += bench(name, batch, args.build, args.rounds)
                print(f"  {name} batch {batch}: done", file=sys.stderr, flush=True)
        print(latency_table(rows, args.markdown))
        print()
        print(sizes_table(args.models, args.markdown))
        print()
    print(digits_accuracy(args.build, args.markdown))


if __name__ == "__main__":
    main()
