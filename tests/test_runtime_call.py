"""The Python call of a compiled library: ``lib(x)`` keeps every check while taking a fast path for
well-formed arrays, and bound calls are safe from any thread (each thread has its own workspace)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mcir.codegen import compile as compile_graph
from mcir.errors import RuntimeCallError
from mcir.ir import Graph
from mcir.runtime import Library, _header_address_works
from mcir.types import tensor


def mlp_graph() -> Graph:
    """x[8,64] -> linear 1024 -> relu -> linear 1024 -> relu -> linear 16: the hidden activations live in the
    workspace, and a call lasts long enough (~10 M MACs) for calls from several threads to overlap."""
    rng = np.random.default_rng(0)
    g = Graph("mlp")
    h = g.add_input("x", tensor([8, 64]))
    for i, (n, k) in enumerate([(1024, 64), (1024, 1024)]):
        h = g.add("relu", [g.add("linear", [h, g.const(f"w{i}", rng.standard_normal((n, k)).astype(np.float32) / 8)])])
    g.set_outputs([g.add("linear", [h, g.const("w_out", rng.standard_normal((16, 1024)).astype(np.float32) / 32)])])
    return g


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Library:
    lib = compile_graph(mlp_graph(), tmp_path_factory.mktemp("call") / "mlp")
    assert lib.workspace_size > 0
    return lib


def reference(lib: Library, x: np.ndarray) -> np.ndarray:
    y = np.empty(lib.outputs[0].shape, lib.outputs[0].dtype)
    lib.bind([np.ascontiguousarray(x)], [y])()
    return y


def test_the_fast_address_reader_is_checked_and_used_here():
    assert _header_address_works()  # CPython + numpy on this machine: lib(x) takes the fast path


def test_plain_call_matches_the_bound_call_on_fresh_and_reused_arrays(lib):
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.standard_normal((8, 64)).astype(np.float32)
        (y,) = lib(x)
        np.testing.assert_array_equal(y, reference(lib, x))
        assert y.flags.owndata and y.flags.c_contiguous  # a fresh array each call
    view = rng.standard_normal((10, 64)).astype(np.float32)[1:9]  # a contiguous view: its own data address
    np.testing.assert_array_equal(lib(view)[0], reference(lib, view))
    assert lib(view)[0] is not lib(view)[0]


def test_checks_are_kept(lib):
    x = np.zeros((8, 64), np.float32)
    with pytest.raises(RuntimeCallError, match="must be float32, got float64"):
        lib(x.astype(np.float64))
    with pytest.raises(RuntimeCallError, match=r"must have shape \[8, 64\], got \[8, 32\]"):
        lib(x[:, :32].copy())
    with pytest.raises(RuntimeCallError, match="C-contiguous"):
        lib(np.zeros((64, 8), np.float32).T)
    with pytest.raises(RuntimeCallError, match=r"takes 1 input\(s\)"):
        lib(x, x)
    with pytest.raises(RuntimeCallError, match="must be float32"):
        lib([[0.0] * 64] * 8)  # a list becomes float64: named, not silently converted


def test_unusual_but_valid_arrays_take_the_checked_path(tmp_path, lib):
    """An ndarray subclass, or a C-contiguous array whose size-1 axis has an odd stride, still runs."""
    x = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)

    class Tagged(np.ndarray):
        pass

    np.testing.assert_array_equal(lib(x.view(Tagged))[0], reference(lib, x))
    g = Graph("row")
    v = g.add_input("x", tensor([1, 8]))
    g.set_outputs([g.add("relu", [v])])
    row_lib = compile_graph(g, tmp_path / "row")
    row = np.lib.stride_tricks.as_strided(np.arange(-4, 4, dtype=np.float32), shape=(1, 8), strides=(999, 4))
    assert row.flags.c_contiguous and row.strides != (32, 4)
    np.testing.assert_array_equal(row_lib(row)[0], np.maximum(row, 0))


def test_bound_calls_use_the_calling_threads_workspace(lib):
    """Closures bound in one thread and called concurrently from others give exact results (issue #17,
    finding 9: they used to share the creating thread's workspace)."""
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((8, 64)).astype(np.float32) for _ in range(4)]
    expect = [reference(lib, x) for x in xs]
    outs = [np.empty_like(e) for e in expect]
    calls = [lib.bind([x], [y]) for x, y in zip(xs, outs)]  # all bound here, in the main thread
    wrong: list[int] = []

    def worker(i: int) -> None:
        for _ in range(300):
            calls[i]()
            if not np.array_equal(outs[i], expect[i]):
                wrong.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_plain_calls_from_many_threads_are_exact(lib):
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((8, 64)).astype(np.float32) for _ in range(4)]
    expect = [reference(lib, x) for x in xs]
    wrong: list[int] = []

    def worker(i: int) -> None:
        for _ in range(300):
            if not np.array_equal(lib(xs[i])[0], expect[i]):
                wrong.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_without_the_fast_address_reader_numpy_pointers_are_used(lib, monkeypatch):
    """Another interpreter build or numpy layout: the same results through ``.ctypes.data``."""
    import mcir.runtime

    x = np.random.default_rng(5).standard_normal((8, 64)).astype(np.float32)
    want = reference(lib, x)
    monkeypatch.setattr(mcir.runtime, "_HEADER_ADDRESS", False)
    np.testing.assert_array_equal(lib(x)[0], want)
    with pytest.raises(RuntimeCallError, match="must be float32"):
        lib(x.astype(np.float64))
