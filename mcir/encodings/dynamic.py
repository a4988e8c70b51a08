"""``#dynamic<axis=0>`` on ``u8[M, ...]``: activations quantised at run time, per slice.

``real = scale[m] · (q - zero_point[m])`` with one affine (scale, zero point) per slice along
axis 0 (one sample), computed from the values every call: no calibration data needed (the
dynamic quantisation of ``torch.ao.quantization.quantize_dynamic`` and ORT's
``quantize_dynamic``, per sample instead of per tensor). Only ``quantize`` produces it
(``quantize(activations=dynamic)`` inserts it before int8 / int4 layers).

Encoding a slice (all in f32, exactly as the native kernel does it)::

    lo = min(min(x), 0); hi = max(max(x), 0)          # 0 stays exactly representable
    scale = (hi - lo) / 255   (1 if that is 0)
    zero_point = clamp(rint(-lo / scale), 0, 255)
    q = clamp(rint(x / scale) + zero_point, 0, 255)

Components (also the run-time memory layout, in this order): ``scale`` f32[M],
``zero_point`` i32[M], ``data`` u8[M, ...].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.encodings.base import Encoding, register_encoding
from mcir.errors import McirError

if TYPE_CHECKING:
    from mcir.types import TensorType


@register_encoding
@dataclass(frozen=True)
class Dynamic(Encoding):
    """u8 activations with a scale and zero point per sample, computed at run time."""

    name: ClassVar[str] = "dynamic"
    needs_components: ClassVar[bool] = True
    computed: ClassVar[bool] = True
    mac_kind: ClassVar[str] = "int8"
    axis: int = 0

    def params(self) -> dict[str, Any]:
        return {"axis": self.axis}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Dynamic:
        if (
            set(params) != {"axis"}
            or isinstance(params["axis"], bool)
            or params["axis"] != 0
            or not isinstance(params["axis"], int)
        ):
            raise McirError(f"#dynamic takes exactly axis=0 (one scale per sample), got {params}")
        return cls(axis=0)

    def check(self, t: TensorType) -> None:
        if t.dtype != dtypes.u8 or t.rank < 1:
            raise McirError(f"#dynamic holds u8 values of a tensor of rank >= 1, not {t}")

    @staticmethod
    def slices(t: TensorType) -> tuple[int, int]:
        return t.shape[0], math.prod(t.shape[1:])

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        m, _ = self.slices(t)
        return {"scale": (dtypes.f32, (m,)), "zero_point": (dtypes.i32, (m,)), "data": (dtypes.u8, t.shape)}

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        m, k = self.slices(t)
        q = np.asarray(stored["data"]).reshape(m, k).astype(np.float64)
        zp = np.asarray(stored["zero_point"], np.float64)[:, None]
        return ((q - zp) * np.asarray(stored["scale"], np.float64)[:, None]).reshape(t.shape)

    def encode(self, t: TensorType, x: np.ndarray) -> Any:
        m, k = self.slices(t)
        x = np.asarray(x, np.float32).reshape(m, k)
        f = np.float32
        lo = np.minimum(x.min(axis=1), f(0)) if k else np.zeros(m, f)
        hi = np.maximum(x.max(axis=1), f(0)) if k else np.zeros(m, f)
        scale = (hi - lo) / f(255)
        scale = np.where(scale > 0, scale, f(1)).astype(f)
        zp = np.clip(np.rint(-lo / scale), 0, 255).astype(f)
        q = np.clip(np.rint(x / scale[:, None]) + zp[:, None], 0, 255)
        return {"scale": scale, "zero_point": zp.astype(np.int32), "data": q.astype(np.uint8).reshape(t.shape)}
