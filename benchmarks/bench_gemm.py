"""fp32 GEMM efficiency, one core: mcir vs PyTorch vs ONNX Runtime on large products (issue #16).

    python benchmarks/bench_gemm.py                    # every shape below, markdown table
    python benchmarks/bench_gemm.py --shapes 512x2048x2048 1024x1024x1024 --rounds 9
    python benchmarks/bench_gemm.py --no-2048          # skip the 17 GFLOP 2048^3 product
    python benchmarks/bench_gemm.py --baseline /work/main   # also time another checkout's mcir, interleaved

Shapes are ``MxNxK``: ``C[M,N] = A[M,K] @ B[K,N]``. A plain shape is a Linear layer (``linear`` with a
constant ``[N,K]`` weight, as a traced ``nn.Linear``): mcir compiles that op alone, torch runs
``F.linear``, ONNX Runtime a ``Gemm(transB=1)`` with the weight as an initializer (what a Linear
exports to). A shape ``BxMxNxK`` is a batched ``matmul`` of two activations (``[B,M,K] @ [B,K,N]``,
attention's ``Q K^T`` or ``P V``): ``torch.matmul`` and an ONNX ``MatMul`` of two inputs.

Contenders run interleaved in one process (``timing.interleaved``), all on the calling thread:
mcir's library has no hook installed (single-threaded), ``torch.set_num_threads(1)``, ORT with
``intra_op_num_threads=1`` and ``allow_spinning=0``. Times are the **CPU time of the calling
thread** (``time.thread_time``), which a loaded machine inflates far less than wall time; the table
gives the best and the median sample of the rounds. GFLOP/s counts ``2 M N K`` (x B) flops;
"% peak" divides by the fp32 FMA rate ``fma_peak.py`` measures on this core in the same run (turbo
clock, 24 independent 16-lane FMA chains): the honest denominator. ``--baseline REPO`` compiles the
same graphs with the mcir of another checkout (in a subprocess) and times that library as a fourth
contender, ``mcir base``: before/after in one run, which a shared machine's load cannot skew.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fma_peak
from timing import interleaved, machine_description, median, single_thread

single_thread()

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import mcir  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402
from mcir.ir import Graph  # noqa: E402
from mcir.runtime import load  # noqa: E402
from mcir.types import tensor  # noqa: E402

SHAPES = [
    "32x4096x4096",
    "256x1024x1024",
    "128x3072x768",
    "512x2048x2048",
    "1024x1024x1024",
    "2048x2048x2048",
    "48x128x128x64",  # attention scores Q K^T: batch x heads = 48, 128 tokens, head size 64
    "48x128x64x128",  # attention output P V
]
CONTENDERS = ["mcir", "torch", "ORT"]


def parse(shape: str) -> tuple[int, int, int, int]:
    """``(batch, M, N, K)``; batch 0 marks a Linear layer (constant weight)."""
    dims = [int(d) for d in shape.split("x")]
    if len(dims) == 3:
        return (0, *dims)
    if len(dims) == 4:
        return tuple(dims)  # type: ignore[return-value]
    raise SystemExit(f"shape {shape!r}: expected MxNxK (a Linear) or BxMxNxK (a batched matmul)")


def ort_session(model: onnx.ModelProto, path: Path) -> ort.InferenceSession:
    onnx.save(model, str(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no worker may spin on the other core
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compile_with(repo: Path, g: Graph, path: Path):
    """``g`` compiled by the mcir of checkout ``repo`` (a subprocess with it first on the path), loaded here."""
    text = path.parent / f"{path.name}_model"
    mcir.save(g, text)
    code = f"import mcir; from mcir.codegen import compile; compile(mcir.load({str(text)!r}), {str(path)!r})"
    env = {**os.environ, "PYTHONPATH": str(repo)}
    subprocess.run([sys.executable, "-c", code], env=env, cwd=str(repo), check=True)
    return load(path.with_suffix(".so"))


def contenders(shape: str, build: Path, tmp: Path, baseline: Path | None) -> tuple[dict, int, float]:
    """The three callables of one shape, its flop count and the max relative disagreement of the results."""
    batch, m, n, k = parse(shape)
    rng = np.random.default_rng(0)
    g = Graph(f"gemm_{shape}")
    if batch == 0:
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = (rng.standard_normal((n, k), dtype=np.float32) * k**-0.5).astype(np.float32)
        g.set_outputs([g.add("linear", [g.add_input("x", tensor([m, k])), g.const("w", w)])])
        inputs = [x]
        xt, wt = torch.from_numpy(x.copy()), torch.from_numpy(w.copy())

        def torch_fn():
            return torch.nn.functional.linear(xt, wt)

        node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
        graph = helper.make_graph(
            [node],
            "gemm",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
            [numpy_helper.from_array(w, "w")],
        )
        feeds = {"x": x}
        flops = 2 * m * n * k
    else:
        a = rng.standard_normal((batch, m, k), dtype=np.float32)
        b = (rng.standard_normal((batch, k, n), dtype=np.float32) * k**-0.5).astype(np.float32)
        ins = [g.add_input("a", tensor([batch, m, k])), g.add_input("b", tensor([batch, k, n]))]
        g.set_outputs([g.add("matmul", ins)])
        inputs = [a, b]
        at, bt = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())

        def torch_fn():
            return torch.matmul(at, bt)

        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        graph = helper.make_graph(
            [node],
            "matmul",
            [
                helper.make_tensor_value_info("a", TensorProto.FLOAT, [batch, m, k]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, [batch, k, n]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, m, n])],
        )
        feeds = {"a": a, "b": b}
        flops = 2 * batch * m * n * k
    lib = compile_graph(g, build / f"gemm_{shape}")
    out = np.empty(lib.outputs[0].shape, np.float32)
    run = lib.bind(inputs, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort_session(model, tmp / f"{shape}.onnx")
    run()
    with torch.inference_mode():
        ref = torch_fn().numpy()
    got_ort = sess.run(None, feeds)[0]
    scale = float(np.abs(ref).max())
    err = max(float(np.abs(out - ref).max()), float(np.abs(got_ort - ref).max())) / scale
    fns = {"mcir": run, "torch": torch_fn, "ORT": lambda: sess.run(None, feeds)}
    if baseline is not None:
        base_out = np.empty_like(out)
        fns["mcir base"] = compile_with(baseline, g, build / f"base_{shape}").bind(inputs, [base_out])
        fns["mcir base"]()
        err = max(err, float(np.abs(base_out - ref).max()) / scale)
    return fns, flops, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="MxNxK (Linear) or BxMxNxK (batched matmul)")
    ap.add_argument("--no-2048", action="store_true", help="skip 2048x2048x2048 (about 0.1 s per call)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (best and median reported)")
    ap.add_argument("--build", type=Path, default=Path("build/bench_gemm"))
    ap.add_argument("--baseline", type=Path, help="another mcir checkout to time as 'mcir base'")
    args = ap.parse_args()
    args.build = args.build.resolve()  # the baseline's compile runs in its own checkout's directory
    if args.baseline:
        CONTENDERS.append("mcir base")
    shapes = [s for s in args.shapes if not (args.no_2048 and s == "2048x2048x2048")]
    args.build.mkdir(parents=True, exist_ok=True)
    print(machine_description())
    with open("/proc/loadavg") as f:
        print(f"load average before: {' '.join(f.read().split()[:3])}")
    peak = fma_peak.measure() * 1e9
    print(f"measured fp32 FMA peak of one core: {peak / 1e9:.1f} GFLOP/s (fma_peak.py, CPU time, best of 20)")
    print("times: CPU time of the calling thread, 1 thread each, interleaved rounds; best / median\n")
    head = " | ".join(f"{c} GFLOP/s best / med | {c} % peak best / med" for c in CONTENDERS)
    print(f"| shape (M x N x K) | kind | {head} | max rel. diff |")
    print("|" + "---|" * (3 + 2 * len(CONTENDERS)))
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for shape in shapes:
            fns, flops, err = contenders(shape, args.build, Path(tmp), args.baseline)
            samples = interleaved(fns, rounds=args.rounds, target_s=0.1, clock=time.thread_time)
            cells = []
            for c in CONTENDERS:
                best, med = flops / min(samples[c]) / 1e9, flops / median(samples[c]) / 1e9
                cells.append(f"{best:.0f} / {med:.0f} | {100 * best * 1e9 / peak:.0f} / {100 * med * 1e9 / peak:.0f} %")
            kind = "matmul" if parse(shape)[0] else "Linear"
            print(f"| {shape} | {kind} | " + " | ".join(cells) + f" | {err:.1e} |", flush=True)
    with open("/proc/loadavg") as f:
        print(f"\nload average after: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
