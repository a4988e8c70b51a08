"""``#round<>`` on ``bf16[...]``: f32 values rounded to the nearest bf16, stored as bf16.

The activations of a layer the ``bf16`` pass converts: ``quantize(%x) : bf16[1,784] #round<>``
rounds every f32 value to bf16 (round to nearest, ties to even; NaN stays NaN, infinities stay,
values beyond bf16's largest finite number round to infinity exactly as IEEE rounding does).
The *logical* values are f32 (the rounded numbers, exactly), so ``linear`` over such an input
still has an f32 result: products of the bf16 inputs are summed in f32. A plain ``bf16`` type
would instead mean a bf16 result (torch's meaning of a bf16 model), hence an encoding.

Storage: one component ``data`` of the tensor's shape in bf16 (2 bytes per element); this is
also the run-time layout kernels read (row-major, as the value's shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mcir import dtypes
from mcir.encodings.base import Encoding, register_encoding
from mcir.errors import McirError

if TYPE_CHECKING:
    from mcir.types import TensorType


@register_encoding
@dataclass(frozen=True)
class Round(Encoding):
    """f32 values rounded to bf16 (round to nearest even) and stored in 16 bits."""

    name: ClassVar[str] = "round"
    computed: ClassVar[bool] = True

    def params(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Round:
        if params:
            raise McirError(f"#round takes no parameters (the storage dtype says what it rounds to), got {params}")
        return cls()

    def check(self, t: TensorType) -> None:
        if t.dtype != dtypes.bf16:
            raise McirError(f"#round holds bf16 values, not {t.dtype} ({t})")

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        return np.asarray(stored).astype(np.float32)  # every bf16 is an f32 exactly

    def encode(self, t: TensorType, x: Any) -> np.ndarray:
        # ml_dtypes rounds f32 -> bf16 to nearest even, as the kernels' integer rounding does
        return np.asarray(x, np.float32).astype(dtypes.bf16.np)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to bf16 and back to f32 (the values a ``#round`` tensor holds)."""
    return np.asarray(x, np.float32).astype(dtypes.bf16.np).astype(np.float32)
