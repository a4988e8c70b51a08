"""Gradual pruning: Zhu & Gupta's cubic schedule, with fine-tuning between the steps.

``prune(sparsity=s_f, steps=n)`` prunes in n steps to the sparsities

    s_t = s_f · (1 − (1 − t/n)³),   t = 1 … n

(fast at first, when many weights are redundant, slowly near the end), and when the pipeline
has ``data=`` trains ``step_epochs`` epochs after every step but the last, so the remaining
weights take over from the removed ones before the next cut. Unstructured steps rank the
already-pruned zeros with the other weights (they stay pruned); structured steps remove the
fraction of the *remaining* channels that brings the total to s_t.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcir.ir import Graph


def cubic_schedule(final: float, steps: int) -> list[float]:
    """The sparsity after each of ``steps`` steps (the last is ``final``)."""
    return [final * (1.0 - (1.0 - t / steps) ** 3) for t in range(1, steps + 1)]


def prune_gradually(
    graph: Graph,
    ctx: Any,
    step: Callable[[float, bool], None],
    final: float,
    steps: int,
    step_epochs: int,
    relative: bool,
) -> None:
    """Run ``step(sparsity, last)`` along the cubic schedule, training between steps when there is data.

    ``relative``: the step's sparsity is a fraction of what is left (structured pruning shrinks
    the layers, so a fraction of the original is not what the next step sees).
    """
    from mcir.train.run import train_graph

    kept = 1.0
    schedule = cubic_schedule(final, steps)
    for t, s in enumerate(schedule, 1):
        last = t == steps
        if relative:
            step(1.0 - (1.0 - s) / kept, last)
            kept = 1.0 - s
        else:
            step(s, last)
        if ctx.get("data") is not None and not last:
            train_graph(
                graph,
                ctx,
                label=f"prune step {t}/{steps}",
                epochs=step_epochs,
                lr=1e-3,
                batch_size=64,
                optimizer="adam",
                seed=t,
            )
    if ctx.get("data") is None:
        ctx.warn(f"prune(steps={steps}): no data= to fine-tune between the steps, so they equal one step")
