"""Per-layer sensitivity: how much each layer's compression alone costs, per technique.

For every weighted layer ``L`` and technique ``T`` (prune 50 %/90 %, int8, int4, int2, 4-bit
codebook, binarize), the graph is compressed with ``T`` on ``L`` only (every other layer is
named in the pass's ``skip``) and measured on the given data:

- accuracy (argmax of the first output against the target) when the data has targets;
- SQNR of the first output against the uncompressed graph's, always:
  ``SQNR = 10·log10(Σ y² / Σ (y - ŷ)²)`` dB (``inf`` when the output does not change);
- the library's weight bytes after the change (``mcir.stats``, equal to the compiled library's).

The result is what a mixed-precision search needs (``quantize(bits_for=...)`` consumes the
per-layer choice); ``mcir analyze MODEL --data test.npz`` prints it as a table or ``--json``.
A cell is ``None`` when the technique does not apply to that layer (the pass leaves it alone).

Compress-then-recover techniques (``RECOVERED``: ``prune90ft`` is 90 % pruning of ``L`` followed
by a short ``finetune`` of the whole graph) need training data (``train=``); they are measured
only when it is given. They answer the question a search that fine-tunes asks: pruning alone
costs a layer far more than pruning with recovery, which Deep Compression's recipe relies on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcir.analysis.layers import layer_names, weighted_layers
from mcir.errors import McirError
from mcir.ir import Graph, Op

#: technique name -> pipeline; ``{skip}`` is replaced by a regex naming every layer but one
TECHNIQUES: dict[str, str] = {
    "prune50": "prune(sparsity=0.5,skip='{skip}')",
    "prune90": "prune(sparsity=0.9,skip='{skip}')",
    "int8": "quantize(bits=8,skip='{skip}')",
    "int4": "quantize(bits=4,skip='{skip}')",
    "int2": "quantize(bits=2,skip='{skip}')",
    "cluster4": "cluster(bits=4,skip='{skip}')",
    "binarize": "binarize(skip='{skip}')",
}
#: techniques that fine-tune after compressing (on ``train=``): measured only when training data is given.
#: 10 epochs is the recovery after pruning of the search's Deep Compression starting point (``space.seed_trials``)
RECOVERED: dict[str, str] = {
    "prune90ft": "prune(sparsity=0.9,skip='{skip}'),finetune(epochs=10)",
}


@dataclass
class Cell:
    """One layer compressed with one technique: what it costs and what it stores."""

    accuracy: float | None
    sqnr_db: float
    weight_bytes: int


@dataclass
class LayerRow:
    """One weighted layer and its cells (technique -> Cell, or None where the technique does not apply)."""

    layer: str
    weight: str
    params: int
    cells: dict[str, Cell | None] = field(default_factory=dict)


@dataclass
class Sensitivity:
    """The whole analysis: the uncompressed baseline and one row per layer."""

    accuracy: float | None
    weight_bytes: int
    techniques: list[str]
    rows: list[LayerRow]

    def to_json(self) -> dict[str, Any]:
        """Plain data (``inf`` SQNR written as the string "inf", which JSON has no number for)."""

        def num(x: float) -> float | str:
            return "inf" if math.isinf(x) else round(x, 3)

        return {
            "baseline": {"accuracy": self.accuracy, "weight_bytes": self.weight_bytes},
            "techniques": self.techniques,
            "layers": [
                {
                    "layer": r.layer,
                    "weight": r.weight,
                    "params": r.params,
                    "results": {
                        t: None
                        if c is None
                        else {"accuracy": c.accuracy, "sqnr_db": num(c.sqnr_db), "weight_bytes": c.weight_bytes}
                        for t, c in r.cells.items()
                    },
                }
                for r in self.rows
            ],
        }

    def table(self) -> str:
        """An aligned text table: accuracy in % (with targets) or SQNR in dB per layer and technique."""
        metric = "accuracy %" if self.accuracy is not None else "SQNR dB"
        header = ["layer", "params", *self.techniques]
        lines = [header]
        for r in self.rows:
            lines.append([r.layer, str(r.params), *(_cell_text(r.cells[t], self.accuracy) for t in self.techniques)])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = [
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines
        ]
        base = f"{100 * self.accuracy:.2f} %" if self.accuracy is not None else "the float outputs"
        return f"{metric} with only that layer compressed (uncompressed: {base}; - = not applicable)\n" + "\n".join(
            text
        )


def _cell_text(cell: Cell | None, accuracy: float | None) -> str:
    if cell is None:
        return "-"
    if accuracy is not None and cell.accuracy is not None:
        return f"{100 * cell.accuracy:.2f}"
    return "inf" if math.isinf(cell.sqnr_db) else f"{cell.sqnr_db:.1f}"


def only(layer: Op, layers: list[Op]) -> str:
    """A ``skip`` regex that matches every layer of ``layers`` except ``layer`` (and layers sharing its weight).

    ``skip`` is searched in each of a layer's names (module path, result, op kind, weight); this
    regex matches any name that is not one of ``layer``'s, so every other layer is skipped by its
    own weight's name while ``layer`` matches nothing.
    """
    names = sorted(set(layer_names(layer)), key=len, reverse=True)
    regex = "^(?!(?:" + "|".join(re.escape(n) for n in names) + ")$)"
    if "'" in regex:
        raise McirError(f"layer {layer.where()} has a quote in its name; sensitivity cannot name it in a pipeline")
    return regex


def sqnr_db(reference: np.ndarray, got: np.ndarray) -> float:
    """``10·log10(Σ ref² / Σ (ref - got)²)``; ``inf`` for identical outputs."""
    ref = np.asarray(reference, np.float64)
    err = float(np.sum((ref - np.asarray(got, np.float64)) ** 2))
    return math.inf if err == 0.0 else 10.0 * math.log10(max(float(np.sum(ref**2)), 1e-300) / err)


def layer_sensitivity(
    graph: Graph,
    inputs: list[tuple[np.ndarray, ...]],
    targets: list[np.ndarray] | None = None,
    techniques: list[str] | None = None,
    train: Any = None,
) -> Sensitivity:
    """Measure every weighted layer of ``graph`` under each technique alone (see the module docstring).

    ``inputs`` are batches shaped like the graph's inputs (they also calibrate ``int8``);
    ``targets`` (one array of class indices per batch) add the accuracy column. ``train``
    (training data in any form ``finetune``'s ``data=`` takes) adds the ``RECOVERED`` techniques
    to the default list and is required to ask for one of them.
    """
    # the modules themselves, not the facade: `mcir` imports mcir.search, which uses this module
    from mcir.instrument import run_passes
    from mcir.interp import interpret
    from mcir.stats import stats

    known = {**TECHNIQUES, **RECOVERED}
    if techniques is None:
        chosen = list(TECHNIQUES) + (list(RECOVERED) if train is not None else [])
    else:
        chosen = techniques
    unknown = [t for t in chosen if t not in known]
    if unknown:
        raise McirError(f"unknown technique(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    untrained = [t for t in chosen if t in RECOVERED and train is None]
    if untrained:
        raise McirError(
            f"technique(s) {', '.join(untrained)} fine-tune after compressing: pass training data "
            f"(train=, or --train TRAIN.npz on the command line)"
        )
    if not inputs:
        raise McirError("sensitivity needs at least one batch of inputs")
    if targets is not None and len(targets) != len(inputs):
        raise McirError(f"{len(inputs)} input batches but {len(targets)} target batches")
    layers = weighted_layers(graph)
    if not layers:
        raise McirError(f"graph @{graph.name} has no weighted layer (linear or conv2d with a float weight)")

    def outputs(g: Graph) -> list[np.ndarray]:
        return [np.asarray(interpret(g, *xs)[0]) for xs in inputs]

    def accuracy(outs: list[np.ndarray]) -> float | None:
        if targets is None:
            return None
        right = sum(int(np.sum(o.argmax(-1) == np.asarray(t).reshape(o.shape[:-1]))) for o, t in zip(outs, targets))
        return right / sum(int(np.asarray(t).size) for t in targets)

    reference = outputs(graph)
    result = Sensitivity(accuracy(reference), stats(graph).weight_bytes, chosen, [])
    calibration = inputs[:16]
    for layer in layers:
        weight = layer.operands[1]
        row = LayerRow(layer.loc.module or layer.result.name, weight.name, weight.type.numel)
        skip = only(layer, layers)
        for technique in chosen:
            context: dict[str, Any] = {"calibration": calibration}
            if technique in RECOVERED:
                context["data"] = train
            compressed = run_passes(graph, known[technique].format(skip=skip), **context)
            if _untouched(graph, compressed, weight.name):
                row.cells[technique] = None
                continue
            outs = outputs(compressed)
            sq = sqnr_db(np.concatenate([r.ravel() for r in reference]), np.concatenate([o.ravel() for o in outs]))
            row.cells[technique] = Cell(accuracy(outs), sq, stats(compressed).weight_bytes)
        result.rows.append(row)
    return result


def _untouched(before: Graph, after: Graph, weight: str) -> bool:
    """Whether a pass left the layer's weight as it was (same type and data): the technique did not apply."""
    try:
        old, new = before.value(weight), after.value(weight)
    except (KeyError, McirError):
        return False
    if str(old.type) != str(new.type):
        return False
    a, b = old.producer.data, new.producer.data
    return a is not None and b is not None and np.array_equal(np.asarray(a), np.asarray(b))
