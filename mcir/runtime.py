"""Loading and running compiled mcir libraries from Python (ctypes, no llvmlite needed).

    lib = mcir.runtime.Library("build/mlp.so")
    (y,) = lib(x)                          # checks x, allocates y, one native call
    lib.run_into([x], [y])                 # reuse output buffers
    lib = mcir.runtime.Library("build/mlp.so", threads=2)   # large GEMMs split over 2 threads
    call = lib.bind([x], [y]); call()      # pre-marshalled: the cheapest call, for benchmarks

A library describes itself (``docs/abi.md``): ``lib.inputs`` / ``lib.outputs`` come from its
descriptor tables, ``lib.metadata`` from its JSON metadata string.

Threads: each thread gets its own 64-byte aligned workspace (and its own pointer tables), so
one ``Library`` may be called from several threads at once, and a ``bind`` closure may be
called from any thread (it uses the calling thread's workspace). Two calls running at the
same time on *one* closure still write the same output arrays: bind once per thread.

Cost: ``lib(x)`` checks every array (type, shape, dtype, C order) and allocates the outputs,
yet adds only about 1.4 µs of Python work to the bound call: everything that depends only on the
library (expected shapes, dtypes and strides, the pointer tables, the workspace) is built
once per thread, and an array's data address is read from the array object itself (see
``_header_address_works``), which is several times cheaper than numpy's ``.ctypes.data``.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcir.errors import RuntimeCallError

# the ABI's codes (mirrors mcir.codegen.lowering, which this module must not import: no llvmlite here)
DTYPES = {1: "float32", 2: "float16", 4: "int64", 5: "int32", 6: "int16", 7: "int8", 8: "uint8", 9: "bool"}
ERRORS = {
    1: "MCIR_ERR_NULL_ARGUMENT: the inputs, outputs or workspace pointer is NULL",
    2: "MCIR_ERR_NULL_TENSOR: an input or output tensor pointer is NULL",
    3: "MCIR_ERR_WORKSPACE_ALIGNMENT: the workspace is not 64-byte aligned",
    4: "MCIR_ERR_INDEX_OUT_OF_RANGE: an embedding/gather index is outside its table",
}
WORKSPACE_ALIGN = 64


class _Desc(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("dtype", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("nbytes", ctypes.c_int64),
        ("quant", ctypes.c_int32),
        ("zero_point", ctypes.c_int32),
        ("scale", ctypes.c_float),
        ("reserved", ctypes.c_int32),
    ]


@dataclass(frozen=True)
class TensorDesc:
    """One input or output of a library: name, numpy dtype, shape and quantisation."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int
    quant: int  # 0 none, 1 per tensor, 2 per axis
    scale: float
    zero_point: int

    def __str__(self) -> str:
        q = f" quant(scale={self.scale}, zero_point={self.zero_point})" if self.quant == 1 else ""
        return f"{self.name}: {self.dtype}{list(self.shape)}{q}"


def library_names(path: str | Path) -> list[str]:
    """The model names a shared library exports (``mcir_NAME_run`` symbols), read from its ELF;
    RuntimeCallError when the file is an ELF whose tables do not fit in it (truncated, corrupt)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or len(data) < 0x40 or data[4] != 2:
        return []
    try:
        return _elf_model_names(data)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError):
        raise RuntimeCallError(
            f"{path} is a truncated or corrupt ELF file ({len(data)} bytes): its section tables point past "
            "its end; compile the library again"
        ) from None


def _elf_model_names(data: bytes) -> list[str]:
    end = "<" if data[5] == 1 else ">"
    (shoff,) = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
    sections = [struct.unpack_from(end + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = []
    for sh in sections:
        if sh[1] != 11:  # SHT_DYNSYM
            continue
        strtab = sections[sh[6]]
        for off in range(sh[4], sh[4] + sh[5], 24):
            (name_off,) = struct.unpack_from(end + "I", data, off)
            start = strtab[4] + name_off
            name = data[start : data.index(b"\0", start)].decode()
            m = re.fullmatch(r"mcir_(\w+)_run", name)
            if m:
                names.append(m.group(1))
    return sorted(names)


#: the thread pool installed in each loaded library object (by dlopen handle); see Library.set_threads
_POOLS: dict[int, Any] = {}


@dataclass(frozen=True)
class ProfileRow:
    """One kernel call of a profiled library (``Library.profile``)."""

    op: str  # the op the kernel computes
    result: str  # the value it writes (the last fused op's result)
    at: str  # the op's location, as errors print it
    kernel: str  # the generator that emitted it
    fused: list[str]  # ops fused into the call (activations, a pool)
    ticks: float  # time-stamp counter ticks per run
    share: float  # fraction of the runs' ticks


class Library:
    """A loaded mcir library: call it with numpy arrays, get numpy arrays back."""

    def __init__(self, path: str | Path, name: str | None = None, threads: int = 1) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise RuntimeCallError(f"no library at {self.path}: compile one with mcir.compile(graph, path)")
        if name is None:
            names = library_names(self.path)
            if len(names) != 1:
                found = ", ".join(names) or "none"
                raise RuntimeCallError(f"{self.path} exports models {found}; pass name='...' to choose one")
            name = names[0]
        self.name = name
        try:
            self._dll = _dlopen_fresh(self.path)
            fn = getattr(self._dll, f"mcir_{name}_run")
        except (OSError, AttributeError) as e:
            raise RuntimeCallError(f"cannot load model '{name}' from {self.path}: {e}") from None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        fn.restype = ctypes.c_int
        self._run = fn
        sym = lambda s, res: self._sym(f"mcir_{name}_{s}", res)
        self.workspace_size = int(sym("workspace_size", ctypes.c_size_t)())
        self.metadata: dict[str, Any] = json.loads(sym("metadata", ctypes.c_char_p)().decode())
        self.inputs = self._descs(sym("inputs", ctypes.POINTER(_Desc))(), sym("num_inputs", ctypes.c_int32)())
        self.outputs = self._descs(sym("outputs", ctypes.POINTER(_Desc))(), sym("num_outputs", ctypes.c_int32)())
        self._local = threading.local()
        # what an array must look like to take the fast path of run(): exactly these (shape, dtype, strides)
        self._in_facts = tuple((d.shape, d.dtype, _c_strides(d.shape, d.dtype)) for d in self.inputs)
        self._out_facts = tuple((d.shape, d.dtype) for d in self.outputs)
        self.threads = 1
        if threads != 1:
            self.set_threads(threads)

    def set_threads(self, threads: int) -> None:
        """Run the kernels that split (large GEMMs) on ``threads`` threads: this library gets its own
        native pool (``mcir.threadpool``) through ``mcir_NAME_set_parallel``; 1 turns threading off.

        Outputs are bit-identical for every thread count. Not to be called while a run is in progress.
        The setting belongs to the loaded file: Libraries opened on the same unchanged file share one
        object, so the last ``set_threads`` on any of them applies to all (and their pool outlives them).
        """
        if not isinstance(threads, int) or threads < 1:
            raise RuntimeCallError(f"threads must be a positive integer, got {threads!r}")
        try:
            set_parallel = getattr(self._dll, f"mcir_{self.name}_set_parallel")
        except AttributeError:
            if threads == 1:
                return
            raise RuntimeCallError(
                f"{self.path} was compiled by an mcir without threading (no mcir_{self.name}_set_parallel); "
                "recompile it to use threads"
            ) from None
        set_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32]
        set_parallel.restype = None
        # the hook lives in the loaded object's globals, and the dynamic loader hands every Library of one
        # unchanged file the same object: so the pool belongs to the loaded object, not to this Library.
        # A pool owned by a Library would be freed with it while another Library still calls into it.
        key = self._dll._handle
        old = _POOLS.pop(key, None)
        if threads == 1:
            set_parallel(None, None, 1)
        else:
            from mcir.threadpool import ThreadPool

            pool = ThreadPool(threads)
            set_parallel(pool.parallel_for, pool.handle, threads)
            _POOLS[key] = pool
        self.threads = threads
        if old is not None:
            old.close()

    @property
    def thread_pool(self) -> Any:
        """The native pool ``set_threads`` installed for this loaded file (a ``mcir.threadpool.ThreadPool``,
        whose ``count()``/``stats()`` measure how the work was shared), or None when single-threaded."""
        return _POOLS.get(self._dll._handle)

    def _sym(self, symbol: str, restype: Any) -> Callable[[], Any]:
        fn = getattr(self._dll, symbol)
        fn.argtypes = []
        fn.restype = restype
        return fn

    @staticmethod
    def _descs(table: Any, count: int) -> list[TensorDesc]:
        out = []
        for i in range(count):
            d = table[i]
            if d.dtype not in DTYPES:
                raise RuntimeCallError(f"tensor {d.name.decode()} has dtype code {d.dtype}, unknown to this runtime")
            out.append(
                TensorDesc(
                    d.name.decode(),
                    np.dtype(DTYPES[d.dtype]),
                    tuple(d.shape[k] for k in range(d.rank)),
                    int(d.nbytes),
                    int(d.quant),
                    float(d.scale),
                    int(d.zero_point),
                )
            )
        return out

    # -- per-kernel profile (libraries compiled with profile=True) ---------------------------
    def _profile_counters(self) -> np.ndarray:
        """The library's live counters: cycles per kernel call, of whole runs, and the run count."""
        steps = self.metadata.get("profile")
        if steps is None:
            raise RuntimeCallError(
                f"{self.path} was compiled without profiling; compile it with mcir.compile(..., profile=True) "
                "or `mcir compile --profile` to time each kernel"
            )
        ptr = self._sym(f"mcir_{self.name}_profile", ctypes.c_void_p)()
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint64)), shape=(len(steps) + 2,))

    def reset_profile(self) -> None:
        """Zero the cycle counters (e.g. after warm-up runs)."""
        self._profile_counters()[:] = 0

    def profile(self) -> list[ProfileRow]:
        """Per kernel call since the last ``reset_profile``: its op, kernel and fused ops, and its
        cycle-counter ticks per run and share of the runs' ticks (rdtsc: constant-rate ticks, wall
        time on the calling thread, so threaded kernels count their whole parallel span)."""
        counters = self._profile_counters().copy()
        runs, total = int(counters[-1]), int(counters[-2])
        rows = []
        for meta, ticks in zip(self.metadata["profile"], counters[:-2]):
            per_run = int(ticks) / runs if runs else 0.0
            rows.append(ProfileRow(**meta, ticks=per_run, share=int(ticks) / total if total else 0.0))
        rest = total - int(counters[:-2].sum())  # argument checks, copies into outputs, the counters themselves
        if runs:
            rows.append(ProfileRow("(between kernels)", "", "", "", [], rest / runs, rest / total if total else 0.0))
        return rows

    # -- facts for reports and benchmarks ------------------------------------------------
    @property
    def file_size(self) -> int:
        """Bytes of the shared library file."""
        return self.path.stat().st_size

    @property
    def weight_bytes(self) -> int:
        """Bytes of constants (pre-packed weights) embedded in the library."""
        return int(self.metadata.get("weight_bytes", 0))

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """Inputs of the right shapes and dtypes (for timing): floats ~ N(0, 1), integers and bools 0.

        Zeros keep embedding indices in range; feed real data to check numbers.
        """
        rng = np.random.default_rng(seed)
        out = []
        for d in self.inputs:
            if d.dtype.kind == "f":
                out.append(rng.standard_normal(d.shape).astype(d.dtype))
            else:
                out.append(np.zeros(d.shape, d.dtype))
        return out

    # -- running ----------------------------------------------------------------------------
    def workspace(self) -> np.ndarray:
        """This thread's workspace: ``workspace_size`` bytes at a 64-byte aligned address."""
        ws = getattr(self._local, "ws", None)
        if ws is None:
            raw = np.zeros(self.workspace_size + WORKSPACE_ALIGN, np.uint8)
            skip = (-raw.ctypes.data) % WORKSPACE_ALIGN
            ws = raw[skip : skip + self.workspace_size]
            self._local.ws = ws
            self._local.raw = raw
            self._local.ws_address = ws.ctypes.data if self.workspace_size else None
        return ws

    def _thread_state(self) -> tuple[Any, int, Any, int, int | None]:
        """This thread's input and output pointer tables (refilled on every call) with their addresses,
        and its workspace address; built on the thread's first call."""
        self.workspace()
        # ctypes tables are the cheapest to fill; passing their address as an int is the cheapest to convert
        in_table = (ctypes.c_void_p * max(len(self.inputs), 1))()
        out_table = (ctypes.c_void_p * max(len(self.outputs), 1))()
        state = (in_table, ctypes.addressof(in_table), out_table, ctypes.addressof(out_table), self._local.ws_address)
        self._local.state = state
        return state

    def _check(self, arrays: Sequence[Any], descs: list[TensorDesc], what: str) -> list[np.ndarray]:
        if len(arrays) != len(descs):
            names = ", ".join(str(d) for d in descs)
            raise RuntimeCallError(f"model '{self.name}' takes {len(descs)} {what}(s) ({names}), got {len(arrays)}")
        out = []
        for a, d in zip(arrays, descs):
            if not isinstance(a, np.ndarray):
                a = np.asarray(a)
            if a.shape != d.shape:
                raise RuntimeCallError(
                    f"{what} '{d.name}' of model '{self.name}' must have shape {list(d.shape)}, got {list(a.shape)}"
                )
            if a.dtype != d.dtype:
                raise RuntimeCallError(
                    f"{what} '{d.name}' of model '{self.name}' must be {d.dtype}, got {a.dtype}; "
                    f"convert it with .astype(np.{d.dtype})"
                )
            if not a.flags.c_contiguous:
                raise RuntimeCallError(
                    f"{what} '{d.name}' of model '{self.name}' must be C-contiguous; pass np.ascontiguousarray(x)"
                )
            if what == "output" and not a.flags.writeable:
                raise RuntimeCallError(f"output '{d.name}' of model '{self.name}' is read-only")
            out.append(a)
        return out

    def bind(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> Callable[[], None]:
        """Check buffers once and return a zero-argument function that runs the model on them.

        The arrays must stay alive and unmoved while the function is used; each call is one
        native call plus a status check (the cheapest way to call, for benchmarks).
        """
        ins = self._check(inputs, self.inputs, "input")
        outs = self._check(outputs, self.outputs, "output")
        tables = (
            np.array([a.ctypes.data for a in ins] or [0], np.uintp),
            np.array([a.ctypes.data for a in outs] or [0], np.uintp),
        )
        in_address, out_address = tables[0].ctypes.data, tables[1].ctypes.data
        self.workspace()  # this thread's, made now so that the first timed call does not allocate
        run = self._run
        local = self._local
        workspace = self.workspace

        def call() -> None:
            # the workspace of the calling thread, not the creating one: scratch memory is never shared
            try:
                ws_address = local.ws_address
            except AttributeError:
                workspace()
                ws_address = local.ws_address
            status = run(in_address, out_address, ws_address)
            if status:
                self._raise(status)

        call.buffers = (ins, outs, tables)  # type: ignore[attr-defined]  # alive as long as the closure
        # what a native caller needs to make the same call (mcir.native_timer): the entry point's address and
        # its three arguments; the workspace is the binding thread's, so such a caller must run on this thread
        entry = ctypes.cast(run, ctypes.c_void_p).value
        call.native = (entry, in_address, out_address, local.ws_address)  # type: ignore[attr-defined]
        return call

    def run_into(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        """Run on ``inputs``, writing into the caller's ``outputs`` arrays (checked)."""
        ins = self._check(inputs, self.inputs, "input")
        outs = self._check(outputs, self.outputs, "output")
        self._call(ins, outs)

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run on ``inputs`` and return freshly allocated outputs.

        Arrays that are exactly ``np.ndarray`` with the library's shape, dtype and C-order strides
        are accepted at a glance; anything else goes through the full check, which either accepts it
        (e.g. a C-contiguous array with unusual strides on a size-1 axis) or raises naming the input.
        """
        if not _HEADER_ADDRESS:
            ins = self._check(inputs, self.inputs, "input")
            outs = [np.empty(shape, dtype) for shape, dtype in self._out_facts]
            self._call(ins, outs)
            return outs
        # one pass that checks each input and fills its table entry: at about a microsecond per call,
        # every Python-level loop or call level is a tenth of the cost
        try:
            in_table, in_address, out_table, out_address, ws_address = self._local.state
        except AttributeError:
            in_table, in_address, out_table, out_address, ws_address = self._thread_state()
        facts = self._in_facts
        i = 0
        if len(inputs) == len(facts):
            for a, (shape, dtype, strides) in zip(inputs, facts):
                if type(a) is not np.ndarray or a.shape != shape or a.dtype != dtype or a.strides != strides:
                    break
                in_table[i] = _FROM_ADDRESS(id(a) + _DATA_OFFSET).value
                i += 1
        if i != len(facts):  # the full check: raises naming the input, or accepts an unusual valid array
            inputs = self._check(inputs, self.inputs, "input")
            for i, a in enumerate(inputs):
                in_table[i] = _FROM_ADDRESS(id(a) + _DATA_OFFSET).value
        outs = []
        for j, (shape, dtype) in enumerate(self._out_facts):
            out = np.empty(shape, dtype)
            out_table[j] = _FROM_ADDRESS(id(out) + _DATA_OFFSET).value
            outs.append(out)
        status = self._run(in_address, out_address, ws_address)  # inputs and outs stay referenced meanwhile
        if status:
            self._raise(status)
        return outs

    __call__ = run

    def _call(self, ins: Sequence[np.ndarray], outs: Sequence[np.ndarray]) -> None:
        """One native call on checked arrays, through this thread's pointer tables (``ins`` and ``outs``
        stay referenced by the caller during the call)."""
        try:
            in_table, in_address, out_table, out_address, ws_address = self._local.state
        except AttributeError:
            in_table, in_address, out_table, out_address, ws_address = self._thread_state()
        if _HEADER_ADDRESS:  # inlined: a function call per array would cost as much as the read
            for i, a in enumerate(ins):
                in_table[i] = _FROM_ADDRESS(id(a) + _DATA_OFFSET).value
            for i, a in enumerate(outs):
                out_table[i] = _FROM_ADDRESS(id(a) + _DATA_OFFSET).value
        else:
            for i, a in enumerate(ins):
                in_table[i] = a.ctypes.data
            for i, a in enumerate(outs):
                out_table[i] = a.ctypes.data
        status = self._run(in_address, out_address, ws_address)
        if status:
            self._raise(status)

    def _raise(self, status: int) -> None:
        text = ERRORS.get(status, f"unknown error code {status}")
        raise RuntimeCallError(f"model '{self.name}' ({self.path}) returned error {status}: {text}")

    def __repr__(self) -> str:
        ins = ", ".join(str(d) for d in self.inputs)
        outs = ", ".join(str(d) for d in self.outputs)
        return f"<mcir.Library '{self.name}' ({ins}) -> ({outs}) from {self.path}>"


def _c_strides(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """The strides numpy gives a new C-ordered array of this shape."""
    if 0 in shape:  # numpy gives empty arrays all-zero strides
        return np.empty(shape, dtype).strides
    strides, step = [], dtype.itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


_FROM_ADDRESS = ctypes.c_void_p.from_address
_DATA_OFFSET = 2 * ctypes.sizeof(ctypes.c_void_p)  # after ob_refcnt and ob_type (a standard CPython build)


def _header_address_works() -> bool:
    """Whether an array's data address can be read from the array object itself.

    numpy's ``PyArrayObject_fields`` puts ``char *data`` right after the object header; reading it
    takes ~0.1 µs where ``a.ctypes.data`` builds a helper object (~0.9 µs), most of a small model's
    call cost. Checked here on arrays of several kinds (owned, views, empty, float64); numpy's own
    ``.ctypes.data`` is used if any differs (another interpreter build or a future numpy layout).
    """
    probes = [np.arange(7, dtype=np.float32), np.zeros((3, 5), np.int8)[1:], np.empty(0, np.uint8), np.ones(1)]
    try:
        return all((_FROM_ADDRESS(id(p) + _DATA_OFFSET).value or 0) == p.ctypes.data for p in probes)
    except (ValueError, OSError):
        return False


_HEADER_ADDRESS = _header_address_works()


def _dlopen_fresh(path: Path) -> ctypes.CDLL:
    """dlopen ``path`` even if a library of the same name was loaded before.

    The dynamic loader returns the already loaded object for a known file name, so a
    library recompiled in place would silently keep running the old code. Opening a
    uniquely named hard link (removed right after) loads the file's current contents.
    """
    path = path.resolve()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".so", dir=path.parent)
    except OSError:  # a read-only directory (an installed library): it is not being rebuilt
        return ctypes.CDLL(str(path))
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        return ctypes.CDLL(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load(path: str | Path, name: str | None = None) -> Library:
    """Load a compiled library; ``name`` is needed only when the file holds several models."""
    return Library(path, name)
