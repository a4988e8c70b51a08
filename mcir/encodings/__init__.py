"""Storage encodings of tensors, one module per encoding, and their registry.

``base.py`` holds the ``Encoding`` base class and the registry by text name; each module
registers its encoding when imported, and this package imports every one of them, so
``mcir.encodings.ENCODINGS`` is complete once ``mcir.encodings`` is imported:

========== ============================= ==================================================
module     encoding                      stored as
========== ============================= ==================================================
quant.py   ``#quant`` (per tensor/axis)  integer array (+ f32 scales per axis)
binary.py  ``#binary<axis=0>``           1 bit per weight in u64 words + f32 alpha per slice
ternary.py ``#ternary<axis=0>``          2 bit-planes in u64 words + f32 alpha per slice
csr.py     ``#csr<nnz=...>``             values, i32 column indices, i32 row pointers
nm.py      ``#nm<n=..., m=...>``         n of every m values + u8 positions
========== ============================= ==================================================
"""

from __future__ import annotations

from mcir.encodings.base import ENCODINGS, Encoding, register_encoding
from mcir.encodings.binary import Binary
from mcir.encodings.csr import Csr, to_csr
from mcir.encodings.nm import NM, to_nm
from mcir.encodings.quant import Quant
from mcir.encodings.ternary import Ternary

__all__ = ["ENCODINGS", "NM", "Binary", "Csr", "Encoding", "Quant", "Ternary", "register_encoding", "to_csr", "to_nm"]
