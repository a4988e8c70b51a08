"""Outputs as a set: ``.o``, ``.so`` and ``.h`` of one compile appear together; a reader never pairs
files of two compiles, and a compile stopped or killed at any point leaves a complete set in place."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import mcir
from mcir.codegen import compile as compile_graph
from mcir.errors import CodegenError
from mcir.ir import Graph
from mcir.output_set import current_link, publishing, versions_dir
from mcir.runtime import Library
from mcir.types import tensor

ROOT = Path(__file__).resolve().parents[1]


def linear_graph(n: int) -> Graph:
    """x[1,4] -> linear n: the output width tells which compile a file came from."""
    g = Graph("m")
    x = g.add_input("x", tensor([1, 4]))
    w = g.const("w", np.arange(4 * n, dtype=np.float32).reshape(n, 4))
    g.set_outputs([g.add("linear", [x, w])])
    return g


def check_set(stem: Path) -> int:
    """Assert the files at ``stem`` form one compile's set; returns that compile's output width."""
    files = [stem.with_name(stem.name + s) for s in (".so", ".h", ".o")]
    folders = {Path(os.path.realpath(p)).parent for p in files}
    assert len(folders) == 1, f"the files resolve to different compiles: {folders}"
    m = re.search(r"outputs\[0\] \S+: f32\[1,(\d+)\]", files[1].read_text())
    assert m, "the header is incomplete"
    assert files[2].read_bytes()[:4] == b"\x7fELF"
    lib = Library(files[0])
    assert lib.outputs[0].shape == (1, int(m.group(1))), "the .so and the .h come from different compiles"
    return int(m.group(1))


def test_a_compile_publishes_links_through_one_current_folder(tmp_path):
    stem = tmp_path / "build" / "m"
    compile_graph(linear_graph(3), stem)
    assert check_set(stem) == 3
    first = os.path.realpath(current_link(stem))
    compile_graph(linear_graph(5), stem)
    assert check_set(stem) == 5
    assert os.readlink(stem.with_name("m.so")) == ".m.current/m.so"
    versions = sorted(p.name for p in versions_dir(stem).iterdir())
    assert len(versions) == 2 and Path(first).name in versions  # the previous set is kept one more round
    compile_graph(linear_graph(7), stem)
    assert Path(first).name not in {p.name for p in versions_dir(stem).iterdir()}  # older ones go


def test_a_failed_compile_leaves_the_previous_set(tmp_path):
    stem = tmp_path / "m"
    compile_graph(linear_graph(3), stem)
    with pytest.raises(RuntimeError), publishing(stem) as folder:
        (folder / "m.h").write_text("half")
        raise RuntimeError("killed mid-way")
    assert check_set(stem) == 3
    assert len(list(versions_dir(stem).iterdir())) == 1


def test_a_cross_compile_replaces_the_set_without_a_stale_library(tmp_path):
    stem = tmp_path / "m"
    compile_graph(linear_graph(3), stem)
    compile_graph(linear_graph(5), stem, target="aarch64")
    assert not stem.with_name("m.so").exists() and not stem.with_name("m.so").is_symlink()
    assert "f32[1,5]" in stem.with_name("m.h").read_text()


def test_without_a_linker_the_object_and_header_are_still_published(tmp_path, monkeypatch):
    monkeypatch.setattr("mcir.codegen.link.find_linker", lambda: None)
    with pytest.raises(CodegenError):
        compile_graph(linear_graph(3), tmp_path / "m")
    assert (tmp_path / "m.o").exists() and (tmp_path / "m.h").exists() and not (tmp_path / "m.so").exists()


CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {root!r})
    from tests.test_output_set import linear_graph
    from mcir.codegen import compile as compile_graph
    from mcir import save
    i = 0
    while True:
        {write}(linear_graph(3 + 2 * (i % 4)), {stem!r})
        if i == 0:
            print("ready", flush=True)
        i += 1
    """
)


def writing_child(stem: Path, write: str = "compile_graph") -> subprocess.Popen:
    code = CHILD.format(root=str(ROOT), stem=str(stem), write=write)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def interrupt(stem: Path, snapshots: int, rng: random.Random, write: str = "compile_graph", check=check_set) -> set:
    """Run a loop of ``write``s (compile or save), freeze it (SIGSTOP) ``snapshots`` times at random points
    and ``check`` what a reader sees then; finally kill it (SIGKILL) at a random point and check what is left."""
    child = writing_child(stem, write)
    seen = set()
    try:
        for _ in range(snapshots):
            time.sleep(rng.uniform(0.0, 0.15))
            child.send_signal(signal.SIGSTOP)
            try:
                seen.add(check(stem))
            finally:
                child.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.0, 0.15))
    finally:
        child.kill()
        child.wait()
    seen.add(check(stem))
    return seen


def test_readers_see_one_set_while_compiles_run_and_after_a_kill(tmp_path):
    seen = interrupt(tmp_path / "m", snapshots=10, rng=random.Random(0))
    assert len(seen) >= 2  # the loop did replace the set while it was being read


@pytest.mark.slow
def test_many_random_kills_leave_consistent_sets(tmp_path):
    rng = random.Random(1)
    for _ in range(15):
        interrupt(tmp_path / "m", snapshots=20, rng=rng)


def saved_width(folder: Path) -> int:
    """Load the saved graph (it must be complete) and return its output width."""
    return mcir.load(folder).outputs[0].type.shape[1]


def test_save_keeps_a_valid_graph_at_the_destination_at_every_instant(tmp_path):
    seen = interrupt(tmp_path / "saved", snapshots=10, rng=random.Random(2), write="save", check=saved_width)
    assert len(seen) >= 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".saved.")) == ["saved"]


def test_save_over_a_graph_never_renames_it_away(tmp_path, monkeypatch):
    """The swap is one system call: a kill right after any rename still leaves a graph at the destination."""
    from mcir import serialize

    mcir.save(linear_graph(3), tmp_path / "g")

    def killed(*args: object) -> None:
        raise KeyboardInterrupt("killed between two renames")

    monkeypatch.setattr(serialize.os, "replace", killed)
    mcir.save(linear_graph(5), tmp_path / "g")  # the exchange needs no rename
    assert saved_width(tmp_path / "g") == 5
