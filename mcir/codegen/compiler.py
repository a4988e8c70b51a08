"""``compile``: graph in, ``NAME.o`` + ``NAME.so`` + ``NAME.h`` out, library loaded."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcir.atomic_write import write_atomic
from mcir.codegen import compile_memory, header, link
from mcir.codegen.lowering import lower
from mcir.codegen.target import host_supports, resolve
from mcir.errors import CodegenError
from mcir.ir import Graph
from mcir.output_set import publishing


@dataclass(frozen=True)
class Artifacts:
    """The files of a compiled graph (all a cross-compiled target gets)."""

    name: str
    object_path: Path
    header_path: Path
    library_path: Path | None
    metadata: dict[str, Any]

    @property
    def workspace_size(self) -> int:
        return int(self.metadata["workspace_size"])

    @property
    def weight_bytes(self) -> int:
        return int(self.metadata["weight_bytes"])


def default_name(path: str | Path) -> str:
    """The library name for an output path: its stem made a C identifier (``build/mlp-v2`` -> ``mlp_v2``)."""
    stem = Path(path).name
    for suffix in (".so", ".o", ".h", ".dylib"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem) or "model"
    return "m" + name if name[0].isdigit() else name


def readable_ir(text: str) -> str:
    """LLVM IR text with the weight bytes replaced by ``zeroinitializer`` and a note (still parses)."""

    def elide(m: re.Match) -> str:
        return f"{m.group(1)}zeroinitializer{m.group(3)} ; {m.group(2)} bytes of weights elided"

    return re.sub(r'^(@"?w\..*?\[(\d+) x i8\] )c"(?:[^"\\]|\\.){256,}"(.*)$', elide, text, flags=re.M)


def compile(
    graph: Graph,
    path: str | Path,
    target: str = "native",
    name: str | None = None,
    triple: str | None = None,
    pipeline: str = "",
    cpu: str | None = None,
    features: str | None = None,
    emit_llvm: bool = False,
    memory_limit: int | str | None = None,
    profile: bool = False,
) -> Any:
    """Compile ``graph`` to ``PATH.o``, ``PATH.so`` and ``PATH.h``; return the loaded library.

    ``path`` is the output stem (``"build/mlp"``); ``name`` (default: the stem) prefixes the C
    symbols, ``mcir_NAME_run``, so several models link into one program. ``target`` is
    ``"native"`` or an x86-64 level (``"x86-64-v2"``/``-v3``/``-v4``); ``triple`` selects another
    architecture (e.g. ``"aarch64-linux-gnu"``), for which only the ``.o`` and ``.h`` are written and
    an ``Artifacts`` is returned instead of a ``mcir.runtime.Library`` (also when this CPU cannot
    run the chosen x86-64 level). ``pipeline`` is recorded in the metadata string.
    ``emit_llvm=True`` also writes ``PATH.ll``, the optimised LLVM IR with the weight bytes
    elided (for reading kernels, not for compiling). ``cpu`` and ``features`` refine the target
    (``mcir.codegen.target.resolve``: ``target="aarch64", features="+dotprod"``).
    Raises CodegenError for unsupported ops, targets, or when no linker is available (the
    ``.o`` is kept), and a CompileMemoryError before any work when the estimated memory of the
    compilation exceeds ``memory_limit`` (bytes or ``"32G"``; default ``$MCIR_COMPILE_MEMORY`` or
    16 GiB: ``mcir.codegen.compile_memory``). ``profile=True`` counts the cycles of every kernel
    call (x86-64 only; ``Library.profile()``, ``mcir bench --per-op``).
    """
    compile_memory.check(graph, memory_limit)
    stem = Path(path)
    if stem.suffix in (".so", ".o", ".h"):
        stem = stem.with_suffix("")
    lib_name = name if name is not None else default_name(stem)
    tgt = resolve(target, triple, cpu, features)
    lowered = lower(graph, tgt, lib_name, pipeline, profile)
    obj_bytes = link.emit_object(lowered.module, tgt.machine())
    link_error = None
    # the files appear together or not at all (mcir.output_set): a reader never pairs an old .h with a new .so
    with publishing(stem) as folder:
        new = folder / stem.name
        obj = write_atomic(new.with_name(stem.name + ".o"), obj_bytes)
        write_atomic(new.with_name(stem.name + ".h"), header.render(lowered))
        if emit_llvm:
            write_atomic(new.with_name(stem.name + ".ll"), readable_ir(str(lowered.module)))
        if tgt.native:
            try:
                link.link_shared(obj, new.with_name(stem.name + ".so"))
            except CodegenError as e:  # no linker: the .o and .h are still published, as documented
                link_error = e
    if link_error is not None:
        raise link_error
    obj, hdr = stem.with_name(stem.name + ".o"), stem.with_name(stem.name + ".h")
    so = stem.with_name(stem.name + ".so") if tgt.native else None
    arts = Artifacts(lowered.name, obj, hdr, so, lowered.metadata)
    if so is None or not host_supports(tgt):
        return arts
    from mcir.runtime import Library

    return Library(so, name=lowered.name)
