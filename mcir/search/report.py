"""The search's results on disk: ``search.json`` (every trial and the best) and the Pareto plot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` as JSON through a temporary file and one rename: readers never see half a file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) no other point beats: lower cost and higher accuracy."""
    front = []
    for i, (c, a) in enumerate(points):
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for c2, a2 in points)
        if not dominated:
            front.append(i)
    return front


def plot(out: Path, trials: list[dict[str, Any]], baseline: dict[str, Any], best: dict[str, Any] | None) -> list[Path]:
    """Accuracy against library bytes and against latency, each trial a dot, the Pareto front a line.

    Writes ``pareto.png`` and ``pareto.svg`` into ``out`` and returns their paths.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a build machine
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = [t for t in trials if t["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    method = str(baseline.get("latency_method") or "")
    timed = "native loop" if method.startswith("native") else "per Python call" if method else ""
    latency_label = f"latency (µs, {timed})" if timed else "latency (µs)"
    for ax, key, label in ((axes[0], "weight_bytes", "library weight bytes"), (axes[1], "latency_us", latency_label)):
        for feasible, colour in ((True, "tab:blue"), (False, "tab:gray")):
            sel = [t for t in ok if t["feasible"] == feasible]
            ax.scatter(
                [t[key] for t in sel],
                [100 * t["accuracy"] for t in sel],
                s=18,
                c=colour,
                label="trial" + ("" if feasible else " (breaks a constraint)"),
            )
        points = [(t[key], t["accuracy"]) for t in ok]
        front = sorted((points[i] for i in pareto_front(points)), key=lambda p: p[0])
        if front:
            ax.step([p[0] for p in front], [100 * p[1] for p in front], where="post", c="tab:orange", label="Pareto")
        ax.scatter([baseline[key]], [100 * baseline["accuracy"]], marker="s", c="black", label="fp32 (no passes)")
        if best is not None:
            ax.scatter([best[key]], [100 * best["accuracy"]], marker="*", s=160, c="tab:red", label="best")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a short range
        ax.set_xlabel(label)
        ax.set_ylabel("native accuracy (%)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"mcir search: {len(ok)} measured trials on {baseline.get('cpu', 'this CPU')}", fontsize=10)
    fig.tight_layout()
    paths = [out / "pareto.png", out / "pareto.svg"]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths
