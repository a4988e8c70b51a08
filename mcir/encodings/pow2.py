"""``#pow2<bits=B>`` on ``f32[N, ...]``: logarithmic (power-of-two) weights.

Each weight is 0 or ``±2^(offset[n] + e - E)`` with e in 1..E, E = 2^(B-1) - 1: one sign bit
and B-1 exponent bits per weight (e = 0 codes zero), and one exponent offset per output
channel, so row n spans the magnitudes ``2^(offset[n] - E + 1) .. 2^offset[n]``. This is the
seeds' logarithmic quantiser ``w_q = ±2^k, k = argmin |w - 2^k|``.

Components: ``codes`` u8[N, ceil(K·B/8)], the B-bit codes (sign in the top bit) of each row
as a little-endian bit stream (``codebook.pack_indices``), and ``offset`` i8[N].

Facts: B bits per weight + 1 byte per row. Decoding is exact (a power of two is an exact
f32), and a product ``x · 2^k`` is exact unless it leaves the normal range, so a dot product
against pow2 weights rounds only in its sum. The kernel (``kernels/lut.py``) builds each
row's 16-entry table by an integer add of ``offset[n] << 23`` into the exponent field of a
fixed table of ±2^(e-E).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.encodings.base import Encoding, check_zero_padding, register_encoding
from mcir.encodings.codebook import check_bits, pack_indices, row_bytes, slices, unpack_indices
from mcir.errors import McirError

if TYPE_CHECKING:
    from mcir.types import TensorType

#: offsets keep every level a normal f32 for B <= 5: 2^(offset - E + 1) >= 2^-126
OFFSET_RANGE = (-100, 100)


def levels(bits: int) -> np.ndarray:
    """Value of each B-bit code for offset 0: code = sign << (B-1) | e, 0 for e = 0 (f64)."""
    top = 2 ** (bits - 1) - 1
    codes = np.arange(2**bits)
    e = codes & top
    mag = np.where(e > 0, np.exp2((e - top).astype(np.float64)), 0.0)
    return np.where(codes >> (bits - 1), -mag, mag)


@register_encoding
@dataclass(frozen=True)
class Pow2(Encoding):
    """0 or ±2^k per weight: sign + exponent bits, exponent offset per output channel."""

    name: ClassVar[str] = "pow2"
    needs_components: ClassVar[bool] = True
    bits: int = 4

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Pow2:
        if set(params) != {"bits"}:
            raise McirError(f"#pow2 takes exactly one parameter, bits=2..4 (got {sorted(params)})")
        return cls(bits=check_bits("pow2", params["bits"], 2, 4))

    def check(self, t: TensorType) -> None:
        check_bits("pow2", self.bits, 2, 4)
        if t.dtype != dtypes.f32 or t.rank < 1:
            raise McirError(f"#pow2 holds f32 powers of two in a tensor of rank >= 1, not {t}")

    def check_stored(self, t: TensorType, stored: dict[str, Any]) -> None:
        # every B-bit code indexes a table of 2^B entries, so codes are in range by construction; the bits
        # past K*B in a row must be zero (kernels load whole bytes and the canonical form is unique)
        check_zero_padding(self.name, "codes", stored["codes"], slices(t)[1] * self.bits)

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        n, k = slices(t)
        return {"codes": (dtypes.u8, (n, row_bytes(k, self.bits))), "offset": (dtypes.i8, (n,))}

    def codes(self, t: TensorType, stored: Any) -> np.ndarray:
        """The unpacked codes, u8[N, K]."""
        return unpack_indices(stored["codes"], slices(t)[1], self.bits)

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        lv = levels(self.bits)[self.codes(t, stored).astype(np.int64)]
        offset = np.asarray(stored["offset"], np.float64)[:, None]
        return (lv * np.exp2(offset)).astype(np.float32).reshape(t.shape)

    def encode(self, t: TensorType, x: np.ndarray) -> Any:
        """Nearest level (in value) per weight; per row the offset (floor or ceil of log2 max|w|)
        with the smaller squared error."""
        n, k = slices(t)
        w = np.asarray(x, np.float64).reshape(n, k)
        amax = np.abs(w).max(axis=1) if k else np.zeros(n)
        base = np.floor(np.log2(np.where(amax > 0, amax, 1.0)))
        best_err = np.full(n, np.inf)
        best_codes = np.zeros((n, k), np.int64)
        best_off = np.zeros(n, np.int64)
        for off in (base, base + 1):
            off = np.clip(off, *OFFSET_RANGE).astype(np.int64)
            codes = self._nearest(w, off)
            err = ((levels(self.bits)[codes] * np.exp2(off)[:, None] - w) ** 2).sum(axis=1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_codes[better] = codes[better]
            best_off[better] = off[better]
        return {"codes": pack_indices(best_codes, self.bits), "offset": best_off.astype(np.int8)}

    def _nearest(self, w: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Code of the nearest level to each |w| in rows scaled by 2^offset, with w's sign."""
        top = 2 ** (self.bits - 1) - 1
        mags = np.concatenate([[0.0], np.exp2(np.arange(1, top + 1) - top)])  # code e -> magnitude
        a = np.abs(w) / np.exp2(offset.astype(np.float64))[:, None]
        e = np.searchsorted((mags[1:] + mags[:-1]) / 2, a, side="right")  # midpoints: nearest magnitude
        return np.where((w < 0) & (e > 0), e | (1 << (self.bits - 1)), e)
