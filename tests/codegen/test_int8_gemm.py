"""INT8 linear (u8 activations x int8 weights) native against the interpreter.

Contract: u8/i8 results within 1 LSB of the interpreter (fixed-point requantisation
rounds half up, the interpreter rounds float values half to even); f32 results within
``F32_RTOL`` of the largest reference magnitude (the integer accumulation is exact,
the only error is one f32 rounding of ``acc * s_x * s_w`` and the reference's own).
Shapes, scales and zero points are drawn by hypothesis, on every dot instruction the
machine can run (VNNI, vpmaddwd at 256 and 128 bits, the portable path).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mcir
from mcir import dtypes
from mcir.codegen import kernels
from mcir.codegen.kernels import conv_i8, gemm_i8
from mcir.codegen.kernels.gemm_i8 import DotIsa, fixed_point
from mcir.codegen.lowering import lower
from mcir.codegen.target import Target, host_supports, resolve
from mcir.encodings import Quant
from mcir.errors import CodegenError
from mcir.ir import Graph
from mcir.types import TensorType, tensor

from .helpers import build

F32_RTOL = 1e-5
TARGETS = [t for t in ("native", "x86-64-v2", "x86-64-v3", "x86-64-v4") if host_supports(resolve(t))]


def check_int8(graph: Graph, tmp_path, *inputs: np.ndarray, floor: float = 1e-30, **kwargs) -> list[np.ndarray]:
    """Compile, run, compare every output with the interpreter under the contract above.

    ``floor`` is the smallest scale f32 errors are relative to: a fused GELU's approximation
    has an absolute error (2.9e-7 · |x| / 2), so outputs deep in its tail (~1e-7) need one."""
    mcir.verify(graph)
    lib = build(graph, tmp_path, **kwargs)
    native = lib(*inputs)
    refs = mcir.interpret(graph, *inputs)
    for v, got, ref in zip(graph.outputs, native, refs):
        ref = np.asarray(ref)
        assert got.dtype == ref.dtype and got.shape == ref.shape, f"%{v.name}"
        if ref.dtype.kind == "f":
            scale = max(float(np.abs(ref).max()), floor)
            err = float(np.abs(got.astype(np.float64) - ref).max()) / scale
            assert err <= F32_RTOL, f"%{v.name}: relative error {err:.3g} > {F32_RTOL}"
        else:
            diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
            assert diff.max() <= 1, f"%{v.name}: {int((diff > 1).sum())} values off by more than 1 LSB"
    return native


def affine(lo: float, hi: float, dtype: str = "u8") -> Quant:
    """Per-tensor quantisation covering [lo, hi] (the way calibration picks it)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = (0, 255) if dtype == "u8" else (-128, 127)
    scale = max(hi - lo, 1e-6) / (qmax - qmin)
    return Quant(scale=float(np.float32(scale)), zero_point=int(np.clip(round(qmin - lo / scale), qmin, qmax)))


def int8_weight(g: Graph, name: str, rng, shape: tuple[int, ...], per_axis: bool):
    """A symmetric int8 weight constant (per output channel or per tensor); returns (value, scales)."""
    q = rng.integers(-127, 128, shape).astype(np.int8)
    if per_axis:
        s = (rng.uniform(0.2, 2.0, shape[0]) / 127 / math.sqrt(np.prod(shape[1:]))).astype(np.float32)
        v = g.const(name, {"data": q, "scale": s}, TensorType(shape, dtypes.i8, Quant(axis=0)))
        return v, s
    s = float(np.float32(1.0 / 127 / math.sqrt(np.prod(shape[1:]))))
    v = g.const(name, q, TensorType(shape, dtypes.i8, Quant(scale=s, zero_point=0)))
    return v, np.full(shape[0], s, np.float32)


def int32_bias(g: Graph, name: str, rng, acc_scale: np.ndarray):
    """An int32 bias in the accumulator scale (as the quant8 pass stores it); returns (value, real)."""
    real = rng.normal(0, 0.3, acc_scale.shape[0])
    q = np.clip(np.rint(real / acc_scale), -(2**31), 2**31 - 1).astype(np.int32)
    t = TensorType(acc_scale.shape, dtypes.i32, Quant(axis=0))
    return g.const(name, {"data": q, "scale": acc_scale.astype(np.float32)}, t), q * acc_scale.astype(np.float64)


def qlinear(
    rng, lead: tuple[int, ...], n: int, k: int, *, per_axis=True, bias=True, out="u8", zx=128, sx=0.02, act=None
) -> tuple[Graph, np.ndarray]:
    """linear(u8 x, i8 w, i32 b) with an f32 or quantised result; returns (graph, a u8 input)."""
    g = Graph("qlin")
    xq = Quant(scale=float(np.float32(sx)), zero_point=zx)
    x = g.add_input("x", TensorType((*lead, k), dtypes.u8, xq))
    xs = rng.integers(0, 256, (*lead, k)).astype(np.uint8)
    w, sw = int8_weight(g, "w", rng, (n, k), per_axis)
    ops = [x, w]
    real = ((xs.astype(np.float64) - zx) * xq.scale) @ (w.producer.data["data"] if per_axis else w.producer.data).T
    real = real * sw.astype(np.float64)
    if bias:
        bv, b_real = int32_bias(g, "b", rng, (np.float64(xq.scale) * sw).astype(np.float32))
        ops.append(bv)
        real = real + b_real
    if out == "f32":
        y = g.add("linear", ops)
        if act:
            y = g.add(act, [y])
    else:
        y = g.add("linear", ops, type=TensorType((*lead, n), dtypes.by_name(out), affine(real.min(), real.max(), out)))
    g.set_outputs([y])
    return g, xs


# -- random shapes, scales and zero points (native target) ---------------------------------------------


@settings(max_examples=30)
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 150),
    k=st.integers(1, 300),
    per_axis=st.booleans(),
    bias=st.booleans(),
    out=st.sampled_from(["u8", "i8", "f32"]),
    zx=st.integers(0, 255),
    sx=st.floats(1e-3, 0.5),
    act=st.sampled_from([None, "relu", "gelu"]),
)
def test_linear_random(tmp_path_factory, m, n, k, per_axis, bias, out, zx, sx, act):
    rng = np.random.default_rng(m * 7919 + n * 31 + k)
    g, xs = qlinear(rng, (m,), n, k, per_axis=per_axis, bias=bias, out=out, zx=zx, sx=sx, act=act)
    check_int8(g, tmp_path_factory.mktemp("qlin"), xs, floor=1.0 if act == "gelu" else 1e-30)


# -- every dot instruction ----------------------------------------------------------------------


SHAPES = [((1,), 10, 7), ((1,), 1000, 784), ((3,), 70, 33), ((2, 17), 100, 130), ((32,), 48, 64), ((5,), 17, 1)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("lead", "n", "k"), SHAPES)
@pytest.mark.parametrize("out", ["u8", "f32"])
def test_linear_on_each_target(tmp_path, target, lead, n, k, out):
    rng = np.random.default_rng(n + k)
    g, xs = qlinear(rng, lead, n, k, out=out, zx=77)
    check_int8(g, tmp_path, xs, target=target)


def _portable(target, a_signed=False, b_signed=True):
    return DotIsa("generic", 8, 1)


@pytest.mark.parametrize(("lead", "n", "k"), SHAPES[:4])
def test_linear_portable_path_runs_here(tmp_path, monkeypatch, lead, n, k):
    """The path of non-x86 triples (plain int32 vector multiply-add), run on this machine."""
    monkeypatch.setattr(gemm_i8, "dot_isa", _portable)
    monkeypatch.setattr(conv_i8, "dot_isa", _portable)
    rng = np.random.default_rng(3)
    g, xs = qlinear(rng, lead, n, k, out="u8", zx=5)
    check_int8(g, tmp_path, xs)


def test_dot_instruction_choice():
    v4 = Target("v4", "x86_64-unknown-linux-gnu", "x86-64-v4", "+avx512f,+avx512bw,+avx512vl", native=False)
    vnni = Target("zen4", "x86_64-unknown-linux-gnu", "znver4", "+avx512f,+avx512bw,+avx512vnni,+avx512vl", False)
    avxvnni = Target("adl", "x86_64-unknown-linux-gnu", "alderlake", "+avx2,+avxvnni", native=False)
    arm = Target("arm", "aarch64-unknown-linux-gnu", "generic", "+neon", native=False)
    assert gemm_i8.dot_isa(vnni) == DotIsa("vnni", 16, 4)
    assert gemm_i8.dot_isa(avxvnni) == DotIsa("vnni", 8, 4)
    assert gemm_i8.dot_isa(v4) == DotIsa("madd", 16, 2)
    assert gemm_i8.dot_isa(vnni, a_signed=False, b_signed=False) == DotIsa("madd", 16, 2)  # u8 x u8: no VNNI
    assert gemm_i8.dot_isa(arm).kind == "generic"


@pytest.mark.parametrize(
    ("cpu", "features", "needle"),
    [
        ("alderlake", "+avx2,+fma,+avxvnni", r"\{vex\}\s+vpdpbusd\s[^\n]*%ymm"),
        ("znver4", "+avx2,+avx512f,+avx512bw,+avx512vl,+avx512vnni,+evex512", r"vpdpbusd\s[^\n]*%zmm"),
        ("x86-64-v4", "", r"vpmaddwd\s[^\n]*%zmm"),
        ("x86-64-v3", "", r"vpmaddwd\s[^\n]*%ymm"),
    ],
)
def test_dot_instructions_are_emitted(cpu, features, needle):
    """The kernels call the intended instruction (LLVM never finds vpdpbusd on its own)."""
    rng = np.random.default_rng(0)
    g, _ = qlinear(rng, (4,), 64, 256)
    host = resolve("native")
    if features:
        t = Target(cpu, host.triple, cpu, features, native=False)
    else:
        t = resolve(cpu)
    asm = t.machine().emit_assembly(lower(g, t, "dot").module)
    assert re.search(needle, asm)


def test_aarch64_object(tmp_path):
    rng = np.random.default_rng(0)
    g, _ = qlinear(rng, (2,), 20, 30)
    arts = build(g, tmp_path, triple="aarch64-linux-gnu")
    assert arts.object_path.stat().st_size > 0 and arts.library_path is None


@pytest.mark.parametrize(
    ("lead", "n", "k", "kwargs"),
    [
        ((1,), 1, 1, {"zx": 255}),  # the smallest product, zero point at the top of the range
        ((3,), 5, 5000, {"out": "i8", "zx": 0, "per_axis": False}),  # long K, per-tensor weights
        ((2, 3, 4), 33, 65, {"out": "f32", "zx": 1, "act": "gelu"}),  # rank-4 activations, fused GELU
    ],
)
def test_linear_edges(tmp_path, lead, n, k, kwargs):
    rng = np.random.default_rng(k)
    g, xs = qlinear(rng, lead, n, k, **kwargs)
    check_int8(g, tmp_path, xs)


# -- matmul of two quantised activations (quantize(attention=true)) ----------------------------------


def qmatmul(rng, sa: tuple[int, ...], sb: tuple[int, ...], *, za: int, zb: int, out: str) -> tuple[Graph, list]:
    g = Graph("qmm")
    qa, qb = Quant(scale=0.02, zero_point=za), Quant(scale=0.015, zero_point=zb)
    a = g.add_input("a", TensorType(sa, dtypes.u8, qa))
    b = g.add_input("b", TensorType(sb, dtypes.u8, qb))
    xs = [rng.integers(0, 256, sa).astype(np.uint8), rng.integers(0, 256, sb).astype(np.uint8)]
    real = np.matmul((xs[0].astype(np.float64) - za) * qa.scale, (xs[1].astype(np.float64) - zb) * qb.scale)
    if out == "f32":
        y = g.add("matmul", [a, b])
    else:
        y = g.add("matmul", [a, b], type=TensorType(real.shape, dtypes.u8, affine(real.min(), real.max())))
    g.set_outputs([y])
    return g, xs


@settings(max_examples=20)
@given(
    m=st.integers(1, 20),
    n=st.integers(1, 70),
    k=st.integers(1, 80),
    batch=st.sampled_from([((), ()), ((3,), (3,)), ((2, 3), (3,)), ((4,), ())]),
    za=st.integers(0, 255),
    zb=st.integers(0, 255),
    out=st.sampled_from(["u8", "f32"]),
)
def test_matmul_u8_random(tmp_path_factory, m, n, k, batch, za, zb, out):
    rng = np.random.default_rng(m * 101 + n * 7 + k)
    g, xs = qmatmul(rng, (*batch[0], m, k), (*batch[1], k, n), za=za, zb=zb, out=out)
    check_int8(g, tmp_path_factory.mktemp("qmm"), *xs)


@pytest.mark.parametrize(("sa", "sb"), [((7,), (7, 20)), ((3, 5, 7), (7,))])
def test_matmul_u8_with_vectors(tmp_path, sa, sb):
    rng = np.random.default_rng(1)
    g, xs = qmatmul(rng, sa, sb, za=0, zb=255, out="u8")
    check_int8(g, tmp_path, *xs)


@pytest.mark.parametrize("target", TARGETS)
def test_matmul_u8_on_each_target(tmp_path, target):
    rng = np.random.default_rng(0)
    g, xs = qmatmul(rng, (2, 4, 33, 64), (2, 4, 64, 33), za=17, zb=200, out="u8")
    check_int8(g, tmp_path, *xs, target=target)


# -- requantisation arithmetic -------------------------------------------------------------------------


@settings(max_examples=200)
@given(m=st.floats(1e-9, 1e6), acc=st.integers(-(2**31), 2**31 - 1))
def test_fixed_point_multiplier(m, acc):
    m0, shift = fixed_point(np.array([m]))
    approx = int(m0[0]) * 2.0 ** -int(shift[0])
    assert abs(approx - m) <= m * 2.0**-30 or (m0[0] == 0 and m < 2.0**-32)
    # the kernel's rounding: half up, exact in 64-bit integers
    y = (acc * int(m0[0]) + (1 << (int(shift[0]) - 1))) >> int(shift[0])
    assert abs(y - acc * approx) <= 0.5 + 1e-9 * abs(acc * approx)


def test_fixed_point_rejects_huge_multipliers():
    with pytest.raises(CodegenError, match="multiplier out of range"):
        fixed_point(np.array([2.0**31]))


# -- clear errors instead of float fallbacks ---------------------------------------------------------


def test_int8_activations_without_kernel_raise(tmp_path):
    g = Graph("bad")
    x = g.add_input("x", TensorType((2, 8), dtypes.i8, Quant(scale=0.1, zero_point=0)))
    w, _ = int8_weight(g, "w", np.random.default_rng(0), (4, 8), True)
    g.set_outputs([g.add("linear", [x, w])])
    with pytest.raises(CodegenError, match=r"no native kernel for .*linear.*i8#quant, i8#quant"):
        build(g, tmp_path)


def test_quantised_weight_with_float_activation_raises(tmp_path):
    g = Graph("bad")
    x = g.add_input("x", tensor([2, 8]))
    w, _ = int8_weight(g, "w", np.random.default_rng(0), (4, 8), True)
    g.set_outputs([g.add("linear", [x, w])])
    with pytest.raises(CodegenError, match="no native kernel"):
        build(g, tmp_path)


def test_int32_result_raises(tmp_path):
    g = Graph("bad")
    x = g.add_input("x", TensorType((2, 8), dtypes.u8, Quant(scale=0.1, zero_point=3)))
    w, _ = int8_weight(g, "w", np.random.default_rng(0), (4, 8), True)
    g.set_outputs([g.add("linear", [x, w], type=TensorType((2, 4), dtypes.i32, Quant(scale=0.01, zero_point=0)))])
    with pytest.raises(CodegenError, match="no native kernel .* and result i32#quant"):
        build(g, tmp_path)


def test_registry_lists_int8_kernels():
    names = {gen.name for gens in kernels.registered().values() for gen in gens}
    assert {"_linear_i8", "_conv_i8"} <= names
