"""``#sparse_codebook<bits=B, gap_bits=G, nnz=NNZ, entries=E>`` on ``f32[N, ...]``: Deep Compression's storage.

A pruned and clustered weight stores only its non-zeros, each as a B-bit index into one
table of ``2^B`` f32 centroids (k-means weight sharing over the surviving weights), and its
positions as *relative* gaps of G bits (Deep Compression's relative indexing):

* the weight is walked in row-major order over all its ``N·K`` elements with a cursor ``p``
  (starting at 0); an entry with gap ``g < 2^G - 1`` is a non-zero at position ``p + g``
  (then ``p = p + g + 1``); the reserved gap ``2^G - 1`` is a *filler*: ``p += 2^G - 1`` and
  no weight (a skip longer than a gap can say is split into fillers);
* so ``E = NNZ + fillers`` entries; a filler's code is 0 and the last entry is never a filler.

Rows are not delimited: a position past the end of a row continues in the next one
(``row = pos // K``), so there are no row pointers to store.

Components: ``codes`` u8[ceil(E·B/8)] and ``gaps`` u8[ceil(E·G/8)], each a little-endian bit
stream (entry e in bits [e·B, e·B + B)), and ``centroids`` f32[2^B]. Facts: ``B + G`` bits per
entry + ``4·2^B`` bytes; only NNZ values are parameters and MACs ("sparse" MACs). The
native kernel (``codegen/kernels/sparse_lut.py``) streams both bit streams as stored.

Example, one row of 20 with non-zeros at 3 and 19, G = 3 (filler = 7)::

    entries: (gap 3, code c0) (filler) (filler) (gap 1, code c1)      # 3, then 4+7+7+1 = 19
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.encodings.base import Encoding, check_zero_padding, int_param, register_encoding
from mcir.encodings.codebook import check_bits, pack_indices, row_bytes, unpack_indices
from mcir.errors import McirError

if TYPE_CHECKING:
    from mcir.types import TensorType


def stream_bytes(entries: int, bits: int) -> int:
    """Bytes of a bit stream of ``entries`` values of ``bits`` bits (at least 1)."""
    return row_bytes(entries, bits)


def pack_stream(values: np.ndarray, bits: int) -> np.ndarray:
    """1-D integers < 2^bits -> u8 bit stream (value e in bits [e·bits, e·bits + bits))."""
    return pack_indices(np.asarray(values).reshape(1, -1), bits).reshape(-1)


def unpack_stream(stream: np.ndarray, entries: int, bits: int) -> np.ndarray:
    """Inverse of pack_stream: u8 stream -> i64[entries]."""
    return unpack_indices(np.asarray(stream).reshape(1, -1), entries, bits).reshape(-1).astype(np.int64)


def entries_for(positions: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gaps i64[E], real bool[E]) of sorted flat ``positions`` with G-bit gaps: each skip ``d``
    before a non-zero becomes ``d // (2^G - 1)`` fillers and a gap ``d % (2^G - 1)``."""
    filler = 2**gap_bits - 1
    pos = np.asarray(positions, np.int64)
    skips = np.diff(pos, prepend=-1) - 1  # elements skipped before each non-zero
    fills = skips // filler
    total = len(pos) + int(fills.sum())
    gaps = np.full(total, filler, np.int64)
    real = np.zeros(total, bool)
    at = np.arange(len(pos)) + np.cumsum(fills)  # each non-zero comes after its fillers
    gaps[at] = skips - fills * filler
    real[at] = True
    return gaps, real


def best_gap_bits(positions: np.ndarray, bits: int, choices: range = range(1, 9)) -> int:
    """The gap width with the fewest stream bits ``E(G)·(B + G)`` (ties: the smaller G)."""
    pos = np.asarray(positions, np.int64)
    skips = np.diff(pos, prepend=-1) - 1
    cost = {g: (len(pos) + int((skips // (2**g - 1)).sum())) * (bits + g) for g in choices}
    return min(cost, key=lambda g: (cost[g], g))


@register_encoding
@dataclass(frozen=True)
class SparseCodebook(Encoding):
    """Non-zeros as B-bit codebook indices at G-bit relative positions (with fillers), one f32 table."""

    name: ClassVar[str] = "sparse_codebook"
    needs_components: ClassVar[bool] = True
    mac_kind: ClassVar[str] = "sparse"
    bits: int = 5
    gap_bits: int = 4
    nnz: int = 0
    entries: int = 0

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits, "gap_bits": self.gap_bits, "nnz": self.nnz, "entries": self.entries}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SparseCodebook:
        if set(params) != {"bits", "gap_bits", "nnz", "entries"}:
            raise McirError(f"#sparse_codebook takes bits=1..8, gap_bits=1..8, nnz and entries (got {sorted(params)})")
        return cls(
            bits=check_bits("sparse_codebook", params["bits"], 1, 8),
            gap_bits=int_param("sparse_codebook", "gap_bits", params["gap_bits"], 1, 8),
            nnz=int_param("sparse_codebook", "nnz", params["nnz"], 0, 2**62),
            entries=int_param("sparse_codebook", "entries", params["entries"], 0, 2**62),
        )

    def check(self, t: TensorType) -> None:
        check_bits("sparse_codebook", self.bits, 1, 8)
        int_param("sparse_codebook", "gap_bits", self.gap_bits, 1, 8)
        if t.dtype != dtypes.f32 or t.rank < 1:
            raise McirError(f"#sparse_codebook holds f32 centroids of a tensor of rank >= 1, not {t}")
        if not 0 <= self.nnz <= t.numel:
            raise McirError(f"#sparse_codebook nnz={self.nnz} is outside [0, {t.numel}] for {list(t.shape)}")
        if self.entries < self.nnz or (self.nnz == 0 and self.entries):
            raise McirError(
                f"#sparse_codebook entries={self.entries} must be >= nnz={self.nnz} (fillers only before a non-zero)"
            )

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        return {
            "codes": (dtypes.u8, (stream_bytes(self.entries, self.bits),)),
            "gaps": (dtypes.u8, (stream_bytes(self.entries, self.gap_bits),)),
            "centroids": (dtypes.f32, (2**self.bits,)),
        }

    def stored_fraction(self, t: TensorType) -> float:
        return self.nnz / t.numel if t.numel else 1.0

    def entry_streams(self, stored: Any) -> tuple[np.ndarray, np.ndarray]:
        """(codes i64[E], gaps i64[E]) unpacked."""
        codes = unpack_stream(stored["codes"], self.entries, self.bits)
        gaps = unpack_stream(stored["gaps"], self.entries, self.gap_bits)
        return codes, gaps

    def positions(self, stored: Any) -> tuple[np.ndarray, np.ndarray]:
        """(flat positions i64[NNZ] of the non-zeros, their codes i64[NNZ])."""
        codes, gaps = self.entry_streams(stored)
        real = gaps != 2**self.gap_bits - 1
        after = np.cumsum(gaps + real)  # the cursor after each entry
        return after[real] - 1, codes[real]

    def check_stored(self, t: TensorType, stored: dict[str, Any]) -> None:
        # the kernel trusts the streams: every position it computes must lie inside the weight
        where = f"#sparse_codebook<nnz={self.nnz}, entries={self.entries}>"
        for key, bits in (("codes", self.bits), ("gaps", self.gap_bits)):
            check_zero_padding(self.name, key, np.asarray(stored[key]).reshape(1, -1), self.entries * bits)
        codes, gaps = self.entry_streams(stored)
        filler = gaps == 2**self.gap_bits - 1
        if int((~filler).sum()) != self.nnz:
            raise McirError(f"{where} component 'gaps' holds {int((~filler).sum())} non-zero entries, not nnz")
        if self.entries and filler[-1]:
            raise McirError(f"{where} component 'gaps' ends with a filler: the last entry must be a non-zero")
        if (codes[filler] != 0).any():
            entry = int(np.argmax(filler & (codes != 0)))
            raise McirError(f"{where} component 'codes' has a non-zero code on filler entry {entry}; fillers hold 0")
        end = int((gaps + ~filler).sum())
        if end > t.numel:
            raise McirError(
                f"{where} component 'gaps' walks to position {end - 1}, past the {t.numel} elements of {list(t.shape)}"
            )
        if not np.isfinite(np.asarray(stored["centroids"], np.float64)).all():
            raise McirError(f"{where} component 'centroids' holds a NaN or infinity")

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        pos, codes = self.positions(stored)
        dense = np.zeros(t.numel, np.float32)
        dense[pos] = np.asarray(stored["centroids"], np.float32)[codes]
        return dense.reshape(t.shape)

    def encode(self, t: TensorType, x: np.ndarray) -> Any:
        raise McirError(
            "#sparse_codebook values are constants; build them with the cluster pass on a pruned weight "
            "(mcir.encodings.sparse_codebook.to_sparse_codebook)"
        )


def to_sparse_codebook(
    shape: tuple[int, ...], positions: np.ndarray, codes: np.ndarray, centroids: np.ndarray, gap_bits: int | None = None
) -> tuple[TensorType, dict[str, np.ndarray]]:
    """The type and components of a weight of ``shape`` whose non-zeros at flat ``positions``
    (increasing) are ``centroids[codes]``; ``gap_bits=None`` picks the width with the fewest bytes."""
    from mcir.types import TensorType

    table = np.asarray(centroids, np.float32).reshape(-1)
    bits = int(math.log2(len(table)))
    if 2**bits != len(table) or not 1 <= bits <= 8:
        raise McirError(f"#sparse_codebook needs 2^B centroids with B in 1..8, got {len(table)}")
    pos = np.asarray(positions, np.int64)
    if pos.size and ((np.diff(pos) <= 0).any() or pos[0] < 0 or pos[-1] >= math.prod(shape)):
        raise McirError("to_sparse_codebook: positions must be increasing and inside the weight")
    g = best_gap_bits(pos, bits) if gap_bits is None else gap_bits
    gaps, real = entries_for(pos, g)
    all_codes = np.zeros(len(gaps), np.int64)
    all_codes[real] = np.asarray(codes, np.int64)
    enc = SparseCodebook(bits=bits, gap_bits=g, nnz=len(pos), entries=len(gaps))
    return TensorType(tuple(shape), dtypes.f32, enc), {
        "codes": pack_stream(all_codes, bits),
        "gaps": pack_stream(gaps, g),
        "centroids": table,
    }
