"""Timing helper shared by the benchmark scripts: interleaved rounds, medians, one thread.

Every contender runs once per round, in turn, so slow drifts of a shared machine (other
processes, frequency changes) hit all of them alike. A sample is the mean time of
``inner`` back-to-back calls (about 20 ms); latencies are medians over rounds and ratios
are medians of the per-round ratios (``paired_ratio``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable


def single_thread() -> None:
    """Pin the math libraries this process uses to one thread (call before importing torch/numpy work)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import torch

    torch.set_num_threads(1)
    # only allowed before the first inter-op parallel work; harmless to skip after that
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def calibrate(fn: Callable[[], object], target_s: float = 0.02) -> int:
    """Calls per timing sample so that one sample lasts about ``target_s`` seconds."""
    fn()
    t = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t, 1e-7)
    return max(1, int(target_s / once))


def interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int = 15,
    target_s: float = 0.02,
    warmup: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each function in each of ``rounds`` interleaved rounds.

    ``clock``: wall time by default; ``time.thread_time`` counts only the calling thread's CPU time,
    which a loaded machine inflates far less (valid only when all the work runs on that thread)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    inner = {name: calibrate(fn, target_s) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = inner[name]
            t = clock()
            for _ in range(n):
                fn()
            samples[name].append((clock() - t) / n)
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def paired_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow/fast measured in the same round.

    Both were timed back to back, so a burst of load from other processes on a shared
    machine affects a pair alike and mostly cancels in the ratio.
    """
    return statistics.median(s / f for s, f in zip(slow, fast))


def machine_description() -> str:
    """CPU model, core count and library versions, for the results file."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import llvmlite
    import numpy
    import onnxruntime
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, llvmlite {llvmlite.__version__}, numpy {numpy.__version__}"
    )


def fmt_time(s: float) -> str:
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def suite_main(doc: str, bench, table, models: list[str], build: str = "build/bench") -> None:
    """The command line of a per-model suite: --models, --batches, --rounds, --build, --markdown;
    runs ``bench(model, batch, build, rounds)`` for each pair and prints ``table(rows, markdown)``."""
    import argparse
    import sys
    from pathlib import Path

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=models, choices=models)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (median taken)")
    ap.add_argument("--build", type=Path, default=Path(build))
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args()
    print(machine_description(), flush=True)
    rows = []
    for name in args.models:
        for batch in args.batches:
            rows.append(bench(name, batch, args.build, args.rounds))
            print(f"  {name} batch {batch}: done", file=sys.stderr, flush=True)
    print(table(rows, args.markdown))
