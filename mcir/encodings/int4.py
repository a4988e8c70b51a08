"""``#int4<group=G>`` and ``#int2<group=G>`` on ``i8[N, ...]``: symmetric 4-bit / 2-bit integers.

``value = scale[n, k // G] · q`` with q in [-7, 7] (int4) or [-1, 1] (int2), one f32 scale
per row (``group=0``, per output channel) or per group of G consecutive elements of a row
(``group=32|64|128``). The dtype says the values are integers; the encoding says how many
bits each takes.

Components: ``data`` u8[N, ceil(K·B/8)], the B-bit two's-complement q of each row as a
little-endian bit stream (two per byte for int4, see ``codebook.pack_indices``), and
``scale`` f32[N, ceil(K/G)] (G = K for ``group=0``).

Facts: B bits per weight + 4 bytes per group; the weight-only kernel (``kernels/lut.py``)
decodes through a 16-entry table ``scale·[0..7, -8..-1]`` rebuilt per group in registers,
so a MAC is an "f32" MAC; against ``u8 #dynamic`` activations (``kernels/dynamic_i8.py``)
it is an "int8" MAC (``vpdpbusd`` on the unpacked nibbles).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mcir import dtypes
from mcir.dtypes import DType
from mcir.encodings.base import Encoding, check_scales, check_zero_padding, register_encoding
from mcir.encodings.codebook import pack_indices, row_bytes, slices, unpack_indices
from mcir.errors import McirError

if TYPE_CHECKING:
    from mcir.types import TensorType

GROUPS = (0, 16, 32, 64, 128)


class _LowInt(Encoding):
    """Shared logic of the symmetric B-bit integer encodings."""

    bits: ClassVar[int]
    needs_components: ClassVar[bool] = True
    #: integer weights: "int8" MACs against u8 activations (W4A8), f32 MACs against float ones (``stats.mac_kind``)
    mac_kind: ClassVar[str] = "int8"
    group: int

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def params(self) -> dict[str, Any]:
        return {"group": self.group}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Encoding:
        if set(params) - {"group"}:
            raise McirError(f"#{cls.name} takes one parameter, group={'|'.join(map(str, GROUPS))} (got {params})")
        group = params.get("group", 0)
        if group not in GROUPS or isinstance(group, bool):
            raise McirError(f"#{cls.name} group must be one of {GROUPS} (0: per output channel), got {group!r}")
        return cls(group=group)

    def check(self, t: TensorType) -> None:
        if t.dtype != dtypes.i8 or t.rank < 1:
            raise McirError(f"#{self.name} holds i8 values of a tensor of rank >= 1, not {t}")
        if self.group not in GROUPS:
            raise McirError(f"#{self.name} group must be one of {GROUPS}, got {self.group}")

    def group_size(self, t: TensorType) -> int:
        """Elements per scale: G, or the whole row for group=0."""
        return self.group or max(1, slices(t)[1])

    def check_stored(self, t: TensorType, stored: dict[str, Any]) -> None:
        # every B-bit code indexes a table of 2^B entries, so codes are in range by construction; the bits
        # past K*B in a row must be zero (kernels load whole bytes and the canonical form is unique)
        check_zero_padding(self.name, "data", stored["data"], slices(t)[1] * self.bits)
        check_scales(self.name, "scale", stored["scale"], largest=(1 << (self.bits - 1)) - 1)

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        n, k = slices(t)
        return {
            "data": (dtypes.u8, (n, row_bytes(k, self.bits))),
            "scale": (dtypes.f32, (n, -(-k // self.group_size(t)))),
        }

    def values(self, t: TensorType, stored: Any) -> np.ndarray:
        """The integers q, i8[N, K]."""
        _, k = slices(t)
        u = unpack_indices(stored["data"], k, self.bits).astype(np.int16)
        return np.where(u >= 2 ** (self.bits - 1), u - 2**self.bits, u).astype(np.int8)

    def decode(self, t: TensorType, stored: Any) -> np.ndarray:
        q = self.values(t, stored).astype(np.float64)
        scale = np.repeat(np.asarray(stored["scale"], np.float32), self.group_size(t), axis=1)[:, : q.shape[1]]
        return (q * scale.astype(np.float64)).reshape(t.shape)  # exact, like #quant

    def encode(self, t: TensorType, x: np.ndarray) -> Any:
        """Round to the nearest level with scale = max|w| / qmax per group."""
        n, k = slices(t)
        g = self.group_size(t)
        groups = -(-k // g)
        w = np.zeros((n, groups * g), np.float64)
        w[:, :k] = np.asarray(x, np.float64).reshape(n, k)
        amax = np.abs(w.reshape(n, groups, g)).max(axis=2)
        scale = np.where(amax > 0, amax / self.qmax, 1.0).astype(np.float32)
        q = np.rint(w.reshape(n, groups, g) / scale.astype(np.float64)[:, :, None]).reshape(n, -1)[:, :k]
        q = np.clip(q, -self.qmax, self.qmax).astype(np.int64)
        return {"data": pack_indices(q & (2**self.bits - 1), self.bits), "scale": scale}


@register_encoding
@dataclass(frozen=True)
class Int4(_LowInt):
    """4-bit symmetric integers (-7..7), two per byte, f32 scale per row or per group."""

    name: ClassVar[str] = "int4"
    bits: ClassVar[int] = 4
    group: int = 0


@register_encoding
@dataclass(frozen=True)
class Int2(_LowInt):
    """2-bit symmetric integers (-1..1), four per byte, f32 scale per row or per group."""

    name: ClassVar[str] = "int2"
    bits: ClassVar[int] = 2
    group: int = 0
