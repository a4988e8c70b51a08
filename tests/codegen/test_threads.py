"""Multi-core execution through the host's parallel hook (docs/abi.md, ``mcir_NAME_set_parallel``).

Specification: a library runs single-threaded until a hook is installed; with mcir's native pool
and 1, 2 or 3 threads, every output is bit-identical (each C element is computed by one task with
the same instructions whatever the split), and equal to the interpreter within the usual tolerance.
Shapes are chosen above ``MIN_PARALLEL_MACS`` so the split really happens, with ragged column
panels (N not a multiple of the panel width) and ragged row tiles.
"""

from __future__ import annotations

import ctypes
import math
import re
import threading

import numpy as np
import pytest

from mcir.codegen.parallel import MIN_PARALLEL_MACS, MIN_TASK_MACS, TASKS_PER_THREAD
from mcir.errors import RuntimeCallError
from mcir.interp import interpret
from mcir.ir import Graph
from mcir.runtime import Library
from mcir.types import tensor

from .helpers import assert_close, build, randn
from .test_gemm_conv import linear_graph
from .test_int8_gemm import qlinear

THREADS = (1, 2, 3)


def outputs_for_each_thread_count(lib: Library, *inputs: np.ndarray) -> list[list[np.ndarray]]:
    results = []
    for n in THREADS:
        lib.set_threads(n)
        assert lib.threads == n
        results.append(lib(*inputs))
    lib.set_threads(1)
    return results


def assert_threads_identical_and_close(results: list, ref: np.ndarray, integer: bool) -> None:
    """Every thread count's first output equals the 1-thread one bit for bit, and that one is within
    1 LSB (integer results) or 1e-5 relative (f32) of the interpreter."""
    for res in results[1:]:
        np.testing.assert_array_equal(res[0], results[0][0])
    if integer:
        assert np.abs(results[0][0].astype(np.int32) - ref.astype(np.int32)).max() <= 1
    else:
        assert_close(results[0][0], ref, rtol=1e-5)


@pytest.mark.parametrize(("m", "n", "k"), [(7, 300, 520), (32, 1000, 97), (1, 4100, 300)])
def test_f32_linear_is_bit_identical_for_1_2_3_threads(tmp_path, rng, m, n, k):
    assert m * n * k >= MIN_PARALLEL_MACS
    g = linear_graph(rng, (m,), n, k, act="relu")
    x = randn(rng, m, k)
    lib = build(g, tmp_path)
    ref = interpret(g, x)[0]
    results = outputs_for_each_thread_count(lib, x)
    for out in results[1:]:
        np.testing.assert_array_equal(out[0], results[0][0])
    assert_close(results[0][0], ref)


@pytest.mark.parametrize("out", ["u8", "f32"])
def test_int8_linear_is_bit_identical_for_1_2_3_threads(tmp_path, rng, out):
    m, n, k = 33, 700, 130  # 700 = 10 panels of 64 + 60: a partial last panel; 33 rows: a ragged row tile
    g, xs = qlinear(rng, (m,), n, k, out=out)
    lib = build(g, tmp_path)
    results = outputs_for_each_thread_count(lib, xs)
    for res in results[1:]:
        np.testing.assert_array_equal(res[0], results[0][0])
    ref = interpret(g, xs)[0]
    if out == "u8":  # the int8 contract: within 1 LSB of the interpreter
        assert np.abs(results[0][0].astype(np.int32) - ref.astype(np.int32)).max() <= 1
    else:
        assert_close(results[0][0], ref, rtol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_f32_conv2d_is_bit_identical_for_1_2_3_threads(tmp_path, rng, groups):
    """im2col per image on the calling thread, then the image's GEMM split by pixel panels (400 pixels:
    a partial last panel)."""
    g = Graph("convt")
    x = g.add_input("x", tensor([2, 32, 20, 20]))
    w = g.const("w", randn(rng, 48, 32 // groups, 3, 3, scale=0.1))
    conv = g.add("conv2d", [x, w, g.const("b", randn(rng, 48))], {"padding": [1, 1], "groups": groups})
    g.set_outputs([g.add("relu", [conv])])
    assert 400 * (48 // groups) * (32 // groups) * 9 >= MIN_PARALLEL_MACS
    xs = randn(rng, 2, 32, 20, 20)
    lib = build(g, tmp_path)
    results = outputs_for_each_thread_count(lib, xs)
    for out in results[1:]:
        np.testing.assert_array_equal(out[0], results[0][0])
    assert_close(results[0][0], interpret(g, xs)[0])


def test_library_threads_argument_and_switching_off(tmp_path, rng):
    g = linear_graph(rng, (16,), 512, 256)
    path = build(g, tmp_path).path
    lib = Library(path, threads=2)
    assert lib.threads == 2
    x = randn(rng, 16, 256)
    two = lib(x)[0]
    lib.set_threads(1)
    np.testing.assert_array_equal(lib(x)[0], two)
    with pytest.raises(RuntimeCallError, match="positive integer"):
        lib.set_threads(0)


def test_concurrent_callers_share_one_pool(tmp_path, rng):
    """Two Python threads calling one 2-thread library at once: the pool serialises its
    parallel-fors, every result is still exact."""
    g = linear_graph(rng, (8,), 600, 300)
    lib = build(g, tmp_path)
    lib.set_threads(2)
    xs = [randn(rng, 8, 300) for _ in range(4)]
    expected = [lib(x)[0] for x in xs]
    errors: list[str] = []

    def worker(i: int) -> None:
        for _ in range(20):
            if not np.array_equal(lib(xs[i])[0], expected[i]):
                errors.append(f"caller {i} got a different result")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_hook_is_called_with_the_documented_signature(tmp_path, rng):
    """A host hook written against docs/abi.md (here in Python via ctypes, to observe it): it gets
    its own ctx back, ``min(TASKS_PER_THREAD * n_threads, panels, MACs / MIN_TASK_MACS)`` tasks
    (here the work bounds it: 4 x 1000 x 300 MACs), and must run every task. At the end of the run it
    gets one end-of-run notice: a parallel-for of 0 tasks (with a NULL body)."""
    g = linear_graph(rng, (4,), 1000, 300, bias=False, act=None)
    lib = build(g, tmp_path)
    task_fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
    seen: list[tuple[int, int]] = []

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    def hook(ctx, body, body_ctx, n_tasks):
        seen.append((ctx, n_tasks))
        if n_tasks == 0:
            assert body is None  # the end-of-run notice: nothing to run
            return
        run = task_fn(body)
        for t in reversed(range(n_tasks)):  # any order is allowed
            run(body_ctx, t)

    set_parallel = getattr(lib._dll, f"mcir_{lib.name}_set_parallel")
    set_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32]
    x = randn(rng, 4, 300)
    single = lib(x)[0]
    set_parallel(ctypes.cast(hook, ctypes.c_void_p), 1234, 3)
    np.testing.assert_array_equal(lib(x)[0], single)
    panels = math.ceil(1000 / 16)
    assert seen == [(1234, min(TASKS_PER_THREAD * 3, panels, 4 * 1000 * 300 // MIN_TASK_MACS)), (1234, 0)]
    assert seen[0][1] == 4
    set_parallel(None, None, 0)  # NULL turns it off
    lib(x)
    assert len(seen) == 2


def test_small_kernels_never_consult_the_hook(tmp_path, rng):
    """Below MIN_PARALLEL_MACS the work is emitted inline: no task function in the module."""
    from mcir.codegen.lowering import lower
    from mcir.codegen.target import resolve

    small = lower(linear_graph(rng, (2,), 64, 64), resolve("native"), "small")
    large = lower(linear_graph(rng, (16,), 512, 256), resolve("native"), "large")
    assert not re.search(r"\.task", small.ir_text)

    # the end-of-run notice goes only to a library that splits something
    def run_body(lib, name):
        return re.search(rf'define i32 @"?mcir_{name}_run"?\(.*?\n}}\n', lib.ir_text, re.S).group(0)

    assert "mcir.parallel.fn" not in run_body(small, "small")
    assert "mcir.parallel.fn" in run_body(large, "large")
    assert re.search(r"define internal void @\"?linear16x512x256\.task", large.ir_text)
    assert "mcir_small_set_parallel" in small.ir_text


_TWO_LIBRARIES = """
import gc, sys
import numpy as np
from mcir.runtime import Library
path, x = sys.argv[1], np.load(sys.argv[2])
first = Library(path, threads=2)
want = first(x)[0]
second = Library(path, threads=3)  # the same unchanged file: the same loaded object and hook globals
assert np.array_equal(second(x)[0], want)
del second
gc.collect()  # the second Library is gone; the pool installed through it must still be alive
assert np.array_equal(first(x)[0], want)
first.set_threads(1)
assert np.array_equal(first(x)[0], want)
print("ok")
"""


def test_two_libraries_on_one_file_share_the_hook_safely(tmp_path, rng):
    """Regression: a second threaded Library on the same file, dropped, left the first one calling a
    freed pool (it hung). A subprocess with a timeout, so a regression fails instead of hanging the suite."""
    import subprocess
    import sys

    m, n, k = 32, 1000, 97
    g = linear_graph(rng, (m,), n, k, act="relu")
    x = randn(rng, m, k)
    lib = build(g, tmp_path)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run(
        [sys.executable, "-c", _TWO_LIBRARIES, str(lib.path), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize(("mask", "causal"), [(None, True), ("bool", False), ("f32", False)])
def test_attention_heads_are_bit_identical_for_1_2_3_threads(tmp_path, rng, mask, causal):
    """Attention splits its (batch, head) indices (6 here: tasks get unequal counts with 4 or 12
    tasks), each task in its own scratch copy; a broadcast mask is read by every task."""
    from mcir.codegen.kernels.attention import SLOTS, sdpa_macs
    from mcir.codegen.lowering import lower
    from mcir.codegen.target import resolve

    g = Graph("attn")
    shapes = ((2, 3, 64, 32), (2, 3, 80, 32), (2, 3, 80, 40))
    ins = [g.add_input(n, tensor(s)) for n, s in zip("qkv", shapes)]
    data = [randn(rng, *s) for s in shapes]
    if mask is not None:
        ins.append(g.add_input("mask", tensor([2, 1, 64, 80], mask)))
        data.append(rng.random((2, 1, 64, 80)) > 0.3 if mask == "bool" else randn(rng, 2, 1, 64, 80))
    op = g.add("scaled_dot_product_attention", ins, {"is_causal": causal})
    g.set_outputs([op])
    assert sdpa_macs(g.ops[-1]) >= MIN_PARALLEL_MACS and SLOTS >= 2
    assert "attention.task" in lower(g, resolve("native"), "attn").ir_text  # it really splits
    lib = build(g, tmp_path)
    results = outputs_for_each_thread_count(lib, *data)
    for out in results[1:]:
        np.testing.assert_array_equal(out[0], results[0][0])
    assert_close(results[0][0], interpret(g, *data)[0])


@pytest.mark.parametrize(("mask", "y_kind"), [("none", "u8"), ("padding", "u8"), ("causal", "f32")])
def test_int8_attention_heads_are_bit_identical_for_1_2_3_threads(tmp_path, rng, mask, y_kind):
    """The int8 attention splits its (batch, head) indices like the f32 one (6 heads: unequal counts per
    task with 4 or 12 tasks), each task decoding, packing and scoring in its own scratch copy; the
    broadcast padding mask is read by every task. Within 1 LSB (u8) / 1e-5 (f32) of the interpreter."""
    from mcir.codegen.kernels.attention import sdpa_macs
    from mcir.codegen.lowering import lower
    from mcir.codegen.target import resolve

    from .test_int8_transformer import _attention

    g, inputs = _attention(rng, 64, 80, 32, mask, y_kind=y_kind, heads=6)
    assert sdpa_macs(g.ops[-1]) >= MIN_PARALLEL_MACS
    assert "attention_q.task" in lower(g, resolve("native"), "qsdpa").ir_text  # it really splits
    lib = build(g, tmp_path)
    assert_threads_identical_and_close(
        outputs_for_each_thread_count(lib, *inputs), interpret(g, *inputs)[0], y_kind == "u8"
    )


@pytest.mark.parametrize(
    ("n", "c", "o", "hw", "groups", "padding", "target"),
    [
        (3, 16, 40, (20, 18), 1, (1, 1), "native"),  # images split: 3 images over 4/8/12 tasks, padded copies
        (1, 16, 40, (30, 26), 1, (1, 0), "native"),  # one image: its GEMM split by pixel panels (780: ragged)
        (3, 16, 40, (20, 18), 1, (1, 1), "x86-64-v3"),  # int16 path: weights widened once, read by every task
        (3, 32, 32, (40, 40), 32, (1, 1), "native"),  # depthwise, images split
        (1, 32, 64, (40, 40), 16, (0, 1), "native"),  # grouped, one image: output channels split
    ],
)
def test_int8_conv2d_is_bit_identical_for_1_2_3_threads(tmp_path, rng, n, c, o, hw, groups, padding, target):
    from mcir.codegen.kernels.conv_i8 import _Geom, _macs
    from mcir.codegen.lowering import lower
    from mcir.codegen.target import resolve

    from .test_int8_conv import qconv
    from .test_int8_gemm import host_supports

    if not host_supports(resolve(target)):
        pytest.skip(f"this CPU cannot run {target}")
    g, xs = qconv(rng, n, c, o, hw, (3, 3), padding=padding, groups=groups)
    conv = next(op for op in g.ops if op.name == "conv2d")
    assert _macs(_Geom(conv, resolve(target))) >= MIN_PARALLEL_MACS
    assert re.search(r"conv_i8\w*\.task", lower(g, resolve(target), "c").ir_text)  # it really splits
    lib = build(g, tmp_path, target=target)
    results = outputs_for_each_thread_count(lib, xs)
    for out in results[1:]:
        np.testing.assert_array_equal(out[0], results[0][0])
    ref = interpret(g, xs)[0]
    assert np.abs(results[0][0].astype(np.int32) - ref.astype(np.int32)).max() <= 1


def test_elementwise_copies_and_layer_norm_are_bit_identical_for_1_2_3_threads(tmp_path, rng):
    """The memory-bound ops of an encoder block, each large enough to split (ELEMENT_WORK per element):
    a broadcast add, GELU, a head permute (a strided copy), layer_norm with a ragged row (d = 250 is
    not a multiple of the vector width), quantize and dequantize; odd outer sizes give ragged splits."""
    from mcir.codegen.lowering import lower
    from mcir.codegen.parallel import ELEMENT_WORK
    from mcir.codegen.target import resolve
    from mcir.encodings import Quant

    g = Graph("ew")
    x = g.add_input("x", tensor([3, 129, 250]))
    assert 3 * 129 * 250 * ELEMENT_WORK >= MIN_PARALLEL_MACS
    y = g.add("add", [x, g.const("b", randn(rng, 250))])
    y = g.add("gelu", [y])
    y = g.add(
        "layer_norm", [y, g.const("w", randn(rng, 250)), g.const("lb", randn(rng, 250))], {"dims": 1, "eps": 1e-5}
    )
    p = g.add("permute", [g.add("reshape", [y], {"shape": [3, 129, 10, 25]})], {"dims": [0, 2, 1, 3]})
    q = g.add("quantize", [p], type=tensor([3, 10, 129, 25], "u8", Quant(0.02, 128)))
    g.set_outputs([p, g.add("dequantize", [q])])
    ir_text = lower(g, resolve("native"), "ew").ir_text
    for name in ("add_elementwise", "gelu_elementwise", "layer_norm", "copy", "quantize_elementwise"):
        assert re.search(rf"{name}\w*\.task", ir_text), name  # each of them really splits
    xs = randn(rng, 3, 129, 250)
    lib = build(g, tmp_path)
    results = outputs_for_each_thread_count(lib, xs)
    for out in results[1:]:
        for got, want in zip(out, results[0]):
            np.testing.assert_array_equal(got, want)
    ref = interpret(g, xs)
    assert_close(results[0][0], ref[0], rtol=1e-4)


@pytest.mark.parametrize(
    ("sa", "sb", "out"),
    [
        ((2, 3, 40, 100), (2, 3, 100, 50), "u8"),  # B per batch index: packed by each task in its own scratch
        ((6, 40, 100), (100, 50), "f32"),  # one B for the whole batch: packed once before the split
        ((2, 3, 40, 100), (3, 100, 50), "u8"),  # B broadcast over the leading axis
    ],
)
def test_int8_matmul_is_bit_identical_for_1_2_3_threads(tmp_path, rng, sa, sb, out):
    from mcir.codegen.lowering import lower
    from mcir.codegen.target import resolve

    from .test_int8_gemm import qmatmul

    g, xs = qmatmul(rng, sa, sb, za=120, zb=131, out=out)
    assert math.prod(sa) * sb[-1] >= MIN_PARALLEL_MACS
    assert "matmul_u8.task" in lower(g, resolve("native"), "mm").ir_text  # it really splits
    lib = build(g, tmp_path)
    assert_threads_identical_and_close(outputs_for_each_thread_count(lib, *xs), interpret(g, *xs)[0], out == "u8")


def test_pool_runs_every_task_exactly_once_across_many_parallel_fors():
    """The pool's generation-tagged claims: back-to-back parallel-fors with changing task counts (late
    workers from one must not claim or repeat tasks of the next), every task once per call."""
    from mcir.threadpool import ThreadPool

    pool = ThreadPool(3)
    task_fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
    parallel_for = ctypes.CFUNCTYPE(None, ctypes.c_void_p, task_fn, ctypes.c_void_p, ctypes.c_int64)(pool.parallel_for)
    counts: dict[tuple[int, int], int] = {}

    @task_fn
    def body(ctx, t):
        key = (ctx, t)
        counts[key] = counts.get(key, 0) + 1

    sizes = [(i * 7) % 13 + 1 for i in range(150)]
    for call, n in enumerate(sizes):
        parallel_for(ctypes.c_void_p(pool.handle), body, ctypes.c_void_p(call + 1), n)
    pool.close()
    expected = {(call + 1, t): 1 for call, n in enumerate(sizes) for t in range(n)}
    assert counts == expected


def test_small_elementwise_ops_stay_inline_and_nested_splits_are_inline():
    """An element-wise op under 64 Ki elements never consults the hook; a splitting helper used inside
    another kernel's task is emitted inline (a host's parallel-for need not be re-entrant)."""
    import llvmlite.ir as ir

    from mcir.codegen.emit import PTR, Emitter
    from mcir.codegen.lowering import lower
    from mcir.codegen.parallel import ELEMENT_WORK, parallel_for
    from mcir.codegen.target import resolve

    g = Graph("small_ew")
    x = g.add_input("x", tensor([100, 100]))
    g.set_outputs([g.add("relu", [g.add("add", [x, x])])])
    assert 100 * 100 * ELEMENT_WORK < MIN_PARALLEL_MACS
    assert ".task" not in lower(g, resolve("native"), "small_ew").ir_text

    module = ir.Module("nested")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), "kernel")
    em = Emitter(ir.IRBuilder(fn.append_basic_block("entry")), module)

    def inner(em, p, lo, hi):
        with em.loop(hi, start=lo) as i:
            em.store(ir.Constant(ir.IntType(8), 0), p[0], i)

    def outer(em, p, lo, hi):
        parallel_for(em, "inner", 1000, MIN_PARALLEL_MACS, p, inner)

    parallel_for(em, "outer", 1000, MIN_PARALLEL_MACS, [fn.args[0]], outer)
    em.b.ret_void()
    outer_body = str(module.get_global("outer.body"))  # the task's work (the task only loads and calls it)
    assert "inner" not in outer_body and "call" not in outer_body  # inside the task: inline, no hook call
    # (the kernel's own single-threaded branch may still split the inner loop: no hook is running there)


def test_pool_counters_account_for_every_task_and_parallel_for():
    """``ThreadPool.count()``/``stats()``: per thread the tasks run and time in them, one event per
    parallel-for that went to the pool (task count, tasks the workers took), nothing before counting."""
    from mcir.threadpool import ThreadPool

    pool = ThreadPool(2)
    task_fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
    parallel_for = ctypes.CFUNCTYPE(None, ctypes.c_void_p, task_fn, ctypes.c_void_p, ctypes.c_int64)(pool.parallel_for)

    @task_fn
    def body(ctx, t):
        pass

    with pytest.raises(RuntimeCallError, match="not counting"):
        pool.stats()
    parallel_for(ctypes.c_void_p(pool.handle), body, None, 5)  # before counting: not counted
    pool.count()
    sizes = [3, 1, 8, 2]  # a single task runs inline on the caller: no parallel-for event
    for n in sizes:
        parallel_for(ctypes.c_void_p(pool.handle), body, None, n)
    st = pool.stats()
    pool.close()
    assert len(st.tasks) == len(st.task_ns) == len(st.sleeps) == 2
    assert sum(st.tasks) == 3 + 8 + 2
    assert [e.n_tasks for e in st.events] == [3, 8, 2]
    assert all(0 <= e.worker_tasks <= e.n_tasks and e.start_ns <= e.end_ns for e in st.events)
    assert sum(e.worker_tasks for e in st.events) == st.tasks[1]
    assert st.sleeps[0] == 0  # the calling thread never sleeps in the pool


@pytest.mark.parametrize("notice", [True, False])
def test_idle_workers_go_to_sleep_after_a_bounded_spin(notice):
    """Workers spin for the next parallel-for (up to 1 ms within a run, ~50 us after the library's
    end-of-run notice, a parallel-for of 0 tasks) and then sleep: a pool never holds a core for long
    after the work stops. Polled for up to 2 s (a loaded machine may not schedule the worker at once)."""
    import time

    from mcir.threadpool import ThreadPool

    pool = ThreadPool(2)
    task_fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
    parallel_for = ctypes.CFUNCTYPE(None, ctypes.c_void_p, task_fn, ctypes.c_void_p, ctypes.c_int64)(pool.parallel_for)

    @task_fn
    def body(ctx, t):
        pass

    pool.count()
    parallel_for(ctypes.c_void_p(pool.handle), body, None, 4)
    if notice:
        parallel_for(ctypes.c_void_p(pool.handle), task_fn(), None, 0)  # runs nothing
    deadline = time.monotonic() + 2.0
    while pool.stats().sleeps[1] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    st = pool.stats()
    pool.close()
    assert st.sleeps[1] >= 1
    assert [e.n_tasks for e in st.events] == [4]  # the notice is no parallel-for


def _split_kernels_bit_identical(tmp_path, g: Graph, names: list[str], *inputs: np.ndarray, rtol: float = 1e-5) -> None:
    """Each kernel in ``names`` really splits (a task function in the IR); 1, 2 and 3 threads give the same
    bits for every output; the outputs match the interpreter within ``rtol``."""
    from mcir.codegen.lowering import lower
    from mcir.codegen.target import resolve

    ir_text = lower(g, resolve("native"), g.name).ir_text
    for name in names:
        assert re.search(rf'define internal void @"?{name}\.task', ir_text), name
    lib = build(g, tmp_path)
    results = outputs_for_each_thread_count(lib, *inputs)
    for out in results[1:]:
        for got, want in zip(out, results[0]):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(results[0], interpret(g, *inputs)):
        assert_close(got, want, rtol=rtol)


def test_f32_matmul_is_bit_identical_for_1_2_3_threads(tmp_path, rng):
    """f32 matmul: a plain product splits like linear (a run-time B packed first, 200 columns: a ragged
    last panel); batched with one B shared by the batch (packed once); batched with a B per index and
    a B broadcast over the leading axis (each task packs into its own scratch copy, 6 indices over
    4/8/12 tasks)."""
    g = Graph("mmt")
    x = g.add_input("x", tensor([64, 300]))
    y = g.add_input("y", tensor([300, 200]))
    a = g.add_input("a", tensor([2, 3, 40, 100]))
    bb = g.add_input("bb", tensor([2, 3, 100, 50]))
    bs = g.add_input("bs", tensor([100, 50]))
    bc = g.add_input("bc", tensor([3, 100, 50]))
    g.set_outputs(
        [
            g.add("matmul", [x, y]),
            g.add("matmul", [x, g.const("w", randn(rng, 300, 70))]),
            g.add("relu", [g.add("matmul", [a, bb])]),
            g.add("matmul", [a, bs]),
            g.add("matmul", [a, bc]),
        ]
    )
    shapes = [(64, 300), (300, 200), (2, 3, 40, 100), (2, 3, 100, 50), (100, 50), (3, 100, 50)]
    assert MIN_PARALLEL_MACS <= 6 * 40 * 100 * 50  # the smallest batched product splits
    _split_kernels_bit_identical(tmp_path, g, ["matmul64x200x300", "matmul_f32"], *[randn(rng, *s) for s in shapes])


def test_f32_softmax_is_bit_identical_for_1_2_3_threads(tmp_path, rng):
    """softmax / log_softmax over the last axis (rows split; 250 is not a multiple of the vector width)
    and over an outer axis (outer blocks split, running maxima and sums in a scratch copy per task)."""
    from mcir.codegen.kernels.norm import SOFTMAX_WORK

    g = Graph("smt")
    x = g.add_input("x", tensor([3, 129, 250]))
    z = g.add_input("z", tensor([7, 50, 300]))
    assert 3 * 129 * 250 * SOFTMAX_WORK >= MIN_PARALLEL_MACS and 7 * 50 * 300 * SOFTMAX_WORK >= MIN_PARALLEL_MACS
    g.set_outputs(
        [
            g.add("softmax", [x], {"axis": -1}),
            g.add("log_softmax", [x], {"axis": -1}),
            g.add("softmax", [z], {"axis": 1}),
            g.add("log_softmax", [z], {"axis": 1}),
        ]
    )
    _split_kernels_bit_identical(
        tmp_path, g, ["softmax", "log_softmax"], randn(rng, 3, 129, 250), randn(rng, 7, 50, 300)
    )


def test_f32_pooling_is_bit_identical_for_1_2_3_threads(tmp_path, rng):
    """Pooling splits (image, channel) planes: max with padding (masked taps), a 2x2 average whose
    windows lie inside (the vectorised row path) and an adaptive average (31 planes: ragged splits)."""
    g = Graph("poolt")
    x = g.add_input("x", tensor([1, 31, 64, 64]))
    g.set_outputs(
        [
            g.add("max_pool2d", [x], {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1]}),
            g.add("avg_pool2d", [x], {"kernel": [2, 2], "stride": [2, 2]}),
            g.add("adaptive_avg_pool2d", [x], {"output_size": [7, 7]}),
        ]
    )
    names = ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]
    _split_kernels_bit_identical(tmp_path, g, names, randn(rng, 1, 31, 64, 64))
