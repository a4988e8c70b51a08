"""When a pruned weight is worth storing sparse: the one cost rule prune and quantize share.

``prefer_sparse(kind, rows, cols, nnz, dtype)`` says whether a weight viewed as
``rows x cols`` (rows = output channels, cols = everything else) with ``nnz`` non-zeros
should be stored as ``#csr`` (``kind="csr"``) or ``#nm`` (``kind="nm"``, with ``n``/``m``)
in ``dtype`` (f32 or i8) instead of a dense array holding zeros. It pays when both hold:

1. **it is smaller**: the storage bytes the encoding states (``Encoding.storage_bytes``:
   values + indices + row pointers, + per-row scales for i8) are below the dense bytes.
   CSR costs ``nnz·(b + 4) + 4·(rows + 1)`` bytes against ``rows·cols·b``
   (b = 4 for f32, 1 for i8), so it cannot pay above density 1/2 in f32 and 1/5 in i8;
   ``#nm`` stores one u8 index per kept value, so 2:4 pays in f32 (2.5 vs 4 bytes per
   weight) but not in i8 (1 vs 1);
2. **it is fast enough**: the density ``nnz / (rows·cols)`` is at most ``MAX_DENSITY[kind,
   dtype]``, the density up to which mcir's sparse kernel beats the dense kernel of the same
   dtype (``mcir/codegen/kernels/sparse.py``, ``sparse_i8.py``). The limits come from
   ``benchmarks/bench_sparse.py --only sweep`` (one Linear, random unstructured or N:M
   pattern, AMD Zen 4 with AVX-512 VBMI/VNNI, one thread, interleaved medians; full table in
   ``docs/benchmarks.md``, "Sparse"). Speed-up of the sparse kernel over the dense one:

   ====================  =======  ===========  ===========  ===========  ==========
   kernel, batch         shape    density 5 %  10 %         20 %         30 %
   ====================  =======  ===========  ===========  ===========  ==========
   f32 #csr, batch 1     256²     3.3x         2.7x         2.1x         1.7x
   f32 #csr, batch 1     4096²    22.2x        12.1x        5.1x         3.0x
   f32 #csr, batch 32    1024²    8.9x         4.9x         2.4x         1.4x
   f32 #csr, batch 32    4096²    9.8x         4.6x         1.9x         1.3x
   i8 #csr, batch 1      256²     1.3x         1.08x        0.78x        0.64x
   i8 #csr, batch 1      1024²    2.4x         1.6x         0.91x        0.63x
   i8 #csr, batch 1      4096²    4.0x         2.5x         1.3x         0.89x
   i8 #csr, batch 32     1024²    1.4x         0.92x        0.54x        0.37x
   ====================  =======  ===========  ===========  ===========  ==========

   N:M (density n/m), batch 1 / batch 32: f32 2:4 1.4-2.0x / 0.76-1.3x, 1:4 2.3-5.2x /
   1.7-2.4x; int8 1:4 0.71-1.13x / 0.44x, 1:8 1.04-2.2x / 0.76-0.82x.

   So: **f32 #csr up to 30 %** (at least 1.7x at batch 1 and 1.3x at batch 32 on every
   shape; dense wins from about 40 % at batch 32 and 70 % at batch 1); **f32 #nm up to 50 %**,
   i.e. 2:4 (1.4-2.0x at batch 1; at batch 32 on large layers it is 0.76-0.8x, accepted:
   batch-1 inference is the case N:M pruning targets); **int8 #csr up to 15 %** (break-even
   with the VNNI dense kernel is 15-25 % at batch 1; at batch 32 the int8 sparse kernel wins
   only below ~10 %); **int8 #nm up to 12.5 %**, i.e. 1:8 (1:4 is slower than dense int8
   except on the largest layer). The rule sees neither batch size nor target: its limits
   favour batch-1 inference on AVX-512 (VBMI/VNNI for int8), where pruning pays most; the
   int8 limit also keeps 90 %-sparse layers sparse, which issue #6 needs for size (the
   library stores int8 #csr in ~1.8 bytes per non-zero, ``sparse_pack``).

Only ``MAX_DENSITY`` comes from measurement; re-measure when a kernel changes. The rule is a
quick filter: ``prune`` then asks the kernels themselves (``mcir.stats.try_kernel``) whether
the layer compiles in that form and embeds fewer bytes than dense, and keeps it dense if not.
"""

from __future__ import annotations

from typing import Literal

from mcir import dtypes
from mcir.dtypes import DType
from mcir.encodings import NM, Csr, Encoding, Quant
from mcir.errors import McirError
from mcir.types import TensorType

#: highest density (non-zeros / elements) at which the sparse kernel is measured faster (docstring)
MAX_DENSITY: dict[tuple[str, str], float] = {
    ("csr", "f32"): 0.30,
    ("csr", "i8"): 0.15,
    ("nm", "f32"): 0.50,
    ("nm", "i8"): 0.125,
}


def sparse_bytes(
    kind: Literal["csr", "nm"], rows: int, cols: int, nnz: int, dtype: DType, n: int = 2, m: int = 4
) -> int:
    """Storage bytes of the sparse encoding (all components), as the encoding states them."""
    if kind == "csr":
        enc: Encoding = Csr(nnz=nnz)
    elif kind == "nm":
        enc = NM(n=n, m=m)
    else:
        raise McirError(f"unknown sparse encoding kind '{kind}' (csr or nm)")
    return enc.storage_bytes(TensorType((rows, cols), dtype, enc))


def dense_bytes(rows: int, cols: int, dtype: DType) -> int:
    """Storage bytes of the dense weight (int8 weights carry one f32 scale per row, ``#quant<axis=0>``)."""
    enc = Quant(axis=0) if dtype == dtypes.i8 else None
    return TensorType((rows, cols), dtype, enc).nbytes


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
