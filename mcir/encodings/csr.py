"""``#csr<nnz=NNZ>`` on ``f32[N, ...]`` or ``i8[N, ...]``: compressed sparse rows.

Components ``values`` dtype[NNZ], ``indices`` i32[NNZ] (column in 0..K-1, increasing within a
row), ``rowptr`` i32[N+1], and for ``i8`` a symmetric per-row ``scale`` f32[N]
(value = scale[n] * q). The number of non-zeros is part of the type, so a printed graph shows
how sparse each layer is.

Facts: only the NNZ stored values count as parameters and MACs ("sparse" MACs). The native
kernels (``codegen/kernels/sparse*.py``) re-lay the weight at compile time (windows of x for
batch-1 f32, 5-bit gaps for int8: about 1.8 bytes per int8 non-zero); those are the bytes
``mcir.stats`` reports. Whether a layer is worth storing sparse is ``analysis/sparse_cost.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.encodings.base import Encoding, check_scales, int_param, register_encoding
from mcir.encodings.rows import check_dtype, quantize_rows, row_scales, rows, scale_component
from mcir.errors import McirError

if TYPE_CHECKING:
    from mcir.types import TensorType


@register_encoding
@dataclass(frozen=True)
class Csr(Encoding):
    """Compressed sparse rows with NNZ stored values (f32, or i8 with per-row scales)."""

    name: ClassVar[str] = "csr"
    needs_components: ClassVar[bool] = True
    mac_kind: ClassVar[str] = "sparse"
    nnz: int = 0

    def params(self) -> dict[str, Any]:
        return {"nnz": self.nnz}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Csr:
        if set(params) != {"nnz"}:
            raise McirError(f"#csr takes exactly one integer parameter, nnz (got {sorted(params)})")
        return cls(nnz=int_param("csr", "nnz", params["nnz"], 0, 2**62))

    def check(self, t: TensorType) -> None:
        check_dtype(self, t)
        n, k = rows(t)
        if not 0 <= self.nnz <= n * k:
            raise McirError(f"#csr nnz={self.nnz} is outside [0, {n * k}] for {list(t.shape)}")

    def check_stored(self, t: TensorType, stored: dict[str, Any]) -> None:
        # kernels walk rowptr[i]..rowptr[i+1] and index the input row by indices[j]: both must stay inside
        _, k = rows(t)
        rowptr = stored["rowptr"].astype(np.int64)
        if rowptr[0] != 0 or rowptr[-1] != self.nnz:
            raise McirError(
                f"#csr<nnz={self.nnz}> component 'rowptr' must start at 0 and end at nnz, "
                f"got {int(rowptr[0])}..{int(rowptr[-1])}"
            )
        steps = np.diff(rowptr)
        if (steps < 0).any():
            row = int(np.argmax(steps < 0))
            raise McirError(f"#csr component 'rowptr' decreases at row {row}: row pointers must be monotone")
        indices = stored["indices"]
        if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= k):
            raise McirError(
                f"#csr component 'indices' holds {int(indices.min())}..{int(indices.max())}, must be in 0..{k - 1}"
            )
        if "scale" in stored:
            check_scales("csr", "scale", stored["scale"], largest=128)  # i8 values (-128 included)

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        n, _ = rows(t)
        return {
            "values": (t.dtype, (self.nnz,)),
            "indices": (dtypes.i32, (self.nnz,)),
            "rowptr": (dtypes.i32, (n + 1,)),
            **scale_component(t),
        }

    def stored_fraction(self, t: TensorType) -> float:
        return self.nnz / t.numel if t.numel else 1.0

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        n, k = rows(t)
        dense = np.zeros((n, k), np.float64)  # exact products of values and scales, as for #quant
        rowptr = np.asarray(stored["rowptr"])
        row_of = np.repeat(np.arange(n), np.diff(rowptr))
        dense[row_of, np.asarray(stored["indices"])] = np.asarray(stored["values"], np.float64)
        return (dense * row_scales(t, stored).astype(np.float64)[:, None]).reshape(t.shape)

    def encode(self, t: TensorType, x: np.ndarray) -> Any:
        raise McirError("#csr values are constants; build them with mcir.encodings.csr.to_csr")


def to_csr(dense: np.ndarray, dtype: DType = dtypes.f32) -> tuple[TensorType, dict[str, np.ndarray]]:
    """CSR type and components of a dense weight (its zeros are dropped); ``dtype=i8`` quantises
    the rows symmetrically first (a zero stays zero)."""
    from mcir.types import TensorType

    shape = dense.shape
    flat = np.asarray(dense, np.float64).reshape(shape[0], -1)
    parts: dict[str, np.ndarray] = {}
    if dtype == dtypes.i8:
        q, scale = quantize_rows(flat)
        flat, parts["scale"] = q, scale
    elif dtype != dtypes.f32:
        raise McirError(f"CSR values must be f32 or i8, not {dtype}")
    mask = flat != 0
    row_of, cols = np.nonzero(mask)
    parts["values"] = flat[row_of, cols].astype(dtype.np)
    parts["indices"] = cols.astype(np.int32)
    parts["rowptr"] = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
    return TensorType(shape, dtype, Csr(nnz=int(mask.sum()))), parts
