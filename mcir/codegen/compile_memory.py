"""How much memory compiling a graph takes, estimated from the graph before any work, and the limit.

Compiling holds the weights several times at once: the packed arrays, the LLVM IR text in which
every weight byte is spelt ``\\xx``, LLVM's parsed module and the object it emits. Measured on a
linear layer with 16 and 64 MiB of f32 weights (llvmlite 0.50, 2026-12): the peak resident memory
grew by 236 and 764 MiB, about 88 MiB for LLVM itself plus **10.6 bytes per weight byte**; 1,000
softmax ops on small tensors added under 2 MiB over 10 ops. The estimate is

    constants · 11 + peak live intermediates (the workspace the library allocates) + 96 MiB + 16 KiB · ops

and ``compile`` refuses a graph whose estimate exceeds the limit with a ``CompileMemoryError``
(before LLVM would take the process down with an out-of-memory abort). The limit is 16 GiB unless
``MCIR_COMPILE_MEMORY`` (``"32G"``, ``"512M"``, a byte count, or ``"none"``) or the caller
(``mcir.compile(..., memory_limit=...)``, ``mcir compile --compile-memory``) says otherwise.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from mcir.errors import CodegenError
from mcir.ir import Graph

#: bytes of peak memory per byte of constant data (measured: 10.6, see the module docstring)
BYTES_PER_WEIGHT_BYTE = 11
#: LLVM's own footprint (target machine, pass pipeline) and what one op adds to the IR
FIXED_BYTES = 96 << 20
BYTES_PER_OP = 16 << 10
#: the default limit, and the environment variable that changes it
DEFAULT_LIMIT = 16 << 30
ENV = "MCIR_COMPILE_MEMORY"

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class CompileMemoryError(CodegenError):
    """Compiling the graph would need more memory than the limit allows."""


@dataclass(frozen=True)
class CompileMemory:
    """The estimate's parts in bytes: constants (times the measured factor), workspace, IR."""

    constants: int
    workspace: int
    ir: int

    @property
    def total(self) -> int:
        return self.constants + self.workspace + self.ir


def estimate(graph: Graph) -> CompileMemory:
    """The estimated peak memory of compiling ``graph`` (see the module docstring); linear in its size."""
    constants = sum(op.result.type.nbytes for op in graph.ops if op.name == "const")
    return CompileMemory(
        constants * BYTES_PER_WEIGHT_BYTE, peak_live_bytes(graph), FIXED_BYTES + BYTES_PER_OP * len(graph.ops)
    )


def peak_live_bytes(graph: Graph) -> int:
    """The most bytes of computed values alive at once (each from its op to its last use; graph
    outputs to the end): what the workspace plan needs before alignment and kernel scratch."""
    last: dict[int, int] = {}
    for i, op in enumerate(graph.ops):
        for v in op.operands:
            last[id(v)] = i
    end = len(graph.ops)
    for v in graph.outputs:
        last[id(v)] = end
    frees: dict[int, int] = {}
    live = peak = 0
    for i, op in enumerate(graph.ops):
        if op.name != "const":
            size = op.result.type.nbytes
            live += size
            peak = max(peak, live)
            j = last.get(id(op.result), i)
            frees[j] = frees.get(j, 0) + size
        live -= frees.pop(i, 0)
    return peak


def parse_size(text: str, where: str) -> int | None:
    """``"16G"``, ``"512M"``, ``"1048576"`` -> bytes; ``"none"`` -> None (no limit)."""
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    if s in ("NONE", "OFF"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)", s)
    if m is None:
        raise CodegenError(f"{where}: {text!r} is not a size; write e.g. 32G, 512M, a byte count or none")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def limit(memory_limit: int | str | None = None) -> int | None:
    """The limit in bytes (None: no limit): ``memory_limit`` if given, else ``$MCIR_COMPILE_MEMORY``, else 16 GiB."""
    if memory_limit is not None:
        return parse_size(memory_limit, "memory_limit") if isinstance(memory_limit, str) else int(memory_limit)
    if os.environ.get(ENV):
        return parse_size(os.environ[ENV], ENV)
    return DEFAULT_LIMIT


def check(graph: Graph, memory_limit: int | str | None = None) -> CompileMemory:
    """The estimate for ``graph``; a CompileMemoryError naming the parts and the largest constant
    when it exceeds the limit."""
    est = estimate(graph)
    cap = limit(memory_limit)
    if cap is None or est.total <= cap:
        return est
    consts = [op for op in graph.ops if op.name == "const"]
    biggest = max(consts, key=lambda op: op.result.type.nbytes, default=None)
    culprit = ""
    if biggest is not None:
        culprit = (
            f"; the largest constant is {biggest.where()} : {biggest.result.type} ({gib(biggest.result.type.nbytes)})"
        )
    raise CompileMemoryError(
        f"compiling @{graph.name} would need about {gib(est.total)} (constants {gib(est.constants)} = "
        f"{BYTES_PER_WEIGHT_BYTE} x their bytes, workspace {gib(est.workspace)}, IR {gib(est.ir)}), over the "
        f"limit of {gib(cap)}{culprit}. Compress the weights (quant8, prune, int4), or raise the limit: "
        f"{ENV}=64G, mcir compile --compile-memory 64G, or mcir.compile(..., memory_limit='64G')"
    )


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"
