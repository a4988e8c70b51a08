"""Sparse weights for the sparse kernel tests: random patterns with a given density, empty
rows, N:M patterns, in f32 or int8 (per-row scales), built with mcir.encodings' own encoders."""

from __future__ import annotations

import numpy as np

from mcir import dtypes
from mcir.encodings import to_csr, to_nm
from mcir.ir import Graph
from mcir.types import TensorType


def pruned(rng: np.random.Generator, n: int, k: int, density: float, empty_rows: float = 0.0) -> np.ndarray:
    """A dense [n, k] f32 matrix with about ``density`` non-zeros and a fraction of all-zero rows."""
    w = rng.standard_normal((n, k)).astype(np.float32) * np.float32(k**-0.5)
    w[rng.random((n, k)) >= density] = 0
    if empty_rows:
        w[rng.random(n) < empty_rows] = 0
    return w


def nm_pruned(rng: np.random.Generator, n: int, k: int, keep: int, group: int) -> np.ndarray:
    """A dense [n, k] f32 matrix keeping the ``keep`` largest of every ``group`` consecutive weights."""
    w = rng.standard_normal((n, k // group, group)).astype(np.float32)
    order = np.argsort(-np.abs(w), axis=2)
    mask = np.zeros_like(w, bool)
    np.put_along_axis(mask, order[:, :, :keep], True, axis=2)
    return (w * mask).reshape(n, k) * np.float32(k**-0.5)


def sparse_const(g: Graph, name: str, dense: np.ndarray, encoding: str, dtype=dtypes.f32, nm: tuple[int, int] = (2, 4)):
    """A #csr or #nm constant (shape of ``dense``) in f32 or i8, via mcir.encodings.to_csr / to_nm."""
    flat = dense.reshape(dense.shape[0], -1)
    t, parts = to_csr(flat, dtype) if encoding == "csr" else to_nm(flat, *nm, dtype=dtype)
    t = TensorType(dense.shape, t.dtype, t.encoding)
    return g.const(name, parts, t)
