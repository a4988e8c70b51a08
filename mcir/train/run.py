"""Training a graph in place: what the ``finetune``, ``distill`` and QAT passes share.

``train_graph`` builds the torch module of the graph (``to_torch``), trains it on the
pipeline's ``data=`` (measuring ``eval=`` after each epoch when given), and writes the trained
weights back with the same encodings (``write_back``). ``evaluate`` gives a graph's accuracy on
evaluation data through the same module (it equals the interpreter within float32 rounding).
"""

from __future__ import annotations

from typing import Any

from mcir.errors import McirError
from mcir.ir import Graph
from mcir.train.data import Batches
from mcir.train.loop import LOSSES, FitResult, LossFn, accuracy, fit
from mcir.train.to_torch import to_torch
from mcir.train.writeback import write_back


def require_data(ctx: Any, what: str) -> Batches:
    """The pipeline's training data; a McirError saying how to give it when there is none."""
    source = ctx.get("data")
    if source is None:
        raise McirError(
            f"{what} trains the model and needs training data: pass data=... to mcir.run_passes "
            "(arrays (x, y), an npz dict, or an iterable of (inputs..., target) batches) or --data train.npz"
        )
    cached = ctx.data.setdefault("_batches", {})
    if "data" not in cached:
        cached["data"] = Batches(source, "data")
    return cached["data"]


def eval_batches(ctx: Any) -> Batches | None:
    """The pipeline's evaluation data, if any."""
    source = ctx.get("eval")
    if source is None:
        return None
    cached = ctx.data.setdefault("_batches", {})
    if "eval" not in cached:
        cached["eval"] = Batches(source, "eval")
    return cached["eval"]


def train_graph(
    graph: Graph,
    ctx: Any,
    *,
    label: str,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    seed: int,
    loss: str | LossFn = "ce",
) -> FitResult:
    """Train ``graph``'s constants in place on the pipeline's data (see the module docstring)."""
    data = require_data(ctx, label)
    module = to_torch(graph)
    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    result = fit(
        module,
        data,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        loss=loss_fn,
        seed=seed,
        eval_data=eval_batches(ctx),
        label=label,
    )
    write_back(module, graph)
    line = (
        f"{label}: {result.epochs_run} epoch(s) in {result.seconds:.1f} s, final loss {result.losses[-1]:.4f}"
        if (result.losses)
        else f"{label}: no epoch completed"
    )
    if result.best_accuracy is not None:
        line += f", kept epoch {result.best_epoch} (eval accuracy {100 * result.best_accuracy:.2f}%)"
    graph.meta.setdefault("train", []).append(line)
    if result.interrupted:
        which = f"epoch {result.best_epoch}" if result.best_epoch else "the starting weights"
        ctx.warn(f"{label}: interrupted by the user; kept the best weights so far ({which})")
    return result


def evaluate(graph: Graph, data: Any) -> float:
    """Accuracy of ``graph`` on evaluation data (any form ``eval=`` takes)."""
    batches = data if isinstance(data, Batches) else Batches(data, "eval")
    return accuracy(to_torch(graph, trainable=False), batches)


def native_accuracy(library: Any, data: Any) -> float:
    """Accuracy of a compiled library (a path without suffix, or a loaded ``Library``) on
    evaluation data, one sample at a time (the graph's batch of 1): argmax of the first output."""
    import numpy as np

    from mcir.runtime import Library

    lib = library if isinstance(library, Library) else Library(f"{library}.so")
    batches = data if isinstance(data, Batches) else Batches(data, "eval")
    right = total = 0
    for batch in batches.epoch(256, seed=None):
        *inputs, target = (b.numpy() for b in batch)
        for i in range(len(target)):
            out = lib(*(x[i : i + 1] for x in inputs))
            first = np.asarray(out[0] if isinstance(out, list | tuple) else out)
            right += int(np.argmax(first.reshape(-1)) == int(target[i]))
            total += 1
    if total == 0:
        raise McirError("native accuracy: no samples to evaluate")
    return right / total
