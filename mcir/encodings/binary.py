"""``#binary<axis=0>`` on ``b1[N, ...]``: value = alpha[n] * (bit ? +1 : -1).

Components ``bits`` u64[N, ceil(K/64)] (see ``bits.py`` for the packing) and ``alpha`` f32[N]
(XNOR-Net / BinaryConnect: W ≈ α · sign(W)). Encoding an activation
(``quantize(%x) : b1[1,784] #binary<axis=0>``) computes alpha per sample at run time as
mean|x| (XNOR-Net's β), so binary activations carry their scale.

Facts: 1 bit per weight + 4 bytes per slice; a MAC against it is a "bit" MAC (XNOR + popcount
against binary activations, sign-select against float ones).
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
class Binary(PackedSlices):
    """value = alpha[n] * (bit ? +1 : -1), bits packed in u64 words, alpha per slice along axis 0."""

    name: ClassVar[str] = "binary"
    needs_components: ClassVar[bool] = True
    computed: ClassVar[bool] = True  # binary activations: bits and β = mean|x| per sample
    dtype: ClassVar[DType] = dtypes.b1
    axis: int = 0

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        n, k = self.slices(t)
        return {"bits": (dtypes.u64, (n, words(k))), "alpha": (dtypes.f32, (n,))}

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        _, k = self.slices(t)
        signs = np.where(unpack_bits(stored["bits"], k), np.float32(1), np.float32(-1))
        return (signs * np.asarray(stored["alpha"], np.float32)[:, None]).reshape(t.shape)

    def encode(self, t: TensorType, x: np.ndarray) -> Any:
        n, k = self.slices(t)
        flat = np.asarray(x, np.float32).reshape(n, k)
        alpha = np.abs(flat).mean(axis=1, dtype=np.float64).astype(np.float32)
        return {"bits": pack_bits(flat >= 0), "alpha": alpha}
