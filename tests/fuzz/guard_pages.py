"""Run registry cases with every input and output buffer between PROT_NONE guard pages.

``python -m tests.fuzz.guard_pages 0 1 2 ...`` builds the cases of ``registry_cases.cases()`` with
those indices into one graph, compiles it, and runs it twice: once with each buffer ending exactly
at a guard page (``run_into``), once with each starting right after one (a bound call). Inputs are
made read-only after they are filled, so a kernel that writes its operands faults too. Outputs
must also agree with the interpreter (floats 1e-3 relative to the output's scale, NaN where it has
NaN; integers within 2 LSB: table activations and requantisation round differently).

A read or write outside a buffer is a SIGSEGV of this process: the test runs it in a subprocess and
names the kernels. Prints one line per case that disagrees; exits 0 when all agree.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

PAGE = mmap.PAGESIZE
PROT_NONE = 0  # not exported by the mmap module
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_KEEP: list[object] = []  # the mappings live as long as the process: arrays point into them


def _protect(address: int, size: int, prot: int) -> None:
    if _libc.mprotect(address, size, prot) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")


def guarded(shape: tuple[int, ...], dtype: np.dtype, at_end: bool) -> tuple[np.ndarray, callable]:
    """An array whose bytes end exactly at (``at_end``) or start exactly after a PROT_NONE page,
    with a guard page on both sides of its pages; and a function that makes its pages read-only."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    pages = max(1, -(-nbytes // PAGE))
    mm = mmap.mmap(-1, (pages + 2) * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    _KEEP.append(mm)
    _protect(base, PAGE, PROT_NONE)
    _protect(base + (pages + 1) * PAGE, PAGE, PROT_NONE)
    offset = PAGE + (pages * PAGE - nbytes if at_end else 0)
    arr = np.frombuffer(mm, dtype, count=count, offset=offset).reshape(shape)

    def read_only() -> None:
        _protect(base + PAGE, pages * PAGE, mmap.PROT_READ)

    return arr, read_only


def agree(native: np.ndarray, ref: np.ndarray) -> str | None:
    """None if ``native`` matches the interpreter's ``ref`` within the stated tolerance, else why not."""
    ref = np.asarray(ref)
    if native.shape != ref.shape:
        return f"shape {native.shape} != {ref.shape}"
    if ref.dtype.kind == "f":
        if not np.array_equal(np.isnan(native), np.isnan(ref)):
            return "NaN positions differ"
        ok = ~np.isnan(ref)
        scale = max(1.0, float(np.abs(ref[ok & np.isfinite(ref)]).max(initial=0.0)))
        d = np.abs(native[ok].astype(np.float64) - ref[ok])
        same_inf = native[ok] == ref[ok]
        worst = float(np.where(same_inf, 0, d).max(initial=0.0))
        return None if worst <= 1e-3 * scale else f"max |diff| {worst:.3g} (scale {scale:.3g})"
    worst = int(np.abs(native.astype(np.int64) - ref.astype(np.int64)).max(initial=0))
    return None if worst <= 2 else f"max |diff| {worst} LSB"


def compile_groups(selected: list, tmp: Path, problems: list[str]) -> list[tuple[list, object, object, dict]]:
    """Compile the cases as one graph; a clean refusal (McirError) drops the op it names, or splits the
    cases in halves when it names none. Returns (cases, graph, library, input makers) per compiled group."""
    import mcir
    from mcir.errors import McirError
    from tests.fuzz.registry_cases import case_graph

    selected = list(selected)
    while selected:
        g, feeds = case_graph(selected)
        try:
            lib = mcir.compile(g, tmp / f"g{len(list(tmp.iterdir()))}")
            return [(selected, g, lib, feeds)]
        except McirError as e:
            # a verified graph the compiler refuses cleanly is within the contract: note it, go on without it
            m = re.search(r"%c(\d+)\b", str(e))
            if m is not None:
                problems.append(f"REFUSED {selected[int(m.group(1))].key}: {str(e)[:300]}")
                del selected[int(m.group(1))]
            elif len(selected) == 1:
                problems.append(f"REFUSED {selected[0].key}: {str(e)[:300]}")
                return []
            else:
                half = len(selected) // 2
                return compile_groups(selected[:half], tmp, problems) + compile_groups(selected[half:], tmp, problems)
    return []


def run(indices: list[int]) -> list[str]:
    """Problems of running cases ``indices`` between guard pages: one line per disagreeing case, and
    ``REFUSED ...`` per case the compiler refused with a McirError (allowed, reported)."""
    import mcir
    from tests.fuzz.registry_cases import cases

    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        groups = compile_groups([cases()[i] for i in indices], Path(tmp), problems)
    for selected, g, lib, feeds in groups:
        data = [feeds[v.name]() for v in g.inputs]
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            ref = mcir.interpret(g, *data)
        for at_end in (True, False):
            ins = []
            for x in data:
                arr, read_only = guarded(x.shape, x.dtype, at_end)
                arr[...] = x
                read_only()
                ins.append(arr)
            outs = [guarded(d.shape, d.dtype, at_end)[0] for d in lib.outputs]
            if at_end:
                lib.run_into(ins, outs)
            else:
                lib.bind(ins, outs)()
            where = "ending at a guard page" if at_end else "starting after a guard page"
            for case, out, r in zip(selected, outs, ref):
                why = agree(out, r)
                if why is not None:
                    problems.append(f"{case.key} (buffers {where}): {why}")
    return problems


if __name__ == "__main__":
    found = run([int(a) for a in sys.argv[1:]])
    print("\n".join(found) if found else "ok")
    sys.exit(1 if any(not f.startswith("REFUSED") for f in found) else 0)
