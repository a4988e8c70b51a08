"""How a model's work shares out over mcir's thread pool: 1 vs 2 threads, and where the time goes (issue #16).

    python benchmarks/bench_threads.py                                  # int8 encoder, batch 32
    python benchmarks/bench_threads.py --models encoder linear4096 --dtypes int8 fp32 --calls 30 --rounds 5

For each model (``quant8`` of the seeded benchmark model for int8, the traced model for fp32, compiled for
``native``): rounds alternating 1 and 2 threads in one process, each ``--calls`` back-to-back calls, so
that load from other processes hits both alike. Reported per thread count:

* wall time per call: the minimum over all calls (the moments when both cores were ours: on a shared
  machine the honest estimate of what the code does) and the median;
* CPU time per call of the calling thread and of the pool's worker (``/proc/self/task/TID/stat``): a
  worker that got little CPU was descheduled, which no change to mcir can fix;
* the load average before and after.

Then one counted 2-thread run (``ThreadPool.count``): per kernel (task function, from the library's
symbol table) the parallel-fors per call, the share of tasks the worker ran, the wall time per call
inside them; the wall time outside every parallel-for is the serial part (Amdahl's fraction).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import fmt_time, machine_description, single_thread

single_thread()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from models import MODELS, example  # noqa: E402

import mcir  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402
from mcir.runtime import Library  # noqa: E402

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(tid: int) -> float:
    """User + system CPU time of one thread of this process, in seconds (clock-tick resolution)."""
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def build(name: str, batch: int, dtype: str, out: Path) -> tuple[Library, np.ndarray]:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = example(name, batch)
    graph = mcir.trace(model, (x,), tracer="export", name=name)
    if dtype == "int8":
        calib = [example(name, batch) for _ in range(2)]
        graph = mcir.run_passes(graph, "quant8", calibration=[(c.numpy(),) for c in calib])
    return compile_graph(graph, out / f"{name}_{dtype}_b{batch}"), x.numpy()


def symbol_names(lib: Library) -> dict[int, str]:
    """Absolute address -> name of the library's functions (local ones too: task functions are internal)."""
    nm = subprocess.run(["nm", str(lib.path)], capture_output=True, text=True, check=True).stdout
    table = {}
    for line in nm.splitlines():
        parts = line.split()
        if len(parts) == 3:
            table[int(parts[0], 16)] = parts[2]
    run = f"mcir_{lib.name}_run"
    base = ctypes.cast(getattr(lib._dll, run), ctypes.c_void_p).value - next(a for a, n in table.items() if n == run)
    return {base + a: re.sub(r"\.\d+$", "", n) for a, n in table.items()}


def timed(lib: Library, run, threads: int, calls: int) -> tuple[list[float], float, float]:
    """(wall seconds per call, caller CPU s per call, workers' CPU s per call) for ``calls`` calls."""
    before = set(os.listdir("/proc/self/task"))
    lib.set_threads(threads)
    workers = [int(t) for t in set(os.listdir("/proc/self/task")) - before]
    run()
    run()
    w0 = sum(thread_cpu_s(t) for t in workers)
    c0 = time.thread_time()
    walls = []
    for _ in range(calls):
        t = time.perf_counter()
        run()
        walls.append(time.perf_counter() - t)
    caller = (time.thread_time() - c0) / calls
    worker = (sum(thread_cpu_s(t) for t in workers) - w0) / calls
    return walls, caller, worker


def profile(lib: Library, run, calls: int) -> str:
    """The counted 2-thread run, as text."""
    lib.set_threads(2)
    run()
    pool = lib.thread_pool
    pool.count()
    spans = []
    for _ in range(calls):
        t0 = time.monotonic_ns()
        run()
        spans.append((t0, time.monotonic_ns()))
    st = pool.stats()
    names = symbol_names(lib)
    wall = sum(b - a for a, b in spans)
    inside = sum(e.end_ns - e.start_ns for e in st.events)
    lines = [
        f"counted 2-thread run, {calls} calls: {wall / calls / 1e6:.2f} ms/call, {inside / calls / 1e6:.2f} ms inside "
        f"parallel-fors, serial {(wall - inside) / calls / 1e6:.2f} ms ({(wall - inside) / wall:.1%})",
        f"tasks caller/worker {st.tasks[0]}/{st.tasks[1]}, ms in tasks per call "
        f"{st.task_ns[0] / calls / 1e6:.2f}/{st.task_ns[1] / calls / 1e6:.2f}, worker sleeps per call "
        f"{st.sleeps[1] / calls:.1f}",
        "",
        "| kernel (task function) | parallel-fors per call | tasks each | worker's share | ms per call | "
        "parallel-fors the worker missed |",
        "|---|---|---|---|---|---|",
    ]
    per = defaultdict(lambda: [0, 0, 0, 0, 0])
    for e in st.events:
        a = per[names.get(e.body, hex(e.body))]
        a[0] += 1
        a[1] += e.n_tasks
        a[2] += e.worker_tasks
        a[3] += e.end_ns - e.start_ns
        a[4] += e.worker_tasks == 0
    for name, (n, tasks, wt, ns, missed) in sorted(per.items(), key=lambda kv: -kv[1][3]):
        row = [
            f"{n / calls:.0f}",
            f"{tasks / n:.0f}",
            f"{wt / tasks:.0%}",
            f"{ns / calls / 1e6:.2f}",
            f"{missed / n:.0%}",
        ]
        lines.append(f"| {name} | {' | '.join(row)} |")
    lib.set_threads(1)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["encoder"], choices=sorted(MODELS))
    ap.add_argument("--dtypes", nargs="+", default=["int8"], choices=["int8", "fp32"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--calls", type=int, default=20, help="calls per round and thread count")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(machine_description())
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for dtype in args.dtypes:
                lib, x = build(name, args.batch, dtype, Path(tmp))
                y = np.empty(lib.outputs[0].shape, lib.outputs[0].dtype)
                run = lib.bind([x], [y])
                load0 = os.getloadavg()[0]
                walls, caller, worker = {1: [], 2: []}, {1: [], 2: []}, {1: [], 2: []}
                for _ in range(args.rounds):
                    for threads in (1, 2):
                        w, c, k = timed(lib, run, threads, args.calls)
                        walls[threads] += w
                        caller[threads].append(c)
                        worker[threads].append(k)
                lib.set_threads(1)
                load1 = os.getloadavg()[0]
                print(f"\n## {name} {dtype} batch {args.batch}: load average {load0:.1f} -> {load1:.1f}\n")
                print("| threads | min wall | median wall | caller CPU / call | worker CPU / call |")
                print("|---|---|---|---|---|")
                for t in (1, 2):
                    print(
                        f"| {t} | {fmt_time(min(walls[t]))} | {fmt_time(statistics.median(walls[t]))} | "
                        f"{fmt_time(statistics.median(caller[t]))} | "
                        f"{fmt_time(statistics.median(worker[t])) if t > 1 else '-'} |"
                    )
                print(
                    f"\n2-thread speed-up: {min(walls[1]) / min(walls[2]):.2f}x by min, "
                    f"{statistics.median(walls[1]) / statistics.median(walls[2]):.2f}x by median\n"
                )
                print(profile(lib, run, args.calls))


if __name__ == "__main__":
    main()
