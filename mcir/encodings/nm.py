"""``#nm<n=2, m=4>``: N:M structured sparsity, at most n non-zeros in every m consecutive
elements of a row (K must be a multiple of m).

Components ``values`` dtype[N, K*n/m], ``index`` u8[N, K*n/m] (position of each kept value
inside its group), and ``scale`` f32[N] for ``i8``. Slots of a group with fewer than n
non-zeros hold value 0.

Facts: n/m of the elements count as parameters and MACs ("sparse" MACs); the native kernels
re-lay the weight at compile time like ``#csr`` (``mcir.stats`` reports those bytes).
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
class NM(Encoding):
    """N:M structured sparsity: at most n non-zeros in every m consecutive elements of a row."""

    name: ClassVar[str] = "nm"
    needs_components: ClassVar[bool] = True
    mac_kind: ClassVar[str] = "sparse"
    n: int = 2
    m: int = 4

    def params(self) -> dict[str, Any]:
        return {"n": self.n, "m": self.m}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> NM:
        if set(params) != {"n", "m"}:
            raise McirError(f"#nm takes exactly n and m (got {sorted(params)})")
        m = int_param("nm", "m", params["m"], 2, 256)
        return cls(n=int_param("nm", "n", params["n"], 1, m - 1), m=m)

    def fits(self, t: TensorType) -> bool:
        """Whether rows of ``t`` split into whole groups of m (the one shape condition)."""
        return t.rank >= 1 and rows(t)[1] % self.m == 0

    def check(self, t: TensorType) -> None:
        check_dtype(self, t)
        if not 0 < self.n < self.m <= 256:
            raise McirError(f"#nm<n={self.n}, m={self.m}> needs 0 < n < m <= 256")
        if not self.fits(t):
            raise McirError(
                f"#nm<n={self.n}, m={self.m}>: row length {rows(t)[1]} of {list(t.shape)} is not a multiple of {self.m}"
            )

    def check_stored(self, t: TensorType, stored: dict[str, Any]) -> None:
        # the kernels scatter each value to its group's base + index: an index >= m lands in the next group
        # (or past the row)
        index = stored["index"]
        if index.size and int(index.max()) >= self.m:
            raise McirError(
                f"#nm<n={self.n}, m={self.m}> component 'index' holds {int(index.max())}, must be < {self.m}"
            )
        if "scale" in stored:
            check_scales("nm", "scale", stored["scale"], largest=128)  # i8 values (-128 included)

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        n_rows, k = rows(t)
        kept = k // self.m * self.n
        return {"values": (t.dtype, (n_rows, kept)), "index": (dtypes.u8, (n_rows, kept)), **scale_component(t)}

    def stored_fraction(self, t: TensorType) -> float:
        return self.n / self.m

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        n_rows, k = rows(t)
        groups = k // self.m
        values = np.asarray(stored["values"], np.float64).reshape(n_rows, groups, self.n)
        index = np.asarray(stored["index"]).astype(np.int64).reshape(n_rows, groups, self.n)
        dense = np.zeros((n_rows, groups, self.m), np.float64)
        np.put_along_axis(dense, index, values, axis=2)
        return (dense.reshape(n_rows, k) * row_scales(t, stored).astype(np.float64)[:, None]).reshape(t.shape)

    def encode(self, t: TensorType, x: np.ndarray) -> Any:
        raise McirError("#nm values are constants; build them with mcir.encodings.nm.to_nm")


def to_nm(dense: np.ndarray, n: int, m: int, dtype: DType = dtypes.f32) -> tuple[TensorType, dict[str, np.ndarray]]:
    """N:M type and components of a dense weight that already has at most n non-zeros per group
    of m (prune with ``pattern=N:M`` first); ``dtype=i8`` quantises the rows symmetrically."""
    from mcir.types import TensorType

    shape = dense.shape
    n_rows, k = shape[0], int(np.prod(shape[1:], dtype=np.int64))
    if k % m:
        raise McirError(f"N:M {n}:{m} needs rows whose length is a multiple of {m}, got {k}")
    flat = np.asarray(dense, np.float64).reshape(n_rows, k)
    parts: dict[str, np.ndarray] = {}
    if dtype == dtypes.i8:
        flat, parts["scale"] = quantize_rows(flat)
    groups = flat.reshape(n_rows, k // m, m)
    if ((groups != 0).sum(axis=2) > n).any():
        raise McirError(f"weight has more than {n} non-zeros in some group of {m}; prune with pattern={n}:{m} first")
    # keep the n largest magnitudes per group (zeros where a group has fewer), in position order
    order = np.sort(np.argsort(-np.abs(groups), axis=2, kind="stable")[:, :, :n], axis=2)
    parts["values"] = np.take_along_axis(groups, order, axis=2).reshape(n_rows, -1).astype(dtype.np)
    parts["index"] = order.reshape(n_rows, -1).astype(np.uint8)
    t = TensorType(shape, dtype, NM(n=n, m=m))
    return t, {k_: parts[k_] for k_ in t.encoding.components(t)}
