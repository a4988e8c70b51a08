"""finetune: retrain the weights of a compressed graph on data, keeping its compression.

Compress, then recover: after ``prune``, ``quantize``, ``binarize`` or ``lowrank`` the graph's
constants are trained through their training forms (``mcir.train``) and written back with the
same encodings. Before / after ``prune(sparsity=0.9),finetune(epochs=10)``::

    %fc1.weight = const : f32[256,64] #csr<nnz=1638>        (values from pruning)
    %fc1.weight = const : f32[256,64] #csr<nnz=1638>        (same positions, retrained values)

The loss is ``CE(y, softmax(f(x)))`` (``loss=ce``, class targets) or ``mean (f(x) - y)²``
(``loss=mse``); pruned weights get no update (``w ⊙ m``), int8 weights train through
``s·round(w/s)`` with a straight-through round and learnable scales, binary ones through
``α·sign(w)`` with a clipped-identity estimator. After ``quant8`` this is quantisation-aware
training (also available as ``quantize(qat=EPOCHS)``).

Needs ``data=`` (``--data train.npz``); ``eval=`` data is measured after each epoch (and in the report).
Preserves: approximate (the weights change; accuracy is what it restores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from mcir.errors import McirError
from mcir.ir import Graph
from mcir.pass_base import Pass, PassContext, option


@dataclass(frozen=True)
class Finetune(Pass):
    """Retrain the weights on data (through masks, fake quantisation and STEs), same encodings after."""

    name: ClassVar[str] = "finetune"
    preserves: ClassVar[str] = "approximate: weights retrained on data (accuracy measured with eval=)"
    needs_data: ClassVar[bool] = True
    epochs: int = option(5, "passes over the training data")
    lr: float = option(1e-3, "learning rate")
    batch_size: int = option(64, "samples per step (when data is given as arrays)")
    optimizer: Literal["adam", "sgd"] = option("adam", "adam, or sgd with momentum 0.9")
    loss: Literal["ce", "mse"] = option("ce", "ce: cross-entropy on class targets; mse: squared error on values")
    seed: int = option(0, "seed of the shuffling and of torch's generator (runs are repeatable)")

    def __post_init__(self) -> None:
        check_training_options(self.epochs, self.lr, self.batch_size)

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        from mcir.train.run import train_graph

        train_graph(
            graph,
            ctx,
            label="finetune",
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            seed=self.seed,
            loss=self.loss,
        )


def check_training_options(epochs: int, lr: float, batch_size: int) -> None:
    """McirError for options no training run can use."""
    if epochs < 1:
        raise McirError(f"epochs={epochs} must be at least 1")
    if not lr > 0:
        raise McirError(f"lr={lr} must be positive")
    if batch_size < 1:
        raise McirError(f"batch_size={batch_size} must be at least 1")
