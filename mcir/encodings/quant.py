"""``#quant``: affine integer quantisation, ``real = scale * (q - zero_point)``.

Per tensor, ``u8[1,784] #quant<scale=0.02, zero_point=128>``: scale and zero point are in the
type. Per axis, ``i8[1024,784] #quant<axis=0>``: symmetric (zero point 0), one f32 scale per
index along ``axis`` stored beside the data as component ``scale``; only constants (weights,
biases) may be quantised per axis.

Facts: storage is the integer array (+ f32[size of axis] scales per axis); a MAC between an
integer activation and an int8 weight is an "int8" MAC (VNNI ``vpdpbusd`` or ``vpmaddwd``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.encodings.base import F32_MAX, Encoding, check_scales, register_encoding
from mcir.errors import McirError

if TYPE_CHECKING:
    from mcir.types import TensorType


def int_range(dtype: DType) -> tuple[int, int]:
    """(min, max) of an integer dtype."""
    info = np.iinfo(dtype.np)
    return int(info.min), int(info.max)


@register_encoding
@dataclass(frozen=True)
class Quant(Encoding):
    """Affine integer quantisation: ``real = scale * (q - zero_point)``, per tensor or per axis."""

    name: ClassVar[str] = "quant"
    mac_kind: ClassVar[str] = "int8"
    scale: float | None = None
    zero_point: int = 0
    axis: int | None = None

    @property
    def needs_components(self) -> bool:  # type: ignore[override]
        return self.axis is not None

    def params(self) -> dict[str, Any]:
        if self.axis is not None:
            return {"axis": self.axis}
        return {"scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Quant:
        unknown = set(params) - {"scale", "zero_point", "axis"}
        if unknown:
            raise McirError(f"#quant has no parameter {sorted(unknown)}; it takes scale, zero_point or axis")
        for key, value in params.items():  # parsed text can hold any attribute value: strings, lists, none
            number = isinstance(value, int | float) if key == "scale" else isinstance(value, int)
            if isinstance(value, bool) or not number:
                raise McirError(f"#quant {key} must be {'a number' if key == 'scale' else 'an integer'}, got {value!r}")
        if "axis" in params:
            if set(params) != {"axis"}:
                raise McirError("#quant<axis=...> is symmetric per-axis quantisation and takes no scale/zero_point")
            return cls(axis=params["axis"])
        if "scale" not in params:
            raise McirError("#quant needs either scale=... (per tensor) or axis=... (per axis)")
        try:
            scale = float(params["scale"])
        except OverflowError:
            raise McirError("#quant scale is too large for a float") from None
        return cls(scale=scale, zero_point=params.get("zero_point", 0))

    def check(self, t: TensorType) -> None:
        if not t.dtype.is_integer:
            raise McirError(f"#quant needs an integer dtype, not {t.dtype} (in {t})")
        if self.axis is not None:
            if not -t.rank <= self.axis < t.rank or t.rank == 0:
                raise McirError(f"#quant axis {self.axis} out of range for rank {t.rank} (in {t})")
        else:
            if self.scale is None or not (self.scale > 0 and math.isfinite(self.scale)):
                raise McirError(f"#quant scale must be a positive finite number, got {self.scale} (in {t})")
            lo, hi = int_range(t.dtype)
            if not lo <= self.zero_point <= hi:
                raise McirError(f"#quant zero_point {self.zero_point} outside the range of {t.dtype} (in {t})")
            if self.scale * max(self.zero_point - lo, hi - self.zero_point) > F32_MAX:
                raise McirError(
                    f"#quant scale {self.scale} makes values beyond the f32 range (in {t}); every value must be a "
                    "finite f32"
                )

    def check_stored(self, t: TensorType, stored: dict[str, Any]) -> None:
        if self.axis is not None:
            lo, hi = int_range(t.dtype)
            check_scales("quant", "scale", stored["scale"], largest=max(-lo, hi))

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        if self.axis is None:
            return {"data": (t.dtype, t.shape)}
        return {"data": (t.dtype, t.shape), "scale": (dtypes.f32, (t.shape[self.axis],))}

    def scales(self, t: TensorType, stored: Any) -> np.ndarray:
        """Scale broadcastable against the data (per-axis scales reshaped along ``axis``)."""
        if self.axis is None:
            return np.float32(self.scale)
        shape = [1] * t.rank
        shape[self.axis % t.rank] = t.shape[self.axis]
        return np.asarray(stored["scale"], np.float32).reshape(shape)

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        # exactly scale * (q - zero_point): in float64, which holds every such product of an f32
        # scale and an integer exactly, so dot products of decoded values cancel like the
        # integer arithmetic of the native kernels do (the op rounds its result to f32)
        data = stored["data"] if isinstance(stored, dict) else stored
        q = np.asarray(data).astype(np.float64) - np.float64(self.zero_point)
        return q * np.asarray(self.scales(t, stored), np.float64)

    def encode(self, t: TensorType, x: np.ndarray) -> Any:
        if self.axis is not None:
            raise McirError("per-axis #quant values are constants; build them with mcir.passes.quantize")
        lo, hi = int_range(t.dtype)
        q = np.rint(np.asarray(x, np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, lo, hi).astype(t.dtype.np)


def bias_accumulator_units(bias_type: TensorType, stored: Any, acc_scale: np.ndarray) -> np.ndarray:
    """An int8 layer's bias in accumulator units ``s_x·s_w[n]``: int64, one per output channel.

    This is the semantics of a bias on ``linear``/``conv2d`` with a ``u8 #quant`` input and an i8
    weight, the same in the interpreter and in every native int8 kernel: the int32 accumulators
    start at the bias, so a bias is *rounded* to the accumulator's scale. The quant8 pass stores
    int32 biases at exactly that scale (no rounding, ``q`` itself); an f32 bias, or an i32 bias at
    another scale (a graph edited by hand or by a mutation: input scale changed afterwards), is
    rounded half to even, ``rint(b / (s_x·s_w[n]))``.
    """
    acc = np.asarray(acc_scale, np.float64).reshape(-1)
    n = acc.shape[0]
    enc = bias_type.encoding
    if isinstance(enc, Quant) and bias_type.dtype == dtypes.i32 and enc.zero_point == 0:
        q = np.asarray(stored["data"] if isinstance(stored, dict) else stored, np.int64).reshape(n)
        sb = np.broadcast_to(np.asarray(enc.scales(bias_type, stored), np.float64).reshape(-1), (n,))
        ratio = sb / acc
        if np.all(np.abs(ratio - 1.0) <= 1e-6):  # stored at the accumulator scale (up to f32 rounding)
            return q
        return np.rint(q * ratio).astype(np.int64)
    real = np.asarray(bias_type.decode(stored), np.float64).reshape(n)
    return np.rint(real / acc).astype(np.int64)
