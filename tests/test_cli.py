"""The mcir command line: commands work end to end; user errors print one line and exit 2."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mcir
from mcir.cli import main

ROOT = Path(__file__).resolve().parents[1]
FACTORY = str(ROOT / "examples" / "digits" / "model.py") + ":make_model"


@pytest.fixture(scope="module")
def state_dict(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT))
    from examples.digits.model import make_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cli") / "digits.pt"
    torch.save(make_model().state_dict(), path)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_dump_prints_ir_and_saves_a_folder(capsys, state_dict, tmp_path):
    code, out, _ = run(capsys, "dump", state_dict, "--model-def", FACTORY, "--input", "x=1x64")
    assert code == 0
    assert out.startswith("graph @digits(%x: f32[1,64]) -> (f32[1,10]) {")
    assert "%fc1 = linear(%x, %fc1.weight, %fc1.bias) : f32[1,256]" in out
    code, _, err = run(
        capsys,
        "dump",
        state_dict,
        "--model-def",
        FACTORY,
        "--input",
        "x=1x64",
        "--passes",
        "fold",
        "-o",
        tmp_path / "m",
    )
    assert code == 0 and (tmp_path / "m" / "graph.mcir").exists() and "fold" in err
    code, out, _ = run(capsys, "verify", tmp_path / "m")
    assert code == 0 and "ok (5 ops, 1 inputs, 1 outputs)" in out


def test_run_and_opt_on_a_saved_graph(capsys, state_dict, tmp_path):
    run(capsys, "dump", state_dict, "--model-def", FACTORY, "--input", "x=1x64", "-o", tmp_path / "m")
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    code, _, _ = run(capsys, "run", tmp_path / "m", "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npz")
    assert code == 0
    want = mcir.interpret(mcir.load(tmp_path / "m"), x)[0]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npz")["arr_0"], want)

    calib = np.random.default_rng(1).random((8, 1, 64), dtype=np.float32)
    np.savez(tmp_path / "calib.npz", x=calib)
    code, _, err = run(
        capsys,
        "opt",
        tmp_path / "m",
        "--passes",
        "quant8",
        "--calibration",
        tmp_path / "calib.npz",
        "-o",
        tmp_path / "q",
    )
    assert code == 0, err
    assert "i8[256,64] #quant<axis=0>" in (tmp_path / "q" / "graph.mcir").read_text()
    assert "no calibration data" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["verify", "/nonexistent/graph.mcir"], "cannot read IR file"),
        (["dump", "/nonexistent.pt"], "no such file or folder"),
        (["opt", "{m}", "--passes", "fodl", "-o", "{tmp}/o"], "unknown pass 'fodl'; did you mean 'fold'?"),
        (["opt", "{m}", "--passes", "quant8", "--calibration", "{tmp}/nope.npz", "-o", "{tmp}/o"], "does not exist"),
        (
            ["opt", "{m}", "--passes", "quant8", "--calibration", "{tmp}/bad.npz", "-o", "{tmp}/o"],
            r"calibration array for input %x has shape \[3, 5\]; expected \[samples, 1, 64\]",
        ),
        (["run", "{m}", "--input", "{tmp}/bad.npy"], r"input %x must have shape \[1, 64\], got \[3, 5\]"),
    ],
)
def test_user_errors_are_one_line_with_exit_status_2(capsys, state_dict, tmp_path, argv, message):
    run(capsys, "dump", state_dict, "--model-def", FACTORY, "--input", "x=1x64", "-o", tmp_path / "m")
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 5), np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.float32))
    argv = [a.format(m=tmp_path / "m", tmp=tmp_path) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("mcir: error: ")
    assert "Traceback" not in err
    import re

    assert re.search(message, err), err


class WritesAFile:
    """Unpickling this object would create a file: the loader must refuse before that."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_unsafe_pickle_is_refused_without_side_effects(tmp_path):
    victim = tmp_path / "pwned.txt"
    model = tmp_path / "evil.pt"
    with open(model, "wb") as f:
        pickle.dump({"state": WritesAFile(str(victim))}, f)
    res = subprocess.run(
        [sys.executable, "-m", "mcir.cli", "dump", str(model), "--input", "1x64"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "--trust" in res.stderr and "io.open" in res.stderr
    assert not victim.exists()


def test_passes_and_ops_list_everything(capsys):
    code, out, _ = run(capsys, "passes")
    assert code == 0
    for name in ("fold", "quantize", "quant8", "binarize", "ternarize", "lowrank", "share"):
        assert f"\n{name}" in "\n" + out
    assert "calibration" in out and "minmax, percentile(99.99) or entropy" in out
    code, out, _ = run(capsys, "ops")
    assert code == 0 and "conv2d(x, weight, bias?) {stride: ints" in out


def test_legacy_format_pickles_are_inspected_without_unpickling(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    from examples.digits.model import make_model

    path = tmp_path / "legacy.pt"
    torch.save(make_model().state_dict(), path, _use_new_zipfile_serialization=False)
    code, out, _ = run(capsys, "dump", path, "--model-def", FACTORY, "--input", "1x64")
    assert code == 0 and "%fc1 = linear" in out
    whole = tmp_path / "legacy_full.pt"
    torch.save(make_model(), whole, _use_new_zipfile_serialization=False)
    code, _, err = run(capsys, "dump", whole, "--input", "1x64")
    assert code == 2 and "examples.digits.model.DigitsMLP" in err and "--import examples.digits.model" in err


def test_compile_writes_the_library_and_reports_measured_numbers(capsys, state_dict, tmp_path):
    out = tmp_path / "build" / "digits"
    code, text, err = run(
        capsys, "compile", state_dict, "--model-def", FACTORY, "--input", "x=1x64", "--passes", "fold", "-o", out
    )
    assert code == 0, err
    for suffix in (".so", ".o", ".h"):
        assert out.with_suffix(suffix).exists()
    for line in (
        "library",
        "weights",
        "native vs interpreter",
        "native vs original",
        "latency",
        "uncompressed latency",
        "torch eager latency",
    ):
        assert line in text, text
    x = np.zeros((1, 64), np.float32)
    np.save(tmp_path / "x.npy", x)
    code, text, _ = run(capsys, "run", out.with_suffix(".so"), "--input", tmp_path / "x.npy")
    assert code == 0 and "output 0: float32[1, 10]" in text
    code, text, _ = run(capsys, "bench", out.with_suffix(".so"), "--runs", "20", "--warmup", "2")
    assert code == 0 and "median" in text.splitlines()[0]


def test_compile_with_profile_then_bench_per_op(capsys, state_dict, tmp_path):
    out = tmp_path / "build" / "digits"
    args = ("--model-def", FACTORY, "--input", "x=1x64", "-o", out, "--no-compare", "--profile")
    code, _, err = run(capsys, "compile", state_dict, *args)
    assert code == 0, err
    code, text, _ = run(capsys, "bench", out.with_suffix(".so"), "--runs", "20", "--warmup", "2", "--per-op")
    assert code == 0 and "ticks/run" in text and "linear +relu" in text


@pytest.mark.parametrize("pipeline", ["quant8", "prune,quant8"])
def test_compile_compressed_with_calibration_file(capsys, state_dict, tmp_path, pipeline):
    calib = np.random.default_rng(2).random((16, 1, 64), dtype=np.float32)
    np.savez(tmp_path / "calib.npz", x=calib)
    out = tmp_path / "digits_q"
    code, text, err = run(
        capsys,
        "compile",
        state_dict,
        "--model-def",
        FACTORY,
        "--input",
        "x=1x64",
        "--passes",
        pipeline,
        "--calibration",
        tmp_path / "calib.npz",
        "--no-compare",
        "-o",
        out,
    )
    assert code == 0, err
    assert "int8 MACs" in text and "quantize" in text
    assert "no calibration data" not in text
    weights = next(line for line in text.splitlines() if line.startswith("weights"))
    share = float(weights.split("(")[1].split("%")[0])
    assert share <= 30.0, weights  # int8 weights: about a quarter of the fp32 bytes
    assert out.with_suffix(".so").exists()


def test_compile_with_a_calibration_file_of_the_wrong_shape_fails_cleanly(capsys, state_dict, tmp_path):
    np.savez(tmp_path / "calib.npz", x=np.zeros((4, 32), np.float32))
    out = tmp_path / "bad"
    code, _, err = run(
        capsys,
        "compile",
        state_dict,
        "--model-def",
        FACTORY,
        "--input",
        "x=1x64",
        "--passes",
        "quant8",
        "--calibration",
        tmp_path / "calib.npz",
        "-o",
        out,
    )
    assert code == 2 and "calibration array for input %x has shape [4, 32]" in err
    assert not out.with_suffix(".so").exists() and not out.with_suffix(".o").exists()
