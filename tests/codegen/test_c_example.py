"""The C example: two compiled models in one C program, linked as shared libraries and as
plain freestanding objects, checked against the interpreter's outputs."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "c"

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_models", EXAMPLE / "make_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("c-example")
    mod.main(out)
    return out


@pytest.mark.parametrize("link", ["shared", "objects"])
def test_c_program_runs_both_models(built, link):
    libs = ["mlp.so", "classify.so"] if link == "shared" else ["mlp.o", "classify.o"]
    app = built / f"app_{link}"
    cmd = [
        "cc",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-std=c11",
        f"-I{built}",
        str(EXAMPLE / "main.c"),
        *(str(built / x) for x in libs),
        "-o",
        str(app),
    ]
    if link == "shared":
        cmd.append(f"-Wl,-rpath,{built}")
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    run = subprocess.run([str(app), str(built)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "-> 1 (MCIR_ERR_NULL_ARGUMENT = 1)" in run.stdout
    assert "-> 3 (MCIR_ERR_WORKSPACE_ALIGNMENT = 3)" in run.stdout
    assert '"mcir_version"' in run.stdout


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_c_pthreads_hook_gives_identical_outputs(built, threads):
    app = built / "threads"
    if not app.exists():
        cmd = ["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-std=c11", "-pthread", f"-I{built}"]
        cmd += [str(EXAMPLE / "threads.c"), str(built / "wide.so"), f"-Wl,-rpath,{built}", "-o", str(app)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    run = subprocess.run([str(app), str(threads)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "outputs bit-identical" in run.stdout
    if threads > 1:
        assert "hook called 1 time(s)" in run.stdout
