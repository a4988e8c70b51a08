"""``#ternary<axis=0>`` on ``t2[N, ...]``: value = alpha[n] * (nonzero ? (sign ? -1 : +1) : 0).

Components ``nonzero`` u64[N, W], ``sign`` u64[N, W] (two bit-planes, packed as in
``bits.py``) and ``alpha`` f32[N] (ternary weight networks).

Facts: 2 bits per weight + 4 bytes per slice; a MAC against it is a "bit" MAC (popcount pair).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.encodings.base import register_encoding
from mcir.encodings.bits import PackedSlices, pack_bits, unpack_bits, words

if TYPE_CHECKING:
    from mcir.types import TensorType


@register_encoding
@dataclass(frozen=True)
class Ternary(PackedSlices):
    """value = alpha[n] * (nonzero ? (sign ? -1 : +1) : 0), two bit-planes, alpha per slice along axis 0."""

    name: ClassVar[str] = "ternary"
    needs_components: ClassVar[bool] = True
    dtype: ClassVar[DType] = dtypes.t2
    axis: int = 0

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        n, k = self.slices(t)
        w = words(k)
        return {"nonzero": (dtypes.u64, (n, w)), "sign": (dtypes.u64, (n, w)), "alpha": (dtypes.f32, (n,))}

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        _, k = self.slices(t)
        nonzero = unpack_bits(stored["nonzero"], k)
        negative = unpack_bits(stored["sign"], k)
        values = np.where(nonzero, np.where(negative, np.float32(-1), np.float32(1)), np.float32(0))
        return (values * np.asarray(stored["alpha"], np.float32)[:, None]).reshape(t.shape)

    def encode(self, t: TensorType, x: np.ndarray, delta_factor: float = 0.7) -> Any:
        """Ternary weight networks: Δ = delta_factor · mean|x| per slice, α = mean |x| over |x| > Δ."""
        n, k = self.slices(t)
        flat = np.asarray(x, np.float64).reshape(n, k)
        mag = np.abs(flat)
        delta = delta_factor * mag.mean(axis=1, keepdims=True)
        keep = mag > delta
        counts = keep.sum(axis=1)
        alpha = np.where(counts > 0, (mag * keep).sum(axis=1) / np.maximum(counts, 1), 0.0).astype(np.float32)
        return {"nonzero": pack_bits(keep), "sign": pack_bits(keep & (flat < 0)), "alpha": alpha}
