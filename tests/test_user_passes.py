"""The worked example of docs/passes.md runs from the CLI and from Python, as documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mcir

DOCS = Path(__file__).parent.parent / "docs" / "passes.md"

MODEL = """\
graph @m(%x: f32[2,64]) -> (f32[2,64]) {
  %w = const : f32[64,64]
  %b = const : f32[64]
  %h = linear(%x, %w, %b) : f32[2,64]
  %s = sigmoid(%h) : f32[2,64]
  %a = mul(%s, %h) : f32[2,64]
  %g = gelu(%a) : f32[2,64]
  return %g
}
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    text = DOCS.read_text()
    blocks = re.findall(r"```python\n(# my_passes\.py\n.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/passes.md must hold exactly one '# my_passes.py' code block"
    path = tmp_path / "my_passes.py"
    path.write_text(blocks[0])
    return path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    g = mcir.parse(MODEL)
    rng = np.random.default_rng(0)
    for op in g.constants():
        op.data = (rng.standard_normal(op.result.type.shape) * 0.2).astype(np.float32)
    return mcir.save(g, tmp_path / "model")


def test_docs_user_passes_from_the_cli(user_file: Path, model_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "mcir.cli",
        "opt",
        str(model_dir),
        "--passes",
        f"{user_file}:fuse_silu,{user_file}:tanh_gelu(min_features=64)",
        "--print-ir-after-all",
        "-o",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert res.returncode == 0, res.stderr
    assert "// ----- IR after fuse_silu -----" in res.stderr
    assert "tanh_gelu(min_features=64)" in res.stderr  # the per-pass table names the pass with its options
    text = (out / "graph.mcir").read_text()
    assert "silu(%h)" in text and "sigmoid" not in text and "mul(" not in text
    assert 'gelu(%a) {approximate="tanh"}' in text


def test_docs_user_passes_from_python(user_file: Path, model_dir: Path):
    g = mcir.load(model_dir)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    (want,) = mcir.interpret(g, x)

    silu = mcir.run_passes(g, f"{user_file}:fuse_silu")
    assert [op.name for op in silu.compute_ops()] == ["linear", "silu", "gelu"]
    np.testing.assert_allclose(mcir.interpret(silu, x)[0], want, rtol=1e-6, atol=1e-6)

    split = mcir.run_passes(g, f"{user_file}:SplitBias")
    assert [op.name for op in split.compute_ops()][:2] == ["linear", "add"]
    np.testing.assert_allclose(mcir.interpret(split, x)[0], want, rtol=1e-6, atol=1e-6)

    # objects from the imported module work too, mixed with pipeline strings
    sys.path.insert(0, str(user_file.parent))
    try:
        import my_passes
    finally:
        sys.path.pop(0)
    both = mcir.run_passes(g, [my_passes.fuse_silu, my_passes.tanh_gelu, "fold"])
    assert [op.name for op in both.compute_ops()] == ["linear", "silu", "gelu"]
    (got,) = mcir.interpret(both, x)
    assert np.abs(got - want).max() <= 5e-4  # the bound tanh_gelu documents


def test_tanh_gelu_bound_documented_in_the_example_holds():
    x = np.linspace(-8, 8, 200001).astype(np.float32)
    exact = mcir.ops.get("gelu").reference(x, approximate="none")
    approx = mcir.ops.get("gelu").reference(x, approximate="tanh")
    assert np.abs(exact - approx).max() <= 5e-4


def test_user_pass_errors_are_clear(tmp_path: Path):
    g = mcir.parse(MODEL)
    with pytest.raises(mcir.McirError, match="does not exist"):
        mcir.run_passes(g, f"{tmp_path}/nope.py:x")
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(mcir.McirError, match="error while importing pass file .*boom"):
        mcir.run_passes(g, f"{bad}:x")
    ok = tmp_path / "ok.py"
    ok.write_text("VALUE = 3\n")
    with pytest.raises(mcir.McirError, match="defines no 'missing'"):
        mcir.run_passes(g, f"{ok}:missing")
    with pytest.raises(mcir.McirError, match="not a pass"):
        mcir.run_passes(g, f"{ok}:VALUE")
