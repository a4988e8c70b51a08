"""Row view shared by the sparse encodings ``#csr`` and ``#nm``.

Both view a weight ``[N, ...]`` as N rows of K = prod(rest) elements (row-major), store f32
values or i8 values with a symmetric per-row ``scale`` f32[N] (value = scale[n] * q).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.errors import McirError

if TYPE_CHECKING:
    from mcir.encodings.base import Encoding
    from mcir.types import TensorType


def rows(t: TensorType) -> tuple[int, int]:
    """(N rows, K elements per row)."""
    return t.shape[0], math.prod(t.shape[1:])


def check_dtype(enc: Encoding, t: TensorType) -> None:
    """Sparse values are f32 or i8, in a tensor of rank >= 1."""
    if t.dtype not in (dtypes.f32, dtypes.i8):
        raise McirError(f"#{enc.name} stores f32 or i8 values, not {t.dtype} (in {t})")
    if t.rank < 1:
        raise McirError(f"#{enc.name} needs a tensor of rank >= 1 (in {t})")


def scale_component(t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
    """The per-row scales of i8 values (none for f32)."""
    return {"scale": (dtypes.f32, (t.shape[0],))} if t.dtype == dtypes.i8 else {}


def row_scales(t: TensorType, stored: Any) -> np.ndarray:
    """Per-row scales (ones for f32 values)."""
    if t.dtype == dtypes.i8:
        return np.asarray(stored["scale"], np.float32)
    return np.ones(t.shape[0], np.float32)


def quantize_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: (q, scale) with values ≈ scale[:, None] * q (a zero stays zero)."""
    amax = np.abs(values).max(axis=1) if values.size else np.zeros(values.shape[0])
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(values / scale[:, None].astype(np.float64)), -127, 127).astype(np.int8)
    return q, scale
