"""The training loop the passes share: epochs, a progress bar, the best weights, Ctrl-C.

``fit`` trains a ``GraphModule`` on ``Batches`` with Adam or SGD, printing one progress bar per
epoch on stderr (``finetune  3/10 [########------------]  40/101  loss 0.213``; carriage returns
on a terminal, one line per epoch otherwise). It is deterministic for a given seed (the
shuffling and torch's generator are seeded; the global RNG state is restored afterwards).

The weights kept are those of the epoch with the lowest mean training loss (the last one,
usually). Evaluation data, when given, is only measured and shown after each epoch: choosing
epochs on it would tune the model to the data its accuracy is reported on. Ctrl-C stops
training, restores the best weights so far (the starting weights if no epoch completed) and
says so; the pass then writes those back and the pipeline goes on.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import torch
import torch.nn.functional as F

from mcir.errors import McirError
from mcir.train.data import Batches
from mcir.train.to_torch import GraphModule

#: loss(student outputs, inputs, target) -> scalar
LossFn = Callable[[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]


def cross_entropy(out: torch.Tensor, inputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
    """CE(y, softmax(out)) over the last axis, targets are class indices."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), target.reshape(-1).long())


def mean_squared_error(out: torch.Tensor, inputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
    """mean (out - y)²; the target has the output's shape."""
    if target.shape != out.shape:
        raise McirError(f"loss=mse: the target has shape {list(target.shape)}, the output {list(out.shape)}")
    return F.mse_loss(out.float(), target.float())


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "mse": mean_squared_error}


@dataclass
class FitResult:
    """What a training run did."""

    epochs_run: int = 0
    best_epoch: int = 0  # 0: the starting weights
    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    start_accuracy: float | None = None
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def best_accuracy(self) -> float | None:
        if self.best_epoch == 0:
            return self.start_accuracy
        return self.accuracies[self.best_epoch - 1] if self.accuracies else None


def first_output(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The output the loss and the accuracy look at: the graph's first."""
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def accuracy(module: GraphModule, data: Batches, batch_size: int = 256) -> float:
    """Fraction of samples whose argmax over the last axis of the first output equals the target."""
    right = total = 0
    for batch in data.epoch(batch_size, seed=None):
        *inputs, target = batch
        pred = first_output(module(*inputs)).argmax(dim=-1)
        target = target.reshape(pred.shape)
        right += int((pred == target).sum())
        total += target.numel()
    if total == 0:
        raise McirError(f"{data.what}: no samples to evaluate")
    return right / total


def fit(
    module: GraphModule,
    data: Batches,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str = "adam",
    loss: LossFn = cross_entropy,
    seed: int = 0,
    eval_data: Batches | None = None,
    label: str = "train",
    out: TextIO | None = None,
) -> FitResult:
    """Train ``module`` in place; on return it holds the best weights (see the module docstring)."""
    stream = out or sys.stderr
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise McirError(f"{label}: the graph has no trainable float constant")
    result = FitResult()
    t0 = time.perf_counter()
    if eval_data is not None:
        result.start_accuracy = accuracy(module, eval_data)
    best = _snapshot(module)
    best_score = -math.inf
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = _optimizer(optimizer, params, lr)
        try:
            for epoch in range(1, epochs + 1):
                total, count = 0.0, 0
                n_batches = data.count(batch_size)
                bar = _Bar(stream, label, epoch, epochs, n_batches)
                for batch in data.epoch(batch_size, seed=seed * 1000 + epoch):
                    *inputs, target = batch
                    opt.zero_grad(set_to_none=True)
                    value = loss(first_output(module(*inputs)), tuple(inputs), target)
                    if not torch.isfinite(value):
                        raise McirError(f"{label}: the loss became {value.item()} in epoch {epoch}; lower lr={lr}")
                    value.backward()
                    opt.step()
                    total += value.item() * len(target)
                    count += len(target)
                    bar.update(total / max(count, 1))
                result.losses.append(total / max(count, 1))
                result.epochs_run = epoch
                if eval_data is not None:
                    result.accuracies.append(accuracy(module, eval_data))
                bar.close(result.losses[-1], result.accuracies[-1] if eval_data is not None else None)
                if -result.losses[-1] > best_score:
                    best, best_score, result.best_epoch = _snapshot(module), -result.losses[-1], epoch
        except KeyboardInterrupt:
            result.interrupted = True
            print(file=stream)
            which = f"epoch {result.best_epoch}" if result.best_epoch else "the starting weights"
            print(f"{label}: interrupted; keeping the best weights so far ({which})", file=stream, flush=True)
    module.load_state_dict(best)
    result.seconds = time.perf_counter() - t0
    return result


def _snapshot(module: GraphModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _optimizer(name: str, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise McirError(f"optimizer={name}: use adam or sgd")


class _Bar:
    """A plain-text progress bar on stderr: redrawn with \\r on a terminal, one line per epoch otherwise."""

    WIDTH = 20

    def __init__(self, stream: TextIO, label: str, epoch: int, epochs: int, total: int | None) -> None:
        self.stream, self.label, self.epoch, self.epochs, self.total = stream, label, epoch, epochs, total
        self.done = 0
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.last = 0.0

    def _text(self, loss: float) -> str:
        width = len(str(self.epochs))
        head = f"{self.label} {self.epoch:>{width}}/{self.epochs}"
        if self.total:
            filled = round(self.WIDTH * self.done / self.total)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            return f"{head} [{bar}] {self.done:>{len(str(self.total))}}/{self.total}  loss {loss:.4f}"
        return f"{head} {self.done} batches  loss {loss:.4f}"

    def update(self, loss: float) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.tty and (now - self.last > 0.1 or self.done == self.total):
            self.last = now
            print("\r" + self._text(loss), end="", file=self.stream, flush=True)

    def close(self, loss: float, acc: float | None) -> None:
        text = self._text(loss) + (f"  eval acc {100 * acc:.2f}%" if acc is not None else "")
        print(("\r" if self.tty else "") + text, file=self.stream, flush=True)
