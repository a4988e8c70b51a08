"""Sparse encodings: CSR and N:M structured sparsity, in float or int8.

Both view a weight ``[N, ...]`` as N rows of K = prod(rest) elements (row-major).

``#csr<nnz=NNZ>`` on ``f32[N, ...]`` or ``i8[N, ...]``: compressed sparse rows; components
``values`` dtype[NNZ], ``indices`` i32[NNZ] (column in 0..K-1, increasing within a row),
``rowptr`` i32[N+1], and for ``i8`` a symmetric per-row ``scale`` f32[N]
(value = scale[n] * q). The number of non-zeros is part of the type, so a printed graph
shows how sparse each layer is.

``#nm<n=2, m=4>``: in every group of m consecutive elements of a row at most n are
non-zero (K must be a multiple of m); components ``values`` dtype[N, K*n/m], ``index``
u8[N, K*n/m] (position of each kept value inside its group), and ``scale`` f32[N] for ``i8``.
Slots of a group with fewer than n non-zeros hold value 0.

Which encoding a layer gets (or whether it stays dense because the dense kernel is faster)
is decided by one measured cost rule, ``mcir.passes.sparse_cost.prefer_sparse``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.errors import McirError
from mcir.types import Encoding, TensorType, register_encoding


def _rows(t: TensorType) -> tuple[int, int]:
    return t.shape[0], math.prod(t.shape[1:])


def _check_dtype(enc: Encoding, t: TensorType) -> None:
    if t.dtype not in (dtypes.f32, dtypes.i8):
        raise McirError(f"#{enc.name} stores f32 or i8 values, not {t.dtype} (in {t})")
    if t.rank < 1:
        raise McirError(f"#{enc.name} needs a tensor of rank >= 1 (in {t})")


def _scale_component(t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
    return {"scale": (dtypes.f32, (t.shape[0],))} if t.dtype == dtypes.i8 else {}


def _row_scales(t: TensorType, stored: Any) -> np.ndarray:
    if t.dtype == dtypes.i8:
        return np.asarray(stored["scale"], np.float32)
    return np.ones(t.shape[0], np.float32)


@register_encoding
@dataclass(frozen=True)
class Csr(Encoding):
    """Compressed sparse rows with NNZ stored values (f32, or i8 with per-row scales)."""

    name: ClassVar[str] = "csr"
    needs_components: ClassVar[bool] = True
    nnz: int = 0

    def params(self) -> dict[str, Any]:
        return {"nnz": self.nnz}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Csr:
        if set(params) != {"nnz"} or not isinstance(params["nnz"], int):
            raise McirError(f"#csr takes exactly one integer parameter, nnz (got {params})")
        return cls(nnz=params["nnz"])

    def check(self, t: TensorType) -> None:
        _check_dtype(self, t)
        n, k = _rows(t)
        if not 0 <= self.nnz <= n * k:
            raise McirError(f"#csr nnz={self.nnz} is outside [0, {n * k}] for {list(t.shape)}")

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        n, _ = _rows(t)
        return {
            "values": (t.dtype, (self.nnz,)),
            "indices": (dtypes.i32, (self.nnz,)),
            "rowptr": (dtypes.i32, (n + 1,)),
            **_scale_component(t),
        }

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        n, k = _rows(t)
        dense = np.zeros((n, k), np.float64)  # exact products of values and scales, as for #quant
        rowptr = np.asarray(stored["rowptr"])
        rows = np.repeat(np.arange(n), np.diff(rowptr))
        dense[rows, np.asarray(stored["indices"])] = np.asarray(stored["values"], np.float64)
        return (dense * _row_scales(t, stored).astype(np.float64)[:, None]).reshape(t.shape)

    def encode(self, t: TensorType, x: np.ndarray) -> Any:
        raise McirError("#csr values are constants; build them with mcir.sparse.to_csr")


@register_encoding
@dataclass(frozen=True)
class NM(Encoding):
    """N:M structured sparsity: at most n non-zeros in every m consecutive elements of a row."""

    name: ClassVar[str] = "nm"
    needs_components: ClassVar[bool] = True
    n: int = 2
    m: int = 4

    def params(self) -> dict[str, Any]:
        return {"n": self.n, "m": self.m}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> NM:
        if set(params) != {"n", "m"}:
            raise McirError(f"#nm takes exactly n and m (got {sorted(params)})")
        return cls(n=int(params["n"]), m=int(params["m"]))

    def check(self, t: TensorType) -> None:
        _check_dtype(self, t)
        if not 0 < self.n < self.m <= 256:
            raise McirError(f"#nm<n={self.n}, m={self.m}> needs 0 < n < m <= 256")
        _, k = _rows(t)
        if k % self.m:
            raise McirError(
                f"#nm<n={self.n}, m={self.m}>: row length {k} of {list(t.shape)} is not a multiple of {self.m}"
            )

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        rows, k = _rows(t)
        kept = k // self.m * self.n
        return {"values": (t.dtype, (rows, kept)), "index": (dtypes.u8, (rows, kept)), **_scale_component(t)}

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        rows, k = _rows(t)
        groups = k // self.m
        values = np.asarray(stored["values"], np.float64).reshape(rows, groups, self.n)
        index = np.asarray(stored["index"]).astype(np.int64).reshape(rows, groups, self.n)
        dense = np.zeros((rows, groups, self.m), np.float64)
        np.put_along_axis(dense, index, values, axis=2)
        return (dense.reshape(rows, k) * _row_scales(t, stored).astype(np.float64)[:, None]).reshape(t.shape)

    def encode(self, t: TensorType, x: np.ndarray) -> Any:
        raise McirError("#nm values are constants; build them with mcir.sparse.to_nm")


def _quantize_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: (q, scale) with rows ≈ scale[:, None] * q."""
    amax = np.abs(rows).max(axis=1) if rows.size else np.zeros(rows.shape[0])
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(rows / scale[:, None].astype(np.float64)), -127, 127).astype(np.int8)
    return q, scale


def to_csr(dense: np.ndarray, dtype: DType = dtypes.f32) -> tuple[TensorType, dict[str, np.ndarray]]:
    """CSR type and components of a dense weight (its zeros are dropped); ``dtype=i8`` quantises
    the rows symmetrically first (a zero stays zero)."""
    shape = dense.shape
    flat = np.asarray(dense, np.float64).reshape(shape[0], -1)
    parts: dict[str, np.ndarray] = {}
    if dtype == dtypes.i8:
        q, scale = _quantize_rows(flat)
        flat, parts["scale"] = q, scale
    elif dtype != dtypes.f32:
        raise McirError(f"CSR values must be f32 or i8, not {dtype}")
    mask = flat != 0
    rows, cols = np.nonzero(mask)
    parts["values"] = flat[rows, cols].astype(dtype.np)
    parts["indices"] = cols.astype(np.int32)
    parts["rowptr"] = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
    return TensorType(shape, dtype, Csr(nnz=int(mask.sum()))), parts


def to_nm(dense: np.ndarray, n: int, m: int, dtype: DType = dtypes.f32) -> tuple[TensorType, dict[str, np.ndarray]]:
    """N:M type and components of a dense weight that already has at most n non-zeros per group
    of m (prune with ``pattern=N:M`` first); ``dtype=i8`` quantises the rows symmetrically."""
    shape = dense.shape
    rows, k = shape[0], math.prod(shape[1:])
    if k % m:
        raise McirError(f"N:M {n}:{m} needs rows whose length is a multiple of {m}, got {k}")
    flat = np.asarray(dense, np.float64).reshape(rows, k)
    parts: dict[str, np.ndarray] = {}
    if dtype == dtypes.i8:
        flat, parts["scale"] = _quantize_rows(flat)
    groups = flat.reshape(rows, k // m, m)
    if ((groups != 0).sum(axis=2) > n).any():
        raise McirError(f"weight has more than {n} non-zeros in some group of {m}; prune with pattern={n}:{m} first")
    # keep the n largest magnitudes per group (zeros where a group has fewer), in position order
    order = np.sort(np.argsort(-np.abs(groups), axis=2, kind="stable")[:, :, :n], axis=2)
    parts["values"] = np.take_along_axis(groups, order, axis=2).reshape(rows, -1).astype(dtype.np)
    parts["index"] = order.reshape(rows, -1).astype(np.uint8)
    t = TensorType(shape, dtype, NM(n=n, m=m))
    return t, {k_: parts[k_] for k_ in t.encoding.components(t)}
