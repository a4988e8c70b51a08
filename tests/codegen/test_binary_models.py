"""Whole binarised / ternarised models compiled natively against the interpreter; the
packed weight bytes in the library; every x86-64 level; clear errors for what has no
kernel (tolerance: helpers.RTOL — the float layers around the bit-packed ones follow
the fp32 contract, and the binary activations see the same signs on these inputs)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import mcir
from mcir import dtypes
from mcir.codegen.lowering import lower
from mcir.codegen.target import host_supports, resolve
from mcir.encodings import Binary
from mcir.errors import CodegenError
from mcir.ir import Graph
from mcir.types import TensorType, tensor
from tests import models

from .helpers import build, check_native, randn
from .test_binary import binarize_input, packed_weight

PIPELINES = [
    "binarize",
    "binarize(activations=binary)",
    "binarize(activations=binary, skip=none)",
    "binarize(activations=binary, center=false)",
    "ternarize",
    "ternarize(skip=none)",
]


def compressed(name: str, pipeline: str) -> tuple[Graph, tuple[np.ndarray, ...]]:
    model, inputs = models.build(name)
    xs = tuple(t.numpy() for t in inputs)
    g = mcir.trace(model, inputs)
    return mcir.run_passes(g, pipeline, calibration=[xs]), xs


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_compressed_models_match_the_interpreter(tmp_path, name, pipeline):
    g, xs = compressed(name, pipeline)
    assert any(v.type.encoding is not None for v in g.values())
    check_native(g, tmp_path, *xs)


def test_digits_mlp_binary_activations(tmp_path):
    from examples.digits.model import load_data, make_model

    _, _, x_test, _ = load_data()
    x = x_test[:16]
    g = mcir.trace(make_model(), (torch.from_numpy(x),))
    g = mcir.run_passes(g, "binarize(activations=binary, skip=none)", calibration=[(x,)])
    check_native(g, tmp_path, x)


# -- bytes in the library --------------------------------------------------------------------


def global_bytes(ir_text: str) -> dict[str, int]:
    """Size of each weight global of a lowered module, by constant name."""
    found = re.findall(r'^@"w\.([^"]+)" = internal constant \[(\d+) x i8\]', ir_text, flags=re.M)
    return {name: int(size) for name, size in found}


def test_binarised_layers_take_under_a_thirtieth_of_their_fp32_bytes():
    """The benchmark MLP 784-1024-1024-10, every layer binarised: each packed weight (bits and
    α, as embedded in the library) is <= 1/30 of the same weight in f32."""
    model, inputs = models.build("mlp", benchmark=True)
    g = mcir.run_passes(mcir.trace(model, inputs), "binarize(activations=binary, skip=none)")
    low = lower(g, resolve("native"), "mlp")
    sizes = global_bytes(low.ir_text)
    packed = [op for op in g.compute_ops() if op.name == "linear"]
    assert len(packed) == 3
    for op in packed:
        w = op.operands[1]
        assert w.type.dtype == dtypes.b1
        n, k = w.type.shape
        assert sizes[w.name] * 30 <= 4 * n * k, f"{w.name}: {sizes[w.name]} bytes for {n}x{k}"


def test_library_file_shrinks_with_binary_weights(tmp_path):
    model, inputs = models.build("mlp", benchmark=True)
    g = mcir.trace(model, inputs)
    fp32 = build(g, tmp_path)
    b1 = build(mcir.run_passes(g, "binarize(activations=binary, skip=none)"), tmp_path)
    fp32_bytes, b1_bytes = fp32.path.stat().st_size, b1.path.stat().st_size
    assert b1_bytes * 20 < fp32_bytes, (b1_bytes, fp32_bytes)  # code and tables make up the rest


# -- targets ------------------------------------------------------------------------------------

LEVELS = [t for t in ("x86-64-v2", "x86-64-v3", "x86-64-v4") if host_supports(resolve(t))]


def mixed_graph(rng) -> Graph:
    """XNOR conv, decoded conv, XNOR linear and sign-select linear in one graph."""
    g = Graph("mixed")
    x = g.add_input("x", tensor([2, 6, 7, 7]))
    y = g.add(
        "conv2d", [binarize_input(g, x), packed_weight(g, rng, (20, 6, 3, 3), "binary", name="c1")], {"padding": [1, 1]}
    )
    y = g.add(
        "relu", [g.add("conv2d", [y, packed_weight(g, rng, (9, 20, 3, 3), "ternary", name="c2")], {"stride": [2, 2]})]
    )
    y = g.add("reshape", [y], {"shape": [2, 81]})
    y = g.add("linear", [binarize_input(g, y), packed_weight(g, rng, (70, 81), "ternary", name="l1")])
    g.set_outputs([g.add("linear", [y, packed_weight(g, rng, (10, 70), "binary", name="l2")])])
    return g


@pytest.mark.parametrize("level", LEVELS)
def test_every_x86_level_computes_the_same(tmp_path, rng, level):
    g = mixed_graph(rng)
    x = randn(rng, 2, 6, 7, 7)
    check_native(g, tmp_path, x, target=level)


def test_popcount_instruction_follows_the_target(rng):
    """vpopcntq where the CPU has AVX512-VPOPCNTDQ, LLVM's portable popcount (pshufb nibble table) else."""
    g = Graph("pc")
    x = g.add_input("x", tensor([1, 256]))
    g.set_outputs([g.add("linear", [binarize_input(g, x), packed_weight(g, rng, (64, 256), "binary")])])

    def asm(target: str) -> str:
        tgt = resolve(target)
        return tgt.machine().emit_assembly(lower(g, tgt, "pc").module)

    native = resolve("native")
    if native.has("avx512vpopcntdq"):
        assert "vpopcntq" in asm("native")
    v3 = asm("x86-64-v3")
    assert "vpopcnt" not in v3 and "vpshufb" in v3


# -- what has no kernel -------------------------------------------------------------------------


def test_binary_activations_with_float_weights_have_no_kernel(tmp_path, rng):
    g = Graph("nok")
    x = g.add_input("x", tensor([1, 32]))
    g.set_outputs([g.add("linear", [binarize_input(g, x), g.const("w", randn(rng, 4, 32))], result="fc")])
    with pytest.raises(
        CodegenError, match=r"no native kernel for op 'linear' \(%fc\) with operands \(b1#binary, f32\)"
    ):
        build(g, tmp_path)


def test_binary_activations_into_a_float_conv_have_no_kernel(tmp_path, rng):
    g = Graph("nok")
    x = g.add_input("x", tensor([1, 3, 5, 5]))
    w = g.const("w", randn(rng, 4, 3, 3, 3))
    g.set_outputs([g.add("conv2d", [binarize_input(g, x), w], result="conv")])
    with pytest.raises(CodegenError, match=r"op 'conv2d' \(%conv\) with operands \(b1#binary, f32\)"):
        build(g, tmp_path)


def test_binary_weights_computed_at_run_time_are_refused(tmp_path):
    g = Graph("nok")
    x = g.add_input("x", tensor([1, 32]))
    w = g.add_input("w", tensor([4, 32]))
    wq = g.add("quantize", [w], type=TensorType((4, 32), dtypes.b1, Binary(0)))
    g.set_outputs([g.add("linear", [x, wq])])
    with pytest.raises(CodegenError, match="must be a compile-time constant"):
        build(g, tmp_path)


def test_views_that_regroup_binary_scales_are_refused(tmp_path):
    g = Graph("nok")
    x = g.add_input("x", tensor([2, 64]))
    q = binarize_input(g, x)
    r = g.add("reshape", [q], {"shape": [4, 32]}, type=TensorType((4, 32), dtypes.b1, Binary(0)))
    g.set_outputs([g.add("dequantize", [r], type=tensor([4, 32]))])
    with pytest.raises(CodegenError, match="regroups its per-slice scales"):
        build(g, tmp_path)


def test_a_binary_graph_output_is_a_clear_error(tmp_path):
    g = Graph("out")
    x = g.add_input("x", tensor([2, 70]))
    g.set_outputs([binarize_input(g, x)])
    with pytest.raises(CodegenError, match=r"graph output %\S+ has type b1\[2,70\] #binary<axis=0>.*dequantize it"):
        build(g, tmp_path)


def test_cross_compiles_to_aarch64_with_neon_popcount(rng):
    """The popcount kernels are target independent: on aarch64 llvm.ctpop becomes NEON cnt + uaddlp."""
    target = resolve("native", "aarch64-linux-gnu")
    asm = target.machine().emit_assembly(lower(mixed_graph(rng), target, "arm").module)
    assert "cnt\tv" in asm and "uaddlp" in asm


def test_rank_one_binary_input_is_refused(tmp_path, rng):
    """b1[K] #binary<axis=0> has a β per element: not an XNOR product (and lossless anyway)."""
    g = Graph("r1")
    x = g.add_input("x", tensor([32]))
    g.set_outputs([g.add("linear", [binarize_input(g, x), packed_weight(g, rng, (4, 32), "binary")])])
    with pytest.raises(CodegenError, match="one scale per element"):
        build(g, tmp_path)
