"""The built-in passes, one per module, and how pipeline references find a pass.

``BUILTIN`` maps each name to ``"module:Class"``, imported on first use (like xDSL's
``get_all_passes``), so listing passes imports none of them. A pipeline reference is a
built-in name, an alias (``quant8``), ``path/to/file.py:name``, ``pkg.module:name``, a name
registered with ``register_pass`` or one installed under the ``mcir.passes`` entry-point group;
user passes get the same verification, printing and timing as built-in ones.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Any

from mcir.errors import McirError
from mcir.pass_base import Pass, coerce, options_of, pass_, rules_pass
from mcir.patterns import RuleSet
from mcir.pipeline import PipelineItem, parse_pipeline, pipeline_error

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
    "cluster": "mcir.passes.cluster:Cluster",
    "half": "mcir.passes.half:Half",
    "bf16": "mcir.passes.bf16:BF16",
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


def get_all_passes() -> dict[str, str]:
    """Every built-in pass and alias by name, with where it lives (nothing is imported)."""
    out = dict(BUILTIN)
    out.update({alias: f"{base} {preset}" for alias, (base, preset) in ALIASES.items()})
    return out


def pass_names() -> list[str]:
    """Names a pipeline can use without a path: built-ins, aliases, registered and installed passes."""
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
