"""Passes, the pass registry, and running pipelines with instrumentation.

A pass is a frozen dataclass: its fields are its options (their type annotations and
``option(default, doc)`` docs are the pipeline syntax and the ``mcir passes`` help)::

    @dataclass(frozen=True)
    class Prune(Pass):
        "Magnitude pruning: w' = w if |w| > tau else 0."
        name: ClassVar[str] = "prune"
        preserves: ClassVar[str] = "approximate: max |delta| reported"
        sparsity: float = option(0.5, "fraction of weights set to zero")

        def apply(self, graph, ctx): ...

Function passes use the ``@mcir.pass_`` decorator; their keyword-only parameters are
the options. User passes are referenced in pipelines as ``path/to/file.py:name`` or
``pkg.module:name``, or installed under the ``mcir.passes`` entry-point group; they get
the same verification, printing and timing as built-in passes.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import time
import types as pytypes
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TextIO

import numpy as np

from mcir.errors import McirError, ParseError, VerifyError
from mcir.ir import Graph
from mcir.pipeline import NM, PipelineItem, parse_pipeline, pipeline_error


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


# -- the registry -------------------------------------------------------------------

#: built-in passes: name -> "module:Class" (imported on first use)
BUILTIN: dict[str, str] = {
    "fold": "mcir.passes.fold:Fold",
    "quantize": "mcir.passes.quantize:Quantize",
    "quant_fusion": "mcir.passes.quant_fusion:QuantFusion",
    "binarize": "mcir.passes.binarize:Binarize",
    "ternarize": "mcir.passes.binarize:Ternarize",
    "lowrank": "mcir.passes.lowrank:LowRank",
    "share": "mcir.passes.share:Share",
    "prune": "mcir.passes.prune:Prune",
    "finetune": "mcir.passes.finetune:Finetune",
    "distill": "mcir.passes.distill:Distill",
}

#: aliases: name -> (pass name, preset options)
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "quant8": ("quantize", {"bits": 8}),
}

_loaded: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Register a pass class under its name (for passes defined outside ``BUILTIN``)."""
    _loaded[cls.name] = cls
    return cls


def _import_ref(ref: str) -> Any:
    """Import ``module:attr`` (a dotted module) or ``path/to/file.py:attr``."""
    target, _, attr = ref.rpartition(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser()
        if not path.exists():
            raise McirError(f"pass file {path} does not exist")
        mod_name = f"mcir_user_passes_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except McirError:
                raise
            except Exception as e:
                del sys.modules[mod_name]
                raise McirError(f"error while importing pass file {path}: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise McirError(f"cannot import pass module '{target}': {e}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise McirError(f"'{target}' defines no '{attr}'") from None


def _entry_points() -> dict[str, Any]:
    try:
        return {ep.name: ep for ep in importlib.metadata.entry_points(group="mcir.passes")}
    except Exception:  # broken metadata of an unrelated package must not break mcir
        return {}


def as_pass_class(obj: Any, ref: str) -> type[Pass]:
    """A Pass class from what a user reference points at: a Pass subclass, a
    ``@mcir.pass_`` function, a plain ``fn(graph, ctx)`` or a RuleSet."""
    from mcir.patterns import RuleSet

    if isinstance(obj, type) and issubclass(obj, Pass):
        return obj
    if isinstance(obj, RuleSet):
        return rules_pass(obj, name=ref.rpartition(":")[2])
    if callable(obj):
        cls = getattr(obj, "__mcir_pass__", None)
        return cls if cls is not None else pass_(obj)
    raise McirError(f"'{ref}' is a {type(obj).__name__}, not a pass (a Pass subclass, a function or a RuleSet)")


def as_pass(obj: Any) -> Pass:
    """A Pass instance from a Pass, a Pass class, a ``@mcir.pass_`` function or a RuleSet."""
    if isinstance(obj, Pass):
        return obj
    return as_pass_class(obj, getattr(obj, "name", None) or getattr(obj, "__name__", "pass"))()


def pass_names() -> list[str]:
    return sorted(set(BUILTIN) | set(ALIASES) | set(_loaded) | set(_entry_points()))


def get_pass(ref: str) -> tuple[type[Pass], dict[str, Any]]:
    """The pass class for a pipeline reference, and preset options (for aliases like quant8)."""
    if ":" in ref:
        return as_pass_class(_import_ref(ref), ref), {}
    if ref in ALIASES:
        base, preset = ALIASES[ref]
        cls, _ = get_pass(base)
        return cls, dict(preset)
    if ref in _loaded:
        return _loaded[ref], {}
    if ref in BUILTIN:
        cls = _import_ref(BUILTIN[ref])
        _loaded[ref] = cls
        return cls, {}
    eps = _entry_points()
    if ref in eps:
        cls = as_pass_class(eps[ref].load(), ref)
        _loaded[ref] = cls
        return cls, {}
    raise KeyError(ref)


def build_pipeline(text: str) -> list[Pass]:
    """Instantiate the passes of a pipeline string, with errors pointing into the string."""
    passes = []
    for item in parse_pipeline(text):
        passes.append(_instantiate(item, text))
    return passes


def _instantiate(item: PipelineItem, text: str) -> Pass:
    try:
        cls, preset = get_pass(item.ref)
    except KeyError:
        near = difflib.get_close_matches(item.ref, pass_names(), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else "; `mcir passes` lists them"
        raise pipeline_error(text, f"unknown pass '{item.ref}'{hint}", item.column, len(item.ref)) from None
    except McirError as e:
        raise pipeline_error(text, str(e), item.column, len(item.ref)) from None
    specs = {s.name: s for s in options_of(cls)}
    kwargs = dict(preset)
    for key, ov in item.options.items():
        if key not in specs:
            valid = ", ".join(specs) or "none"
            raise pipeline_error(
                text,
                f"unknown option '{key}' for pass '{item.ref}'; valid options: {valid}",
                ov.column - len(key) - 1,
                len(key),
            )
        try:
            kwargs[key] = coerce(ov.value, specs[key].type)
        except ValueError as e:
            raise pipeline_error(
                text,
                f"option '{key}' of pass '{item.ref}' {e} (got {ov.text or repr(ov.value)})",
                ov.column,
                len(ov.text) or 1,
            ) from None
    try:
        return cls(**kwargs)
    except McirError as e:  # __post_init__ validation of option combinations
        raise pipeline_error(text, f"pass '{item.ref}': {e}", item.column, len(item.ref)) from None


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
    from mcir.patterns import apply_rules

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


# -- running pipelines -------------------------------------------------------------------


@dataclass(frozen=True)
class GraphStats:
    """Size and cost of a graph: compute ops, parameters, weight bytes, MACs per inference.

    Sparse weights count only their stored values (``#csr``: nnz, ``#nm``: n/m of the
    elements), in parameters and in MACs. ``int8_macs`` are MACs whose operands are all
    integer-quantised; ``bit_macs`` are MACs between packed binary/ternary weights and binary
    activations, i.e. done as XNOR + popcount.
    """

    ops: int
    params: int
    weight_bytes: int
    macs: int
    int8_macs: int = 0
    bit_macs: int = 0

    @staticmethod
    def of(graph: Graph) -> GraphStats:
        from mcir.ops import registry

        params = wbytes = macs = ops = int8 = bits = 0
        for op in graph.ops:
            t = op.result.type
            if op.name == "const":
                params += round(t.numel * _stored_fraction(t))
                wbytes += t.nbytes
                continue
            ops += 1
            types = [v.type for v in op.operands]
            n = registry.get(op.name).count_macs(types, t, op.attrs)
            if n and len(types) >= 2:
                n = round(n * _stored_fraction(types[1]))
                kinds = {_kind(x) for x in types[:2]}
                if kinds == {"quant"}:
                    int8 += n
                elif kinds == {"packed"}:
                    bits += n
            macs += n
        return GraphStats(ops, params, wbytes, macs, int8, bits)


def _stored_fraction(t) -> float:
    """Fraction of a tensor's elements actually stored (1 unless sparse)."""
    enc = t.encoding
    if enc is None or not t.numel:
        return 1.0
    if enc.name == "csr":
        return enc.nnz / t.numel
    if enc.name == "nm":
        return enc.n / enc.m
    return 1.0


def _kind(t) -> str:
    if t.encoding is None:
        return "plain"
    if t.dtype.kind == "packed":
        return "packed"
    return "quant" if t.dtype.is_integer else "other"


@dataclass
class PassRecord:
    name: str
    seconds: float
    stats: GraphStats
    max_abs_err: float | None = None
    sqnr_db: float | None = None
    accuracy: float | None = None  # on eval= data, when given


@dataclass
class PipelineReport:
    """What a pipeline did: a row per pass, warnings, and the pipeline text."""

    pipeline: str
    rows: list[PassRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def table(self) -> str:
        """An aligned table: pass, time, ops, params, weight bytes, MACs (and error when measured)."""
        from mcir.report import format_table, human_bytes, human_count, human_seconds

        with_err = any(r.max_abs_err is not None for r in self.rows)
        with_int8 = any(r.stats.int8_macs for r in self.rows)
        with_bits = any(r.stats.bit_macs for r in self.rows)
        head = ["pass", "time", "ops", "params", "weights", "MACs"]
        head += (["int8 MACs"] if with_int8 else []) + (["XNOR MACs"] if with_bits else [])
        head += ["max |Δ|", "SQNR"] if with_err else []
        with_acc = any(r.accuracy is not None for r in self.rows)
        head += ["accuracy"] if with_acc else []
        body = []
        for r in self.rows:
            row = [
                r.name,
                "-" if r.name == "(input)" else human_seconds(r.seconds),
                str(r.stats.ops),
                human_count(r.stats.params),
                human_bytes(r.stats.weight_bytes),
                human_count(r.stats.macs),
            ]
            row += [human_count(r.stats.int8_macs)] if with_int8 else []
            row += [human_count(r.stats.bit_macs)] if with_bits else []
            if with_err:
                row += [
                    "-" if r.max_abs_err is None else f"{r.max_abs_err:.3g}",
                    "-" if r.sqnr_db is None else ("inf" if r.sqnr_db == float("inf") else f"{r.sqnr_db:.1f} dB"),
                ]
            row += ["-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"] if with_acc else []
            body.append(row)
        text = format_table(head, body, align="l" + "r" * (len(head) - 1))
        if self.warnings:
            text += "\n" + "\n".join(f"warning: {w}" for w in self.warnings)
        return text


def compare_outputs(reference: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    """(max |Δ|, SQNR in dB) of ``got`` against ``reference`` over all outputs."""
    err = 0.0
    sig = noise = 0.0
    for r, g in zip(reference, got):
        r64 = np.asarray(r, np.float64)
        d = np.asarray(g, np.float64) - r64
        if d.size:
            err = max(err, float(np.nanmax(np.abs(d))))
        sig += float(np.sum(r64 * r64))
        noise += float(np.sum(d * d))
    sqnr = float("inf") if noise == 0 else 10.0 * np.log10(max(sig, 1e-300) / noise)
    return err, sqnr


def run_passes(
    graph: Graph,
    pipeline: str | list[Pass],
    *,
    verify_each: bool = True,
    print_ir_after_all: bool = False,
    print_ir_after: tuple[str, ...] | list[str] = (),
    sample_inputs: list[tuple[np.ndarray, ...]] | None = None,
    out: TextIO | None = None,
    progress: bool = False,
    **context: Any,
) -> Graph:
    """Run a pipeline on a copy of ``graph`` and return the result.

    ``context`` is visible to passes (``calibration=[(x,), ...]`` for quantisation,
    ``data=`` training data for ``finetune``/``distill``, see ``mcir.train.data``).
    With ``sample_inputs`` each pass's output error against the input graph is measured
    (max |Δ| and SQNR over the samples); with ``eval=`` data each pass's accuracy. The
    report is ``result.meta["report"]``. The graph before the first lossy pass is kept as
    ``ctx.data["original"]`` (the default teacher of ``distill``).
    """
    from mcir.interp import interpret
    from mcir.verifier import verify

    if isinstance(pipeline, str):
        passes = build_pipeline(pipeline)
    else:  # a list mixing Pass objects, pass classes, @pass_ functions, RuleSets and pipeline strings
        passes = [q for p in pipeline for q in (build_pipeline(p) if isinstance(p, str) else [as_pass(p)])]
    text = pipeline if isinstance(pipeline, str) else ",".join(str(p) for p in passes)
    known = {p.name for p in passes}
    for name in print_ir_after:
        if name not in known:
            raise McirError(f"--print-ir-after {name}: no pass of that name in the pipeline ({text})")
    for p in passes:  # a pass that trains stops the pipeline before anything runs when there is no data
        if getattr(p, "needs_data", False) and context.get("data") is None:
            raise McirError(
                f"pass '{p}' trains the model and needs data: pass data=... to run_passes or --data train.npz"
            )
    g = graph.copy()
    ctx = PassContext(data=dict(context))
    report = PipelineReport(text)
    refs = [interpret(graph, *x) for x in sample_inputs] if sample_inputs else None
    accuracy = _accuracy_meter(context.get("eval"))
    report.rows.append(
        PassRecord("(input)", 0.0, GraphStats.of(g), 0.0 if refs else None, float("inf") if refs else None, accuracy(g))
    )
    stream = out or sys.stderr
    for i, p in enumerate(passes):
        if progress:
            print(f"[{i + 1}/{len(passes)}] {p}", file=sys.stderr, flush=True)
        if not p.preserves.startswith("exact") and "original" not in ctx.data:
            ctx.data["original"] = g.copy()  # the teacher of distill: the graph before the first lossy pass
        t0 = time.perf_counter()
        try:
            p.apply(g, ctx)
        except McirError as e:
            raise type(e)(f"pass '{p.name}': {e}") from None
        seconds = time.perf_counter() - t0
        if verify_each:
            try:
                verify(g)
            except VerifyError as e:
                raise VerifyError(f"pass '{p.name}' produced an invalid graph: {e}") from None
        err = sqnr = None
        if refs is not None:
            errs = [compare_outputs(r, interpret(g, *x)) for r, x in zip(refs, sample_inputs)]
            err = max(e for e, _ in errs)
            sqnr = min(s for _, s in errs)
        report.rows.append(PassRecord(str(p), seconds, GraphStats.of(g), err, sqnr, accuracy(g)))
        if print_ir_after_all or p.name in print_ir_after:
            print(f"// ----- IR after {p} -----", file=stream)
            print(g, file=stream, end="")
    report.warnings = list(ctx.warnings)
    g.meta["report"] = report
    g.meta["pipeline"] = ",".join([graph.meta.get("pipeline", "")] + [str(p) for p in passes]).strip(",")
    return g


def _accuracy_meter(data: Any) -> Any:
    """graph -> accuracy on ``data`` (None without data), through ``mcir.train.evaluate``."""
    if data is None:
        return lambda g: None
    from mcir.train.data import Batches
    from mcir.train.run import evaluate

    batches = Batches(data, "eval")
    return lambda g: evaluate(g, batches)


__all__ = [
    "ALIASES",
    "BUILTIN",
    "GraphStats",
    "ParseError",
    "Pass",
    "PassContext",
    "PipelineReport",
    "build_pipeline",
    "option",
    "pass_",
    "register_pass",
    "rules_pass",
    "run_passes",
]
