"""Run every benchmark script in turn (single thread each), printing their tables.

    python benchmarks/run.py                  # all suites
    python benchmarks/run.py fp32 int8        # some of them
    python benchmarks/run.py --markdown       # tables in markdown, for docs/benchmarks.md

Each suite is a separate process, so one suite's allocations and JIT state cannot slow
the next one; within a suite the contenders are timed interleaved in one process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = {
    "fp32": "bench_fp32.py",
    "int8": "bench_int8.py",
    "sparse": "bench_sparse.py",
    "binary": "bench_binary.py",
    "text": "bench_bert.py",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suites", nargs="*", metavar="SUITE", help=f"some of {', '.join(SUITES)} (default: all)")
    ap.add_argument("--markdown", action="store_true", help="ask each suite for markdown tables")
    args = ap.parse_args()
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        ap.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    failed = []
    for name in args.suites or list(SUITES):
        script = HERE / SUITES[name]
        if not script.exists():
            print(f"== {name}: {script.name} is not in this checkout, skipped")
            continue
        print(f"== {name} ({script.name})", flush=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, str(script)] + (["--markdown"] if args.markdown else [])
        if subprocess.run(cmd, cwd=HERE.parent).returncode:
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - t0:.0f} s\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
