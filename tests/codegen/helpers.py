"""Shared helpers of the codegen tests: compile a graph, run it natively and compare it
with the reference interpreter.

Tolerance (the backend's numerical contract for f32): for every float output,
``max |native - reference| <= RTOL * max |reference|`` (relative to the largest
magnitude of the tensor, so near-zero elements of a well-scaled tensor do not make
the test flaky), NaNs in the same places; integer and bool outputs are exactly equal.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

import mcir
from mcir.codegen import compile as compile_graph
from mcir.ir import Graph

RTOL = 1e-5
_counter = itertools.count()


def runnable_targets() -> list[str]:
    """``native`` and the x86-64 levels this machine can run."""
    from mcir.codegen.target import host_supports, resolve
    from mcir.errors import CodegenError

    out = ["native"]
    for level in ("x86-64-v2", "x86-64-v3", "x86-64-v4"):
        try:
            if host_supports(resolve(level)):
                out.append(level)
        except CodegenError:  # not an x86-64 machine
            pass
    return out


def build(graph: Graph, tmp_path: Path, **kwargs):
    """Compile ``graph`` into ``tmp_path`` under a fresh name and return the loaded library."""
    return compile_graph(graph, tmp_path / f"{graph.name}_{next(_counter)}", **kwargs)


def assert_close(native: np.ndarray, ref: np.ndarray, rtol: float = RTOL, what: str = "output") -> float:
    """Check ``native`` against ``ref`` under the contract above; returns the relative error."""
    ref = np.asarray(ref)
    assert native.shape == ref.shape, f"{what}: shape {native.shape} != {ref.shape}"
    assert native.dtype == ref.dtype, f"{what}: dtype {native.dtype} != {ref.dtype}"
    if ref.dtype.kind != "f":
        np.testing.assert_array_equal(native, ref, err_msg=what)
        return 0.0
    nan_n, nan_r = np.isnan(native), np.isnan(ref)
    np.testing.assert_array_equal(nan_n, nan_r, err_msg=f"{what}: NaN positions differ")
    inf_r = np.isinf(ref)
    np.testing.assert_array_equal(native[inf_r], ref[inf_r], err_msg=f"{what}: infinities differ")
    ok = ~(nan_r | inf_r)
    if not ok.any():
        return 0.0
    scale = max(float(np.abs(ref[ok]).max()), 1e-30)
    err = float(np.abs(native[ok].astype(np.float64) - ref[ok]).max()) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g} (max |ref| {scale:.3g})"
    return err


def check_native(graph: Graph, tmp_path: Path, *inputs: np.ndarray, rtol: float = RTOL, **kwargs) -> list:
    """Compile, run on ``inputs``, compare every output with the interpreter; return native outputs."""
    mcir.verify(graph)
    lib = build(graph, tmp_path, **kwargs)
    native = lib(*inputs)
    refs = mcir.interpret(graph, *inputs)
    for v, n, r in zip(graph.outputs, native, refs):
        assert_close(n, r, rtol, what=f"%{v.name}")
    return native


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def undefined_symbols(path: Path) -> set[str]:
    """Names an ELF object needs from elsewhere (its SHN_UNDEF symbols), 32- or 64-bit."""
    import struct

    data = Path(path).read_bytes()
    assert data[:4] == b"\x7fELF", f"{path} is not ELF"
    is64, end = data[4] == 2, "<" if data[5] == 1 else ">"
    if is64:
        shoff = struct.unpack_from(end + "Q", data, 0x28)[0]
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
        sec = [struct.unpack_from(end + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        off_i, size_i, link_i, entsize = 4, 5, 6, 24
    else:
        shoff = struct.unpack_from(end + "I", data, 0x20)[0]
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x2E)
        sec = [struct.unpack_from(end + "IIIIIIIIII", data, shoff + i * shentsize) for i in range(shnum)]
        off_i, size_i, link_i, entsize = 4, 5, 6, 16
    names = set()
    for sh in sec:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sec[sh[link_i]]
        for off in range(sh[off_i] + entsize, sh[off_i] + sh[size_i], entsize):
            if is64:
                name, _, _, shndx = struct.unpack_from(end + "IBBH", data, off)
            else:
                name, _, _, _, _, shndx = struct.unpack_from(end + "IIIBBH", data, off)
            if shndx == 0 and name:
                start = strtab[off_i] + name
                names.add(data[start : data.index(b"\0", start)].decode())
    return names
