"""Native latency of a compiled library: its entry point timed in a C loop, not through ctypes.

A batch-1 call of a small model takes about a microsecond of kernel time, and a call from
Python through ctypes costs about as much again (argument conversion, the GIL, the status
check). Timing each call from Python therefore measures mostly the call, and a kernel made 5x
faster looks 2x faster. This module times the library's ``mcir_NAME_run`` from native code::

    t0 = clock_gettime(CLOCK_MONOTONIC)
    for i in 0..calls-1: status = run(inputs, outputs, workspace)
    t1 = clock_gettime(CLOCK_MONOTONIC)           per call: (t1 - t0) / calls

repeated ``repeats`` times, with ``calls`` chosen so that one repeat lasts about
``repeat_seconds`` (clock resolution and the one Python call per repeat vanish in it); the
latency is the median over repeats. Repeats are short (0.2 ms by default) and many on purpose:
on a shared machine a repeat longer than the scheduler's time slice always contains time given
to other processes (measured: 2-3 ms repeats read 2.7x slow under a load of 4 on 2 cores),
while the median of many short ones skips the repeats that were interrupted. The loop is a
small C file compiled once with the system compiler (``$CC`` or ``cc``) into mcir's cache, like
``mcir.threadpool``. Without a C compiler the Python per-call timing is used instead, and
``Timing.method`` says so.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcir.errors import RuntimeCallError
from mcir.threadpool import build_helper, find_compiler

SOURCE = r"""
/* mcir native timer: calls an mcir_NAME_run entry point `calls` times between two clock reads. */
#include <stdint.h>
#include <time.h>

typedef int (*mcir_run_fn)(void *inputs, void *outputs, void *workspace);

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* ns[r] = nanoseconds taken by `calls` calls, for r < repeats; returns the first non-zero status */
int mcir_time_entry(void *fn, void *inputs, void *outputs, void *workspace, int64_t calls, int32_t repeats,
                    int64_t *ns) {
  mcir_run_fn run = (mcir_run_fn)fn;
  for (int32_t r = 0; r < repeats; r++) {
    int64_t t0 = now_ns();
    for (int64_t i = 0; i < calls; i++) {
      int status = run(inputs, outputs, workspace);
      if (status) return status;
    }
    ns[r] = now_ns() - t0;
  }
  return 0;
}
"""

NATIVE = "native"
PYTHON = "python"

_lock = threading.Lock()
_dll: ctypes.CDLL | None = None


@dataclass(frozen=True)
class Timing:
    """A latency measurement: ``seconds`` is the median per call; ``per_call`` holds one value per repeat
    (native: a repeat's time / ``calls``) or per call (python); ``method`` is ``native`` or ``python``."""

    seconds: float
    method: str
    calls: int
    per_call: np.ndarray

    @property
    def description(self) -> str:
        """How it was measured, in words, for reports."""
        if self.method == NATIVE:
            return (
                f"native loop: median over {len(self.per_call)} repeats of {self.calls} calls of the entry point "
                "between clock_gettime(CLOCK_MONOTONIC) reads"
            )
        return f"python: median of {len(self.per_call)} calls through ctypes, each timed with perf_counter"


def compiler() -> str | None:
    """The C compiler the timer is built with (``$CC``, cc, gcc, clang), or None when there is none."""
    return find_compiler()


def build() -> Path:
    """The timer's shared library, compiled on first use into mcir's cache (keyed by the source's hash)."""
    return build_helper(
        "timer",
        SOURCE,
        [],
        "native timer",
        "the native timer is compiled once with a C compiler, and none was found ($CC, cc, gcc, clang); "
        "install one, or time with method='python'",
    )


def _library() -> ctypes.CDLL:
    global _dll
    with _lock:
        if _dll is None:
            dll = ctypes.CDLL(str(build()))
            fn = dll.mcir_time_entry
            fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int32, ctypes.POINTER(ctypes.c_int64)]
            fn.restype = ctypes.c_int
            _dll = dll
        return _dll


def available() -> bool:
    """Whether native timing works here (a C compiler exists or the timer is already built)."""
    try:
        _library()
    except (RuntimeCallError, OSError):
        return False
    return True


def _time_native(call: Any, repeats: int, repeat_seconds: float, max_calls: int) -> Timing:
    entry, inputs, outputs, workspace = call.native
    timer = _library().mcir_time_entry
    ns = (ctypes.c_int64 * max(repeats, 1))()

    def loop(calls: int, count: int) -> np.ndarray:
        status = timer(entry, inputs, outputs, workspace, calls, count, ns)
        if status:
            call()  # the library's own error text for its status
            raise RuntimeCallError(f"the model returned status {status} in the native timing loop")
        return np.array(ns[:count], np.float64) * 1e-9

    loop(1, min(repeats, 3))  # warm up: the first call pays for cold caches and page faults (~100x a warm one)
    # calibrate: double the calls until a repeat lasts repeat_seconds; the fastest of 3 tries, so that one
    # repeat interrupted by another process does not stop the doubling early
    calls = 1
    while calls < max_calls and loop(calls, min(repeats, 3)).min() < repeat_seconds:
        calls *= 2
    per_call = loop(calls, repeats) / calls
    return Timing(float(np.median(per_call)), NATIVE, calls, per_call)


def _time_python(call: Any, runs: int, warmup: int) -> Timing:
    for _ in range(warmup):
        call()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        call()
        times[i] = time.perf_counter() - t0
    return Timing(float(np.median(times)), PYTHON, 1, times)


def time_library(
    lib: Any,
    inputs: list[np.ndarray] | None = None,
    method: str = "auto",
    repeats: int = 101,
    repeat_seconds: float = 2e-4,
    max_calls: int = 1 << 20,
    python_runs: int = 200,
) -> Timing:
    """The latency of one call of ``lib`` (an ``mcir.runtime.Library``) on ``inputs`` (default: its
    example inputs), on the calling thread.

    ``method``: ``native`` (the C loop; raises without a C compiler), ``python`` (``python_runs``
    calls each timed from Python, ctypes overhead included) or ``auto`` (native when it can be
    built, else python). Threads set with ``lib.set_threads`` apply to both.
    """
    if method not in ("auto", NATIVE, PYTHON):
        raise RuntimeCallError(f"timing method {method!r}: expected auto, native or python")
    if repeats < 1 or python_runs < 1:
        raise RuntimeCallError(f"timing needs at least one repeat and one run, got {repeats} and {python_runs}")
    outputs = [np.empty(d.shape, d.dtype) for d in lib.outputs]
    call = lib.bind(lib.example_inputs() if inputs is None else inputs, outputs)
    if method == NATIVE or (method == "auto" and available()):
        return _time_native(call, repeats, repeat_seconds, max_calls)
    return _time_python(call, python_runs, max(5, python_runs // 10))
