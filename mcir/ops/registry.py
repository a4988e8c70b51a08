"""The op registry: every op kind is declared once, next to its semantics.

An op declaration gives its operands, its attributes (kind, default, doc), a type
inference rule over *logical* types, the numpy reference implementation (the oracle
for every backend), where it has a cost its multiply-accumulate count, and what it is
(its traits, vocabulary in ``mcir.ops.traits``; a weighted layer adds its ``WeightLayout``)::

    @defop("clamp", operands="x", attrs={"min": Attr("float?", None), "max": Attr("float?", None)},
           traits={ELEMENTWISE, UNARY, ACTIVATION})
    def clamp(x, min=None, max=None):
        "y = min(max(x, min), max)"
        return np.clip(x, min, max)

The definition modules (``elementwise``, ``nn``, ``shape``, ``quant``) are imported by the
``mcir.ops`` package, so whoever imports this module finds every op registered.

Operand specs: ``"x"`` required, ``"bias?"`` optional (trailing only), ``"inputs*"``
variadic (the only operand). Inference functions see operand types with encodings
stripped (``TensorType.logical``): quantised or packed operands mean f32 values, so
every op accepts them in the IR; which encodings have native kernels is the
backend's business.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcir.errors import McirError, UnsupportedError
from mcir.ops.traits import VOCABULARY, WeightLayout, problems
from mcir.types import TensorType

REQUIRED = object()

_KINDS = {"int", "float", "bool", "str", "ints", "floats", "dtype"}


@dataclass(frozen=True)
class Attr:
    """An attribute declaration. ``kind`` is one of int, float, bool, str, ints, floats,
    dtype; a trailing ``?`` allows ``none``. ``finite`` refuses NaN and ±inf for a float whose
    kernels fold it into integer or closed-form code (a pow exponent, clamp bounds, an eps)."""

    kind: str
    default: Any = REQUIRED
    doc: str = ""
    finite: bool = False

    def __post_init__(self) -> None:
        if self.kind.rstrip("?") not in _KINDS:
            raise ValueError(f"unknown attribute kind {self.kind}")

    def check(self, value: Any, where: str) -> Any:
        """Validate and normalise ``value`` (ints accepted for floats, lists become tuples)."""
        kind = self.kind.rstrip("?")
        if value is None:
            if self.kind.endswith("?"):
                return None
            raise McirError(f"{where}: attribute needs a {kind}, got none")
        ok = {
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "bool": lambda v: isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "dtype": lambda v: isinstance(v, str),
            "ints": lambda v: (
                isinstance(v, list | tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            ),
            "floats": lambda v: (
                isinstance(v, list | tuple) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
            ),
        }[kind]
        if not ok(value):
            raise McirError(f"{where}: expected {kind}, got {value!r}")
        try:
            if kind == "float":
                if self.finite and not math.isfinite(float(value)):
                    raise McirError(f"{where}: needs a finite number, got {value!r}")
                return float(value)
            if kind == "floats":
                return tuple(float(x) for x in value)
        except OverflowError:  # an int beyond the double range
            raise McirError(f"{where}: {str(value)[:24]}... is too large for a float (max ~1.8e308)") from None
        if kind == "ints":
            return tuple(value)
        return value


@dataclass(frozen=True)
class OpDef:
    """Everything mcir knows about one op kind."""

    name: str
    operands: tuple[str, ...]
    attrs: dict[str, Attr]
    infer: Callable[..., TensorType]
    reference: Callable[..., np.ndarray]
    doc: str = ""
    traits: frozenset[str] = field(default_factory=frozenset)
    macs: Callable[..., int] | None = None
    weight: WeightLayout | None = None

    def trait_problems(self) -> list[str]:
        """Inconsistencies in this op's classification (see ``mcir.ops.traits``); empty when fine."""
        return problems(self.name, self.operands, tuple(self.attrs), self.traits, self.weight)

    @property
    def variadic(self) -> bool:
        return len(self.operands) == 1 and self.operands[0].endswith("*")

    @property
    def min_operands(self) -> int:
        if self.variadic:
            return 1
        return sum(1 for o in self.operands if not o.endswith("?"))

    def operand_names(self) -> list[str]:
        return [o.rstrip("?*") for o in self.operands]

    def complete_attrs(self, attrs: dict[str, Any], where: str) -> dict[str, Any]:
        """Check attribute names and kinds, fill in defaults; returns a new dict in declared order."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            valid = ", ".join(self.attrs) or "none"
            raise McirError(f"{where}: unknown attribute {', '.join(sorted(unknown))}; '{self.name}' takes: {valid}")
        out = {}
        for key, spec in self.attrs.items():
            if key in attrs:
                out[key] = spec.check(attrs[key], f"{where}, attribute '{key}'")
            elif spec.default is REQUIRED:
                raise McirError(f"{where}: missing required attribute '{key}' ({spec.kind})")
            else:
                out[key] = spec.default
        return out

    def check_arity(self, n: int, where: str) -> None:
        if self.variadic:
            if n < 1:
                raise McirError(f"{where}: '{self.name}' needs at least one operand")
            return
        if not self.min_operands <= n <= len(self.operands):
            expect = ", ".join(self.operands) or "no operands"
            raise McirError(f"{where}: '{self.name}' takes ({expect}), got {n} operand(s)")

    def infer_type(self, types: list[TensorType], attrs: dict[str, Any], where: str) -> TensorType:
        """The logical result type for operand types ``types``; McirError naming ``where`` if invalid."""
        self.check_arity(len(types), where)
        logical = [t.logical for t in types]
        try:
            return self.infer(logical, **attrs)
        except McirError as e:
            raise type(e)(f"{where}: {e}") from None

    def count_macs(self, types: list[TensorType], result: TensorType, attrs: dict[str, Any]) -> int:
        """Multiply-accumulates one execution performs (0 for data movement)."""
        if self.macs is None:
            return 0
        return int(self.macs([t.logical for t in types], result.logical, **attrs))


_REGISTRY: dict[str, OpDef] = {}


def defop(
    name: str,
    operands: str = "x",
    attrs: dict[str, Attr] | None = None,
    infer: Callable[..., TensorType] | None = None,
    traits: set[str] | frozenset[str] | tuple[str, ...] = (),
    macs: Callable[..., int] | None = None,
    weight: WeightLayout | None = None,
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Decorator registering the decorated numpy function as the reference of op ``name``.

    Without ``infer``, the result has the type of the first operand (elementwise ops).
    ``traits`` classify the op (vocabulary in ``mcir.ops.traits``); a weighted layer also
    gives its ``weight`` layout.
    """

    def deco(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        if name in _REGISTRY:
            raise McirError(f"op '{name}' is registered twice")
        unknown = sorted(set(traits) - VOCABULARY.keys())
        if unknown:  # a typo here would silently drop the op from every trait query
            raise McirError(f"op '{name}': unknown trait(s) {', '.join(unknown)}; see mcir.ops.traits")
        specs = tuple(s.strip() for s in operands.split(",") if s.strip())
        _REGISTRY[name] = OpDef(
            name=name,
            operands=specs,
            attrs=dict(attrs or {}),
            infer=infer or same_as_first,
            reference=fn,
            doc=(fn.__doc__ or "").strip(),
            traits=frozenset(traits),
            macs=macs,
            weight=weight,
        )
        return fn

    return deco


def get(name: str) -> OpDef:
    """The declaration of op ``name``; an UnsupportedError suggesting near names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        near = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else "; `mcir ops` lists them"
        raise UnsupportedError(f"unknown op '{name}'{hint}") from None


def exists(name: str) -> bool:
    return name in _REGISTRY


def all_ops() -> dict[str, OpDef]:
    return dict(_REGISTRY)


def ops_with(*traits: str) -> frozenset[str]:
    """Names of the registered ops that have every trait in ``traits``."""
    want = set(traits)
    return frozenset(name for name, op in _REGISTRY.items() if want <= op.traits)


def has_trait(name: str, trait: str) -> bool:
    """Whether registered op ``name`` has ``trait`` (False for unknown ops)."""
    op = _REGISTRY.get(name)
    return op is not None and trait in op.traits


# -- shared inference rules ------------------------------------------------------


def same_as_first(types: list[TensorType], **_: Any) -> TensorType:
    return types[0]


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy/torch broadcasting of shapes; McirError when incompatible."""
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0} - {1}
        if len(dims) > 1:
            raise McirError(f"shapes {' and '.join(str(list(s)) for s in shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def norm_axis(axis: int, rank: int, what: str = "axis") -> int:
    """A non-negative axis; McirError when out of range."""
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise McirError(f"{what} {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
