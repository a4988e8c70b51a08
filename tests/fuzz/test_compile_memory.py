"""Compile memory: estimated from the graph before any work, refused above a documented limit
(docs/ir.md "Limits"; ``mcir.codegen.compile_memory``)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import mcir
from mcir.codegen import compile_memory as cm
from mcir.ir import _freeze_data

# a weight that is never materialised: the estimate reads types only, so no test allocates it
HUGE = """graph @big(%x: f32[1,65536]) -> (f32[1,65536]) {
  %w = const : f32[65536,65536]
  %y = linear(%x, %w) : f32[1,65536]
  return %y
}"""


def small_graph() -> mcir.Graph:
    g = mcir.parse(
        """graph @small(%x: f32[2,8]) -> (f32[2,4]) {
  %w = const : f32[4,8]
  %h = linear(%x, %w) : f32[2,4]
  %y = relu(%h) : f32[2,4]
  return %y
}""",
        verify=False,
    )
    (w,) = g.constants()
    w.data = _freeze_data(np.ones((4, 8), np.float32), w.result.type)
    return mcir.verify(g)


def test_the_estimate_is_constants_times_the_measured_factor_plus_workspace_plus_ir() -> None:
    est = cm.estimate(small_graph())
    assert est.constants == 4 * 8 * 4 * cm.BYTES_PER_WEIGHT_BYTE
    # %h and %y live together at the relu (8 + 8 floats); the input is the caller's buffer
    assert est.workspace == 2 * 2 * 4 * 4
    assert est.ir == cm.FIXED_BYTES + 3 * cm.BYTES_PER_OP
    assert est.total == est.constants + est.workspace + est.ir


def test_the_workspace_estimate_frees_values_after_their_last_use() -> None:
    lines = [f"  %v{i + 1} = relu(%v{i}) : f32[1024]" for i in range(50)]
    g = mcir.parse("graph @chain(%v0: f32[1024]) -> (f32[1024]) {\n" + "\n".join(lines) + "\n  return %v50\n}")
    assert cm.peak_live_bytes(g) == 2 * 1024 * 4  # a chain never holds more than two values


def test_a_graph_over_the_limit_is_refused_before_any_work_naming_the_constant(tmp_path) -> None:
    g = mcir.parse(HUGE)  # 16 GiB of weights, no data attached: refused before looking at any
    with pytest.raises(cm.CompileMemoryError, match=r"would need about 176\.\d+ GiB.*limit of 16\.00 GiB") as e:
        mcir.compile(g, tmp_path / "big")
    assert "%w" in str(e.value) and "MCIR_COMPILE_MEMORY" in str(e.value)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("text", "expected"), [("32G", 32 << 30), ("512M", 512 << 20), ("100", 100), ("1.5GiB", 3 << 29)]
)
def test_limit_sizes_are_read_with_units(text: str, expected: int) -> None:
    assert cm.parse_size(text, "test") == expected


def test_the_limit_comes_from_the_argument_then_the_environment_then_the_default(monkeypatch) -> None:
    monkeypatch.delenv(cm.ENV, raising=False)
    assert cm.limit() == 16 << 30
    monkeypatch.setenv(cm.ENV, "2G")
    assert cm.limit() == 2 << 30
    assert cm.limit("1G") == 1 << 30
    monkeypatch.setenv(cm.ENV, "none")
    assert cm.limit() is None
    monkeypatch.setenv(cm.ENV, "lots")
    with pytest.raises(mcir.McirError, match="MCIR_COMPILE_MEMORY: 'lots' is not a size"):
        cm.limit()


def test_a_lowered_limit_refuses_a_small_graph_and_a_raised_one_lets_it_through(tmp_path, monkeypatch) -> None:
    g = small_graph()
    with pytest.raises(cm.CompileMemoryError, match="limit of 0.01 GiB"):
        mcir.compile(g, tmp_path / "a", memory_limit="10M")
    monkeypatch.setenv(cm.ENV, "10M")
    with pytest.raises(cm.CompileMemoryError):
        mcir.compile(g, tmp_path / "b")
    lib = mcir.compile(g, tmp_path / "c", memory_limit="1G")
    np.testing.assert_allclose(lib(np.ones((2, 8), np.float32))[0], np.full((2, 4), 8.0))


@pytest.mark.slow  # two CLI processes that import torch: ~12 s
def test_the_cli_flag_sets_the_limit(tmp_path) -> None:
    mcir.save(small_graph(), tmp_path / "m")
    cmd = [
        sys.executable,
        "-m",
        "mcir.cli",
        "compile",
        str(tmp_path / "m"),
        "-o",
        str(tmp_path / "out"),
        "--no-compare",
    ]
    r = subprocess.run([*cmd, "--compile-memory", "10M"], capture_output=True, text=True)
    assert r.returncode == 2 and "over the limit of 0.01 GiB" in r.stderr, r.stderr
    r = subprocess.run([*cmd, "--compile-memory", "ten"], capture_output=True, text=True)
    assert r.returncode == 2 and "--compile-memory: 'ten' is not a size" in r.stderr, r.stderr
