"""distill: knowledge distillation from a teacher graph into the compressed one.

The student (the graph in the pipeline) learns from the labels and from the teacher's softened
outputs, with the loss

    L = (1 − α)·CE(y, p_s) + α·T²·KL(p_t(T) ‖ p_s(T)),   p(T) = softmax(logits / T)

(Hinton et al.; the T² keeps the soft term's gradients at the scale of the hard one). The
teacher is by default the graph *before the pipeline's first lossy pass*, which ``run_passes``
keeps (``teacher=original``); ``teacher=PATH`` loads a saved graph (``mcir.save``) instead. So
``prune(granularity=neuron,sparsity=0.5),distill,quant8`` shrinks the layers, then teaches the
thinner network to imitate the full one, then quantises it::

    %fc1.weight = const : f32[128,64]      (half the neurons; retrained towards the teacher)

Needs ``data=`` (``--data``); ``eval=`` is measured after each epoch. Preserves: approximate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from mcir.errors import McirError
from mcir.ir import Graph
from mcir.pass_base import Pass, PassContext, option
from mcir.passes.finetune import check_training_options


@dataclass(frozen=True)
class Distill(Pass):
    """Train the graph towards a teacher's soft outputs and the labels: (1−α)·CE + α·T²·KL."""

    name: ClassVar[str] = "distill"
    preserves: ClassVar[str] = "approximate: weights retrained towards the teacher (accuracy measured with eval=)"
    needs_data: ClassVar[bool] = True
    epochs: int = option(10, "passes over the training data")
    temperature: float = option(4.0, "T: softmax temperature of both teacher and student in the KL term")
    alpha: float = option(0.7, "α: weight of the teacher term (1 − α weighs the labels)")
    teacher: str = option("original", "original (the graph before the first lossy pass) or a saved graph's path")
    lr: float = option(1e-3, "learning rate")
    batch_size: int = option(64, "samples per step (when data is given as arrays)")
    optimizer: Literal["adam", "sgd"] = option("adam", "adam, or sgd with momentum 0.9")
    seed: int = option(0, "seed of the shuffling and of torch's generator")

    def __post_init__(self) -> None:
        check_training_options(self.epochs, self.lr, self.batch_size)
        if not self.temperature > 0:
            raise McirError(f"temperature={self.temperature} must be positive")
        if not 0.0 <= self.alpha <= 1.0:
            raise McirError(f"alpha={self.alpha} must be in [0, 1]")

    def teacher_graph(self, ctx: PassContext) -> Graph:
        if self.teacher == "original":
            original = ctx.get("original")
            if original is None:
                raise McirError(
                    "teacher=original: no graph before a lossy pass was kept; run distill through "
                    "mcir.run_passes / the CLI, or give teacher=PATH of a saved graph"
                )
            return original
        import mcir

        return mcir.load(self.teacher)

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        from mcir.train.run import require_data, train_graph
        from mcir.train.to_torch import to_torch

        require_data(ctx, "distill")
        teacher_graph = self.teacher_graph(ctx)
        if [v.type.shape for v in teacher_graph.inputs] != [v.type.shape for v in graph.inputs]:
            raise McirError(
                f"teacher {self.teacher}: its inputs {[str(v.type) for v in teacher_graph.inputs]} differ from "
                f"the student's {[str(v.type) for v in graph.inputs]}"
            )
        teacher = to_torch(teacher_graph, trainable=False)
        t, a = self.temperature, self.alpha

        def loss(student: torch.Tensor, inputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                out = teacher(*inputs)
                logits_t = (out[0] if isinstance(out, tuple) else out).float()
            s = student.float().reshape(-1, student.shape[-1])
            logits_t = logits_t.reshape(s.shape)
            hard = F.cross_entropy(s, target.reshape(-1).long()) if a < 1 else s.new_zeros(())
            soft = F.kl_div(
                F.log_softmax(s / t, dim=-1),
                F.log_softmax(logits_t / t, dim=-1),
                reduction="batchmean",
                log_target=True,
            )
            return (1 - a) * hard + a * t * t * soft

        train_graph(
            graph,
            ctx,
            label="distill",
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            seed=self.seed,
            loss=loss,
        )
