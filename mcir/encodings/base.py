"""The ``Encoding`` base class and the registry of encodings by text name.

An encoding says how a tensor's *logical* f32 values are stored. Each encoding is a frozen
dataclass in its own module of this package and owns its facts:

* its text syntax: ``params()`` / ``from_params()`` (``#quant<axis=0>``);
* its storage: ``components(t)`` (the named arrays a constant of that type holds, saved as
  ``NAME::component``), ``decode`` / ``encode``, and ``storage_bytes(t)``;
* its cost: ``stored_fraction(t)`` (the share of elements actually stored, which scales
  parameters and MACs) and ``mac_kind`` (how a MAC against such a weight is done).

Two facts belong to the backend, which imports the encodings (so they cannot ask it): for
which ops and op forms a native kernel exists, and the bytes a library embeds for a constant
(kernels pad, interleave and fold tables into their layouts). ``mcir.stats`` answers both
from the kernel registry and the kernels' own pack hooks: ``has_kernel(op, index, t)``,
``embedded_bytes(op, index, t, stored)``, ``try_kernel`` and ``stats(graph).weight_bytes``.

This module imports nothing of ``mcir.types`` at run time, so ``types.py`` and the encoding
modules both depend on it without a circle.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

from mcir.errors import McirError
from mcir.literals import format_attr

if TYPE_CHECKING:
    from mcir.dtypes import DType
    from mcir.types import TensorType


class Encoding(abc.ABC):
    """How a tensor's logical f32 values are stored. Subclasses are frozen dataclasses."""

    name: ClassVar[str]
    #: True when decoding needs arrays beyond the primary data (per-axis scales, packed bits)
    needs_components: ClassVar[bool] = False
    #: True when an op may produce values of this encoding at run time (``encode`` computes the
    #: components from the data, e.g. the per-sample scale of binary activations); otherwise
    #: an encoding with components is for constants only
    computed: ClassVar[bool] = False
    #: how a MAC against a weight of this encoding is done: "f32", "int8", "bit" (XNOR/popcount
    #: or sign-select) or "sparse" (only the stored values are multiplied)
    mac_kind: ClassVar[str] = "f32"

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """Parameters printed in ``#name<k=v, ...>``, in a fixed order."""

    @classmethod
    @abc.abstractmethod
    def from_params(cls, params: dict[str, Any]) -> Encoding:
        """Build from parsed parameters; raise McirError naming a bad or missing one."""

    def check(self, t: TensorType) -> None:  # noqa: B027 - optional hook: most encodings accept any type
        """Raise McirError if this encoding cannot apply to a tensor of type ``t`` (default: no check)."""

    def check_stored(self, t: TensorType, stored: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Raise McirError if stored components (already of the right dtypes and shapes) break a fact
        the kernels rely on: indices in range, row pointers monotone, padding bits zero, scales
        finite and positive. Called on every constant's data (verifier, loader, ``Rewriter.set_data``)."""

    def components(self, t: TensorType) -> dict[str, tuple[DType, tuple[int, ...]]]:
        """Storage arrays of a constant of type ``t``: name -> (dtype, shape)."""
        return {"data": (t.dtype, t.shape)}

    @abc.abstractmethod
    def decode(self, t: TensorType, stored: Any) -> Any:
        """Logical values of a stored tensor: f32 values (quantised ones exactly, in float64)."""

    @abc.abstractmethod
    def encode(self, t: TensorType, x: Any) -> Any:
        """Stored form of logical values ``x`` (the inverse of decode, up to rounding)."""

    def storage_bytes(self, t: TensorType) -> int:
        """Bytes of the canonical storage (all components, as saved in the weights file).

        What a compiled library embeds can differ: kernels pad and interleave their
        operands; ``mcir.stats`` reports those bytes.
        """
        return sum(-(-_numel(shape) * dt.bits // 8) for dt, shape in self.components(t).values())

    def stored_fraction(self, t: TensorType) -> float:
        """Share of the logical elements actually stored (1 unless the encoding is sparse)."""
        return 1.0

    def __str__(self) -> str:
        body = ", ".join(f"{k}={format_attr(v)}" for k, v in self.params().items())
        return f"#{self.name}<{body}>"


def int_param(encoding: str, key: str, value: Any, lo: int, hi: int) -> int:
    """A parsed parameter that must be an integer in [lo, hi] (not a bool, float, string or none)."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise McirError(f"#{encoding} {key} must be an integer in {lo}..{hi}, got {format_attr(value)}")
    return value


#: the largest finite f32: every encoding expresses f32 values, so no decoded value may exceed it
F32_MAX = 3.4028234663852886e38


def check_scales(encoding: str, key: str, scales: Any, zero_ok: bool = False, largest: int = 1) -> None:
    """Per-slice scales must be finite and positive (kernels divide by them or fold them into
    integer arithmetic; the passes that make them never write 0, NaN or inf), and ``largest``
    (the largest integer magnitude a scale multiplies) times a scale must be a finite f32: kernels
    decode in f32 where the interpreter decodes in float64, and a decoded weight of inf made
    0·inf = NaN natively where the interpreter had a finite value."""
    import numpy as np  # numpy is a dependency of every caller; kept local so the base stays light

    s = np.asarray(scales, np.float64)
    bad = ~np.isfinite(s) | ((s < 0) if zero_ok else (s <= 0)) | (s * largest > F32_MAX)
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), s.shape)
        need = "finite and >= 0" if zero_ok else "finite and > 0"
        raise McirError(
            f"#{encoding} component '{key}'{[int(j) for j in i]} is {float(s[i])}; scales must be {need}, and at most "
            f"{F32_MAX / largest:.4g} so that {largest} x scale is a finite f32"
        )


def check_zero_padding(encoding: str, key: str, packed: Any, used_bits: int) -> None:
    """The bits of each row past ``used_bits`` must be zero: kernels read whole words or bytes."""
    import numpy as np

    rows = np.ascontiguousarray(packed).view(np.uint8).reshape(packed.shape[0], -1)
    bits = np.unpackbits(rows, axis=1, bitorder="little")[:, used_bits:]
    if bits.any():
        row = int(np.argmax(bits.any(axis=1)))
        raise McirError(
            f"#{encoding} component '{key}' row {row} has padding bits set past bit {used_bits}; they must be zero"
        )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


ENCODINGS: dict[str, type[Encoding]] = {}


def register_encoding(cls: type[Encoding]) -> type[Encoding]:
    """Class decorator: make an encoding known to the parser and printer."""
    if cls.name in ENCODINGS:
        raise McirError(f"encoding '{cls.name}' is registered twice")
    ENCODINGS[cls.name] = cls
    return cls
