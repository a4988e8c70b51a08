"""Storage encodings of tensors, one module per encoding, and their registry.

``base.py`` holds the ``Encoding`` base class and the registry by text name; each module
registers its encoding when imported, and this package imports every one of them, so
``mcir.encodings.ENCODINGS`` is complete once ``mcir.encodings`` is imported:

================== ============================ ===================================================
module             encoding                     stored as
================== ============================ ===================================================
quant.py           ``#quant`` (per tensor/axis) integer array (+ f32 scales per axis)
binary.py          ``#binary<axis=0>``          1 bit per weight in u64 words + f32 alpha per slice
ternary.py         ``#ternary<axis=0>``         2 bit-planes in u64 words + f32 alpha per slice
csr.py             ``#csr<nnz=...>``            values, i32 column indices, i32 row pointers
nm.py              ``#nm<n=..., m=...>``        n of every m values + u8 positions
codebook.py        ``#codebook<bits, scope>``   B-bit indices + f32 centroid tables (k-means)
int4.py            ``#int4<group>``, ``#int2``  4/2-bit integers + f32 scale per row or group
pow2.py            ``#pow2<bits=B>``            sign + exponent codes + i8 exponent offset per row
sparse_codebook.py ``#sparse_codebook``         B-bit codes of the non-zeros + G-bit gaps, f32 table
dynamic.py         ``#dynamic<axis=0>``         u8 + f32 scale, i32 zero point per sample (run time)
round.py           ``#round<>``                 bf16: f32 values rounded to nearest even (run time)
================== ============================ ===================================================
"""

from __future__ import annotations

from mcir.encodings.base import ENCODINGS, Encoding, register_encoding
from mcir.encodings.binary import Binary
from mcir.encodings.codebook import Codebook
from mcir.encodings.csr import Csr, to_csr
from mcir.encodings.dynamic import Dynamic
from mcir.encodings.int4 import Int2, Int4
from mcir.encodings.nm import NM, to_nm
from mcir.encodings.pow2 import Pow2
from mcir.encodings.quant import Quant
from mcir.encodings.round import Round
from mcir.encodings.sparse_codebook import SparseCodebook, to_sparse_codebook
from mcir.encodings.ternary import Ternary

__all__ = [
    "ENCODINGS",
    "NM",
    "Binary",
    "Codebook",
    "Csr",
    "Dynamic",
    "Encoding",
    "Int2",
    "Int4",
    "Pow2",
    "Quant",
    "Round",
    "SparseCodebook",
    "Ternary",
    "register_encoding",
    "to_csr",
    "to_nm",
    "to_sparse_codebook",
]
