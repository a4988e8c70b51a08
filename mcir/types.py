"""Tensor types and encodings.

A ``TensorType`` is a frozen (shape, dtype, encoding) triple. The encoding says how
the *logical* values of a tensor are represented in storage; it is where compression
lives: ``linear(x, w, b)`` stays ``linear`` when ``w`` becomes int8, only the type of
``w`` changes from ``f32[N,K]`` to ``i8[N,K] #quant<axis=0>``.

Every encoding expresses f32 logical values: ``TensorType.logical`` is the type that
shape inference and the reference interpreter reason about ("dequantize, compute in
float"). Encodings live in ``mcir.encodings`` (one module each, with their text
syntax, storage components, decode/encode and cost facts).

Storage of a value in the interpreter ("stored form"):
  * no encoding, or an encoding whose parameters are all in the type (per-tensor
    ``quant``): one numpy array of the type's dtype and shape;
  * an encoding with data-dependent parameters (per-axis scales, packed bits,
    sparse indices): a ``dict`` of named numpy arrays, ``encoding.components(t)``
    says which; only constants can have such types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.errors import McirError

if TYPE_CHECKING:  # encodings depend on this module, never the other way round at run time
    from mcir.encodings.base import Encoding


#: the largest tensor (all its bytes, 1 byte per element at least) a type may describe: 1 TiB keeps every
#: size, offset and workspace sum far inside int64 (see docs/ir.md, "Limits")
MAX_TENSOR_BYTES = 2**40
#: the largest rank; kernels keep per-dimension strides on the stack
MAX_RANK = 16


@dataclass(frozen=True)
class TensorType:
    """The type of a value: static shape, element dtype, optional encoding."""

    shape: tuple[int, ...]
    dtype: DType
    encoding: Encoding | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if any(d < 0 for d in self.shape):
            raise McirError(f"negative dimension in shape {list(self.shape)}")
        # sizes are computed in int64 by the backend: refuse a tensor whose bytes could overflow
        # (or that no machine holds) before anything multiplies its dimensions
        if len(self.shape) > MAX_RANK:
            raise McirError(f"shape {list(self.shape)} has rank {len(self.shape)}; mcir supports rank <= {MAX_RANK}")
        if math.prod(self.shape) * max(self.dtype.bits, 8) // 8 > MAX_TENSOR_BYTES:
            raise McirError(
                f"shape {list(self.shape)} of {self.dtype} is {math.prod(self.shape)} elements, more than the "
                f"{MAX_TENSOR_BYTES} bytes (2^40) mcir allows per tensor"
            )
        if self.encoding is not None:
            self.encoding.check(self)
        elif self.dtype.kind == "packed":
            raise McirError(f"dtype {self.dtype} is bit-packed and needs an encoding")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def logical(self) -> TensorType:
        """The type of the values this tensor means: encodings express f32."""
        if self.encoding is None:
            return self
        return TensorType(self.shape, dtypes.f32)

    @property
    def nbytes(self) -> int:
        """Bytes of the canonical storage, all components included (``Encoding.storage_bytes``)."""
        if self.encoding is None:
            return math.ceil(self.numel * self.dtype.bits / 8)
        return self.encoding.storage_bytes(self)

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        return TensorType(tuple(shape), self.dtype, self.encoding)

    def decode(self, stored: Any) -> np.ndarray:
        """Logical values of a stored tensor (identity for unencoded types)."""
        if self.encoding is None:
            return stored
        return self.encoding.decode(self, stored)

    def encode(self, x: np.ndarray) -> Any:
        """Stored form of logical values ``x`` (a cast for unencoded types)."""
        if self.encoding is None:
            return np.asarray(x).astype(self.dtype.np, copy=False)
        return self.encoding.encode(self, x)

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        text = f"{self.dtype.name}[{dims}]"
        if self.encoding is not None:
            text += f" {self.encoding}"
        return text


def tensor(
    shape: tuple[int, ...] | list[int], dtype: DType | str = "f32", encoding: Encoding | None = None
) -> TensorType:
    """Shorthand: ``tensor([1, 784])`` is ``f32[1,784]``."""
    if isinstance(dtype, str):
        dtype = dtypes.by_name(dtype)
    return TensorType(tuple(shape), dtype, encoding)
