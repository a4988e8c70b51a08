"""``mcir compile`` and ``mcir bench``: compile with a report that proves the compression.

The compile report puts measured numbers next to each other:

* the per-pass table (ops, parameters, weight bytes, MACs, max |Δ| and SQNR against the
  input model on sample inputs);
* the library: files, sizes, weight bytes actually embedded, workspace, compile time;
* correctness: native outputs against the reference interpreter of the compiled graph and
  against the uncompressed model;
* speed: median latency of the compressed library, of the uncompressed one (compiled too,
  unless ``--no-compare``) and of the torch model it came from, in the same run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from mcir.errors import McirError
from mcir.ir import Graph
from mcir.report import format_table, human_bytes, human_seconds


def sample_inputs(graph: Graph, count: int = 4, seed: int = 1) -> list[tuple[np.ndarray, ...]]:
    """Random inputs for a graph (standard normal floats, in-range embedding indices)."""
    from mcir.sample_inputs import random_batches

    return random_batches(graph, count, seed=seed)


def time_call(fn: Callable[[], Any], runs: int = 200, warmup: int = 20, budget: float = 2.0) -> np.ndarray:
    """Seconds per call over ``runs`` calls after ``warmup`` (fewer if ``budget`` seconds run out)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget and len(times) >= 10:
            break
    return np.array(times)


def _latency(times: np.ndarray) -> str:
    p10, p50, p90 = np.percentile(times, [10, 50, 90])
    return f"{human_seconds(p50)} (p10 {human_seconds(p10)}, p90 {human_seconds(p90)}, {len(times)} runs)"


def _max_err(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return max(
        float(np.max(np.abs(np.asarray(r, np.float64) - np.asarray(g, np.float64)))) if np.size(r) else 0.0
        for r, g in zip(ref, got)
    )


def compile_report(
    graph: Graph,
    path: str | Path,
    *,
    target: str = "native",
    triple: str | None = None,
    cpu: str | None = None,
    features: str | None = None,
    name: str | None = None,
    samples: list[tuple[np.ndarray, ...]] | None = None,
    original: Graph | None = None,
    torch_model: Any = None,
    compare: bool = True,
    runs: int = 200,
    profile: bool = False,
) -> tuple[Any, str]:
    """Compile ``graph`` to ``path`` and measure it; returns (library or artifacts, report text).

    ``original`` is the uncompressed graph (compiled too when ``compare``, for its size and
    speed); ``torch_model`` is timed on the same inputs when given. ``cpu`` and ``features``
    refine the target (``mcir.codegen.target.resolve``); ``profile`` compiles the kernel-call cycle
    counters in (``mcir.codegen.compile``).
    """
    from mcir.codegen import compile as native_compile
    from mcir.interp import interpret
    from mcir.runtime import Library

    samples = samples or sample_inputs(graph)
    t0 = time.perf_counter()
    lib = native_compile(
        graph,
        path,
        target=target,
        name=name,
        triple=triple,
        cpu=cpu,
        features=features,
        pipeline=graph.meta.get("pipeline", ""),
        profile=profile,
    )
    seconds = time.perf_counter() - t0
    rows: list[list[str]] = []
    stem = Path(path)
    if not isinstance(lib, Library):
        rows.append(["files", f"{lib.object_path} ({human_bytes(lib.object_path.stat().st_size)}), {lib.header_path}"])
        rows.append(["weights", human_bytes(lib.weight_bytes)])
        rows.append(["workspace", human_bytes(lib.workspace_size)])
        rows.append(["compile time", human_seconds(seconds)])
        rows.append(["note", "cross-compiled: not run here"])
        return lib, _render(rows)

    rows.append(["library", f"{lib.path} ({human_bytes(lib.file_size)}), {stem}.o, {stem}.h"])
    rows.append(["target", f"{lib.metadata.get('target', target)}"])
    rows.append(["weights", _weights_line(lib, original, path, target, compare, graph)])
    rows.append(["workspace", human_bytes(lib.workspace_size)])
    rows.append(["compile time", human_seconds(seconds)])
    outs = [lib(*x) for x in samples]
    want = [interpret(graph, *x) for x in samples]
    rows.append(
        [
            "native vs interpreter",
            f"max |Δ| {max(_max_err(w, o) for w, o in zip(want, outs)):.3g} over {len(samples)} sample input(s)",
        ]
    )
    if original is not None and original is not graph:
        from mcir.metrics import compare_outputs

        ref = [interpret(original, *x) for x in samples]
        errs = [
            compare_outputs([np.asarray(r, np.float64) for r in rr], [np.asarray(o, np.float64) for o in oo])
            for rr, oo in zip(ref, outs)
        ]
        rows.append(
            ["native vs original", f"max |Δ| {max(e for e, _ in errs):.3g}, SQNR {min(s for _, s in errs):.1f} dB"]
        )
    x0 = samples[0]
    buffers = [np.empty(d.shape, d.dtype) for d in lib.outputs]
    rows.append(["latency", _latency(time_call(lib.bind(list(x0), buffers), runs))])
    if compare and original is not None and original is not graph:
        base = _compile_uncompressed(original, path, target, cpu, features)
        if base is not None:
            t = time_call(base.bind(list(x0), [np.empty(d.shape, d.dtype) for d in base.outputs]), runs)
            rows.append(["uncompressed latency", _latency(t)])
    if torch_model is not None:
        rows.append(["torch eager latency", _latency(_time_torch(torch_model, x0, runs))])
    return lib, _render(rows)


def _weights_line(
    lib: Any, original: Graph | None, path: str | Path, target: str, compare: bool, graph: Graph | None = None
) -> str:
    from mcir.stats import GraphStats

    text = f"{human_bytes(lib.weight_bytes)} embedded"
    stated = GraphStats.of(graph, target).weight_bytes if graph is not None else lib.weight_bytes
    if stated != lib.weight_bytes:  # mcir.stats promises equality: say so if it ever breaks
        text += f" (the pipeline report stated {stated} B, the library embeds {lib.weight_bytes} B: a bug)"
    if original is not None:
        fp = GraphStats.of(original, target).weight_bytes
        if fp:
            text += f" ({lib.weight_bytes / fp:.1%} of the uncompressed {human_bytes(fp)})"
    return text


_UNCOMPRESSED: dict[int, Any] = {}


def _compile_uncompressed(original: Graph, path: str | Path, target: str, cpu: str | None, features: str | None) -> Any:
    from mcir.codegen import compile as native_compile
    from mcir.errors import CodegenError

    key = id(original)
    if key not in _UNCOMPRESSED:
        stem = Path(path)
        try:
            _UNCOMPRESSED[key] = native_compile(
                original, stem.with_name(stem.name + ".uncompressed"), target=target, cpu=cpu, features=features
            )
        except CodegenError:
            _UNCOMPRESSED[key] = None
    return _UNCOMPRESSED[key]


def _time_torch(model: Any, inputs: tuple[np.ndarray, ...], runs: int) -> np.ndarray:
    import torch

    xs = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs)
    with torch.inference_mode():
        return time_call(lambda: model(*xs), runs)


def _render(rows: list[list[str]]) -> str:
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# -- the CLI commands ------------------------------------------------------------------------


def compile_model(
    graph: Graph,
    output: str | Path,
    *,
    passes: str = "",
    calibration: list[tuple[np.ndarray, ...]] | None = None,
    verify_each: bool = True,
    print_ir_after_all: bool = False,
    print_ir_after: Sequence[str] = (),
    target: str = "native",
    triple: str | None = None,
    cpu: str | None = None,
    features: str | None = None,
    name: str | None = None,
    compare: bool = True,
    torch_model: Any = None,
    data: Any = None,
    eval: Any = None,
    out: TextIO | None = None,
    profile: bool = False,
) -> Any:
    """``mcir compile``: run ``passes`` on ``graph``, compile to ``output`` (a stem: ``build/mlp``), print
    the pipeline table and the compile report to ``out`` (default stdout); returns the library (or the
    artifacts of a cross compile).

    ``calibration`` batches (tuples of arrays, one per graph input) feed the quantisation passes and,
    the first four, the report's sample inputs; pass-manager options (``verify_each``,
    ``print_ir_after_all``, ``print_ir_after``) are those of ``mcir.run_passes`` (IR goes to stderr).
    ``target``/``triple``/``cpu``/``features`` select the machine (``mcir.codegen.target.resolve``).
    ``data``/``eval`` (anything ``mcir.train.data`` accepts) feed the training passes and the per-pass
    accuracy column; with ``eval`` the compiled library's own accuracy is printed too. ``profile``
    compiles the per-kernel cycle counters in (``mcir bench --per-op``).
    """
    import mcir

    out = out or sys.stdout
    samples = (calibration or [])[:4] or sample_inputs(graph)
    compressed = graph
    if passes:
        context: dict[str, Any] = {"calibration": calibration} if calibration else {}
        context.update({k: v for k, v in (("data", data), ("eval", eval)) if v is not None})
        compressed = mcir.run_passes(
            graph,
            passes,
            verify_each=verify_each,
            print_ir_after_all=print_ir_after_all,
            print_ir_after=list(print_ir_after),
            sample_inputs=samples,
            out=sys.stderr,
            progress=False,
            **context,
        )
    report = compressed.meta.get("report")
    if report is not None:
        print(report.table(), file=out)
        print(file=out)
    for prune in compressed.meta.get("prune", []):
        print(f"{prune.table()}\n", file=out)
    print(f"compiling {output} ...", file=sys.stderr, flush=True)
    lib, text = compile_report(
        compressed,
        output,
        target=target,
        triple=triple,
        cpu=cpu,
        features=features,
        name=name,
        samples=samples,
        original=graph,
        torch_model=torch_model,
        compare=compare,
        profile=profile,
    )
    print(text, file=out)
    if eval is not None and hasattr(lib, "inputs"):  # a cross compile cannot run here
        from mcir.train.run import native_accuracy

        print(f"native accuracy on the evaluation data: {100 * native_accuracy(lib, eval):.2f}%", file=out)
    return lib


def bench_library(
    path: str | Path, runs: int = 200, warmup: int = 20, out: TextIO | None = None, per_op: bool = False
) -> np.ndarray:
    """``mcir bench``: print the median latency of the library at ``path`` on random inputs; returns the times.

    ``per_op`` (a library compiled with ``profile=True``): then ``runs`` more runs with the kernels'
    cycle counters zeroed first, and a table of every kernel call: its share of the runs' cycles and
    that share of the median latency."""
    from mcir.runtime import Library

    lib = Library(path)
    rng = np.random.default_rng(0)
    ins = []
    for d in lib.inputs:
        if d.dtype.kind == "f":
            ins.append(rng.standard_normal(d.shape).astype(d.dtype))
        elif d.dtype.kind in "iu":
            ins.append(np.zeros(d.shape, d.dtype))
        else:
            raise McirError(f"bench: input '{d.name}' has dtype {d.dtype}, which random inputs cannot fill")
    outs = [np.empty(d.shape, d.dtype) for d in lib.outputs]
    times = time_call(lib.bind(ins, outs), runs=runs, warmup=warmup, budget=30.0)
    p = np.percentile(times, [0, 10, 50, 90])
    rows = [
        [lib.name, human_seconds(p[2]), human_seconds(p[1]), human_seconds(p[3]), human_seconds(p[0]), str(len(times))]
    ]
    print(format_table(["model", "median", "p10", "p90", "min", "runs"], rows), file=out or sys.stdout)
    if per_op:
        run = lib.bind(ins, outs)
        lib.reset_profile()
        for _ in range(len(times)):
            run()
        table = []
        for r in lib.profile():
            kernel = r.kernel + "".join(f" +{f}" for f in r.fused)
            where = f"%{r.result}" if r.result else ""
            table.append(
                [r.op, where, kernel, f"{r.ticks:,.0f}", f"{100 * r.share:.1f} %", human_seconds(r.share * p[2])]
            )
        print(file=out or sys.stdout)
        print(
            format_table(["op", "result", "kernel (+ fused)", "ticks/run", "share", "≈ time"], table),
            file=out or sys.stdout,
        )
        print(
            "ticks: the time-stamp counter around each kernel call, summed over the runs; ≈ time = share x median",
            file=out or sys.stdout,
        )
    return times
