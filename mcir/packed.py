"""Bit-packed encodings: binary {-1, +1} and ternary {-1, 0, +1}, each with a scale per slice.

Both flatten each slice along ``axis`` (axis 0: one output channel of a weight, or one
sample of an activation) into K elements in row-major order, and pack those K elements
into ceil(K / 64) little-endian 64-bit words (element k is bit k % 64 of word k // 64).
Bits past K in the last word are zero and mean nothing.

``#binary<axis=0>`` on ``b1[N, ...]``: value = alpha[n] * (bit ? +1 : -1), components
``bits`` u64[N, W] and ``alpha`` f32[N] (XNOR-Net / BinaryConnect: W ≈ α · sign(W)).

``#ternary<axis=0>`` on ``t2[N, ...]``: value = alpha[n] * (nonzero ? (sign ? -1 : +1) : 0),
components ``nonzero`` u64[N, W], ``sign`` u64[N, W] and ``alpha`` f32[N] (ternary weight
networks: two bit-planes).

Encoding an activation (``quantize(%x) : b1[1,784] #binary<axis=0>``) computes alpha per
sample at run time as mean|x| (XNOR-Net's β), so binary activations carry their scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.errors import McirError
from mcir.types import Encoding, TensorType, register_encoding


def words(k: int) -> int:
    """64-bit words holding k bits."""
    return max(1, math.ceil(k / 64))


def pack_bits(mask: np.ndarray) -> np.ndarray:
    """[N, K] bools -> [N, ceil(K/64)] u64, element k in bit k % 64 of word k // 64 (zero padding)."""
    n, k = mask.shape
    padded = np.zeros((n, words(k) * 64), np.uint8)
    padded[:, :k] = mask
    as_bytes = np.packbits(padded.reshape(n, -1, 8), axis=-1, bitorder="little").reshape(n, -1)
    return as_bytes.view("<u8").reshape(n, words(k)).astype(np.uint64)


def unpack_bits(bits: np.ndarray, k: int) -> np.ndarray:
    """Inverse of pack_bits: [N, W] u64 -> [N, K] bools."""
    n = bits.shape[0]
    as_bytes = np.ascontiguousarray(bits.astype("<u8")).view(np.uint8).reshape(n, -1)
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[:, :k].astype(bool)


class _Packed(Encoding):
    """Shared shape logic: slices along axis 0 flattened to K elements."""

    axis: int

    def params(self) -> dict[str, Any]:
        return {"axis": self.axis}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Encoding:
        if set(params) != {"axis"}:
            raise McirError(f"#{cls.name} takes exactly one parameter, axis (got {sorted(params)})")
        return cls(axis=int(params["axis"]))

    def check(self, t: TensorType) -> None:
        if t.dtype != self.dtype:
            raise McirError(f"#{self.name} needs dtype {self.dtype}, got {t.dtype} (in {t})")
        if self.axis != 0 or t.rank < 1:
            raise McirError(f"#{self.name} packs slices along axis 0 of a tensor of rank >= 1 (in {t})")

    @staticmethod
    def slices(t: TensorType) -> tuple[int, int]:
        """(N slices, K elements per slice)."""
        return t.shape[0], math.prod(t.shape[1:])


@register_encoding
@dataclass(frozen=True)
class Binary(_Packed):
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


@register_encoding
@dataclass(frozen=True)
class Ternary(_Packed):
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
