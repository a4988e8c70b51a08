"""The issue's "done when" for ``mcir search``, on the bundled digits MLP, through the command line.

Trains ``examples/digits/model.py`` (fixed seed), saves it as an mcir folder and the data as
``train.npz`` / ``test.npz``, then runs::

    mcir search MODEL --data train.npz --eval test.npz --objective size    --max-drop 0.015 --trials 24 -o OUT/size
    mcir search MODEL --data train.npz --eval test.npz --objective latency --max-drop 0.015 --trials 24 -o OUT/latency

compiles each ``best`` again with ``mcir compile --passes BEST`` and measures it (bytes, native
accuracy, latency against the fp32 library: the entry point timed in a native loop by
``mcir.native_timer``, and per call from Python for comparison), runs a short search with
``--executor ray --workers 2`` (when Ray is installed) and checks that it recorded every trial,
and checks resuming: a search is killed after its first recorded trials and started again.
Prints the CPU, a markdown table (docs/benchmarks.md) and copies the Pareto plots to
``docs/search/``::

    python benchmarks/search_digits.py [--trials 24] [--out /tmp/mcir-search-digits] [--skip-ray] [--skip-resume]
                                       [--seed 0] [--objectives size,latency]

``--seed N`` is the search's ``--seed`` (the sampler's; the seed trials and the model do not
depend on it); plots of a seed other than 0 are copied as ``digits_<objective>_seed<N>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mcir  # noqa: E402
from examples.digits.model import load_data, train  # noqa: E402
from mcir.native_timer import time_library  # noqa: E402
from mcir.runtime import Library  # noqa: E402
from mcir.search.trial import cpu_name  # noqa: E402
from mcir.train.run import native_accuracy  # noqa: E402


def mcir_cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "mcir.cli", *args], env=env, **kw)


def latency_us(lib: Library, method: str = "native") -> float:
    """Median µs per call: ``native`` (the entry point in a C loop, 301 repeats of ~0.2 ms) or ``python``."""
    return time_library(lib, method=method, repeats=301, python_runs=3000).seconds * 1e6


def recorded(db: Path) -> int:
    """Trials recorded whole (COMPLETE or FAIL) in a study database, read without Optuna."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        try:
            return con.execute("select count(*) from trials where state in ('COMPLETE', 'FAIL')").fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--out", default="/tmp/mcir-search-digits")
    parser.add_argument("--skip-resume", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--side-trials", type=int, default=6, help="trials of the Ray and the resume searches")
    parser.add_argument("--seed", type=int, default=0, help="the searches' sampler seed")
    parser.add_argument("--objectives", default="size,latency", help="comma list of the objectives to search")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="continue the studies in OUT (a search that holds its trials only recompiles)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_data()
    if (out / "model").exists() and args.keep:
        graph = mcir.load(out / "model")  # the model the kept studies searched
    else:
        model, _ = train()
        graph = mcir.trace(model, (torch.zeros(1, 64),))
        mcir.save(graph, out / "model")
        np.savez(out / "train.npz", x=x_train, y=y_train)
        np.savez(out / "test.npz", x=x_test, y=y_test)
    base_lib = mcir.compile(graph, out / "fp32")
    base = {"bytes": base_lib.weight_bytes, "acc": native_accuracy(base_lib, (x_test, y_test))}
    base["us"] = latency_us(base_lib)
    common = [str(out / "model"), "--data", str(out / "train.npz"), "--eval", str(out / "test.npz")]
    common += ["--max-drop", "0.015", "--trials", str(args.trials)]
    rows = []
    for objective in args.objectives.split(","):
        t0 = time.perf_counter()
        seed = ["--seed", str(args.seed)]
        rc = mcir_cli("search", *common, *seed, "--objective", objective, "-o", str(out / objective)).wait()
        minutes = (time.perf_counter() - t0) / 60
        summary = json.loads((out / objective / "search.json").read_text())
        best = summary["best"]
        if rc != 0 or best is None:
            rows.append((objective, best, None, None, None, minutes, summary))
            continue
        # `best` as it is, given to `mcir compile --passes`: the same library again. Without --eval: compile's
        # accuracy-after-every-pass meter trains-mode-evaluates through torch, which has no form for #codebook
        # weights and stops the compile (a limit of that meter, not of the pipeline)
        again = out / objective / "again"
        compile_args = ["compile", *common[:3], "--passes", best, "--no-compare", "-o", str(again)]
        compile_args += ["--calibration", str(out / objective / "calibration.npz")]
        proc = mcir_cli(*compile_args, stdout=subprocess.DEVNULL)
        if proc.wait() != 0:
            raise SystemExit(f"mcir compile --passes '{best}' failed")
        lib = Library(f"{again}.so")
        acc = native_accuracy(lib, (x_test, y_test))
        # interleaved, so both see the same load: native loop first, then per Python call
        us = (latency_us(lib), latency_us(base_lib), latency_us(lib, "python"), latency_us(base_lib, "python"))
        rows.append((objective, best, lib.weight_bytes, acc, us, minutes, summary))
        for ext in ("png", "svg"):
            (ROOT / "docs" / "search").mkdir(exist_ok=True)
            name = f"digits_{objective}" + (f"_seed{args.seed}" if args.seed else "")
            shutil.copy(out / objective / f"pareto.{ext}", ROOT / "docs" / "search" / f"{name}.{ext}")

    print(f"CPU: {cpu_name()}; load average {os.getloadavg()}")
    print(f"latency: {time_library(base_lib, repeats=301).description}; and per Python call for comparison")
    print(f"fp32 library: {base['bytes']} B, {100 * base['acc']:.2f}%, {base['us']:.3f} µs native")
    print("\n| objective | best pipeline (found by the search) | weights | smaller | accuracy | vs fp32 "
          "| native latency (fp32) | faster natively | per Python call (fp32) | faster per call "
          "| trials ok / failed / feasible | minutes |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for objective, best, nbytes, acc, us, minutes, summary in rows:
        t = summary["trials"]
        winner = summary["best_trial"]
        if winner is not None:  # a seed trial or the sampler's own: the docs say which found the best
            print(f"{objective}: best is trial {winner['number']} ({winner['origin']})")
        counts = (
            f"{sum(r['status'] == 'ok' for r in t)} / {sum(r['status'] == 'fail' for r in t)} / "
            f"{sum(r['feasible'] for r in t)}"
        )
        if nbytes is None:
            print(f"| {objective} | (none met the constraints) | | | | | | | | | {counts} | {minutes:.1f} |")
            continue
        print(
            f"| {objective} | `{best}` | {nbytes / 1024:.1f} KiB | {base['bytes'] / nbytes:.1f}x | {100 * acc:.2f}% "
            f"| {100 * (acc - base['acc']):+.2f} pt | {us[0]:.3f} µs ({us[1]:.3f}) | {us[1] / us[0]:.1f}x "
            f"| {us[2]:.2f} µs ({us[3]:.2f}) | {us[3] / us[2]:.1f}x | {counts} | {minutes:.1f} |"
        )
    if not args.skip_ray:
        ray_search(common, out, args.side_trials)
    if args.skip_resume:
        return
    # kill a search after its second recorded trial, then start it again: it continues the same study
    target = out / "resume"
    if target.exists():
        shutil.rmtree(target)
    cmd = ["search", *common[:-1], str(args.side_trials), "--objective", "size", "-o", str(target)]
    proc = mcir_cli(*cmd, stderr=subprocess.DEVNULL, start_new_session=True)
    while recorded(target / "study.db") < 2 and proc.poll() is None:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole session: driver and its worker
    proc.wait()
    before = recorded(target / "study.db")
    rc = mcir_cli(*cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL).wait()
    after = json.loads((target / "search.json").read_text())["trials"]
    print(
        f"\nresume: killed (SIGKILL) with {before} trial(s) recorded; the second run (exit {rc}) ended with "
        f"{len(after)} recorded trials, numbers {[t['number'] for t in after]}"
    )


def ray_search(common: list[str], out: Path, trials: int) -> None:
    """The same kind of search on a local Ray with 2 workers: every trial recorded in the one study."""
    try:
        import ray  # noqa: F401
    except ImportError:
        print("\nray: not installed in this environment; the Ray executor was not run")
        return
    target = out / "ray"
    if target.exists():
        shutil.rmtree(target)
    cmd = [
        "search",
        *common[:-1],
        str(trials),
        "--objective",
        "size",
        "--executor",
        "ray",
        "--workers",
        "2",
        "-o",
        str(target),
    ]
    t0 = time.perf_counter()
    rc = mcir_cli(*cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL).wait()
    trials = json.loads((target / "search.json").read_text())["trials"] if rc == 0 else []
    print(
        f"\nray (local, 2 workers): exit {rc}, {len(trials)} trials in search.json, "
        f"{recorded(target / 'study.db')} recorded in study.db "
        f"(numbers {[t['number'] for t in trials]}, status {[t['status'] for t in trials]}), "
        f"hosts {sorted({t['host'] for t in trials})}, {(time.perf_counter() - t0) / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
