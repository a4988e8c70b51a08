"""Bit packing shared by ``#binary`` and ``#ternary``: slices along axis 0, bits in u64 words.

Each slice along axis 0 (one output channel of a weight, or one sample of an activation) is
flattened to K elements in row-major order and packed into ceil(K / 64) little-endian 64-bit
words (element k is bit k % 64 of word k // 64). Bits past K in the last word are zero.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mcir.dtypes import DType
from mcir.encodings.base import Encoding, check_scales, check_zero_padding, int_param
from mcir.errors import McirError

if TYPE_CHECKING:
    from mcir.types import TensorType


def words(k: int) -> int:
    """64-bit words holding k bits."""
    return max(1, math.ceil(k / 64))


def pack_bits(mask: np.ndarray) -> np.ndarray:
    """[N, K] bools -> [N, ceil(K/64)] u64, element k in bit k % 64 of word k // 64 (zero padding)."""
    n, k = mask.shape
    if n == 0:  # reshape(0, -1, 8) below cannot infer its middle dimension
        return np.zeros((0, words(k)), np.uint64)
    padded = np.zeros((n, words(k) * 64), np.uint8)
    padded[:, :k] = mask
    as_bytes = np.packbits(padded.reshape(n, -1, 8), axis=-1, bitorder="little").reshape(n, -1)
    return as_bytes.view("<u8").reshape(n, words(k)).astype(np.uint64)


def unpack_bits(bits: np.ndarray, k: int) -> np.ndarray:
    """Inverse of pack_bits: [N, W] u64 -> [N, K] bools."""
    n = bits.shape[0]
    if n == 0:
        return np.zeros((0, k), bool)
    as_bytes = np.ascontiguousarray(bits.astype("<u8")).view(np.uint8).reshape(n, -1)
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[:, :k].astype(bool)


class PackedSlices(Encoding):
    """Shape logic of the bit-packed encodings: slices along axis 0 flattened to K elements."""

    axis: int
    dtype: ClassVar[DType]
    mac_kind: ClassVar[str] = "bit"

    def params(self) -> dict[str, Any]:
        return {"axis": self.axis}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Encoding:
        if set(params) != {"axis"}:
            raise McirError(f"#{cls.name} takes exactly one parameter, axis (got {sorted(params)})")
        return cls(axis=int_param(cls.name, "axis", params["axis"], 0, 0))

    def check(self, t: TensorType) -> None:
        if t.dtype != self.dtype:
            raise McirError(f"#{self.name} needs dtype {self.dtype}, got {t.dtype} (in {t})")
        if self.axis != 0 or t.rank < 1:
            raise McirError(f"#{self.name} packs slices along axis 0 of a tensor of rank >= 1 (in {t})")

    def check_stored(self, t: TensorType, stored: dict[str, Any]) -> None:
        # XNOR/popcount kernels count whole words: a set bit past K changes the result
        _, k = self.slices(t)
        for key, (dt, _shape) in self.components(t).items():
            if dt.name == "u64":
                check_zero_padding(self.name, key, stored[key], k)
        check_scales(self.name, "alpha", stored["alpha"], zero_ok=True)  # alpha = mean|w| is 0 for a zero slice

    @staticmethod
    def slices(t: TensorType) -> tuple[int, int]:
        """(N slices, K elements per slice)."""
        return t.shape[0], math.prod(t.shape[1:])
