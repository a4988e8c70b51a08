"""The pass base class and its options: what every pass, built-in or user-written, is made of.

A pass is a frozen dataclass: its fields are its options (their type annotations and
``option(default, doc)`` docs are the pipeline syntax and the ``mcir passes`` help)::

    @dataclass(frozen=True)
    class Prune(Pass):
        "Magnitude pruning: w' = w if |w| > tau else 0."
        name: ClassVar[str] = "prune"
        preserves: ClassVar[str] = "approximate: max |delta| reported"
        sparsity: float = option(0.5, "fraction of weights set to zero")

        def apply(self, graph, ctx): ...

Function passes use the ``@mcir.pass_`` decorator; their keyword-only parameters are the
options; ``rules_pass`` makes a pass of a RuleSet. Which passes exist is the business of
``mcir.passes`` (the registry); running them with instrumentation is ``mcir.instrument``.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import re
import types as pytypes
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from mcir.errors import McirError
from mcir.ir import Graph
from mcir.patterns import apply_rules
from mcir.pipeline import NM


def option(default: Any, doc: str = "") -> Any:
    """A pass option: a dataclass field with a default and a one-line doc."""
    if isinstance(default, list | dict | set):
        raise TypeError("pass options must be immutable; use a tuple")
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Pass(abc.ABC):
    """Base class of all passes. Subclasses are frozen dataclasses whose fields are options."""

    name: ClassVar[str] = ""
    #: "exact" or "approximate: <what bound is reported>"
    preserves: ClassVar[str] = "exact"

    @abc.abstractmethod
    def apply(self, graph: Graph, ctx: PassContext) -> None:
        """Transform ``graph`` in place."""

    @classmethod
    def summary(cls) -> str:
        return (inspect.getdoc(cls) or "").split("\n")[0]

    def __str__(self) -> str:
        opts = [
            f"{f.name}={_format_option(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return self.name + (f"({','.join(opts)})" if opts else "")


def _format_option(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if re.fullmatch(r"[A-Za-z0-9_.\-]+(\([^()]*\))?", v) else repr(v)
    if isinstance(v, tuple):
        return "[" + ",".join(_format_option(x) for x in v) + "]"
    return str(v)


@dataclass
class PassContext:
    """What passes can see besides the graph: user data (calibration inputs, ...) and warnings."""

    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def warn(self, message: str) -> None:
        """A warning shown in the pipeline report (and on stderr by the CLI)."""
        self.warnings.append(message)


# -- option types ---------------------------------------------------------------------


@dataclass(frozen=True)
class OptionSpec:
    name: str
    type: Any
    default: Any
    doc: str

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, pytypes.UnionType):
        return " or ".join(_type_name(a) if a is not type(None) else "none" for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is NM:
        return "N:M"
    return getattr(tp, "__name__", str(tp))


def options_of(cls: type[Pass]) -> list[OptionSpec]:
    """The options of a pass class, with resolved types."""
    hints = typing.get_type_hints(cls, include_extras=False)
    out = []
    for f in dataclasses.fields(cls):
        out.append(OptionSpec(f.name, hints.get(f.name, Any), f.default, f.metadata.get("doc", "")))
    return out


def coerce(value: Any, tp: Any) -> Any:
    """Convert a parsed pipeline value to option type ``tp``; ValueError with a reason otherwise."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, pytypes.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(" or ".join(errors))
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1] or (Any,)
        seq = value if isinstance(value, list) else [value]
        return tuple(coerce(v, item) for v in seq)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError("must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError("must be an integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ValueError("must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if value is None:  # the bare word `none` is a string where a string is expected
            return "none"
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError("must be a string")
    if tp is NM:
        if isinstance(value, NM):
            return value
        raise ValueError("must be N:M, e.g. 2:4")
    raise ValueError(f"has unsupported type {_type_name(tp)}")


# -- function passes and rule-set passes -----------------------------------------------


def pass_(fn: Any = None, *, name: str | None = None, preserves: str = "exact") -> Any:
    """Decorator turning ``fn(graph, ctx, *, opt: type = default, ...)`` into a pass.

    The keyword-only parameters become the pass's options. The decorated function is
    returned unchanged (still callable), with the pass class as ``fn.__mcir_pass__``.
    """

    def wrap(f: Any) -> Any:
        sig = inspect.signature(f)
        hints = typing.get_type_hints(f)
        fields = []
        for p in sig.parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                if p.default is inspect.Parameter.empty:
                    raise McirError(f"pass option '{p.name}' of {f.__name__} needs a default")
                fields.append((p.name, hints.get(p.name, type(p.default)), option(p.default)))

        def apply(self: Pass, graph: Graph, ctx: PassContext) -> None:
            kwargs = {fname: getattr(self, fname) for fname, _, _ in fields}
            positional = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
            f(graph, ctx, **kwargs) if len(positional) >= 2 else f(graph, **kwargs)

        pass_name = name or f.__name__
        cls = dataclasses.make_dataclass(
            _class_name(pass_name),
            fields,
            bases=(Pass,),
            frozen=True,
            namespace={"name": pass_name, "preserves": preserves, "apply": apply, "__doc__": f.__doc__},
        )
        f.__mcir_pass__ = cls
        return f

    return wrap(fn) if fn is not None else wrap


def rules_pass(rules: Any, *, name: str, preserves: str = "exact", doc: str | None = None) -> type[Pass]:
    """A pass applying a RuleSet greedily to a fixpoint."""

    def apply(self: Pass, graph: Graph, ctx: PassContext) -> None:
        apply_rules(graph, rules)

    return dataclasses.make_dataclass(
        _class_name(name),
        [],
        bases=(Pass,),
        frozen=True,
        namespace={
            "name": name,
            "preserves": preserves,
            "apply": apply,
            "__doc__": doc or f"Apply the rule set '{getattr(rules, 'name', name)}' to a fixpoint.",
        },
    )


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name) if part) or "UserPass"
