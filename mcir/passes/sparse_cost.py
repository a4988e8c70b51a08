"""When a pruned weight is worth storing sparse: the one cost rule prune and quantize share.

``prefer_sparse(kind, rows, cols, nnz, dtype)`` says whether a weight viewed as
``rows x cols`` (rows = output channels, cols = everything else) with ``nnz`` non-zeros
should be stored as ``#csr`` (``kind="csr"``) or ``#nm`` (``kind="nm"``, with ``n``/``m``)
in ``dtype`` (f32 or i8) instead of a dense array holding zeros. It pays when both hold:

1. **it is smaller**: the exact storage bytes of the encoding (values + indices + row
   pointers, + per-row scales for i8; the same count ``TensorType.nbytes`` gives) are below
   the dense bytes. CSR costs ``nnz·(b + 4) + 4·(rows + 1)`` bytes against ``rows·cols·b``
   (b = 4 for f32, 1 for i8), so it cannot pay above density 1/2 in f32 and 1/5 in i8;
   ``#nm`` stores one u8 index per kept value, so 2:4 pays in f32 (2.5 vs 4 bytes per
   weight) but not in i8 (1 vs 1);
2. **it is fast enough**: the density ``nnz / (rows·cols)`` is at most ``MAX_DENSITY[kind,
   dtype]``. A sparse kernel does an index load and a gather per non-zero where the dense
   one streams contiguous vectors, so it needs far fewer non-zeros to win. The starting
   values follow published CPU measurements: sparse inference kernels beat dense ones from
   roughly 70-80 % sparsity on (Elsen et al., "Fast Sparse ConvNets", CVPR 2020, 1x1
   convolutions; Gale et al., "Sparse GPU Kernels for Deep Learning", SC 2020, make the
   same point for GEMM), and int8 dense kernels (VNNI) are about 4x faster than f32 ones
   while the sparse gather gains little from int8, which halves the break-even density.

These thresholds are placeholders until mcir's own sparse kernels are measured
(``benchmarks/``): change ``MAX_DENSITY`` and nothing else.
"""

from __future__ import annotations

from typing import Literal

from mcir import dtypes
from mcir.dtypes import DType
from mcir.errors import McirError

#: highest density (non-zeros / elements) at which the sparse kernel is expected to be faster
MAX_DENSITY: dict[tuple[str, str], float] = {
    ("csr", "f32"): 0.30,
    ("csr", "i8"): 0.15,
    ("nm", "f32"): 0.50,
    ("nm", "i8"): 0.50,
}


def sparse_bytes(
    kind: Literal["csr", "nm"], rows: int, cols: int, nnz: int, dtype: DType, n: int = 2, m: int = 4
) -> int:
    """Storage bytes of the sparse encoding (all components, as ``TensorType.nbytes`` counts them)."""
    b = dtype.bits // 8
    scales = 4 * rows if dtype == dtypes.i8 else 0
    if kind == "csr":
        return nnz * (b + 4) + 4 * (rows + 1) + scales
    if kind == "nm":
        kept = rows * (cols // m * n)
        return kept * (b + 1) + scales
    raise McirError(f"unknown sparse encoding kind '{kind}' (csr or nm)")


def dense_bytes(rows: int, cols: int, dtype: DType) -> int:
    """Storage bytes of the dense weight (int8 weights carry one f32 scale per row)."""
    return rows * cols * (dtype.bits // 8) + (4 * rows if dtype == dtypes.i8 else 0)


def prefer_sparse(
    kind: Literal["csr", "nm"], rows: int, cols: int, nnz: int, dtype: DType, n: int = 2, m: int = 4
) -> bool:
    """Whether storing the weight sparse pays: fewer bytes and a density the sparse kernel wins at.

    ``rows x cols`` is the weight seen as a matrix (rows = output channels), ``nnz`` its
    non-zeros, ``dtype`` the stored value type (f32 or i8); ``n``/``m`` only for ``kind="nm"``.
    """
    if dtype not in (dtypes.f32, dtypes.i8):
        raise McirError(f"sparse weights are stored as f32 or i8, not {dtype}")
    if rows * cols == 0:
        return False
    density = (nnz if kind == "csr" else rows * (cols // m * n)) / (rows * cols)
    if density > MAX_DENSITY[(kind, dtype.name)]:
        return False
    return sparse_bytes(kind, rows, cols, nnz, dtype, n, m) < dense_bytes(rows, cols, dtype)
