"""The command line as a new user meets it: the design's own first commands work as written, and files
that are not models are named for what they are (never answered with advice to ``--trust`` them)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import mcir
from mcir.cli import main
from mcir.errors import CodegenError, McirError, ModelFileError
from mcir.file_kind import file_kind


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A torch.save'd module, a torch.export archive of the same model, and files that are not models."""
    import onnx
    from onnx import TensorProto, helper

    d = tmp_path_factory.mktemp("first_use")
    model = small_model()
    torch.save(model, d / "seq.pt")
    torch.export.save(torch.export.export(model, (torch.randn(1, 8),)), d / "seq.pt2")
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    onnx.save(helper.make_model(graph), d / "model.onnx")
    (d / "lib.pt").write_bytes(Path("/bin/sh").resolve().read_bytes()[:8192])  # an ELF binary named like a model
    (d / "image.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (d / "noise.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {p.name: p for p in d.iterdir()}


def test_compile_without_output_goes_to_build_model_name(capsys, files, tmp_path, monkeypatch):
    """`mcir compile model.pt --passes prune,quant8` (the design's first command) writes build/<model name>.*"""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "compile", files["seq.pt"], "--input", "x=1x8", "--passes", "prune,quant8")
    assert code == 0, err
    for suffix in (".so", ".h", ".o"):
        assert (tmp_path / "build" / f"seq{suffix}").exists()
    assert "wrote build/seq.so, build/seq.h, build/seq.o" in out
    assert "choose another place with -o" in out


def test_export_archive_is_a_first_class_input(capsys, files, tmp_path):
    """A .pt2 holds the graph already: it compiles (with --trust, as it unpickles) and its torch module is timed."""
    code, out, err = run(capsys, "compile", files["seq.pt2"], "--trust", "-o", tmp_path / "seq")
    assert code == 0, err
    assert "torch eager latency" in out and "native vs interpreter" in out
    lib = mcir.runtime.Library(tmp_path / "seq.so")
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    (y,) = lib(x)
    np.testing.assert_allclose(y, small_model()(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    code, _, err = run(capsys, "compile", files["seq.pt2"], "-o", tmp_path / "refused")
    assert code == 2 and "--trust" in err  # this one really unpickles: the advice is right here


@pytest.mark.parametrize(
    ("name", "kind", "advice"),
    [
        ("lib.pt", "an ELF binary", "mcir run LIB.so"),
        ("image.pt", "a PNG image", "torch.save"),
        ("noise.pt", "a binary file of unknown format", "torch.save"),
    ],
)
def test_non_model_files_are_named_not_sent_to_the_unpickler(capsys, files, tmp_path, name, kind, advice):
    code, _, err = run(capsys, "compile", files[name], "--input", "1x8", "-o", tmp_path / "x")
    assert code == 2
    assert err.count("\n") == 1 and f"{files[name]}: {kind}" in err and advice in err
    assert "--trust" not in err and "weights_only" not in err
    with pytest.raises(McirError, match=re.escape(kind)) as info:
        mcir.load(files[name])
    assert "--trust" not in str(info.value)


def test_onnx_files_are_imported_by_content_and_named_by_the_other_loaders(capsys, files, tmp_path):
    (tmp_path / "model.bin").write_bytes(files["model.onnx"].read_bytes())  # an ONNX model under another name
    code, _, err = run(capsys, "compile", tmp_path / "model.bin", "-o", tmp_path / "relu", "--no-compare")
    assert code == 0, err
    (y,) = mcir.runtime.Library(tmp_path / "relu.so")(np.arange(-4, 4, dtype=np.float32).reshape(1, 8))
    np.testing.assert_array_equal(y, np.maximum(np.arange(-4, 4, dtype=np.float32), 0).reshape(1, 8))
    with pytest.raises(McirError, match=r"an ONNX model \(protobuf\), not an mcir graph.*mcir.from_onnx") as info:
        mcir.load(files["model.onnx"])
    assert "--trust" not in str(info.value)
    from mcir.frontend.model_file import load_model

    with pytest.raises(ModelFileError, match=r"an ONNX model.*mcir.from_onnx"):
        load_model(files["model.onnx"])


def test_file_kinds_come_from_content_not_suffix(files, tmp_path):
    assert file_kind(files["seq.pt"]).name == "torch-zip"
    assert file_kind(files["seq.pt2"]).name == "torch-export"
    (tmp_path / "weights.bin").write_bytes(files["seq.pt2"].read_bytes())
    assert file_kind(tmp_path / "weights.bin").name == "torch-export"
    (tmp_path / "g.txt").write_text("// a comment\ngraph @g(%x: f32[2]) -> (f32[2]) {\n  return %x\n}\n")
    assert file_kind(tmp_path / "g.txt").name == "mcir-text"
    (tmp_path / "latin1.mcir").write_bytes("graph @g() // caf\xe9".encode("latin-1") + b"\x00")
    with pytest.raises(McirError, match="not mcir IR text|not an mcir graph"):
        mcir.load(tmp_path / "latin1.mcir")


def test_mcir_text_given_to_the_torch_loader_says_where_it_belongs(tmp_path):
    from mcir.frontend.model_file import load_model

    (tmp_path / "g.pt").write_text("graph @g(%x: f32[2]) -> (f32[2]) {\n  return %x\n}\n")
    with pytest.raises(ModelFileError, match="mcir IR text file.*mcir.load"):
        load_model(tmp_path / "g.pt")


def test_cross_targets_by_name_with_cpu_and_features(capsys, files, tmp_path):
    """`--target aarch64 --features +dotprod` writes an aarch64 object and its header (no .so: not runnable here)."""
    out = tmp_path / "a64"
    code, text, err = run(
        capsys, "compile", files["seq.pt"], "-i", "1x8", "--target", "aarch64", "--features", "+dotprod", "-o", out
    )
    assert code == 0, err
    data = out.with_suffix(".o").read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == 183  # EM_AARCH64
    assert out.with_suffix(".h").exists() and not out.with_suffix(".so").exists()
    assert "cross-compiled" in text


def test_target_names_resolve_to_triples_cpus_and_features():
    from mcir.codegen.target import CROSS_TARGETS, host_supports, resolve

    t = resolve("aarch64", features="+dotprod,+i8mm")
    assert (t.triple, t.cpu, t.native) == ("aarch64-unknown-linux-gnu", "generic", False)
    assert t.has("neon") and t.has("dotprod") and t.has("i8mm")
    assert not resolve("aarch64", features="-neon").has("neon")  # later entries win
    assert resolve("aarch64", cpu="cortex-a76").cpu == "cortex-a76"
    for name in CROSS_TARGETS:
        resolve(name).machine()  # LLVM has a backend for every named target
    with pytest.raises(CodegenError, match="bad feature 'dotprod'.*\\+name or -name"):
        resolve("aarch64", features="dotprod")
    with pytest.raises(CodegenError, match="unknown target 'arm9'.*aarch64, arm64, armv7, riscv64"):
        resolve("arm9")
    native = resolve("native")
    if native.is_x86:
        baseline = resolve("x86-64")  # the same architecture: it runs here
        assert baseline.native and host_supports(baseline) and not baseline.has("avx2")
        assert not host_supports(resolve("native", cpu="some-future-cpu"))  # its instructions are unknown here
        off = resolve("native", features="-avx512f")
        assert not off.has("avx512f") and host_supports(off)


def test_run_on_a_library_still_works_after_default_output(capsys, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "compile", files["seq.pt"], "-i", "1x8", "--no-compare")[0] == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 8), np.float32))
    code, out, _ = run(capsys, "run", "build/seq.so", "--input", tmp_path / "x.npy")
    assert code == 0 and "output 0: float32[1, 4]" in out
