"""Every op's numpy reference agrees with PyTorch, and type inference rejects bad operands.

Each case builds a one-op graph with ``Graph.add`` (so the op's type inference runs and must
agree with the shape the reference computes), evaluates it with ``mcir.interpret`` and compares
the result with the equivalent torch function (``torch.nn.functional`` or a torch op) applied to
the same inputs. Float32 inputs are widened to float64 for torch and its result is rounded back
to float32: the references compute in float64 too, so the comparison measures the reference's
error, not torch's float32 rounding (which near cancellations, e.g. tanh-gelu at -4, exceeds the
tolerance by itself).

Tolerance: a float32 output matches when every finite element is within
``1e-5 * max|torch output|`` (the maximum over torch's finite elements) of torch's, and NaN and
infinities sit at the same places with the same signs. Integer, bool, f16 and bf16 outputs
(casts, comparisons, argmax, quantize, integer arithmetic) must be equal exactly. Shapes and
dtypes must be equal in every case.

``CASES`` has at least one case per registered op; ``test_every_registered_op_has_a_case``
fails when an op is added to the registry without one. Hypothesis tests below the table sweep
the ops with many attribute combinations (convolution, pooling, slicing, padding, matmul
broadcasting, reductions); there mcir must accept exactly the configurations torch accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st

import mcir
from mcir import dtypes
from mcir.encodings import Quant
from mcir.ir import Graph
from mcir.ops import all_ops
from mcir.types import TensorType, tensor

RTOL = 1e-5

pytestmark = [
    # numpy warns where torch silently gives nan or inf (log of negatives, means of empty axes)
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning"),
]

_TORCH_DTYPES = {
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "i64": torch.int64,
    "i32": torch.int32,
    "i16": torch.int16,
    "i8": torch.int8,
    "u8": torch.uint8,
    "bool": torch.bool,
}


# -- running one op and comparing ------------------------------------------------------------


def run_op(
    op: str,
    args: tuple[np.ndarray, ...],
    attrs: dict[str, Any],
    *,
    arg_types: tuple[TensorType | None, ...] = (),
    result_type: TensorType | None = None,
) -> np.ndarray:
    """The interpreter's output of a graph holding one ``op`` applied to inputs ``args``.

    ``arg_types`` overrides the type of an input (quantised inputs); ``result_type`` is given for
    ops whose result type is not inferred (``quantize``).
    """
    g = Graph(op)
    types = list(arg_types) + [None] * (len(args) - len(arg_types))
    inputs = [
        g.add_input(f"x{i}", t or tensor(a.shape, dtypes.from_numpy(a.dtype)))
        for i, (a, t) in enumerate(zip(args, types))
    ]
    g.set_outputs([g.add(op, inputs, attrs, type=result_type)])
    mcir.verify(g)
    (out,) = mcir.interpret(g, *args)
    return np.asarray(out)


def to_torch(a: np.ndarray, widen: bool = True) -> torch.Tensor:
    """``a`` as a tensor; float32 widened to float64 unless ``widen`` is false."""
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    t = torch.from_numpy(np.array(a))
    return t.double() if widen and t.dtype == torch.float32 else t


def torch_result(fn: Callable[..., torch.Tensor], args: tuple[np.ndarray, ...], widen: bool = True) -> torch.Tensor:
    """``fn`` on ``args`` (float32 computed in float64, the result rounded to float32)."""
    with torch.no_grad():
        out = fn(*(to_torch(a, widen) for a in args))
    return out.float() if out.dtype == torch.float64 else out


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


def assert_matches_torch(got: np.ndarray, want_t: torch.Tensor) -> None:
    """The module docstring's tolerance: float32 relative to max|torch output|, everything else exact."""
    want = to_numpy(want_t)
    assert got.shape == want.shape, f"shape {got.shape} != torch {want.shape}"
    assert got.dtype == want.dtype, f"dtype {got.dtype} != torch {want.dtype}"
    if got.dtype != np.float32:
        if got.dtype in (np.float16, ml_dtypes.bfloat16):  # compared as (exactly equal) f32: NaN == NaN
            got, want = got.astype(np.float32), want.astype(np.float32)
        np.testing.assert_array_equal(got, want, strict=True)
        return
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"NaN positions differ:\n{got}\n{want}"
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]) and not np.isinf(got[~inf]).any(), f"infinities differ:\n{got}\n{want}"
    finite = np.isfinite(want)
    if not finite.any():
        return
    scale = float(np.abs(want[finite]).max())
    err = float(np.abs(got[finite].astype(np.float64) - want[finite]).max())
    assert err <= RTOL * scale, f"max error {err:.3g} > {RTOL} * max|torch| = {RTOL * scale:.3g}\n{got}\n{want}"


# -- the cases -----------------------------------------------------------------------------------


@dataclass
class Case:
    """One op applied to ``args`` with ``attrs``; ``torch_fn`` computes the expected output."""

    op: str
    args: tuple[np.ndarray, ...]
    attrs: dict[str, Any]
    torch_fn: Callable[..., torch.Tensor]
    label: str = ""
    arg_types: tuple[TensorType | None, ...] = ()
    result_type: TensorType | None = None
    widen: bool = True  # False for torch functions that only take float32 (quantisation)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        shapes = "x".join(str(list(a.shape)).replace(" ", "") for a in self.args)
        return f"{self.op}-{self.label or shapes}"


_rng = np.random.default_rng(20240601)


def randn(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (_rng.standard_normal(shape) * scale).astype(np.float32)


def randint(lo: int, hi: int, *shape: int, dtype: Any = np.int32) -> np.ndarray:
    return _rng.integers(lo, hi, size=shape).astype(dtype)


def randbool(*shape: int) -> np.ndarray:
    return _rng.random(shape) < 0.5


# the values at which activations change behaviour, plus the IEEE specials
SPECIAL = np.array([-np.inf, -1e4, -3.0, -1.0, -1e-8, -0.0, 0.0, 1e-8, 0.5, 1.0, 3.0, 1e4, np.inf, np.nan], np.float32)
SHAPES = [(), (7,), (3, 5), (2, 3, 4)]


def elementwise_cases() -> list[Case]:
    cases = []
    unary = {
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "silu": F.silu,
        "hardswish": F.hardswish,
        "hardsigmoid": F.hardsigmoid,
        "exp": torch.exp,
        "log": torch.log,
        "sqrt": torch.sqrt,
        "rsqrt": torch.rsqrt,
        "erf": torch.erf,
        "neg": torch.neg,
        "abs": torch.abs,
    }
    for op, fn in unary.items():
        for shape in SHAPES:
            cases.append(Case(op, (randn(*shape, scale=4.0),), {}, fn))
        cases.append(Case(op, (SPECIAL,), {}, fn, "specials"))
    for op, fn in {"relu": torch.relu, "neg": torch.neg, "abs": torch.abs}.items():
        cases.append(Case(op, (randint(-100, 100, 4, 5),), {}, fn, "i32"))
        cases.append(Case(op, (np.array([-128, -1, 0, 1, 127], np.int8),), {}, fn, "i8-extremes"))
    finite = SPECIAL[np.isfinite(SPECIAL)]  # torch's exact gelu gives nan at +inf; the limit is +inf
    for approximate in ("none", "tanh"):
        gelu = lambda x, a=approximate: F.gelu(x, approximate=a)
        cases.append(Case("gelu", (finite,), {"approximate": approximate}, gelu, f"{approximate}-specials"))
        for shape in SHAPES:
            cases.append(Case("gelu", (randn(*shape, scale=4.0),), {"approximate": approximate}, gelu, approximate))
    cases.append(Case("gelu", (randn(3, 4),), {}, F.gelu, "default-is-exact"))
    for exponent in (2.0, 3.0, 0.5, -1.0, -2.5, 0.0):
        for x, label in ((randn(3, 5, scale=3.0), "random"), (SPECIAL, "specials")):
            cases.append(
                Case(
                    "pow", (x,), {"exponent": exponent}, lambda t, e=exponent: torch.pow(t, e), f"{label}-exp{exponent}"
                )
            )
    for lo, hi in ((None, None), (0.0, None), (None, 0.5), (0.0, 6.0), (-1.0, 1.0), (2.0, -2.0)):
        attrs = {"min": lo, "max": hi}
        # torch.clamp wants a bound; without both it is the identity
        fn = (lambda t, lo=lo, hi=hi: torch.clamp(t, lo, hi)) if (lo, hi) != (None, None) else torch.clone
        cases.append(Case("clamp", (SPECIAL,), attrs, fn, f"specials-{lo}-{hi}"))
        cases.append(Case("clamp", (randn(2, 3, 4, scale=4.0),), attrs, fn, f"{lo}-{hi}"))
    for lo, hi in ((-3.0, 4.0), (None, 10.0)):  # integral bounds keep integer operands integer
        cases.append(
            Case(
                "clamp",
                (randint(-20, 20, 4, 4, dtype=np.int8),),
                {"min": lo, "max": hi},
                lambda t, lo=lo, hi=hi: torch.clamp(t, lo, hi).to(torch.int8),
                f"i8-{lo}-{hi}",
            )
        )
    for p in (0.0, 0.5, 0.9):
        cases.append(Case("dropout", (randn(3, 4),), {"p": p}, lambda t, p=p: F.dropout(t, p, training=False), f"p{p}"))
    return cases


BROADCAST_PAIRS = [((3, 4), (3, 4)), ((2, 1, 4), (3, 1)), ((), (5,)), ((4,), ()), ((1, 5), (6, 1)), ((0, 3), (1, 3))]


def binary_cases() -> list[Case]:
    cases = []
    arith = {
        "add": torch.add,
        "sub": torch.sub,
        "mul": torch.mul,
        "div": torch.div,
        "maximum": torch.maximum,
        "minimum": torch.minimum,
    }
    for op, fn in arith.items():
        for sa, sb in BROADCAST_PAIRS:
            cases.append(Case(op, (randn(*sa, scale=3.0), randn(*sb, scale=3.0)), {}, fn))
        cases.append(Case(op, (SPECIAL[:, None], SPECIAL[None, :]), {}, fn, "specials-table"))
        b = randint(-9, 9, 4, 5)
        b[b == 0] = 3  # integer division by zero is undefined in torch
        int_fn = (lambda a, b: torch.div(a, b, rounding_mode="floor")) if op == "div" else fn
        cases.append(Case(op, (randint(-50, 50, 4, 5), b), {}, int_fn, "i32-floor" if op == "div" else "i32"))
        cases.append(
            Case(
                op,
                (randint(-50, 50, 2, 1, 5, dtype=np.int64), randint(1, 9, 3, 1, dtype=np.int64)),
                {},
                int_fn,
                "i64-broadcast",
            )
        )
    compare = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge}
    for op, fn in compare.items():
        for sa, sb in BROADCAST_PAIRS:
            # rounded values make ties common, so eq/le/ge are really exercised
            cases.append(Case(op, (np.round(randn(*sa)), np.round(randn(*sb))), {}, fn))
        cases.append(Case(op, (SPECIAL[:, None], SPECIAL[None, :]), {}, fn, "specials-table"))
        cases.append(Case(op, (randint(-2, 3, 3, 4), randint(-2, 3, 4)), {}, fn, "i32"))
        cases.append(Case(op, (randbool(3, 1), randbool(1, 4)), {}, fn, "bool"))
    for shapes in (((3, 4), (3, 4), (3, 4)), ((3, 1), (1, 4), ()), ((2, 1, 4), (3, 4), (2, 3, 1))):
        sc, sa, sb = shapes
        cases.append(Case("where", (randbool(*sc), randn(*sa), randn(*sb)), {}, torch.where))
        cases.append(
            Case(
                "where",
                (randbool(*sc), randint(-5, 5, *sa), randint(-5, 5, *sb)),
                {},
                torch.where,
                "i32-" + "x".join(map(str, sc)),
            )
        )
    cases.append(Case("logical_not", (randbool(3, 4),), {}, torch.logical_not))
    cases.append(Case("logical_not", (np.array(True),), {}, torch.logical_not, "scalar"))
    for op, fn in {"logical_and": torch.logical_and, "logical_or": torch.logical_or}.items():
        for sa, sb in (((3, 4), (3, 4)), ((3, 1), (1, 4)), ((), (5,))):
            cases.append(Case(op, (randbool(*sa), randbool(*sb)), {}, fn))
    return cases


def cast_cases() -> list[Case]:
    frac = np.array([-100.75, -2.5, -1.5, -0.5, -0.0, 0.0, 0.5, 1.5, 2.5, 99.9], np.float32)
    sources = [
        (frac, ["i32", "i64", "i16", "i8", "bool", "f16", "bf16", "f32"], "f32"),  # float -> int truncates
        (np.array([0.0, 0.4, 1.6, 127.5, 254.9], np.float32), ["u8"], "f32-nonneg"),
        (np.array([0.0, np.nan, np.inf, -np.inf, -1e-30], np.float32), ["bool", "f16", "bf16"], "f32-specials"),
        (randn(4, 5, scale=1e3), ["f16", "bf16"], "f32-rounding"),
        (randint(-300, 300, 12, dtype=np.int32), ["f32", "i8", "u8", "i64", "bool", "f16"], "i32"),  # ints wrap
        (randint(-(2**40), 2**40, 6, dtype=np.int64), ["i32", "f32"], "i64"),
        (randbool(3, 4), ["f32", "i32", "u8"], "bool"),
        (randint(0, 256, 8, dtype=np.uint8), ["i8", "f32", "i16"], "u8"),
        (randn(3, 3).astype(np.float16), ["f32", "i32"], "f16"),
        (randn(3, 3).astype(ml_dtypes.bfloat16), ["f32", "f16"], "bf16"),
    ]
    cases = []
    for x, targets, label in sources:
        for dt in targets:
            cases.append(
                Case("cast", (x,), {"dtype": dt}, lambda t, dt=dt: t.to(_TORCH_DTYPES[dt]), f"{label}-to-{dt}")
            )
    return cases


def _slice_fn(axis: int, start: int | None, end: int | None, step: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(t: torch.Tensor) -> torch.Tensor:
        idx = [slice(None)] * t.dim()
        idx[axis] = slice(start, end, step)
        return t[tuple(idx)]

    return fn


def torch_pads(pads: tuple[int, ...]) -> tuple[int, ...]:
    """mcir pads are (before, after) from the first axis; F.pad's start at the last axis."""
    pairs = [pads[i : i + 2] for i in range(0, len(pads), 2)]
    return tuple(p for pair in reversed(pairs) for p in pair)


def shape_cases() -> list[Case]:
    cases = []
    x = randn(2, 3, 4)
    for shape in ((24,), (4, 6), (2, 12, 1), (1, 2, 3, 4), (6, 4)):
        cases.append(Case("reshape", (x,), {"shape": shape}, lambda t, s=shape: t.reshape(s)))
    cases.append(Case("reshape", (np.array(5.0, np.float32),), {"shape": (1, 1)}, lambda t: t.reshape(1, 1), "scalar"))
    cases.append(Case("reshape", (randint(0, 9, 2, 0, 3),), {"shape": (0, 6)}, lambda t: t.reshape(0, 6), "empty"))
    for dims in ((2, 0, 1), (0, 1, 2), (-1, 0, -2), (1, 2, 0)):
        cases.append(Case("permute", (x,), {"dims": dims}, lambda t, d=dims: t.permute(d), str(dims)))
    cases.append(Case("permute", (np.array(1.0, np.float32),), {"dims": ()}, lambda t: t.permute(()), "scalar"))
    y = randn(5, 6)
    for axis, start, end, step in (
        (0, 1, 4, 1),
        (1, -4, -1, 1),
        (1, -100, 100, 2),
        (0, 3, 1, 1),
        (1, 2, None, 3),
        (-1, None, -2, 1),
        (0, 5, 9, 1),
        (-2, -1, None, 4),
    ):
        attrs: dict[str, Any] = {"axis": axis, "step": step}
        if start is not None:
            attrs["start"] = start
        if end is not None:
            attrs["end"] = end
        cases.append(Case("slice", (y,), attrs, _slice_fn(axis, start, end, step), f"{axis}[{start}:{end}:{step}]"))
    for axis, index in ((0, 0), (0, -1), (1, 2), (-1, -4), (2, 2), (-2, -3)):
        cases.append(
            Case(
                "select",
                (x,),
                {"axis": axis, "index": index},
                lambda t, a=axis, i=index: torch.select(t, a, i),
                f"{axis}[{index}]",
            )
        )
    for src, shape in (
        ((3, 1), (3, 4)),
        ((1,), (2, 3, 5)),
        ((2, 1, 4), (3, 2, 5, 4)),
        ((), (2, 2)),
        ((4,), (4,)),
        ((1, 3), (0, 3)),
    ):
        cases.append(
            Case(
                "expand",
                (randn(*src),),
                {"shape": shape},
                lambda t, s=shape: t.expand(s),
                f"{list(src)}-to-{list(shape)}",
            )
        )
    for shapes, axis in (
        (((2, 3), (4, 3)), 0),
        (((2, 3), (2, 1), (2, 5)), 1),
        (((2, 3, 4),), -1),
        (((1, 2, 2), (1, 2, 2), (1, 2, 2)), -2),
        (((0, 3), (2, 3)), 0),
    ):
        cases.append(
            Case(
                "concat",
                tuple(randn(*s) for s in shapes),
                {"axis": axis},
                lambda *ts, a=axis: torch.cat(ts, dim=a),
                f"axis{axis}-" + "+".join(map(str, shapes)),
            )
        )
    cases.append(
        Case("concat", (randint(0, 9, 2, 2), randint(0, 9, 2, 3)), {"axis": 1}, lambda *ts: torch.cat(ts, dim=1), "i32")
    )
    for shape, pads, value in (
        ((3, 4), (1, 2, 0, 3), 0.0),
        ((3, 4), (-1, 0, 2, -2), 1.5),
        ((2, 3, 4), (0, 0, -1, -1, 1, 1), -2.0),
        ((5,), (-5, 2), 7.0),
        ((2, 2), (0, 0, 0, 0), 0.0),
        ((4,), (-2, -2), 0.0),
        ((), (), 1.0),
    ):
        cases.append(
            Case(
                "pad",
                (randn(*shape),),
                {"pads": pads, "value": value},
                lambda t, p=pads, v=value: F.pad(t, torch_pads(p), value=v),
                f"{pads}-{value}",
            )
        )
    cases.append(
        Case(
            "pad",
            (randint(-5, 5, 2, 3),),
            {"pads": (1, 0, 0, 1), "value": 9.0},
            lambda t: F.pad(t, (0, 1, 1, 0), value=9),
            "i32",
        )
    )
    return cases


def linalg_cases() -> list[Case]:
    cases = []
    for xs, with_bias in (((4,), True), ((3, 4), True), ((2, 3, 4), False), ((0, 4), True)):
        args = (randn(*xs), randn(5, 4)) + ((randn(5),) if with_bias else ())
        cases.append(Case("linear", args, {}, F.linear, ("bias-" if with_bias else "") + str(list(xs))))
    for sa, sb in (
        ((4,), (4,)),
        ((4,), (4, 3)),
        ((2, 4), (4,)),
        ((2, 4), (4, 3)),
        ((5, 2, 4), (4, 3)),
        ((2, 4), (5, 4, 3)),
        ((4,), (5, 4, 3)),
        ((5, 2, 4), (4,)),
        ((2, 1, 3, 4), (1, 5, 4, 2)),
        ((3, 1, 2, 4), (7, 4, 1)),
    ):
        cases.append(Case("matmul", (randn(*sa), randn(*sb)), {}, torch.matmul))
    return cases


def conv_cases() -> list[Case]:
    cases = []
    configs = [  # (N, C, H, W), (O, C/groups, kh, kw), attrs
        ((1, 3, 8, 8), (4, 3, 3, 3), {}),
        ((2, 3, 7, 9), (6, 3, 3, 2), {"stride": (2, 3), "padding": (1, 2)}),
        ((1, 2, 9, 9), (3, 2, 3, 3), {"dilation": (2, 3), "padding": (2, 1)}),
        ((2, 4, 6, 6), (6, 2, 3, 3), {"groups": 2, "padding": (1, 1)}),
        ((1, 6, 7, 5), (6, 1, 3, 3), {"groups": 6, "padding": (1, 1), "stride": (2, 2)}),  # depthwise
        ((1, 4, 5, 5), (8, 1, 3, 3), {"groups": 4}),  # depthwise with channel multiplier 2
        ((1, 3, 4, 4), (2, 3, 1, 1), {}),  # pointwise
        ((1, 1, 3, 3), (1, 1, 5, 5), {"padding": (1, 1)}),  # kernel larger than the unpadded input
    ]
    for xs, ws, attrs in configs:
        o = ws[0]
        torch_attrs = {k: attrs.get(k, d) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))}
        fn = lambda x, w, b=None, a=torch_attrs: F.conv2d(x, w, b, **a)
        label = f"{list(xs)}*{list(ws)}-{attrs}"
        cases.append(Case("conv2d", (randn(*xs), randn(*ws), randn(o)), attrs, fn, label))
        cases.append(Case("conv2d", (randn(*xs), randn(*ws)), attrs, fn, "nobias-" + label))
    return cases


def norm_cases() -> list[Case]:
    cases = []
    for xs in ((4, 3), (2, 3, 5), (2, 3, 4, 4)):
        c = xs[1]
        var = np.abs(randn(c)) + 0.1
        for eps in (1e-5, 0.1):
            cases.append(
                Case(
                    "batch_norm",
                    (randn(*xs, scale=2.0), randn(c), randn(c), randn(c), var),
                    {"eps": eps},
                    lambda x, w, b, m, v, e=eps: F.batch_norm(x, m, v, w, b, training=False, eps=e),
                    f"{list(xs)}-eps{eps}",
                )
            )
    for xs, dims in (((3, 8), 1), ((2, 3, 5), 1), ((2, 3, 5), 2), ((4, 6), 2), ((7,), 1)):
        norm_shape = xs[len(xs) - dims :]
        x = randn(*xs, scale=3.0) + 5.0  # an offset mean makes a naive variance inaccurate
        ln = lambda x, w=None, b=None, s=norm_shape, e=1e-5: F.layer_norm(x, s, w, b, e)
        cases.append(Case("layer_norm", (x,), {"dims": dims}, ln, f"{list(xs)}-dims{dims}"))
        cases.append(Case("layer_norm", (x, randn(*norm_shape)), {"dims": dims}, ln, f"{list(xs)}-dims{dims}-weight"))
        cases.append(
            Case(
                "layer_norm",
                (x, randn(*norm_shape), randn(*norm_shape)),
                {"dims": dims, "eps": 0.01},
                lambda x, w, b, s=norm_shape: F.layer_norm(x, s, w, b, 0.01),
                f"{list(xs)}-dims{dims}-affine",
            )
        )
    for op, fn in {"softmax": F.softmax, "log_softmax": F.log_softmax}.items():
        for xs, axis in (((3, 5), -1), ((3, 5), 0), ((2, 3, 4), 1), ((2, 3, 4), -3), ((6,), 0), ((), 0)):
            cases.append(
                Case(
                    op,
                    (randn(*xs, scale=5.0),),
                    {"axis": axis},
                    lambda x, a=axis, f=fn: f(x, dim=a),
                    f"{list(xs)}-axis{axis}",
                )
            )
        big = np.array([[1000.0, 0.0, -1000.0], [-np.inf, 0.0, 1.0]], np.float32)  # needs the max subtraction
        cases.append(Case(op, (big,), {}, lambda x, f=fn: f(x, dim=-1), "large-and-inf"))
    return cases


def pool_cases() -> list[Case]:
    cases = []
    for xs, attrs in (
        ((1, 2, 6, 6), {"kernel": (2, 2), "stride": (2, 2)}),
        ((2, 3, 7, 5), {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)}),
        ((1, 1, 7, 7), {"kernel": (3, 2), "stride": (2, 3), "ceil_mode": True}),
        ((1, 2, 8, 9), {"kernel": (2, 3), "stride": (1, 2), "dilation": (2, 2), "padding": (1, 1)}),
        ((1, 1, 5, 5), {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True}),
    ):
        a = {
            "kernel_size": attrs["kernel"],
            "stride": attrs["stride"],
            "padding": attrs.get("padding", 0),
            "dilation": attrs.get("dilation", 1),
            "ceil_mode": attrs.get("ceil_mode", False),
        }
        cases.append(
            Case("max_pool2d", (randn(*xs),), attrs, lambda x, a=a: F.max_pool2d(x, **a), f"{list(xs)}-{attrs}")
        )
    cases.append(
        Case(
            "max_pool2d",
            (np.full((1, 1, 3, 3), -5.0, np.float32),),
            {"kernel": (2, 2), "stride": (2, 2), "padding": (1, 1)},
            lambda x: F.max_pool2d(x, 2, 2, 1),
            "padding-is-not-zero",
        )
    )
    for xs, attrs in (
        ((1, 2, 6, 6), {"kernel": (2, 2), "stride": (2, 2)}),
        ((2, 3, 7, 5), {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)}),
        ((2, 3, 7, 5), {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1), "count_include_pad": False}),
        ((1, 1, 7, 7), {"kernel": (3, 2), "stride": (2, 3), "ceil_mode": True}),
        ((1, 1, 5, 5), {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True}),
        (
            (1, 1, 5, 5),
            {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True, "count_include_pad": False},
        ),
        ((1, 2, 6, 5), {"kernel": (2, 2), "stride": (2, 2), "padding": (1, 0), "divisor": 3}),
        ((1, 2, 6, 5), {"kernel": (3, 2), "stride": (2, 2), "ceil_mode": True, "divisor": 1}),
    ):
        a = {
            "kernel_size": attrs["kernel"],
            "stride": attrs["stride"],
            "padding": attrs.get("padding", 0),
            "ceil_mode": attrs.get("ceil_mode", False),
            "count_include_pad": attrs.get("count_include_pad", True),
            "divisor_override": attrs.get("divisor"),
        }
        cases.append(
            Case("avg_pool2d", (randn(*xs),), attrs, lambda x, a=a: F.avg_pool2d(x, **a), f"{list(xs)}-{attrs}")
        )
    for xs, out in (
        ((1, 2, 6, 6), (3, 3)),
        ((2, 3, 7, 5), (3, 2)),
        ((1, 1, 5, 7), (1, 1)),
        ((1, 2, 3, 4), (5, 7)),
        ((1, 1, 10, 9), (4, 4)),
    ):
        cases.append(
            Case(
                "adaptive_avg_pool2d",
                (randn(*xs),),
                {"output_size": out},
                lambda x, o=out: F.adaptive_avg_pool2d(x, o),
                f"{list(xs)}-to-{list(out)}",
            )
        )
    return cases


def attention_cases() -> list[Case]:
    cases = []
    idx = randint(0, 10, 3, 4, dtype=np.int64)
    cases.append(Case("embedding", (idx, randn(10, 5)), {}, F.embedding, "i64"))
    cases.append(Case("embedding", (randint(0, 7, 6), randn(7, 3)), {}, F.embedding, "i32"))
    cases.append(Case("embedding", (np.array(4, np.int64), randn(7, 3)), {}, F.embedding, "scalar-index"))
    sdpa = F.scaled_dot_product_attention
    for qs, ks, vs in (
        ((4, 8), (6, 8), (6, 5)),
        ((2, 4, 8), (2, 6, 8), (2, 6, 3)),
        ((2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 5, 4)),
        ((1, 2, 6, 4), (1, 2, 3, 4), (1, 2, 3, 4)),
    ):
        q, k, v = randn(*qs), randn(*ks), randn(*vs)
        label = f"{list(qs)}{list(ks)}{list(vs)}"
        cases.append(Case("scaled_dot_product_attention", (q, k, v), {}, sdpa, label))
        cases.append(
            Case(
                "scaled_dot_product_attention",
                (q, k, v),
                {"scale": 0.3},
                lambda q, k, v: sdpa(q, k, v, scale=0.3),
                "scale-" + label,
            )
        )
        cases.append(
            Case(
                "scaled_dot_product_attention",
                (q, k, v),
                {"is_causal": True},
                lambda q, k, v: sdpa(q, k, v, is_causal=True),
                "causal-" + label,
            )
        )
        scores = (*qs[:-2], qs[-2], ks[-2])
        for mask, kind in (
            (randbool(*scores), "bool"),
            (randn(*scores), "float"),
            (randbool(1, scores[-1]), "bool-row"),
            (randn(*scores[-2:]), "float-2d"),
        ):
            if kind.startswith("bool"):
                mask[..., 0] = True  # keep one position per row: fully masked rows are tested below
            cases.append(
                Case(
                    "scaled_dot_product_attention",
                    (q, k, v, mask),
                    {},
                    lambda q, k, v, m: sdpa(q, k, v, attn_mask=m),
                    f"mask-{kind}-{label}",
                )
            )
    q, k, v = randn(1, 3, 4), randn(1, 5, 4), randn(1, 5, 2)
    mask = np.ones((3, 5), bool)
    mask[1] = False
    fmask = np.where(mask, 0.0, -np.inf).astype(np.float32)
    for m, kind in ((mask, "bool"), (fmask, "float")):
        cases.append(
            Case(
                "scaled_dot_product_attention",
                (q, k, v, m),
                {"scale": 2.0},
                lambda q, k, v, m: sdpa(q, k, v, attn_mask=m, scale=2.0),
                f"fully-masked-row-{kind}",
            )
        )
    return cases


def reduction_cases() -> list[Case]:
    cases = []
    x = randn(2, 3, 4, scale=3.0)
    for axes, keepdim in (
        ((), False),
        ((), True),
        ((0,), False),
        ((1, 2), True),
        ((-1,), False),
        ((0, -1), True),
        ((2, 0, 1), False),
    ):
        dims = tuple(axes) or (0, 1, 2)
        for op, fn in {"mean": torch.mean, "sum": torch.sum, "amax": torch.amax}.items():
            cases.append(
                Case(
                    op,
                    (x,),
                    {"axes": axes, "keepdim": keepdim},
                    lambda t, d=dims, k=keepdim, f=fn: f(t, dim=d, keepdim=k),
                    f"{axes}-keep{keepdim}",
                )
            )
    xi = randint(-100, 100, 3, 4)
    for axes in ((), (1,)):
        dims = tuple(axes) or (0, 1)
        cases.append(
            Case("sum", (xi,), {"axes": axes}, lambda t, d=dims: torch.sum(t, dim=d).to(torch.int32), f"i32-{axes}")
        )  # mcir keeps the operand dtype
        cases.append(Case("amax", (xi,), {"axes": axes}, lambda t, d=dims: torch.amax(t, dim=d), f"i32-{axes}"))
    with_nan = x.copy()
    with_nan[1, 2, 3] = np.nan
    for op, fn in {"mean": torch.mean, "sum": torch.sum, "amax": torch.amax}.items():
        cases.append(Case(op, (with_nan,), {"axes": (2,)}, lambda t, f=fn: f(t, dim=2), "nan-propagates"))
    cases.append(Case("mean", (randn(0, 3),), {"axes": (0,)}, lambda t: torch.mean(t, dim=0), "empty-is-nan"))
    cases.append(Case("sum", (randn(0, 3),), {"axes": (0,)}, lambda t: torch.sum(t, dim=0), "empty-is-zero"))
    for axis, keepdim in ((-1, False), (0, True), (1, False)):
        cases.append(
            Case(
                "argmax",
                (x,),
                {"axis": axis, "keepdim": keepdim},
                lambda t, a=axis, k=keepdim: torch.argmax(t, dim=a, keepdim=k),
                f"axis{axis}-keep{keepdim}",
            )
        )
    ties = np.array([[1, 3, 3, 0], [2, 2, 2, 2], [0, 5, 1, 5]], np.int32)
    cases.append(Case("argmax", (ties,), {}, lambda t: torch.argmax(t, dim=-1), "ties-give-first"))
    cases.append(Case("argmax", (with_nan,), {"axis": 2}, lambda t: torch.argmax(t, dim=2), "nan-is-max"))
    return cases


def _quant_torch(x: torch.Tensor, dtype: str, scale: float, zp: int) -> torch.Tensor:
    qtypes = {"u8": torch.quint8, "i8": torch.qint8, "i32": torch.qint32}
    if dtype in qtypes:
        return torch.quantize_per_tensor(x, scale, zp, qtypes[dtype]).int_repr()
    info = torch.iinfo(_TORCH_DTYPES[dtype])  # torch has no quantised i16: its formula, q = round(x/s) + z
    return torch.clamp(torch.round(x / scale) + zp, info.min, info.max).to(_TORCH_DTYPES[dtype])


def _dequant_torch(q: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    if q.dtype in (torch.uint8, torch.int8, torch.int32):
        return torch._make_per_tensor_quantized_tensor(q, scale, zp).dequantize()
    return (q.float() - zp) * scale


def quant_cases() -> list[Case]:
    cases = []
    for dtype, scale, zp in (
        ("u8", 0.05, 128),
        ("u8", 0.1, 0),
        ("i8", 0.02, 0),
        ("i8", 0.3, -5),
        ("i16", 0.001, 7),
        ("i32", 0.01, 3),
    ):
        info = np.iinfo(dtypes.by_name(dtype).np)
        lo, hi = max(info.min, -400), min(info.max, 400)
        # values at integer steps plus less than half a step: no rounding ties, whose direction x/s and
        # x*(1/s) may resolve differently; the range overshoots so that clamping is exercised too
        q = _rng.integers(lo - 20, hi + 20, size=(4, 25))
        x = ((q - zp + _rng.uniform(-0.4, 0.4, q.shape)) * scale).astype(np.float32)
        qt = TensorType(x.shape, dtypes.by_name(dtype), Quant(scale=scale, zero_point=zp))
        cases.append(
            Case(
                "quantize",
                (x,),
                {},
                lambda t, d=dtype, s=scale, z=zp: _quant_torch(t, d, s, z),
                f"{dtype}-{scale}-{zp}",
                result_type=qt,
                widen=False,
            )
        )
        stored = _rng.integers(lo, hi + 1, size=(3, 7)).astype(info.dtype)
        qt = TensorType(stored.shape, dtypes.by_name(dtype), Quant(scale=scale, zero_point=zp))
        cases.append(
            Case(
                "dequantize",
                (stored,),
                {},
                lambda t, s=scale, z=zp: _dequant_torch(t, s, z),
                f"{dtype}-{scale}-{zp}",
                arg_types=(qt,),
                result_type=tensor(stored.shape),
            )
        )
    for data in (randn(3, 4), randint(-9, 9, 5, dtype=np.int8), randbool(2, 2), np.array(1.5, np.float32)):
        cases.append(Case("const", (), {}, lambda d=data: torch.tensor(d), str(data.dtype), extra={"data": data}))
    return cases


def indexing_cases() -> list[Case]:
    cases = []
    x = randn(3, 5, 4)
    for axis in (0, 1, -1):
        idx = randint(0, x.shape[axis], *[2 if d == axis % 3 else n for d, n in enumerate(x.shape)], dtype=np.int64)
        cases.append(
            Case("gather", (x, idx), {"axis": axis}, lambda t, i, a=axis: torch.gather(t, a, i), f"axis{axis}")
        )
    small = randint(0, 3, 2, 2, 4, dtype=np.int64)  # smaller than x on the other axes
    cases.append(Case("gather", (x, small), {"axis": 0}, lambda t, i: torch.gather(t, 0, i), "smaller-index"))
    for axis in (0, 1, 2):
        idx = randint(0, x.shape[axis], 6, dtype=np.int32)
        cases.append(
            Case("index_select", (x, idx), {"axis": axis}, lambda t, i, a=axis: torch.index_select(t, a, i.long()))
        )
    grid = randint(0, 5, 2, 3, dtype=np.int64)  # any index shape: torch's x[:, grid]
    cases.append(Case("index_select", (x, grid), {"axis": 1}, lambda t, i: t[:, i], "2-d-index"))
    for axis in (0, 1, -1):
        cases.append(Case("cumsum", (x,), {"axis": axis}, lambda t, a=axis: torch.cumsum(t, a), f"f32-{axis}"))
    xi = randint(-100, 100, 3, 4, dtype=np.int64)
    cases.append(Case("cumsum", (xi,), {"axis": 1}, lambda t: torch.cumsum(t, 1), "i64"))
    return cases


def _torch_rnn(kind: str, reverse: bool = False, cell: bool = False) -> Callable[..., torch.Tensor]:
    """torch's LSTM/GRU with W_ih = identity and b_ih = 0 computes exactly the recurrence of the op on gx
    (``int8_state`` is compared by test_rnn_int8_state_rounds_what_meets_the_weights)."""

    def fn(gx, h0, *rest):
        proj = kind == "lstm" and len(rest) == 4  # LSTMP: c0, w_hh, b_hh, w_hr
        w_hh, b_hh = (rest[1], rest[2]) if proj else (rest[-2], rest[-1])
        n = gx.shape[2]
        if proj:
            layer = torch.nn.LSTM(n, rest[0].shape[1], proj_size=h0.shape[1]).double()
        else:
            layer = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(n, h0.shape[1]).double()
        with torch.no_grad():
            layer.weight_ih_l0.copy_(torch.eye(n, dtype=torch.float64))
            layer.bias_ih_l0.zero_()
            layer.weight_hh_l0.copy_(w_hh)
            layer.bias_hh_l0.copy_(b_hh)
            if proj:
                layer.weight_hr_l0.copy_(rest[3])
            x = gx.flip(0) if reverse else gx
            state = (h0[None], rest[0][None]) if kind == "lstm" else h0[None]
            if cell:  # the cell states: run step by step and collect c
                ys, st = [], state
                for t in range(x.shape[0]):
                    _, st = layer(x[t : t + 1], st)
                    ys.append(st[1][0])
                y = torch.stack(ys)
            else:
                y = layer(x, state)[0]
        return y.flip(0) if reverse else y

    return fn


def rnn_cases() -> list[Case]:
    cases = []
    steps, batch, hidden = 5, 2, 3
    for reverse in (False, True):
        args = (randn(steps, batch, 4 * hidden), randn(batch, hidden), randn(batch, hidden))
        args += (randn(4 * hidden, hidden, scale=0.5), randn(4 * hidden))
        for cell in (False, True):
            attrs = {"reverse": reverse, "cell": cell}
            cases.append(Case("lstm", args, attrs, _torch_rnn("lstm", reverse, cell), f"rev{reverse}-cell{cell}"))
        width = 2  # LSTMP: h, y and W_hh are 2 wide, the cell 3
        proj_args = (randn(steps, batch, 4 * hidden), randn(batch, width), randn(batch, hidden))
        proj_args += (randn(4 * hidden, width, scale=0.5), randn(4 * hidden), randn(width, hidden))
        for cell in (False, True):
            attrs = {"reverse": reverse, "cell": cell}
            fn = _torch_rnn("lstm", reverse, cell)
            cases.append(Case("lstm", proj_args, attrs, fn, f"proj-rev{reverse}-cell{cell}"))
        gru_args = (randn(steps, batch, 3 * hidden), randn(batch, hidden), randn(3 * hidden, hidden), randn(3 * hidden))
        cases.append(Case("gru", gru_args, {"reverse": reverse}, _torch_rnn("gru", reverse), f"rev{reverse}"))
    return cases


def test_rnn_int8_state_rounds_what_meets_the_weights():
    # with int8_state the recurrence sees h rounded to multiples of 1/127; an h already on the grid
    # (a one-step sequence from h0 on the grid) gives exactly the unrounded result
    from mcir.ops.rnn import lstm

    rng = np.random.default_rng(0)
    gx, c0 = rng.standard_normal((1, 2, 8)), rng.standard_normal((2, 2))
    w, b = rng.standard_normal((8, 2)), rng.standard_normal(8)
    h_grid = np.rint(rng.uniform(-1, 1, (2, 2)) * 127) / 127
    np.testing.assert_array_equal(lstm(gx, h_grid, c0, w, b, int8_state=True), lstm(gx, h_grid, c0, w, b))
    h_off = h_grid + 0.3 / 127
    assert not np.array_equal(lstm(gx, h_off, c0, w, b, int8_state=True), lstm(gx, h_off, c0, w, b))
    np.testing.assert_array_equal(lstm(gx, h_off, c0, w, b, int8_state=True), lstm(gx, h_grid, c0, w, b))


CASES: list[Case] = (
    elementwise_cases()
    + rnn_cases()
    + indexing_cases()
    + binary_cases()
    + cast_cases()
    + shape_cases()
    + linalg_cases()
    + conv_cases()
    + norm_cases()
    + pool_cases()
    + attention_cases()
    + reduction_cases()
    + quant_cases()
)


def test_every_registered_op_has_a_case():
    missing = sorted(set(all_ops()) - {c.op for c in CASES})
    assert not missing, f"ops without a reference case in {__name__}.CASES: {missing}"


def _run_case(case: Case) -> np.ndarray:
    if case.op == "const":
        g = Graph("const")
        g.set_outputs([g.const("c", case.extra["data"])])
        return np.asarray(mcir.interpret(g)[0])
    return run_op(case.op, case.args, case.attrs, arg_types=case.arg_types, result_type=case.result_type)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reference_matches_torch(case: Case):
    assert_matches_torch(_run_case(case), torch_result(case.torch_fn, case.args, case.widen))


# -- hypothesis sweeps: mcir accepts what torch accepts, and computes what torch computes --------------


def check_against_torch(
    op: str, args: tuple[np.ndarray, ...], attrs: dict[str, Any], torch_fn: Callable[..., torch.Tensor]
) -> None:
    """Torch rejecting the configuration means mcir must reject it with a McirError, and vice versa."""
    try:
        want = torch_result(torch_fn, args)
    except (RuntimeError, ValueError, IndexError):
        event("torch rejects")
        with pytest.raises(mcir.McirError):
            run_op(op, args, attrs)
        return
    event("torch accepts")
    got = run_op(op, args, attrs)
    assert_matches_torch(got, want)


pairs = lambda lo, hi: st.tuples(st.integers(lo, hi), st.integers(lo, hi))


@settings(max_examples=100)
@given(
    n=st.integers(1, 2),
    groups=st.integers(1, 3),
    cin_per_group=st.integers(1, 2),
    cout_per_group=st.integers(1, 3),
    size=pairs(1, 8),
    kernel=pairs(1, 4),
    stride=pairs(1, 3),
    padding=pairs(0, 3),
    dilation=pairs(1, 3),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv2d_matches_torch(
    n, groups, cin_per_group, cout_per_group, size, kernel, stride, padding, dilation, bias, seed
):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, groups * cin_per_group, *size)).astype(np.float32)
    w = rng.standard_normal((groups * cout_per_group, cin_per_group, *kernel)).astype(np.float32)
    args = (x, w) + ((rng.standard_normal(w.shape[0]).astype(np.float32),) if bias else ())
    attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    conv = lambda x, w, b=None: F.conv2d(x, w, b, stride, padding, dilation, groups)
    check_against_torch("conv2d", args, attrs, conv)


@settings(max_examples=150)  # over half of the random windows are invalid: sample more
@given(
    size=pairs(1, 8),
    kernel=pairs(1, 4),
    stride=pairs(1, 3),
    padding=pairs(0, 2),
    dilation=pairs(1, 2),
    ceil_mode=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_max_pool2d_matches_torch(size, kernel, stride, padding, dilation, ceil_mode, seed):
    x = np.random.default_rng(seed).standard_normal((1, 2, *size)).astype(np.float32)
    attrs = {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation, "ceil_mode": ceil_mode}
    check_against_torch(
        "max_pool2d", (x,), attrs, lambda x: F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    )


@settings(max_examples=150)
@given(
    size=pairs(1, 8),
    kernel=pairs(1, 4),
    stride=pairs(1, 3),
    padding=pairs(0, 2),
    ceil_mode=st.booleans(),
    count_include_pad=st.booleans(),
    divisor=st.none() | st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_avg_pool2d_matches_torch(size, kernel, stride, padding, ceil_mode, count_include_pad, divisor, seed):
    x = np.random.default_rng(seed).standard_normal((2, 1, *size)).astype(np.float32)
    attrs = {
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "ceil_mode": ceil_mode,
        "count_include_pad": count_include_pad,
        "divisor": divisor,
    }
    check_against_torch(
        "avg_pool2d",
        (x,),
        attrs,
        lambda x: F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor),
    )


@given(size=pairs(1, 9), out=pairs(1, 10), seed=st.integers(0, 2**16))
def test_adaptive_avg_pool2d_matches_torch(size, out, seed):
    x = np.random.default_rng(seed).standard_normal((1, 2, *size)).astype(np.float32)
    check_against_torch("adaptive_avg_pool2d", (x,), {"output_size": out}, lambda x: F.adaptive_avg_pool2d(x, out))


shapes = st.lists(st.integers(0, 4), min_size=1, max_size=3).map(tuple)


@given(data=st.data(), shape=shapes)
def test_slice_matches_torch_indexing(data, shape):
    rank = len(shape)
    axis = data.draw(st.integers(-rank, rank - 1), "axis")
    n = shape[axis]
    bound = st.none() | st.integers(-2 * n - 2, 2 * n + 2)
    start, end, step = data.draw(bound, "start"), data.draw(bound, "end"), data.draw(st.integers(1, 4), "step")
    attrs = (
        {"axis": axis, "step": step}
        | ({"start": start} if start is not None else {})
        | ({"end": end} if end is not None else {})
    )
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    check_against_torch("slice", (x,), attrs, _slice_fn(axis, start, end, step))


@given(data=st.data(), shape=shapes)
def test_select_matches_torch_select(data, shape):
    rank = len(shape)
    axis = data.draw(st.integers(-rank, rank - 1), "axis")
    index = data.draw(st.integers(-shape[axis] - 2, shape[axis] + 1), "index")
    x = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    check_against_torch("select", (x,), {"axis": axis, "index": index}, lambda t: torch.select(t, axis, index))


@given(data=st.data(), shape=shapes, value=st.sampled_from([0.0, -1.5, 3.0]))
def test_pad_matches_torch_pad_including_negative_pads(data, shape, value):
    pads = []
    for d in shape:
        before = data.draw(st.integers(-d, 3))
        after = data.draw(st.integers(-(d + min(before, 0)), 3))  # a crop never goes past the other side
        pads += [before, after]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    check_against_torch(
        "pad", (x,), {"pads": tuple(pads), "value": value}, lambda t: F.pad(t, torch_pads(tuple(pads)), value=value)
    )


@st.composite
def matmul_shapes(draw) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Operand shapes of a valid matmul: 1-D operands and broadcast batch dimensions included."""
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch = draw(st.lists(st.integers(1, 3), max_size=2))
    batch_a = [draw(st.sampled_from([d, 1])) for d in batch][draw(st.integers(0, len(batch))) :]
    batch_b = [draw(st.sampled_from([d, 1])) for d in batch][draw(st.integers(0, len(batch))) :]
    a = (k,) if not batch_a and draw(st.booleans()) else (*batch_a, m, k)
    b = (k,) if not batch_b and draw(st.booleans()) else (*batch_b, k, n)
    return a, b


@given(ab=matmul_shapes(), seed=st.integers(0, 2**16))
def test_matmul_matches_torch_with_broadcasting_and_vectors(ab, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in ab)
    check_against_torch("matmul", (a, b), {}, torch.matmul)


@given(
    data=st.data(),
    shape=st.lists(st.integers(0, 3), max_size=4).map(tuple),
    op=st.sampled_from(["mean", "sum", "amax"]),
    keepdim=st.booleans(),
)
def test_reductions_match_torch(data, shape, op, keepdim):
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-max(rank, 1), max(rank, 1) - 1), max_size=rank + 1), "axes")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    dims = tuple(axes) if axes else tuple(range(rank))
    fn = {"mean": torch.mean, "sum": torch.sum, "amax": torch.amax}[op]
    check_against_torch(op, (x,), {"axes": tuple(axes), "keepdim": keepdim}, lambda t: fn(t, dim=dims, keepdim=keepdim))


@given(data=st.data(), shape=st.lists(st.integers(0, 3), max_size=3).map(tuple), keepdim=st.booleans())
def test_argmax_matches_torch(data, shape, keepdim):
    rank = len(shape)
    axis = data.draw(st.integers(-max(rank, 1), max(rank, 1) - 1), "axis")
    x = np.random.default_rng(1).integers(0, 3, shape).astype(np.float32)  # few distinct values: many ties
    check_against_torch(
        "argmax", (x,), {"axis": axis, "keepdim": keepdim}, lambda t: torch.argmax(t, dim=axis, keepdim=keepdim)
    )


# -- type inference rejects bad operands with a McirError naming the op -------------------------


def infer(op: str, types: list[TensorType], attrs: dict[str, Any] | None = None) -> TensorType:
    g = Graph("bad")
    inputs = [g.add_input(f"x{i}", t) for i, t in enumerate(types)]
    return g.add(op, inputs, attrs or {}).type


def f32(*shape: int) -> TensorType:
    return tensor(shape)


REJECTED = [
    # elementwise
    ("sigmoid", [tensor([3], "i32")], {}, "needs a floating-point operand"),
    ("gelu", [f32(3)], {"approximate": "fast"}, "'none' or 'tanh'"),
    ("add", [f32(3), tensor([3], "i32")], {}, "dtypes differ"),
    ("mul", [f32(2, 3), f32(3, 2)], {}, "do not broadcast"),
    ("lt", [f32(4), f32(5)], {}, "do not broadcast"),
    ("where", [f32(3), f32(3), f32(3)], {}, "condition must be bool"),
    ("where", [tensor([3], "bool"), f32(3), tensor([3], "f16")], {}, "branch dtypes differ"),
    ("logical_and", [tensor([3], "bool"), f32(3)], {}, "needs bool operands"),
    ("cast", [f32(3)], {"dtype": "f8"}, "unknown dtype 'f8'"),
    ("clamp", [f32(3)], {"min": "zero"}, "expected float"),
    ("relu", [f32(3), f32(3)], {}, "takes (x), got 2 operand"),
    ("neg", [tensor([3], "bool")], {}, "needs numeric operands, got bool"),
    ("sub", [tensor([3], "bool"), tensor([3], "bool")], {}, "needs numeric operands, got bool"),
    ("div", [tensor([3], "bool"), tensor([3], "bool")], {}, "needs numeric operands, got bool"),
    # neural network
    ("linear", [f32(2, 4), f32(3, 5)], {}, "has 4 features but weight"),
    ("linear", [f32(2, 4), f32(3, 4), f32(4)], {}, "bias must be [3]"),
    ("matmul", [f32(2, 3), f32(4, 2)], {}, "inner dimensions differ"),
    ("matmul", [f32(2, 2, 3), f32(3, 3, 2)], {}, "do not broadcast"),
    ("conv2d", [f32(1, 3, 8, 8), f32(4, 2, 3, 3)], {}, "expects 2 input channels"),
    ("conv2d", [f32(1, 4, 8, 8), f32(6, 2, 3, 3)], {"groups": 3}, "groups=3 must divide"),
    ("conv2d", [f32(1, 1, 2, 2), f32(1, 1, 3, 3)], {}, "larger than the padded input"),
    ("conv2d", [f32(1, 1, 8, 8), f32(1, 1, 3, 3)], {"stride": (0, 1)}, "invalid stride"),
    ("conv2d", [f32(1, 8, 8), f32(1, 1, 3, 3)], {}, "must be 4-D"),
    ("max_pool2d", [f32(1, 1, 8, 8)], {"kernel": (2, 2), "stride": (2, 2), "padding": (2, 2)}, "at most half"),
    ("max_pool2d", [f32(1, 1, 2, 2)], {"kernel": (3, 3), "stride": (1, 1)}, "larger than the input"),
    ("avg_pool2d", [f32(1, 1, 4, 4)], {"kernel": (2, 2), "stride": (2, 2), "divisor": 0}, "divisor must be positive"),
    ("avg_pool2d", [f32(1, 1, 4, 4)], {"kernel": (2,), "stride": (2, 2)}, "kernel must have 2 values"),
    ("adaptive_avg_pool2d", [f32(1, 1, 4, 4)], {"output_size": (0, 2)}, "must be positive"),
    ("batch_norm", [f32(2, 3, 4), f32(3), f32(3), f32(4), f32(3)], {}, "mean must be [3]"),
    ("layer_norm", [f32(2, 3), f32(2, 3)], {}, "weight/bias must be [3]"),
    ("layer_norm", [f32(2, 3)], {"dims": 3}, "between 1 and the input rank"),
    ("softmax", [f32(2, 3)], {"axis": 2}, "axis 2 out of range"),
    ("embedding", [f32(3), f32(10, 4)], {}, "indices must be integers"),
    ("scaled_dot_product_attention", [f32(4, 8), f32(6, 7), f32(6, 5)], {}, "different head sizes"),
    (
        "scaled_dot_product_attention",
        [f32(4, 8), f32(6, 8), f32(6, 5), tensor([4, 6], "bool")],
        {"is_causal": True},
        "either a mask or is_causal",
    ),
    ("scaled_dot_product_attention", [f32(4, 8), f32(6, 8), f32(6, 5), f32(4, 5)], {}, "do not broadcast"),
    ("mean", [tensor([2, 3], "i32")], {}, "must be floating point"),
    ("sum", [f32(2, 3)], {"axes": (1, -1)}, "axis 1 is reduced twice"),
    ("sum", [f32(2, 3)], {"axes": (2,)}, "axis 2 out of range"),
    ("amax", [f32(0, 3)], {"axes": (0,)}, "zero-size axis 0"),
    ("argmax", [f32(2, 0)], {"axis": -1}, "zero-size axis 1"),
    # shape
    ("reshape", [f32(2, 3)], {"shape": (4, 2)}, "cannot reshape"),
    ("reshape", [f32(2, 3)], {"shape": (-1, 3)}, "fully static"),
    ("permute", [f32(2, 3)], {"dims": (0, 0)}, "not a permutation"),
    ("permute", [f32(2, 3)], {"dims": (2, 1)}, "not a permutation"),
    ("permute", [f32(2, 3)], {"dims": (0, 1, 2)}, "not a permutation"),
    ("slice", [f32(2, 3)], {"axis": 1, "step": 0}, "step must be >= 1"),
    ("slice", [f32()], {"axis": 0}, "rank-0"),
    ("select", [f32(2, 3)], {"axis": 1, "index": 3}, "index 3 out of range"),
    ("select", [f32()], {"axis": 0, "index": 0}, "rank-0"),
    ("expand", [f32(3, 2)], {"shape": (3, 4)}, "only size-1 axes broadcast"),
    ("expand", [f32(3, 2)], {"shape": (2,)}, "lower rank"),
    ("concat", [f32(2, 3), f32(2, 4)], {"axis": 0}, "differ outside axis 0"),
    ("concat", [f32(2, 3), tensor([2, 3], "i32")], {}, "differ outside axis"),
    ("concat", [f32(), f32()], {}, "rank-0"),
    ("pad", [f32(2, 3)], {"pads": (1, 1)}, "needs 4 values"),
    ("pad", [f32(2, 3)], {"pads": (0, 0, -2, -2)}, "below zero size"),
    ("pad", [tensor([2], "i8")], {"pads": (1, 0), "value": 128.0}, "does not fit the integer dtype i8"),
    ("pad", [tensor([2], "u8")], {"pads": (1, 0), "value": float("nan")}, "does not fit the integer dtype u8"),
    # quant
    ("const", [], {}, "build constants with Graph.const"),
]


@pytest.mark.parametrize(("op", "types", "attrs", "message"), REJECTED, ids=[f"{r[0]}-{r[3][:30]}" for r in REJECTED])
def test_type_inference_rejects_bad_operands(op, types, attrs, message):
    with pytest.raises(mcir.McirError) as info:
        infer(op, types, attrs)
    assert f"op '{op}'" in str(info.value), "the message names the op"
    assert message in str(info.value)


def test_quantized_operands_are_inferred_as_their_f32_values():
    q = TensorType((2, 3), dtypes.u8, Quant(scale=0.1, zero_point=3))
    assert infer("relu", [q]) == f32(2, 3)
    assert infer("add", [q, f32(1, 3)]) == f32(2, 3)


@pytest.mark.parametrize(
    ("make_type", "message"),
    [
        (lambda: TensorType((2,), dtypes.f32, Quant(scale=0.1)), "needs an integer dtype"),
        (lambda: TensorType((2,), dtypes.u8, Quant(scale=0.0)), "positive finite"),
        (lambda: TensorType((2,), dtypes.u8, Quant(scale=0.1, zero_point=-1)), "outside the range of u8"),
        (lambda: TensorType((2,), dtypes.i8, Quant(axis=1)), "axis 1 out of range"),
    ],
    ids=["float-dtype", "zero-scale", "zero-point-range", "axis-range"],
)
def test_quantised_types_reject_bad_parameters(make_type, message):
    with pytest.raises(mcir.McirError, match=message):
        make_type()


def test_quantize_result_must_quantise_the_operand_values():
    # quantize's result type is given, not inferred: the verifier checks it against the operand
    g = Graph("bad")
    x = g.add_input("x", tensor([2, 3], "i32"))
    g.set_outputs([g.add("quantize", [x], type=TensorType((2, 3), dtypes.u8, Quant(scale=0.1)))])
    with pytest.raises(mcir.VerifyError, match=r"op 'quantize' .* operands give i32\[2,3\]"):
        mcir.verify(g)
