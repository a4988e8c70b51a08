"""Bytes of every compression pipeline against fold-only, on the full-size benchmark models.

For each model of ``benchmarks/models.py`` and each pipeline (after ``fold``) it prints the
weight bytes ``mcir.stats`` states, the bytes the library embeds (they must be equal), their
ratio to the fold-only library, and the ``.so`` sizes. Every library is built with the same
name and metadata so the ``.so`` sizes compare only weights and code.

    python benchmarks/bench_bytes.py [--models mlp,cnn,encoder] [--pipelines 'quant8;share']
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import prepare

import mcir
from mcir.report import format_table, human_bytes

PIPELINES = [
    "prune(sparsity=0.5)",
    "prune(sparsity=0.9)",
    "prune(pattern=2:4)",
    "lowrank(energy=0.9)",
    "binarize",
    "ternarize",
    "quant8",
    "prune(sparsity=0.9),quant8",
    "share",
]


def _compile(graph: mcir.Graph, out: Path) -> tuple[int, int, int]:
    """(stated bytes, embedded bytes, .so size) of ``graph`` built as ``out/m.so``."""
    graph.meta["pipeline"] = "compared"
    stated = mcir.stats(graph).weight_bytes
    lib = mcir.compile(graph, out / "m")
    return stated, lib.weight_bytes, (out / "m.so").stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn,encoder")
    ap.add_argument("--pipelines", default=";".join(PIPELINES), help="';'-separated pipelines")
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, mcir {mcir.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            _, _, calibration, graph = prepare(name, batch=1)
            base = mcir.run_passes(graph, "fold")
            _, fold_bytes, fold_so = _compile(base, Path(tmp) / name / "fold")
            rows.append(
                [name, "fold", human_bytes(fold_bytes), human_bytes(fold_bytes), "100.0%", str(fold_so), "1.00"]
            )
            for i, pipeline in enumerate(args.pipelines.split(";")):
                t0 = time.perf_counter()
                g = mcir.run_passes(graph, "fold," + pipeline, calibration=calibration)
                stated, embedded, so = _compile(g, Path(tmp) / name / str(i))
                check = "" if stated == embedded else " (MISMATCH)"
                rows.append(
                    [
                        name,
                        pipeline,
                        human_bytes(stated) + check,
                        human_bytes(embedded),
                        f"{embedded / fold_bytes:.1%}",
                        str(so),
                        f"{so / fold_so:.2f}",
                    ]
                )
                print(f"{name} {pipeline}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    head = ["model", "pipeline (after fold)", "stated", "embedded", "of fold", ".so bytes", ".so / fold"]
    print(format_table(head, rows, align="ll" + "r" * 5))


if __name__ == "__main__":
    main()
