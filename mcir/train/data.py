"""Training and evaluation data: what ``data=`` / ``eval=`` (and ``--data``/``--eval`` files) may be.

Two shapes are accepted:

* **arrays** — a ``Dataset``, a dict of arrays (``np.load("train.npz")``: inputs ``x`` or
  ``x0, x1, ...`` in order, target ``y``), or a tuple ``(x..., y)`` of arrays with the same
  length: the passes cut them into shuffled batches of their ``batch_size`` (seeded);
* **batches** — any other iterable of ``(inputs..., target)`` tuples, numpy or torch, e.g. a
  ``torch.utils.data.DataLoader``: used as given, in its order and batch size. A one-shot
  iterator (a generator) is read once and kept, so that it can be replayed every epoch.

Inputs of a batch have shape ``[B, *input_shape[1:]]`` for a graph traced at batch 1; targets
are class indices ``[B]`` (loss ``ce``) or values shaped like the output (``mse``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from mcir.errors import McirError


class Dataset:
    """Whole arrays: inputs ``xs`` and target ``y``, all with the same first dimension."""

    def __init__(self, *arrays: Any) -> None:
        if len(arrays) < 2:
            raise McirError("a dataset needs at least one input array and the target array (x..., y)")
        self.arrays = [np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a) for a in arrays]
        n = len(self.arrays[0])
        if any(len(a) != n for a in self.arrays):
            raise McirError(f"dataset arrays differ in length: {[len(a) for a in self.arrays]}")
        self.size = n

    @staticmethod
    def from_npz(path: str) -> Dataset:
        """Arrays ``x`` (or ``x0``, ``x1``, ...) and ``y`` from an ``.npz`` file."""
        try:
            with np.load(path) as f:
                return Dataset.from_dict({k: f[k] for k in f.files}, where=str(path))
        except OSError as e:
            raise McirError(f"cannot read data file {path}: {e}") from None

    @staticmethod
    def from_dict(arrays: dict[str, Any], where: str = "data") -> Dataset:
        if "y" not in arrays:
            raise McirError(f"{where}: needs a target array 'y' besides the inputs (has {sorted(arrays)})")
        if "x" in arrays:
            xs = [arrays["x"]]
        else:
            xs = [arrays[f"x{i}"] for i in range(len(arrays)) if f"x{i}" in arrays]
        if not xs:
            raise McirError(f"{where}: needs an input array 'x' (or x0, x1, ...), has {sorted(arrays)}")
        return Dataset(*xs, arrays["y"])

    def batches(self, batch_size: int, seed: int | None) -> Iterator[tuple[np.ndarray, ...]]:
        """Batches in a seeded random order (``seed=None``: in order)."""
        order = np.arange(self.size) if seed is None else np.random.default_rng(seed).permutation(self.size)
        for i in range(0, self.size, batch_size):
            idx = order[i : i + batch_size]
            yield tuple(a[idx] for a in self.arrays)

    def __len__(self) -> int:
        return self.size


class Batches:
    """A replayable source of ``(inputs..., target)`` batches from what a user passed."""

    def __init__(self, source: Any, what: str = "data") -> None:
        self.what = what
        self.dataset: Dataset | None = None
        self.given: Iterable | None = None
        if isinstance(source, Dataset):
            self.dataset = source
        elif isinstance(source, dict) or hasattr(source, "files"):  # a dict or an open NpzFile
            self.dataset = Dataset.from_dict(
                {k: source[k] for k in (source.files if hasattr(source, "files") else source)}
            )
        elif isinstance(source, str):
            self.dataset = Dataset.from_npz(source)
        elif isinstance(source, tuple) and len(source) >= 2 and all(_is_array(a) for a in source):
            self.dataset = Dataset(*source)
        elif isinstance(source, Iterable):
            # a generator can be read only once: keep its batches to replay them every epoch
            self.given = source if hasattr(source, "__len__") or hasattr(source, "dataset") else list(source)
        else:
            raise McirError(
                f"{what}=: expected arrays (x..., y), a dict/npz of x and y, or an iterable of (inputs..., target) "
                f"batches, got {type(source).__name__}"
            )

    def epoch(self, batch_size: int, seed: int | None) -> Iterator[tuple[torch.Tensor, ...]]:
        """One pass over the data as tuples of tensors (inputs..., target)."""
        source = self.dataset.batches(batch_size, seed) if self.dataset is not None else self.given
        for i, batch in enumerate(source):
            if not isinstance(batch, tuple | list) or len(batch) < 2:
                raise McirError(
                    f"{self.what}: batch {i} must be a tuple (inputs..., target), got {type(batch).__name__}"
                )
            yield tuple(_tensor(a) for a in batch)

    def count(self, batch_size: int) -> int | None:
        """Batches per epoch, when known."""
        if self.dataset is not None:
            return -(-self.dataset.size // batch_size)
        return len(self.given) if hasattr(self.given, "__len__") else None


def _is_array(a: Any) -> bool:
    return isinstance(a, np.ndarray | torch.Tensor)


def _tensor(a: Any) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach()
    arr = np.asarray(a)
    return torch.from_numpy(np.array(arr, copy=True))
