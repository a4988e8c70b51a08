"""``#codebook<bits=B, scope=layer|channel>`` on ``f32[N, ...]``: k-means weight sharing.

Each weight is an index into a table of ``2^B`` f32 centroids (Deep Compression's weight
sharing, ``w ≈ c[i]``): one table for the whole tensor (``scope=layer``) or one per slice
along axis 0 (``scope=channel``, one per output channel).

Components: ``indices`` u8[N, ceil(K·B/8)], the B-bit indices of each row (K = the elements
of a slice, row-major) as a little-endian bit stream (element k in bits [k·B, k·B + B) of
the row), and ``centroids`` f32[T, 2^B] with T = 1 (layer) or N (channel).

Facts: B bits per weight + 4·2^B bytes per table; a MAC against it is an "f32" MAC after a
table lookup (``vpermps`` from a register-resident table, ``codegen/kernels/lut.py``).
The library stores the indices in that kernel's plane layout (``lut_layout``); its bytes are
``kernels.lut.packed_bytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.encodings.base import Encoding, check_zero_padding, register_encoding
from mcir.errors import McirError

if TYPE_CHECKING:
    from mcir.types import TensorType


def slices(t: TensorType) -> tuple[int, int]:
    """(N rows along axis 0, K elements per row)."""
    return t.shape[0], math.prod(t.shape[1:])


def row_bytes(k: int, bits: int) -> int:
    """Bytes of one row of K B-bit indices in the canonical bit stream."""
    return max(1, -(-k * bits // 8))


def pack_indices(idx: np.ndarray, bits: int) -> np.ndarray:
    """[N, K] integers < 2^bits -> u8[N, row_bytes(K, bits)]: element k in bits [k·B, k·B+B) of
    its row (little-endian), padding bits zero."""
    n, k = idx.shape
    idx = np.asarray(idx, np.uint16)
    planes = ((idx[:, :, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)  # [N, K, B]
    stream = np.zeros((n, row_bytes(k, bits) * 8), np.uint8)
    stream[:, : k * bits] = planes.reshape(n, k * bits)
    return np.packbits(stream.reshape(n, -1, 8), axis=-1, bitorder="little").reshape(n, -1)


def unpack_indices(packed: np.ndarray, k: int, bits: int) -> np.ndarray:
    """Inverse of pack_indices: u8[N, bytes] -> u8[N, K]."""
    n = packed.shape[0]
    stream = np.unpackbits(np.asarray(packed, np.uint8), axis=-1, bitorder="little")[:, : k * bits]
    planes = stream.reshape(n, k, bits).astype(np.uint16)
    return (planes << np.arange(bits, dtype=np.uint16)).sum(axis=-1).astype(np.uint8)


def check_bits(name: str, bits: Any, lo: int, hi: int) -> int:
    """``bits`` as an int in [lo, hi], else a McirError naming the encoding."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise McirError(f"#{name} bits must be an integer in {lo}..{hi}, got {bits!r}")
    return bits


@register_encoding
@dataclass(frozen=True)
class Codebook(Encoding):
    """Shared weights: B-bit indices into 2^B f32 centroids per layer or per output channel."""

    name: ClassVar[str] = "codebook"
    needs_components: ClassVar[bool] = True
    bits: int = 4
    scope: str = "layer"

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits, "scope": self.scope}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Codebook:
        unknown = set(params) - {"bits", "scope"}
        if unknown or "bits" not in params:
            raise McirError(f"#codebook takes bits=2..8 and scope=layer|channel (got {sorted(params)})")
        scope = params.get("scope", "layer")
        if scope not in ("layer", "channel"):
            raise McirError(f"#codebook scope must be layer or channel, got {scope!r}")
        return cls(bits=check_bits("codebook", params["bits"], 1, 8), scope=scope)

    def check(self, t: TensorType) -> None:
        check_bits("codebook", self.bits, 1, 8)
        if t.dtype != dtypes.f32 or t.rank < 1:
            raise McirError(f"#codebook holds f32 centroids of a tensor of rank >= 1, not {t}")

    def tables(self, t: TensorType) -> int:
        """Number of centroid tables: 1 per layer or one per row."""
        return 1 if self.scope == "layer" else t.shape[0]

    def check_stored(self, t: TensorType, stored: dict[str, Any]) -> None:
        # every B-bit code indexes a table of 2^B entries, so codes are in range by construction; the bits
        # past K*B in a row must be zero (kernels load whole bytes and the canonical form is unique)
        check_zero_padding(self.name, "indices", stored["indices"], slices(t)[1] * self.bits)

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        n, k = slices(t)
        return {
            "indices": (dtypes.u8, (n, row_bytes(k, self.bits))),
            "centroids": (dtypes.f32, (self.tables(t), 2**self.bits)),
        }

    def indices(self, t: TensorType, stored: Any) -> np.ndarray:
        """The unpacked indices, u8[N, K]."""
        _, k = slices(t)
        return unpack_indices(stored["indices"], k, self.bits)

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        idx = self.indices(t, stored).astype(np.int64)
        c = np.asarray(stored["centroids"], np.float32)
        values = c[0][idx] if self.scope == "layer" else np.take_along_axis(c, idx, axis=1)
        return values.reshape(t.shape)

    def encode(self, t: TensorType, x: np.ndarray) -> Any:
        raise McirError("#codebook values are constants; build them with the cluster pass (mcir.passes.cluster)")
