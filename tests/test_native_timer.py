"""mcir.native_timer: a library's entry point timed in a native loop (kernel time, not ctypes overhead).

Timings on a shared machine are noisy, so the checks compare medians with wide tolerances and
state them; what must hold exactly is the bookkeeping (method, calls, one value per repeat).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mcir
from mcir.errors import RuntimeCallError
from mcir.native_timer import NATIVE, PYTHON, available, time_library

pytestmark = pytest.mark.skipif(not available(), reason="the native timer needs a C compiler")


@pytest.fixture(scope="module")
def small_lib(digits, tmp_path_factory):
    """The fp32 digits MLP: ~1 µs of kernel, about as long as a ctypes call."""
    return mcir.compile(digits["graph"], tmp_path_factory.mktemp("timer") / "digits")


@pytest.fixture(scope="module")
def slow_lib(tmp_path_factory):
    """One fp32 Linear 1024x1024 (4 MiB of weights): ~100+ µs per call, so a ctypes call's ~1 µs is noise."""
    torch.manual_seed(0)
    graph = mcir.trace(torch.nn.Linear(1024, 1024), (torch.zeros(1, 1024),))
    return mcir.compile(graph, tmp_path_factory.mktemp("timer") / "linear")


def test_native_timing_reports_its_method_and_one_value_per_repeat(small_lib):
    t = time_library(small_lib, method=NATIVE, repeats=7)
    assert t.method == NATIVE and len(t.per_call) == 7
    # ~1 µs calls in repeats of ~0.2 ms: many calls per repeat (a cold first call must not end calibration)
    assert t.calls >= 16
    assert t.seconds == pytest.approx(float(np.median(t.per_call)))
    # sane: more than a nanosecond (50k multiply-adds), less than a millisecond
    assert 1e-9 < t.seconds < 1e-3
    assert "clock_gettime" in t.description and str(t.calls) in t.description


def test_auto_is_native_when_a_compiler_exists_and_python_timing_is_the_fallback(small_lib):
    assert time_library(small_lib, repeats=3, repeat_seconds=1e-4).method == NATIVE
    py = time_library(small_lib, method=PYTHON, python_runs=50)
    assert py.method == PYTHON and len(py.per_call) == 50 and "perf_counter" in py.description


def test_native_timing_leaves_out_the_python_call_overhead(small_lib):
    # the same calls, timed both ways: the Python way adds ctypes' argument handling to every call.
    # Medians of many calls on a shared machine: allow 10 % before calling the native one slower.
    native = time_library(small_lib, method=NATIVE).seconds
    python = time_library(small_lib, method=PYTHON, python_runs=3000).seconds
    assert native < 1.1 * python


def test_on_a_slow_kernel_native_and_python_timing_agree(slow_lib):
    # at ~100+ µs per call the ~1 µs ctypes overhead is under 2 %: both methods measure the kernel.
    # Three interleaved rounds and the median ratio, since other jobs share the cores; tolerance 25 %.
    ratios = []
    for _ in range(3):
        native = time_library(slow_lib, method=NATIVE).seconds
        python = time_library(slow_lib, method=PYTHON, python_runs=60).seconds
        ratios.append(native / python)
    assert abs(float(np.median(ratios)) - 1) < 0.25, ratios


def test_the_timed_call_computes_what_a_plain_call_computes(small_lib, digits):
    x = [np.ascontiguousarray(digits["x_test"][:1], np.float32)]
    expected = small_lib.run(*x)[0]
    out = [np.empty(d.shape, d.dtype) for d in small_lib.outputs]
    call = small_lib.bind(x, out)
    entry, *_ = call.native
    assert entry  # the address of mcir_NAME_run
    time_library(small_lib, inputs=x, repeats=2, repeat_seconds=1e-4)
    call()
    np.testing.assert_array_equal(out[0], expected)


def test_bad_arguments_are_refused(small_lib):
    with pytest.raises(RuntimeCallError, match="timing method"):
        time_library(small_lib, method="fast")
    with pytest.raises(RuntimeCallError, match="at least one repeat"):
        time_library(small_lib, repeats=0)
