"""One trial, where it runs (a worker process or a Ray task): compress, compile, measure.

``run_trial`` takes only picklable things (the graph as its saved files' bytes, data as
arrays) and returns a plain dict, so the same function runs in a local process pool and as
a Ray task on another machine. It never raises: a failure is returned as ``status="fail"``
with the error text, and the driver records it as a failed trial.
"""

from __future__ import annotations

import contextlib
import io
import platform
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np


def graph_files(graph: Any) -> dict[str, bytes]:
    """The saved form of ``graph`` (``graph.mcir`` + weights) as {file name: bytes}: what a worker needs."""
    from mcir.serialize import save

    with tempfile.TemporaryDirectory(prefix="mcir-search-") as tmp:
        folder = save(graph, Path(tmp) / "graph")
        return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def cpu_name() -> str:
    """This machine's CPU model (from /proc/cpuinfo on Linux), for the report: latency is measured here."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(lib: Any, eval_arrays: tuple[np.ndarray, ...], latency_runs: int, timing: str = "auto") -> dict[str, Any]:
    """Native bytes, median latency and accuracy of a loaded library.

    Latency (µs per call) is timed by ``mcir.native_timer``: with ``timing="auto"`` the entry point
    in a native loop (``latency_runs`` short repeats), or, without a C compiler, ``latency_runs``
    calls timed from Python; ``latency_method`` says which.
    """
    from mcir.native_timer import time_library
    from mcir.train.run import native_accuracy

    t = time_library(lib, method=timing, repeats=latency_runs, python_runs=latency_runs)
    return {
        "weight_bytes": int(lib.weight_bytes),
        "latency_us": t.seconds * 1e6,
        "latency_method": t.description,
        "accuracy": float(native_accuracy(lib, eval_arrays)),
    }


def run_trial(
    files: dict[str, bytes],
    pipeline: str,
    data: tuple[np.ndarray, ...] | None,
    eval_arrays: tuple[np.ndarray, ...],
    calibration: list[tuple[np.ndarray, ...]] | None,
    latency_runs: int = 200,
    timing: str = "auto",
) -> dict[str, Any]:
    """Compress the graph with ``pipeline``, compile it into a temporary folder and measure it
    (``timing``: how latency is timed, see ``measure``)."""
    from mcir.codegen import compile as compile_graph  # lazy: llvmlite, in the worker only
    from mcir.instrument import run_passes
    from mcir.serialize import load

    t0 = time.perf_counter()
    result: dict[str, Any] = {"pipeline": pipeline, "cpu": cpu_name(), "host": platform.node()}
    # the passes' own output (training progress, warnings) would interleave across workers: keep its tail
    chatter = io.StringIO()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="mcir-trial-") as tmp,
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
        ):
            folder = Path(tmp) / "graph"
            folder.mkdir()
            for name, blob in files.items():
                (folder / name).write_bytes(blob)
            graph = load(folder)
            context: dict[str, Any] = {}
            if data is not None:
                context["data"] = data
            if calibration:
                context["calibration"] = calibration
            compressed = run_passes(graph, pipeline, **context) if pipeline else graph
            lib = compile_graph(compressed, Path(tmp) / "trial")
            result.update(measure(lib, eval_arrays, latency_runs, timing))
        result["status"] = "ok"
    except Exception as e:  # any failure of a candidate is a result to record, not a crash
        result["status"] = "fail"
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc(limit=8)
    result["log"] = chatter.getvalue()[-2000:]
    result["seconds"] = time.perf_counter() - t0
    return result
