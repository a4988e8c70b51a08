"""Saving and loading graphs: a folder holding ``graph.mcir`` (text) and
``weights.safetensors`` (every constant not printed inline).

A constant's primary array is stored under the value's name; extra components of an
encoded constant (per-axis scales, packed bits) under ``name::component``. Loading
never unpickles anything. Writes go to a temporary folder swapped into place in one step
(``save``), so the destination holds a complete graph at every instant.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import safetensors.numpy

from mcir.errors import McirError
from mcir.ir import Graph, _freeze_data
from mcir.parser import parse_file
from mcir.printer import is_inline, print_graph
from mcir.verifier import verify

GRAPH_FILE = "graph.mcir"
WEIGHTS_FILE = "weights.safetensors"


def _key(name: str, component: str) -> str:
    return name if component == "data" else f"{name}::{component}"


def weights_of(graph: Graph) -> dict[str, np.ndarray]:
    """The arrays ``save`` writes to the weights file, by key."""
    out: dict[str, np.ndarray] = {}
    for op in graph.constants():
        if op.data is None:
            raise McirError(f"cannot save: constant %{op.result.name} has no data")
        if is_inline(op):
            continue
        parts = op.data if isinstance(op.data, dict) else {"data": op.data}
        for comp, arr in parts.items():
            out[_key(op.result.name, comp)] = np.asarray(arr, order="C")
    return out


def save(graph: Graph, path: str | Path) -> Path:
    """Write ``graph`` to the folder ``path``, which holds a complete graph at every instant.

    The new folder is written beside ``path`` and swapped with the old one in one step (Linux
    ``renameat2(RENAME_EXCHANGE)``), so a reader, or a kill at any point, finds the old graph or the
    new one. Where the exchange is unavailable (other systems, some file systems) the old folder is
    renamed aside and the new one into place: two renames, between which ``path`` is briefly absent
    (never half-written); the old graph is then in ``.NAME.old`` until the next save.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (tmp / GRAPH_FILE).write_text(print_graph(graph))
        safetensors.numpy.save_file(
            weights_of(graph), str(tmp / WEIGHTS_FILE), metadata={"format": "mcir", "graph": graph.name}
        )
        _fsync_folder(tmp)
        if not dest.exists():
            os.replace(tmp, dest)
        elif _exchange(tmp, dest):  # tmp now holds what was at the destination
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        else:
            old = dest.with_name(f".{dest.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` atomically; False where the system or file system cannot."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not glibc >= 2.28 / not Linux
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot replace {b}: {os.strerror(err)}")


def _fsync_folder(folder: Path) -> None:
    """Flush the files and the folder before they replace the old graph (a crash cannot publish empty files)."""
    for p in [*folder.iterdir(), folder]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _require_text(path: Path) -> None:
    from mcir.file_kind import advice, file_kind

    kind = file_kind(path)
    if kind.name not in ("mcir-text", "text"):  # plain text gets the parser's positioned error
        hint = "trace torch model files with mcir.trace or 'mcir compile'" if kind.name.startswith("torch") else ""
        raise McirError(
            f"{path}: {kind.what}, not an mcir graph (mcir.load reads a folder written by mcir.save or an .mcir "
            f"text file); {hint or advice(kind)}"
        )


def load(path: str | Path) -> Graph:
    """Read a folder written by ``save`` (or a bare ``.mcir`` file whose constants are all inline)."""
    src = Path(path)
    if src.is_file():
        _require_text(src)
        graph_file, weights_file = src, src.with_name(WEIGHTS_FILE)
    else:
        graph_file, weights_file = src / GRAPH_FILE, src / WEIGHTS_FILE
    if not graph_file.exists():
        raise McirError(f"{src}: no {GRAPH_FILE} found; expected a folder written by mcir.save or a .mcir file")
    graph = parse_file(graph_file, verify=False)
    missing = [op for op in graph.constants() if op.data is None]
    if missing:
        if not weights_file.exists():
            raise McirError(f"{graph_file}: {len(missing)} constant(s) need weights but {weights_file} does not exist")
        try:
            weights = safetensors.numpy.load_file(str(weights_file))
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise McirError(
                f"{weights_file}: cannot read weights ({e}); the file is corrupt or not safetensors"
            ) from None
        for op in missing:
            t = op.result.type
            comps = (
                t.encoding.components(t) if t.encoding is not None and t.encoding.needs_components else {"data": None}
            )
            parts = {}
            for comp in comps:
                key = _key(op.result.name, comp)
                if key not in weights:
                    raise McirError(f"{weights_file}: no tensor '{key}' for constant %{op.result.name}: {t}")
                parts[comp] = weights[key]
            try:
                op.data = _freeze_data(parts, t)
            except McirError as e:
                raise McirError(f"{weights_file}: tensor for %{op.result.name}: {e}") from None
    return verify(graph)
