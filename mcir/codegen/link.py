"""Writing the outputs: the object file, the shared library and the header.

Every file is written to a temporary name in its directory and renamed into place,
so a reader never sees a half-written library (and a running process that mapped the
old ``.so`` keeps its copy). The linker is the first that exists of ``$MCIR_LINKER``,
``$CC``, ``cc`` and ``ld``; a C compiler driver gets ``-shared -nostdlib`` (the object
is freestanding), ``ld`` gets ``-shared``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import llvmlite.binding as llvm

from mcir.errors import CodegenError


def emit_object(mod: llvm.ModuleRef, tm: llvm.TargetMachine) -> bytes:
    """The relocatable object code of ``mod``."""
    return tm.emit_object(mod)


def find_linker() -> tuple[list[str], bool] | None:
    """(command, is_plain_ld) of the first available linker, or None."""
    candidates = []
    for var in ("MCIR_LINKER", "CC"):
        value = os.environ.get(var, "").strip()
        if value:
            candidates.append(shlex.split(value))
    candidates += [["cc"], ["ld"]]
    for cmd in candidates:
        exe = shutil.which(cmd[0])
        if exe is not None:
            base = Path(exe).name
            is_ld = base == "ld" or base.startswith("ld.") or base.endswith("-ld") or base.startswith("ld64")
            return [exe, *cmd[1:]], is_ld
    return None


def link_shared(obj: Path, so: Path) -> Path:
    """Link ``obj`` into the shared library ``so`` (atomically); CodegenError if impossible."""
    found = find_linker()
    if found is None:
        tried = ", ".join(x for x in (os.environ.get("MCIR_LINKER"), os.environ.get("CC"), "cc", "ld") if x)
        raise CodegenError(
            f"no linker found (tried {tried}); the object file {obj} was written: link it with "
            f"`cc -shared -nostdlib -o {so.name} {obj.name}`, or set MCIR_LINKER to a linker"
        )
    cmd, is_ld = found
    fd, tmp = tempfile.mkstemp(prefix=f".{so.name}.", suffix=".tmp", dir=so.parent)
    os.close(fd)
    args = [*cmd, "-shared", "-o", tmp, str(obj)] if is_ld else [*cmd, "-shared", "-nostdlib", "-o", tmp, str(obj)]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise CodegenError(
                f"linking {so} failed ({shlex.join(args)}):\n{proc.stderr.strip()}\nthe object file {obj} was kept"
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, so)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return so
