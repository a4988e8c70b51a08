"""The library as a product: files, symbols, header, C ABI error codes, the Python runtime's
checks, naming, targets and the errors users see (no linker, bad triple, missing kernel)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest

from mcir import dtypes
from mcir.codegen import Artifacts, abi, default_name
from mcir.codegen import compile as compile_graph
from mcir.encodings import Quant
from mcir.errors import CodegenError, RuntimeCallError
from mcir.ir import Graph
from mcir.runtime import DTYPES, ERRORS, Library, library_names
from mcir.types import TensorType, tensor

from .helpers import randn, undefined_symbols


def small_graph(name: str = "small", scale: float = 1.0) -> Graph:
    rng = np.random.default_rng(0)
    g = Graph(name)
    x = g.add_input("x", tensor([2, 8]))
    ids = g.add_input("ids", tensor([3], "i64"))
    w = g.const("w", randn(rng, 4, 8, scale=scale))
    h = g.add("relu", [g.add("linear", [x, w])])
    e = g.add("embedding", [ids, g.const("table", randn(rng, 5, 4))])
    g.set_outputs([g.add("softmax", [h]), e])
    return g


def inputs():
    return np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32), np.array([0, 4, 2], np.int64)


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Library:
    return compile_graph(small_graph(), tmp_path_factory.mktemp("abi") / "small")


def test_writes_object_library_and_header_atomically(tmp_path):
    lib = compile_graph(small_graph(), tmp_path / "out" / "model")
    visible = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    assert visible == ["model.h", "model.o", "model.so"]  # plus the hidden versions of mcir.output_set
    assert lib.name == "model" and lib.file_size > 0
    assert lib.weight_bytes >= (4 * 8 + 5 * 4) * 4  # the weight is padded to whole GEMM panels


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils nm")
def test_object_is_freestanding_and_exports_only_the_abi(lib):
    undefined = subprocess.run(["nm", "-u", str(lib.path.with_suffix(".o"))], capture_output=True, text=True).stdout
    assert undefined.strip() == ""  # no libc/libm: links with -nostdlib
    exported = subprocess.run(["nm", "-D", "--defined-only", str(lib.path)], capture_output=True, text=True).stdout
    names = sorted(line.split()[-1] for line in exported.splitlines())
    assert names == sorted(
        f"mcir_small_{s}"
        for s in ("run", "workspace_size", "num_inputs", "num_outputs", "inputs", "outputs", "metadata", "set_parallel")
    )
    assert library_names(lib.path) == ["small"]


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_headers_of_two_models_compile_together_as_c_and_cpp(tmp_path):
    compile_graph(small_graph("a"), tmp_path / "a")
    compile_graph(small_graph("b"), tmp_path / "b")
    src = tmp_path / "both.c"
    src.write_text(
        '#include "a.h"\n#include "b.h"\nint main(void) { return mcir_a_num_inputs() + '
        "mcir_b_num_outputs() + MCIR_A_NUM_INPUTS - 4; }\n"
    )
    subprocess.run(
        [
            "cc",
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            f"-I{tmp_path}",
            str(src),
            str(tmp_path / "a.so"),
            str(tmp_path / "b.so"),
            "-o",
            str(tmp_path / "both"),
        ],
        check=True,
    )
    if shutil.which("c++"):
        cpp = tmp_path / "both.cc"
        cpp.write_text(src.read_text())
        subprocess.run(["c++", "-fsyntax-only", "-Wall", "-Werror", f"-I{tmp_path}", str(cpp)], check=True)


def test_descriptors_and_metadata(lib):
    assert [(d.name, d.dtype, d.shape) for d in lib.inputs] == [("x", np.float32, (2, 8)), ("ids", np.int64, (3,))]
    assert [(d.name, d.shape) for d in lib.outputs] == [("softmax", (2, 4)), ("embedding", (3, 4))]
    md = lib.metadata
    assert md["mcir_version"] and md["abi_version"] == abi.ABI_VERSION and md["target"] == "native"
    assert md["workspace_size"] == lib.workspace_size


def test_quantised_io_descriptor(tmp_path):
    g = Graph("q")
    x = g.add_input("x", tensor([4]))
    g.set_outputs([g.add("quantize", [x], type=TensorType((4,), dtypes.u8, Quant(scale=0.5, zero_point=7)))])
    d = compile_graph(g, tmp_path / "q").outputs[0]
    assert (d.dtype, d.quant, d.scale, d.zero_point) == (np.uint8, abi.QUANT_PER_TENSOR, 0.5, 7)


def test_runtime_constants_match_the_abi():
    assert {k: v for k, v in ERRORS.items()} == abi.ERROR_NAMES
    assert all(abi.DTYPE_CODES[dtypes.from_numpy(np.dtype(v)).name] == k for k, v in DTYPES.items())


def test_c_error_codes(lib):
    x, ids = inputs()
    outs = [np.empty(d.shape, d.dtype) for d in lib.outputs]
    arr = lambda arrays: (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
    ws = lib.workspace()
    run = lib._run
    assert run(None, arr(outs), ws.ctypes.data) == abi.ERR_NULL_ARGUMENT
    assert run(arr([x, ids]), arr(outs), None) == abi.ERR_NULL_ARGUMENT
    assert run((ctypes.c_void_p * 2)(x.ctypes.data, None), arr(outs), ws.ctypes.data) == abi.ERR_NULL_TENSOR
    raw = np.zeros(lib.workspace_size + 128, np.uint8)
    misaligned = raw.ctypes.data + (-raw.ctypes.data) % 64 + 8
    assert run(arr([x, ids]), arr(outs), misaligned) == abi.ERR_WORKSPACE_ALIGNMENT
    bad = np.array([0, 5, 1], np.int64)
    assert run(arr([x, bad]), arr(outs), ws.ctypes.data) == abi.ERR_INDEX_OUT_OF_RANGE
    assert run(arr([x, ids]), arr(outs), ws.ctypes.data) == abi.OK


def test_runtime_errors_name_the_input(lib):
    x, ids = inputs()
    with pytest.raises(RuntimeCallError, match=r"input 'x' .* shape \[2, 8\], got \[3, 8\]"):
        lib(np.zeros((3, 8), np.float32), ids)
    with pytest.raises(RuntimeCallError, match=r"input 'x' .* must be float32, got float64"):
        lib(x.astype(np.float64), ids)
    with pytest.raises(RuntimeCallError, match="input 'x' .* C-contiguous"):
        lib(np.asfortranarray(np.zeros((2, 8), np.float32)), ids)
    with pytest.raises(RuntimeCallError, match="takes 2 input"):
        lib(x)
    with pytest.raises(RuntimeCallError, match="error 4: MCIR_ERR_INDEX_OUT_OF_RANGE"):
        lib(x, np.array([0, -1, 1], np.int64))


def test_example_inputs_fit_the_model(lib):
    xs = lib.example_inputs()
    assert [(a.shape, a.dtype) for a in xs] == [(d.shape, d.dtype) for d in lib.inputs]
    assert all(np.isfinite(y).all() for y in lib(*xs))


def test_run_into_and_bind_reuse_buffers(lib):
    x, ids = inputs()
    expect = lib(x, ids)
    outs = [np.zeros(d.shape, d.dtype) for d in lib.outputs]
    lib.run_into([x, ids], outs)
    for o, e in zip(outs, expect):
        np.testing.assert_array_equal(o, e)
    call = lib.bind([x, ids], outs)
    outs[0][:] = 0
    call()
    np.testing.assert_array_equal(outs[0], expect[0])


def test_reentrant_with_separate_workspaces(lib):
    x, ids = inputs()
    expect = lib(x, ids)[0]
    results, errors = [], []

    def worker(seed: int) -> None:
        try:
            for _ in range(200):
                results.append(np.array_equal(lib(x, ids)[0], expect))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(results) and len(results) == 600


def test_names(tmp_path):
    assert default_name("build/my-model.v2") == "my_model_v2"
    assert default_name("out/3net") == "m3net"
    lib = compile_graph(small_graph(), tmp_path / "file", name="custom_name")
    assert lib.name == "custom_name" and library_names(lib.path) == ["custom_name"]
    with pytest.raises(CodegenError, match="not a C identifier"):
        compile_graph(small_graph(), tmp_path / "bad", name="has-dash")


def test_recompiling_in_place_loads_the_new_code(tmp_path):
    x, ids = inputs()
    a = compile_graph(small_graph(scale=1.0), tmp_path / "same")
    ya = a(x, ids)[0]
    b = compile_graph(small_graph(scale=5.0), tmp_path / "same")
    assert not np.array_equal(b(x, ids)[0], ya)
    np.testing.assert_array_equal(a(x, ids)[0], ya)  # the old library keeps working


def test_outputs_that_alias_inputs_constants_or_each_other(tmp_path):
    g = Graph("alias")
    x = g.add_input("x", tensor([2, 3]))
    c = g.const("c", np.arange(6, dtype=np.float32).reshape(2, 3))
    r = g.add("relu", [x])
    g.set_outputs([x, r, r, c, g.add("reshape", [x], {"shape": [3, 2]}), g.add("reshape", [r], {"shape": [6]})])
    lib = compile_graph(g, tmp_path / "alias")
    xs = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    out = lib(xs)
    rx = np.maximum(xs, 0)
    for got, want in zip(out, [xs, rx, rx, c.producer.data, xs.reshape(3, 2), rx.reshape(6)]):
        np.testing.assert_array_equal(got, want)


def test_no_linker_keeps_the_object(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("MCIR_LINKER", "/nonexistent/linker")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(CodegenError, match="no linker found") as info:
        compile_graph(small_graph(), tmp_path / "nolink")
    assert "nolink.o" in str(info.value)
    assert (tmp_path / "nolink.o").exists() and (tmp_path / "nolink.h").exists()
    assert not (tmp_path / "nolink.so").exists()


@pytest.mark.skipif(shutil.which("ld") is None, reason="needs ld")
def test_linker_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MCIR_LINKER", shutil.which("ld"))
    lib = compile_graph(small_graph(), tmp_path / "withld")
    np.testing.assert_allclose(lib(*inputs())[0].sum(axis=1), [1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize(
    ("target", "triple"),
    [
        ("native", None),
        ("x86-64-v2", None),
        ("native", "aarch64-linux-gnu"),
        ("native", "armv7-linux-gnueabihf"),
        ("native", "riscv64-unknown-linux-gnu"),
    ],
)
def test_objects_are_freestanding_on_every_target(tmp_path, target, triple):
    """No libc, libm or libgcc references (fmaf, soft-float helpers, memcpy) on any target."""
    g = small_graph()
    x = g.outputs[0]
    g.set_outputs([*g.outputs, g.add("gelu", [x]), g.add("exp", [x]), g.add("log", [g.add("sigmoid", [x])])])
    try:
        arts = compile_graph(g, tmp_path / "free", target=target, triple=triple)
    except CodegenError as e:  # x86-64-v2 on a non-x86 machine
        pytest.skip(str(e))
    obj = arts.path.with_suffix(".o") if isinstance(arts, Library) else arts.object_path
    assert undefined_symbols(obj) <= {"_GLOBAL_OFFSET_TABLE_"}


def test_cross_target_emits_object_and_header_only(tmp_path):
    arts = compile_graph(small_graph(), tmp_path / "arm", triple="aarch64-linux-gnu")
    assert isinstance(arts, Artifacts) and arts.library_path is None
    obj = arts.object_path.read_bytes()
    assert obj[:4] == b"\x7fELF" and int.from_bytes(obj[18:20], "little") == 183  # EM_AARCH64
    assert arts.header_path.exists() and not (tmp_path / "arm.so").exists()
    assert arts.metadata["triple"] == "aarch64-linux-gnu"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"triple": "nonsense-cpu-none"}, "unsupported triple"),
        ({"target": "pentium9"}, "unknown target 'pentium9'"),
        ({"target": "x86-64-v3", "triple": "aarch64-linux-gnu"}, "x86-64 CPU level"),
    ],
)
def test_unsupported_targets(tmp_path, kwargs, message):
    with pytest.raises(CodegenError, match=message):
        compile_graph(small_graph(), tmp_path / "t", **kwargs)


def test_op_without_a_kernel_names_the_op(tmp_path):
    g = Graph("noker")
    x = g.add_input("x", tensor([1, 4]))
    w = g.const(
        "w",
        {"data": np.ones((3, 4), np.int8), "scale": np.ones(3, np.float32)},
        TensorType((3, 4), dtypes.i8, Quant(axis=0)),
    )
    g.set_outputs([g.add("linear", [x, w], result="fc")])
    with pytest.raises(
        CodegenError,
        match=r"no native kernel for op 'linear' \(%fc\) with operands "
        r"\(f32, i8#quant\)",
    ):
        compile_graph(g, tmp_path / "noker")


def test_unsupported_dtype_is_a_clear_error(tmp_path):
    g = Graph("half")
    x = g.add_input("x", tensor([4], "f16"))
    g.set_outputs([g.add("relu", [x])])
    with pytest.raises(CodegenError, match="f16"):
        compile_graph(g, tmp_path / "half")


def test_pipeline_is_recorded_and_llvm_ir_can_be_kept(tmp_path):
    lib = compile_graph(small_graph(), tmp_path / "p", pipeline="fold,quant8", emit_llvm=True)
    ir_text = (tmp_path / "p.ll").read_text()
    assert "@mcir_p_run(" in ir_text and "bytes of weights elided" in ir_text
    assert lib.metadata["pipeline"] == "fold,quant8"
    assert os.path.getsize(lib.path) == lib.file_size
