"""Tensor types and encodings.

A ``TensorType`` is a frozen (shape, dtype, encoding) triple. The encoding says how
the *logical* values of a tensor are represented in storage; it is where compression
lives: ``linear(x, w, b)`` stays ``linear`` when ``w`` becomes int8, only the type of
``w`` changes from ``f32[N,K]`` to ``i8[N,K] #quant<axis=0>``.

Every encoding expresses f32 logical values: ``TensorType.logical`` is the type that
shape inference and the reference interpreter reason about ("dequantize, compute in
float"). An encoding is registered once with its text name, its parameters, the
storage components a constant of that type holds, and decode/encode functions.

Storage of a value in the interpreter ("stored form"):
  * no encoding, or an encoding whose parameters are all in the type (per-tensor
    ``quant``): one numpy array of the type's dtype and shape;
  * an encoding with data-dependent parameters (per-axis scales, packed bits,
    sparse indices): a ``dict`` of named numpy arrays, ``encoding.components(t)``
    says which; only constants can have such types.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.errors import McirError


class Encoding(abc.ABC):
    """How a tensor's logical f32 values are stored. Subclasses are frozen dataclasses."""

    name: ClassVar[str]
    #: True when decoding needs arrays beyond the primary data (per-axis scales, packed bits)
    needs_components: ClassVar[bool] = False
    #: True when an op may produce values of this encoding at run time (``encode`` computes the
    #: components from the data, e.g. the per-sample scale of binary activations); otherwise
    #: an encoding with components is for constants only
    computed: ClassVar[bool] = False

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """Parameters printed in ``#name<k=v, ...>``, in a fixed order."""

    @classmethod
    @abc.abstractmethod
    def from_params(cls, params: dict[str, Any]) -> Encoding:
        """Build from parsed parameters; raise McirError naming a bad or missing one."""

    def check(self, t: TensorType) -> None:  # noqa: B027 - optional hook: most encodings accept any type
        """Raise McirError if this encoding cannot apply to a tensor of type ``t`` (default: no check)."""

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        """Storage arrays of a constant of type ``t``: name -> (dtype, shape)."""
        return {"data": (t.dtype, t.shape)}

    @abc.abstractmethod
    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        """Logical values of a stored tensor: f32 values (quantised ones exactly, in float64)."""

    @abc.abstractmethod
    def encode(self, t: TensorType, x: np.ndarray) -> Any:
        """Stored form of logical values ``x`` (the inverse of decode, up to rounding)."""

    def __str__(self) -> str:
        from mcir.printer import format_attr  # printing lives in one place

        body = ", ".join(f"{k}={format_attr(v)}" for k, v in self.params().items())
        return f"#{self.name}<{body}>"


ENCODINGS: dict[str, type[Encoding]] = {}


def register_encoding(cls: type[Encoding]) -> type[Encoding]:
    """Class decorator: make an encoding known to the parser and printer."""
    if cls.name in ENCODINGS:
        raise McirError(f"encoding '{cls.name}' is registered twice")
    ENCODINGS[cls.name] = cls
    return cls


def _int_range(dtype: DType) -> tuple[int, int]:
    info = np.iinfo(dtype.np)
    return int(info.min), int(info.max)


@register_encoding
@dataclass(frozen=True)
class Quant(Encoding):
    """Affine integer quantisation: ``real = scale * (q - zero_point)``.

    Per tensor, ``#quant<scale=0.02, zero_point=128>``: scale and zero point are in the
    type. Per axis, ``#quant<axis=0>``: symmetric (zero point 0), one f32 scale per
    index along ``axis`` stored beside the data as component ``scale``; only constants
    (weights, biases) may be quantised per axis.
    """

    name: ClassVar[str] = "quant"
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
            lo, hi = _int_range(t.dtype)
            if not lo <= self.zero_point <= hi:
                raise McirError(f"#quant zero_point {self.zero_point} outside the range of {t.dtype} (in {t})")

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
        lo, hi = _int_range(t.dtype)
        q = np.rint(np.asarray(x, np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, lo, hi).astype(t.dtype.np)


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
        """Bytes of storage, all components included."""
        if self.encoding is None:
            return math.ceil(self.numel * self.dtype.bits / 8)
        total = 0
        for dt, shape in self.encoding.components(self).values():
            total += math.ceil(math.prod(shape) * dt.bits / 8)
        return total

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


# the packed and sparse encodings register themselves (they need the classes above)
from mcir import packed, sparse  # noqa: E402, F401
