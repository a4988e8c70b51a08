"""Whole models, native against the interpreter: MLP, small CNN, Transformer encoder
(the benchmark architectures, random weights), plus a memory-plan check on each
(tolerance: see helpers.RTOL)."""

from __future__ import annotations

import time

import pytest

from mcir.ir import Graph, Value
from mcir.types import tensor

from .helpers import build, check_native, randn


def _lin(g: Graph, rng, x: Value, n: int, name: str) -> Value:
    k = x.type.shape[-1]
    return g.add(
        "linear",
        [x, g.const(f"{name}.w", randn(rng, n, k, scale=k**-0.5)), g.const(f"{name}.b", randn(rng, n, scale=0.1))],
    )


def mlp(rng, batch: int) -> Graph:
    g = Graph("mlp")
    x = g.add_input("x", tensor([batch, 784]))
    h = g.add("relu", [_lin(g, rng, x, 1024, "fc1")])
    h = g.add("relu", [_lin(g, rng, h, 1024, "fc2")])
    g.set_outputs([_lin(g, rng, h, 10, "fc3")])
    return g


def cnn(rng, batch: int) -> Graph:
    g = Graph("cnn")
    x = g.add_input("x", tensor([batch, 3, 32, 32]))
    for i, (cin, cout) in enumerate(((3, 32), (32, 64), (64, 128))):
        w = g.const(f"conv{i}.w", randn(rng, cout, cin, 3, 3, scale=(cin * 9) ** -0.5))
        x = g.add(
            "relu", [g.add("conv2d", [x, w, g.const(f"conv{i}.b", randn(rng, cout, scale=0.1))], {"padding": [1, 1]})]
        )
        x = g.add("max_pool2d", [x], {"kernel": [2, 2], "stride": [2, 2]})
    x = g.add("reshape", [x], {"shape": [batch, 128 * 16]})
    g.set_outputs([_lin(g, rng, x, 10, "fc")])
    return g


def encoder(rng, batch: int, seq: int, hidden: int, heads: int, ffn: int, layers: int) -> Graph:
    """nn.TransformerEncoder (post-norm, ReLU, batch_first) written out in mcir ops."""
    g = Graph("encoder")
    x = g.add_input("x", tensor([batch, seq, hidden]))
    d = hidden // heads
    for i in range(layers):
        qkv = _lin(g, rng, x, 3 * hidden, f"l{i}.in_proj")
        parts = []
        for j in range(3):
            p = g.add("slice", [qkv], {"axis": 2, "start": j * hidden, "end": (j + 1) * hidden})
            parts.append(
                g.add("permute", [g.add("reshape", [p], {"shape": [batch, seq, heads, d]})], {"dims": [0, 2, 1, 3]})
            )
        a = g.add("scaled_dot_product_attention", parts)
        a = g.add("reshape", [g.add("permute", [a], {"dims": [0, 2, 1, 3]})], {"shape": [batch, seq, hidden]})
        a = _lin(g, rng, a, hidden, f"l{i}.out_proj")

        def norm(v: Value, name: str) -> Value:
            return g.add(
                "layer_norm",
                [
                    v,
                    g.const(f"{name}.w", 1 + randn(rng, hidden, scale=0.1)),
                    g.const(f"{name}.b", randn(rng, hidden, scale=0.1)),
                ],
            )

        x = norm(g.add("add", [x, a]), f"l{i}.norm1")
        f = _lin(g, rng, g.add("relu", [_lin(g, rng, x, ffn, f"l{i}.ff1")]), hidden, f"l{i}.ff2")
        x = norm(g.add("add", [x, f]), f"l{i}.norm2")
    g.set_outputs([x])
    return g


@pytest.mark.parametrize("batch", [1, 5])
def test_mlp(tmp_path, rng, batch):
    check_native(mlp(rng, batch), tmp_path, randn(rng, batch, 784))


@pytest.mark.parametrize("batch", [1, 3])
def test_cnn(tmp_path, rng, batch):
    g = cnn(rng, batch)
    check_native(g, tmp_path, randn(rng, batch, 3, 32, 32))


def test_small_encoder(tmp_path, rng):
    g = encoder(rng, batch=2, seq=16, hidden=64, heads=4, ffn=128, layers=2)
    check_native(g, tmp_path, randn(rng, 2, 16, 64))


@pytest.mark.slow
def test_benchmark_encoder_compiles_within_10s_and_matches(tmp_path, rng):
    g = encoder(rng, batch=1, seq=128, hidden=256, heads=4, ffn=1024, layers=4)
    start = time.perf_counter()
    lib = build(g, tmp_path)
    assert time.perf_counter() - start < 10.0
    from mcir.interp import interpret

    from .helpers import assert_close

    xs = randn(rng, 1, 128, 256)
    assert_close(lib(xs)[0], interpret(g, xs)[0])


def test_workspace_is_reused_and_views_do_not_copy(rng):
    from mcir.codegen.lowering import build_steps
    from mcir.codegen.memory_plan import align_up, plan
    from mcir.codegen.target import resolve

    g = cnn(rng, 1)
    steps = [s for s, _ in build_steps(g, resolve("native"))]
    mp = plan(g, steps)
    buffers = [s.result for s in steps if mp.of(s.result).kind == "workspace"]
    unshared = sum(align_up(v.type.nbytes) for v in buffers) + sum(align_up(s.scratch_bytes) for s in steps)
    assert mp.workspace_size < 0.6 * unshared  # buffers with disjoint live ranges share bytes
    # no two simultaneously live buffers overlap
    spans = {id(v): (mp.of(v).index, mp.of(v).index + v.type.nbytes) for v in buffers}
    for i in range(len(steps)):
        live = [
            v for v in buffers if v in [st.result for st in steps[: i + 1]] and any(v in t.reads for t in steps[i:])
        ]
        for a in live:
            for b in live:
                if a is not b:
                    assert spans[id(a)][1] <= spans[id(b)][0] or spans[id(b)][1] <= spans[id(a)][0]
    # the reshape before the classifier is a view: it shares its operand's bytes, no kernel runs for it
    r = next(op for op in g.compute_ops() if op.name == "reshape")
    assert mp.of(r.result) == mp.of(r.operands[0])
    assert all(s.op is not r for s in steps)


def test_offset_views_of_inputs_constants_and_intermediates(tmp_path, rng):
    """select/slice of leading blocks and permutes of size-1 axes are views at byte offsets."""
    from mcir.codegen.lowering import build_steps
    from mcir.codegen.target import resolve

    g = Graph("views")
    x = g.add_input("x", tensor([1, 3, 4, 8]))
    c = g.const("c", randn(rng, 3, 5, 8))
    h = g.add("relu", [x])
    parts = [g.add("select", [h], {"axis": 1, "index": i}) for i in range(3)]  # [1,4,8] blocks of h
    wq = g.add("select", [c], {"axis": 0, "index": 2})  # a constant weight [5,8] inside c
    y = g.add("linear", [parts[1], wq])
    t = g.add("permute", [g.add("slice", [x], {"axis": 1, "start": 1, "end": 3})], {"dims": [1, 0, 2, 3]})
    g.set_outputs([y, parts[2], t, g.add("add", [parts[0], parts[2]]), g.add("select", [c], {"axis": 0, "index": 1})])
    steps = [s for s, _ in build_steps(g, resolve("native"))]
    assert {s.op.name for s in steps} == {"relu", "linear", "add"}  # no kernel for any view
    check_native(g, tmp_path, randn(rng, 1, 3, 4, 8))
