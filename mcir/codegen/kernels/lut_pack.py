"""Compile-time layout of table-lookup weights (``#codebook``, ``#int4``/``#int2``, ``#pow2``), numpy only.

The three encodings store B-bit indices per weight and a small table per layer, row or group;
``lut.py`` streams them through one kernel. The library blob of a weight [N, K] is:

* **indices**, N rows of ``row_bytes`` each, in *planes*: the kernel loads 16 bytes, widens
  them to 16 i32 lanes and takes plane p as ``(lane >> p·L) & (2^L - 1)``, so a block of 16
  bytes holds ``16 · 8/L`` weights and weight ``j·16·P + 16·p + l`` of a row sits in bits
  [p·L, p·L + L) of byte ``16·j + l`` (P = 8/L planes). L, the library's bits per index, is
  B for B in {1, 2, 4}, 4 for B = 3 and 8 for B >= 5. K is padded with index 0 to whole
  blocks (the kernel multiplies the padding with zeros of x, never read from memory).
* **tables**, as the encoding stores them: ``#codebook`` centroids f32[T, 2^B] (T = 1 or N),
  ``#int4``/``#int2`` scales f32[N, groups], ``#pow2`` exponent offsets i8[N].

``packed_bytes(t)`` is exactly ``len(pack(t, stored))``, computed from the type alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mcir.encodings import Codebook, Int2, Int4, Pow2
from mcir.encodings.codebook import slices
from mcir.errors import CodegenError
from mcir.types import TensorType

LUT_ENCODINGS = (Codebook, Int4, Int2, Pow2)


@dataclass(frozen=True)
class LutLayout:
    """Geometry of one weight's blob."""

    n: int
    k: int
    bits: int  # B, bits per index in the IR
    lib_bits: int  # L, bits per index in the library

    @property
    def planes(self) -> int:
        return 8 // self.lib_bits

    @property
    def block(self) -> int:
        """Weights per 16-byte block."""
        return 16 * self.planes

    @property
    def blocks(self) -> int:
        return max(1, -(-self.k // self.block))

    @property
    def row_bytes(self) -> int:
        return 16 * self.blocks

    @property
    def index_bytes(self) -> int:
        return self.n * self.row_bytes

    @property
    def entries(self) -> int:
        """Entries of one lookup table (2^B)."""
        return 2**self.bits


def layout(t: TensorType) -> LutLayout:
    """The blob geometry of a weight of type ``t``."""
    enc = t.encoding
    if not isinstance(enc, LUT_ENCODINGS):
        raise CodegenError(f"internal error: {t} is not a table-lookup weight")
    n, k = slices(t)
    bits = enc.bits
    lib_bits = bits if bits in (1, 2, 4) else (4 if bits == 3 else 8)
    return LutLayout(n, k, bits, lib_bits)


def table_bytes(t: TensorType) -> int:
    """Bytes of the tables section (as the encoding stores its table component)."""
    enc = t.encoding
    if isinstance(enc, Codebook):
        return 4 * enc.tables(t) * 2**enc.bits
    if isinstance(enc, Pow2):
        return t.shape[0]
    comps = enc.components(t)
    return 4 * int(np.prod(comps["scale"][1]))


def packed_bytes(t: TensorType) -> int:
    """Bytes the library embeds for a constant of type ``t`` (== ``len(pack(t, stored))``)."""
    return layout(t).index_bytes + table_bytes(t)


def plane_indices(idx: np.ndarray, lay: LutLayout) -> np.ndarray:
    """u8[N, K] indices -> u8[N, row_bytes] in the plane layout (see the module docstring)."""
    padded = np.zeros((lay.n, lay.blocks * lay.block), np.uint8)
    padded[:, : lay.k] = idx
    per_block = padded.reshape(lay.n, lay.blocks, lay.planes, 16).astype(np.uint16)
    shifts = (np.arange(lay.planes, dtype=np.uint16) * lay.lib_bits)[None, None, :, None]
    return (per_block << shifts).sum(axis=2).astype(np.uint8).reshape(lay.n, lay.row_bytes)


def pack(t: TensorType, stored: Any) -> np.ndarray:
    """The library blob (u8) of a constant of type ``t`` with canonical storage ``stored``."""
    enc = t.encoding
    lay = layout(t)
    if isinstance(enc, Codebook):
        idx, table = enc.indices(t, stored), np.asarray(stored["centroids"], np.float32)
    elif isinstance(enc, Pow2):
        idx, table = enc.codes(t, stored), np.asarray(stored["offset"], np.int8)
    else:
        # two's-complement codes: the kernel's base table maps code c to its signed value
        idx = enc.values(t, stored).astype(np.uint8) & np.uint8(2**enc.bits - 1)
        table = np.asarray(stored["scale"], np.float32)
    blob = np.concatenate([plane_indices(idx, lay).reshape(-1), np.ascontiguousarray(table).reshape(-1).view(np.uint8)])
    if blob.size != packed_bytes(t):
        raise CodegenError(f"internal error: lut blob of {t} has {blob.size} bytes, expected {packed_bytes(t)}")
    return blob
