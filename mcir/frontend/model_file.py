"""Loading PyTorch model files, safe by default.

A pickle can run any code while it loads, so mcir never unpickles a file it has not
checked unless the user says they trust it (``--trust``):

* ``model.pt`` holding a full pickled module: the globals the pickle needs are listed
  without running anything (``torch.serialization.get_unsafe_globals_in_checkpoint``);
  it is loaded with ``torch.load(weights_only=True)`` when each one is a ``torch.nn``
  class or function, or a model class (``nn.Module`` subclass, dataclass, enum, named tuple)
  defined in a module the user named (``--import mypkg.models``: importing it is the user's
  decision). Anything else is refused, listing the globals; functions and other callables
  (``runpy._run_code``, ``subprocess.Popen``, ``eval``) are refused even from a named module,
  no module a file names is imported to decide, and ``--import`` is suggested only for
  non-standard-library modules of class-like names. Zips unpacking to far more than their
  size are refused before anything is read (``UNPACK_RATIO``, ``UNPACK_SLACK``).
* Files that are not models (ONNX, ELF, images, archives...) are named as such
  (``mcir.file_kind``), never sent to the unpickler.
* ``model.pt`` holding a state dict: weights only, always safe; the model comes from
  ``model_def="pkg.module:factory"`` or ``"path/to/file.py:factory"``.
* ``model.pt2`` (``torch.export.save``): loading it unpickles data, so only with
  ``trust=True``; its stored example inputs are used when no input spec is given.

Input specs say the example inputs' shapes: ``x=1x3x32x32:f32``, ``1x784`` (float32),
``tokens=1x128:i64``.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mcir import dtypes
from mcir.errors import McirError, ModelFileError
from mcir.file_kind import MCIR_TEXT, TORCH_EXPORT, TORCH_ZIP, require_model_file

TRUST_HINT = "pass --trust (trust=True) only if you trust the file: a full load can run arbitrary code"


@dataclass(frozen=True)
class InputSpec:
    """Name (optional), static shape and mcir dtype name of one example input."""

    name: str | None
    shape: tuple[int, ...]
    dtype: str = "f32"

    def example(self, seed: int = 0) -> torch.Tensor:
        """A deterministic example tensor: standard normal floats, zeros for integers (valid token ids)."""
        dt = dtypes.by_name(self.dtype)
        torch_dt = _TORCH_DTYPES[self.dtype]
        if dt.is_float:
            gen = torch.Generator().manual_seed(seed)
            return torch.randn(self.shape, generator=gen).to(torch_dt)
        return torch.zeros(self.shape, dtype=torch_dt)

    def __str__(self) -> str:
        shape = "x".join(str(d) for d in self.shape)
        return f"{self.name + '=' if self.name else ''}{shape}:{self.dtype}"


_TORCH_DTYPES = {
    "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "i64": torch.int64, "i32": torch.int32,
    "i16": torch.int16, "i8": torch.int8, "u8": torch.uint8, "bool": torch.bool,
}  # fmt: skip
_SPEC_RE = re.compile(r"^(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)=)?(?P<shape>\d+(?:x\d+)*|scalar)(?::(?P<dtype>\w+))?$")


def parse_input_spec(text: str) -> InputSpec:
    """``"x=1x3x32x32:f32"`` -> InputSpec("x", (1, 3, 32, 32), "f32"); name and dtype are optional."""
    m = _SPEC_RE.match(text.strip())
    if not m:
        raise McirError(
            f"bad input spec '{text}': write [NAME=]DIMS[:DTYPE] with DIMS like 1x3x32x32, "
            "e.g. x=1x3x32x32:f32, 1x784, tokens=1x128:i64"
        )
    dtype = m["dtype"] or "f32"
    if dtype not in _TORCH_DTYPES:
        raise McirError(f"bad input spec '{text}': unknown dtype '{dtype}'; use one of {', '.join(_TORCH_DTYPES)}")
    shape = () if m["shape"] == "scalar" else tuple(int(d) for d in m["shape"].split("x"))
    return InputSpec(m["name"], shape, dtype)


def load_model(
    path: str | Path,
    *,
    imports: tuple[str, ...] | list[str] = (),
    model_def: str | None = None,
    trust: bool = False,
    inputs: Any = None,
) -> tuple[Any, tuple[torch.Tensor, ...]]:
    """Load a model file for ``mcir.trace``: returns ``(module or ExportedProgram, example inputs)``.

    ``imports`` are modules whose classes a pickled module may use (imported here);
    ``model_def`` (``"pkg.mod:factory"`` or ``"file.py:factory"``) builds the module a
    state dict is loaded into; ``trust`` allows full unpickling (arbitrary code);
    ``inputs`` is a list of input specs (strings or ``InputSpec``) for the example inputs.
    Raises ``ModelFileError`` saying what is wrong with the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    kind = require_model_file(path)  # an ONNX file or an image is named as such, never sent to the unpickler
    if kind in (TORCH_ZIP, TORCH_EXPORT):
        _check_unpacked_size(path)
    if kind == MCIR_TEXT:
        raise ModelFileError(
            f"{path}: an mcir IR text file, not a torch model; load it with mcir.load or mcir.parse_file"
        )
    for name in imports:
        _import_user_module(name)
    specs = [s if isinstance(s, InputSpec) else parse_input_spec(s) for s in (inputs or [])]
    if kind == TORCH_EXPORT:
        program, stored = _load_export_archive(path, trust)
        return program, _example_inputs(path, specs, None, stored)
    obj = _load_pickle(path, imports, trust)
    module = _as_module(path, obj, model_def)
    return module, _example_inputs(path, specs, module, None)


# -- .pt2 archives -------------------------------------------------------------------------------


def _load_export_archive(path: Path, trust: bool) -> tuple[Any, tuple[torch.Tensor, ...] | None]:
    if not trust:
        raise ModelFileError(
            f"{path}: a .pt2 archive (torch.export.save) unpickles data when loaded, which can run code; "
            f"{TRUST_HINT}. Otherwise save the weights with torch.save(model.state_dict()) and give --model-def."
        )
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise ModelFileError(f"{path}: cannot load the torch.export archive: {_first_line(e)}") from None
    stored = getattr(program, "example_inputs", None)
    args = tuple(stored[0]) if stored and not stored[1] else None
    return program, args


# at most this many bytes may come out of a model zip: torch.save stores entries uncompressed, so a legitimate
# file unpacks to about its own size; a zip bomb declares far more
UNPACK_RATIO = 4
UNPACK_SLACK = 64 << 20


def _check_unpacked_size(path: Path) -> None:
    """Refuse a zip whose entries declare more than ``UNPACK_RATIO`` × its size + ``UNPACK_SLACK`` bytes: the
    readers (zipfile, torch's) inflate an entry up to its declared size, so this bounds decompression."""
    try:
        with zipfile.ZipFile(path) as z:
            declared = sum(info.file_size for info in z.infolist())
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelFileError(f"{path}: cannot read the model file: {_first_line(e)}; is it truncated?") from None
    size = path.stat().st_size
    limit = UNPACK_RATIO * size + UNPACK_SLACK
    if declared > limit:
        raise ModelFileError(
            f"{path}: its zip entries unpack to {declared:,} bytes from a {size:,}-byte file (limit {limit:,}); "
            "torch.save files are stored uncompressed, so this is not one (a decompression bomb?)"
        )


# -- pickles (torch.save) -------------------------------------------------------------------------


def _load_pickle(path: Path, imports: tuple[str, ...] | list[str], trust: bool) -> Any:
    if trust:
        return _torch_load(path, weights_only=False)
    if zipfile.is_zipfile(path):
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as e:
            raise ModelFileError(f"{path}: cannot read the model file: {_first_line(e)}; is it truncated?") from None
    else:  # a plain or legacy (pre-1.6) pickle: list its globals from the opcodes, executing nothing
        needed = _pickle_globals(path)
    allowed, refused = [], []
    for name in sorted({_python3_name(n) for n in needed}):
        obj = _allowed_global(name, imports)
        (refused if obj is None else allowed).append(obj if obj is not None else name)
    if refused:
        raise ModelFileError(
            f"{path}: refusing to unpickle: the file needs globals that are neither torch.nn classes nor model "
            f"classes (modules, dataclasses) of modules you named: {', '.join(refused)}. "
            f"{_import_hint(refused, imports)}{TRUST_HINT}"
        )
    with torch.serialization.safe_globals(allowed):
        return _torch_load(path, weights_only=True)


_SAFE_BUILTINS = {"collections.OrderedDict", "_codecs.encode"} | {
    f"{module}.{name}"
    for module in ("builtins", "__builtin__")  # protocol-2 pickles say __builtin__
    for name in ("set", "frozenset", "slice", "complex", "bytearray")
}


def _pickle_globals(path: Path) -> set[str]:
    """'module.name' of every global the pickles in ``path`` reference, read from the opcodes
    with ``pickletools`` (nothing is executed). Names torch's restricted unpickler handles
    itself (torch storages and tensor rebuilders, plain containers) are left out."""
    import pickletools

    found: set[str] = set()
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        strings: list[str] = []
        try:
            for opcode, arg, end in pickletools.genops(data[pos:]):
                if opcode.name == "GLOBAL":
                    found.add(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.add(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
                if opcode.name == "STOP":
                    pos += end + 1
                    break
            else:
                break
        except ValueError:  # not a pickle any more: torch's raw storage bytes follow the pickles
            break
    return {g for g in found if not _handled_by_restricted_unpickler(g)}


def _handled_by_restricted_unpickler(name: str) -> bool:
    """Globals torch's weights-only unpickler allows by itself (tensor rebuilders, storages, containers)."""
    return (
        name in _SAFE_BUILTINS
        or name.startswith("torch._utils._rebuild")
        or (name.startswith("torch.") and name.endswith("Storage"))
    )


def _torch_load(path: Path, weights_only: bool) -> Any:
    import warnings

    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notice is noise here
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(str(path), map_location="cpu", weights_only=weights_only)
    except McirError:
        raise
    except Exception as e:
        if weights_only and "persistent_load of storage" in str(e):
            raise ModelFileError(
                f"{path}: this is a legacy-format (torch < 1.6) pickle of a whole model, which torch cannot load "
                "safely; save a state dict (torch.save(model.state_dict(), ...)) and use --model-def, re-save it "
                f"in the current format, or {TRUST_HINT}"
            ) from None
        if weights_only and "weights_only" in str(e):
            raise ModelFileError(f"{path}: refusing to unpickle: {_first_line(e)}. {TRUST_HINT}") from None
        raise ModelFileError(
            f"{path}: cannot read the model file ({type(e).__name__}: {_first_line(e)}); it is truncated, corrupt "
            "or not written by torch.save"
        ) from None


def _allowed_global(name: str, imports: tuple[str, ...] | list[str]) -> Any:
    """The object for global ``name`` ('pkg.mod.Class') if a pickle may use it, else None.

    Allowed: torch.nn classes (modules, Parameter) and the functions of torch.nn.functional
    (activations modules store, e.g. TransformerEncoderLayer's F.gelu), from torch modules that
    are already imported; and, from a module the user named with ``--import``, the *model classes*
    it defines: ``nn.Module`` subclasses, dataclasses, enums and named tuples. Everything else is
    refused, whoever names it: functions (``runpy._run_code``, ``builtins.eval``), classes that run
    things when called (``subprocess.Popen``), classes a named module merely re-exports, and
    torch functions such as ``torch.save`` or ``torch.hub.load`` that could write files or fetch code.
    A torch module the file names is never imported to decide (importing runs its code).
    """
    module_name, _, attr = name.rpartition(".")
    from_user = any(module_name == m or module_name.startswith(m + ".") for m in imports)
    if from_user:
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            return None
        defined_there = getattr(obj, "__module__", None) == module_name
        return obj if defined_there and _is_model_class(obj) else None
    if not (module_name == "torch" or module_name.startswith("torch.")):
        return None  # never import a module the user did not name: importing runs its code
    module = sys.modules.get(module_name)  # loaded by ``import torch`` already, or not a model's business
    obj = getattr(module, attr, None) if module is not None else None
    if isinstance(obj, type) and obj.__module__.startswith(("torch.nn.", "torch.ao.nn.")):
        return obj
    if callable(obj) and not isinstance(obj, type) and getattr(F, getattr(obj, "__name__", ""), None) is obj:
        return obj
    return None


def _python3_name(name: str) -> str:
    """The name the unpickler will really look up: protocol-2 pickles spell some globals the Python 2 way
    (``subprocess.Popen`` is written ``commands.Popen``, ``builtins.eval`` ``__builtin__.eval``)."""
    import _compat_pickle

    module, _, attr = name.rpartition(".")
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{attr}"


def _is_model_class(obj: Any) -> bool:
    """A class whose unpickling builds data, not an action: a module, a dataclass, an enum, a named tuple."""
    import dataclasses
    import enum

    if not isinstance(obj, type):
        return False
    named_tuple = issubclass(obj, tuple) and hasattr(obj, "_fields")
    return issubclass(obj, nn.Module) or dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum) or named_tuple


def _import_hint(refused: list[str], imports: tuple[str, ...] | list[str]) -> str:
    """``--import`` advice, only for modules that may hold model classes: not torch, not the standard library
    (``runpy``, ``subprocess``, ``builtins``...), not modules already named, and only for class-like names."""
    modules = set()
    for name in refused:
        module_name, _, attr = name.rpartition(".")
        top = module_name.split(".", 1)[0]
        if top in ("torch", "__builtin__", "__main__") or top in sys.stdlib_module_names:
            continue
        if any(module_name == m or module_name.startswith(m + ".") for m in imports):
            continue  # named already: what it asks for is not a model class
        if attr[:1].isupper():
            modules.add(module_name)
    if not modules:
        return ""
    return f"if these are your model classes, name their modules with --import {' --import '.join(sorted(modules))}; "


def _import_user_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as e:
        raise ModelFileError(f"cannot import module '{name}' (given with --import): {_first_line(e)}") from None


# -- from the loaded object to a module ----------------------------------------------------------------


def _as_module(path: Path, obj: Any, model_def: str | None) -> nn.Module:
    if isinstance(obj, nn.Module):
        return obj.eval()
    state = _state_dict_of(obj)
    if state is None:
        raise ModelFileError(
            f"{path}: holds a {type(obj).__name__}, not an nn.Module or a state dict; save the model with "
            "torch.save(model) or torch.save(model.state_dict())"
        )
    if model_def is None:
        raise ModelFileError(
            f"{path}: holds a state dict (weights only, {len(state)} tensors); say which model they belong to "
            "with --model-def pkg.module:factory (or path/to/file.py:factory)"
        )
    module = build_from_def(model_def)
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing {_some(result.missing_keys)}")
        if result.unexpected_keys:
            parts.append(f"unexpected {_some(result.unexpected_keys)}")
        raise ModelFileError(f"{path}: the state dict does not fit the model built by {model_def}: {'; '.join(parts)}")
    return module.eval()


def _state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state dict in ``obj``: a dict of tensors, or a checkpoint dict holding one."""
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj:
                return _state_dict_of(obj[key])
    return None


def build_from_def(model_def: str) -> nn.Module:
    """Call the factory named by ``"pkg.module:factory"`` or ``"path/to/file.py:factory"``."""
    target, sep, attr = model_def.rpartition(":")
    if not sep or not target or not attr:
        raise ModelFileError(f"bad --model-def '{model_def}': write pkg.module:factory or path/to/file.py:factory")
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise ModelFileError(f"--model-def {model_def}: no such file {file}")
        spec = importlib.util.spec_from_file_location(f"mcir_model_def_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ModelFileError(f"--model-def {model_def}: running {file} failed: {_first_line(e)}") from None
    else:
        module = _import_user_module(target)
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ModelFileError(f"--model-def {model_def}: {target} has no callable '{attr}'")
    try:
        model = factory()
    except Exception as e:
        raise ModelFileError(f"--model-def {model_def}: calling {attr}() failed: {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"--model-def {model_def}: {attr}() returned a {type(model).__name__}, not an nn.Module")
    return model


# -- example inputs --------------------------------------------------------------------------------


def _example_inputs(
    path: Path, specs: list[InputSpec], module: nn.Module | None, stored: tuple[torch.Tensor, ...] | None
) -> tuple[torch.Tensor, ...]:
    if not specs:
        if stored is not None:
            return stored
        raise ModelFileError(
            f"{path}: mcir needs the shapes of the model's inputs; give them with --input, "
            "e.g. --input x=1x3x32x32:f32 (or 1x784, tokens=1x128:i64)"
        )
    if module is not None and len(specs) > 1 and all(s.name for s in specs):
        # with several inputs, names say which is which: order them like forward's parameters
        specs = _in_forward_order(path, specs, module)
    return tuple(s.example(seed=i) for i, s in enumerate(specs))


def _in_forward_order(path: Path, specs: list[InputSpec], module: nn.Module) -> list[InputSpec]:
    import inspect

    try:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return specs
    by_name = {s.name: s for s in specs}
    unknown = [n for n in by_name if n not in params]
    if unknown:
        raise ModelFileError(
            f"{path}: input(s) {', '.join(unknown)} are not parameters of {type(module).__name__}.forward "
            f"({', '.join(params)})"
        )
    # the named inputs must be the first parameters of forward (the rest keep their defaults)
    first = params[: len(specs)]
    missing = [p for p in first if p not in by_name]
    if missing:
        raise ModelFileError(f"{path}: missing input(s) {', '.join(missing)} for {type(module).__name__}.forward")
    return [by_name[p] for p in first]


def _some(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
