"""The ``Encoding`` base class and the registry of encodings by text name.

An encoding says how a tensor's *logical* f32 values are stored. Each encoding is a frozen
dataclass in its own module of this package and owns its facts:

* its text syntax: ``params()`` / ``from_params()`` (``#quant<axis=0>``);
* its storage: ``components(t)`` (the named arrays a constant of that type holds, saved as
  ``NAME::component``), ``decode`` / ``encode``, and ``storage_bytes(t)``;
* its cost: ``stored_fraction(t)`` (the share of elements actually stored, which scales
  parameters and MACs) and ``mac_kind`` (how a MAC against such a weight is done);
* where it runs natively: ``has_kernel(op, index, target)`` asks the kernel registry.

The bytes a compiled library embeds for a constant depend on the kernel that streams it
(padding, interleaving, folded tables); ``mcir.stats`` computes them with the very function
the backend uses to lay the constant out, so the two cannot disagree.

This module imports nothing of ``mcir.types`` at run time, so ``types.py`` and the encoding
modules both depend on it without a circle.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

from mcir.errors import McirError

if TYPE_CHECKING:
    from mcir.dtypes import DType
    from mcir.ir import Op
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

    def has_kernel(self, op: Op, index: int, t: TensorType, target: Any = "native") -> bool:
        """Whether the backend has a native kernel for ``op`` when operand ``index`` has type ``t``
        (of this encoding) and the other operands keep theirs, per the kernel registry."""
        from mcir.stats import kernel_exists  # asks the backend's kernel registry

        return kernel_exists(op, {index: t}, target)

    def __str__(self) -> str:
        from mcir.printer import format_attr  # printing lives in one place

        body = ", ".join(f"{k}={format_attr(v)}" for k, v in self.params().items())
        return f"#{self.name}<{body}>"


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
