"""Element types of mcir tensors.

A ``DType`` is the element type seen by the IR; ``np`` is the numpy dtype that holds
one element in the reference interpreter. Packed types (``b1`` binary, ``t2``
ternary) have no numpy element type of their own: their storage is defined by
the tensor's encoding (bits packed in 64-bit words), see ``mcir.types``.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes  # numpy has no bfloat16; ml_dtypes provides it
import numpy as np

from mcir.errors import McirError


@dataclass(frozen=True)
class DType:
    """An element type: its IR name, bit width and numpy equivalent."""

    name: str
    bits: int
    kind: str  # "float", "int", "uint", "bool", "packed"

    @property
    def np(self) -> np.dtype:
        """The numpy dtype holding one element (packed types have none)."""
        if self.kind == "packed":
            raise McirError(f"dtype {self.name} is bit-packed and has no numpy element type")
        return _NUMPY[self.name]

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_integer(self) -> bool:
        return self.kind in ("int", "uint")

    @property
    def itemsize(self) -> float:
        """Bytes per element (fractional for packed types)."""
        return self.bits / 8

    def __str__(self) -> str:
        return self.name


f32 = DType("f32", 32, "float")
f16 = DType("f16", 16, "float")
bf16 = DType("bf16", 16, "float")
i64 = DType("i64", 64, "int")
i32 = DType("i32", 32, "int")
i16 = DType("i16", 16, "int")
i8 = DType("i8", 8, "int")
u8 = DType("u8", 8, "uint")
u32 = DType("u32", 32, "uint")  # storage of packed encodings
u64 = DType("u64", 64, "uint")
boolean = DType("bool", 8, "bool")
b1 = DType("b1", 1, "packed")  # binary {-1, +1}, one bit per element
t2 = DType("t2", 2, "packed")  # ternary {-1, 0, +1}, two bit-planes

ALL: dict[str, DType] = {d.name: d for d in (f32, f16, bf16, i64, i32, i16, i8, u8, u32, u64, boolean, b1, t2)}

_NUMPY = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "i64": np.dtype(np.int64),
    "i32": np.dtype(np.int32),
    "i16": np.dtype(np.int16),
    "i8": np.dtype(np.int8),
    "u8": np.dtype(np.uint8),
    "u32": np.dtype(np.uint32),
    "u64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
}


def by_name(name: str) -> DType:
    """The dtype called ``name`` (``f32``, ``i8``, ...); raises a McirError listing the valid names."""
    try:
        return ALL[name]
    except KeyError:
        raise McirError(f"unknown dtype '{name}'; valid dtypes: {', '.join(ALL)}") from None


def from_numpy(dtype: np.dtype | type) -> DType:
    """The mcir dtype of a numpy dtype."""
    dt = np.dtype(dtype)
    for name, nd in _NUMPY.items():
        if nd == dt:
            return ALL[name]
    raise McirError(f"numpy dtype {dt} has no mcir equivalent")
