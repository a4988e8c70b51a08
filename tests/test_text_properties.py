"""Properties of the text form, over randomly built graphs and mutated texts.

* Printing is a fixpoint of parsing: ``str(mcir.parse(str(g))) == str(g)``, byte for byte.
* ``mcir.save`` then ``mcir.load`` keeps a graph: the loaded graph prints identically and the
  interpreter gives bit-identical outputs (same dtype, shape and bytes, the sign of zero included;
  all NaNs count as one, as the text form has a single ``nan``).
* The parser never crashes: on mutations of valid texts it raises nothing but ``mcir.McirError``
  (usually ``mcir.ParseError``), and the message points at the error as ``file:line:col``.

Random graphs are DAGs built by applying random registered ops to values already in the graph
(so values are reused) or to new inputs and constants. Constants are random (NaN, infinities,
-0.0 and subnormals included), small ones printed inline and large ones stored in the weights
file, some quantised per tensor (``#quant<scale, zero_point>``, inputs too) or per axis
(``#quant<axis>``, weights). Names, locations and float attributes are random too. Every
registered op has a generator: ``test_every_registered_op_has_a_generator`` fails for a new op
without one.
"""

from __future__ import annotations

import math
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import mcir
from mcir import dtypes
from mcir.encodings import Quant
from mcir.ir import Graph, Location, Value
from mcir.ops import all_ops
from mcir.ops.nn import conv_out
from mcir.types import TensorType

FLOATS = ("f32", "f16", "bf16")
INTS = ("i8", "u8", "i16", "i32", "i64")
NUMERIC = FLOATS + INTS
ANY = (*NUMERIC, "bool")

NAME_CHARS = "abcxyzABC0123456789_.$-"
names = st.text(NAME_CHARS, min_size=1, max_size=6)
locations = st.builds(Location, st.text(max_size=8), st.text(max_size=8))
# floats an attribute may hold: anything, with the printing corner cases made likely
float_attrs = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-7, 1e16, 5e-324, -2.5])
# attributes kernels fold into code must be finite (docs/ir.md, "Edge values"): pow, clamp, eps, scale, p
finite_attrs = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, -0.0, 1e-7, 1e16, 5e-324, -2.5])
SPECIAL_VALUES = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-40, -1e-45, 3.4e38, 1e-5, 123456.7])


class RandomGraph:
    """Builds a random valid graph step by step from hypothesis draws."""

    def __init__(self, draw: Callable) -> None:
        self.draw = draw
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        self.g = Graph(draw(names))

    # -- values -------------------------------------------------------------------------
    def operand(
        self,
        allowed: tuple[str, ...] = ("f32",),
        shape: tuple[int, ...] | None = None,
        min_rank: int = 0,
        max_rank: int = 4,
    ) -> Value:
        """An existing value whose logical dtype is in ``allowed`` (and shape is ``shape``), or a new one."""
        fits = [
            v
            for v in self.g.values()
            if v.type.logical.dtype.name in allowed
            and v.type.numel > 0
            and (v.type.shape == shape if shape is not None else min_rank <= v.type.rank <= max_rank)
        ]
        if fits and self.draw(st.booleans()):
            return self.draw(st.sampled_from(fits))
        if shape is None:
            shape = self.draw(st.lists(st.integers(1, 4), min_size=min_rank, max_size=max_rank).map(tuple))
        return self.new_value(shape, self.draw(st.sampled_from(allowed)))

    def new_value(self, shape: tuple[int, ...], dtype: str, *, as_const: bool | None = None) -> Value:
        """A new graph input or constant; f32 values may be quantised (their logical dtype stays f32)."""
        if as_const is None:
            as_const = self.draw(st.booleans())
        t = TensorType(shape, dtypes.by_name(dtype))
        if dtype == "f32":
            quant = self.draw(
                st.sampled_from(
                    ["none", "none", "tensor", "axis"] if as_const and shape else ["none", "none", "tensor"]
                )
            )
            if quant == "tensor":
                t = self.per_tensor_quant(shape)
            elif quant == "axis":
                t = TensorType(shape, dtypes.i8, Quant(axis=self.draw(st.integers(-len(shape), len(shape) - 1))))
        if not as_const:
            return self.g.add_input(self.g.fresh_name(self.draw(names)), t)
        return self.g.const(self.draw(names), self.stored_data(t), t, loc=self.location())

    def per_tensor_quant(self, shape: tuple[int, ...]) -> TensorType:
        """A random per-tensor quantised type: integer dtype, scale and zero point in its range."""
        dtype = dtypes.by_name(self.draw(st.sampled_from(INTS)))
        info = np.iinfo(dtype.np)
        scale = self.draw(st.floats(1e-6, 1e3) | st.sampled_from([1.0, 0.1, 2.0**-20]))
        zero_point = self.draw(st.integers(max(info.min, -5), 5) | st.sampled_from([int(info.min), int(info.max)]))
        return TensorType(shape, dtype, Quant(scale=scale, zero_point=zero_point))

    def stored_data(self, t: TensorType) -> np.ndarray | dict[str, np.ndarray]:
        """Random stored data of type ``t``: float specials likely, integers over the whole range."""
        if t.encoding is not None and t.encoding.needs_components:
            comps = t.encoding.components(t)
            scale = self.rng.uniform(0.01, 1.0, comps["scale"][1]).astype(np.float32)
            return {"data": self.random_array(t.shape, "i8"), "scale": scale}
        return self.random_array(t.shape, t.dtype.name)

    def random_array(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        npdt = dtypes.by_name(dtype).np
        if dtype == "bool":
            return self.rng.random(shape) < 0.5
        if dtype in INTS:
            info = np.iinfo(npdt)
            return self.rng.integers(info.min, info.max, size=shape, endpoint=True).astype(npdt)
        x = np.asarray(self.rng.standard_normal(shape) * 10.0 ** self.rng.integers(-3, 4))
        specials = self.rng.random(shape) < 0.2
        x[specials] = self.rng.choice(SPECIAL_VALUES, size=int(specials.sum()))
        with np.errstate(over="ignore"):
            return x.astype(npdt)

    def location(self) -> Location | None:
        return self.draw(st.none() | locations)

    # -- ops ----------------------------------------------------------------------------
    def add(self, op: str, operands: list[Value], attrs: dict | None = None, type: TensorType | None = None) -> Value:
        return self.g.add(op, operands, attrs or {}, result=self.draw(names), type=type, loc=self.location())

    def broadcastable(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A shape that broadcasts with ``shape``: a suffix of it with some axes set to 1."""
        keep = self.draw(st.integers(0, len(shape)))
        return tuple(1 if self.draw(st.booleans()) else d for d in shape[len(shape) - keep :])

    def axis(self, rank: int) -> int:
        return self.draw(st.integers(-max(rank, 1), max(rank, 1) - 1))


def unary(allowed: tuple[str, ...]) -> Callable[[RandomGraph, str], None]:
    def gen(b: RandomGraph, op: str) -> None:
        b.add(op, [b.operand(allowed)])

    return gen


def binary(allowed: tuple[str, ...]) -> Callable[[RandomGraph, str], None]:
    def gen(b: RandomGraph, op: str) -> None:
        x = b.operand(allowed)
        y = b.operand((x.type.logical.dtype.name,), shape=b.broadcastable(x.type.shape))
        operands = [x, y] if b.draw(st.booleans()) else [y, x]
        b.add(op, operands)

    return gen


def gen_gelu(b: RandomGraph, op: str) -> None:
    b.add(op, [b.operand(FLOATS)], {"approximate": b.draw(st.sampled_from(["none", "tanh"]))})


def gen_pow(b: RandomGraph, op: str) -> None:
    b.add(op, [b.operand(FLOATS)], {"exponent": b.draw(finite_attrs)})


def gen_clamp(b: RandomGraph, op: str) -> None:
    bound = st.none() | finite_attrs
    b.add(op, [b.operand(NUMERIC)], {"min": b.draw(bound), "max": b.draw(bound)})


def gen_dropout(b: RandomGraph, op: str) -> None:
    b.add(op, [b.operand(ANY)], {"p": b.draw(finite_attrs)})


def gen_cast(b: RandomGraph, op: str) -> None:
    b.add(op, [b.operand(ANY)], {"dtype": b.draw(st.sampled_from(ANY))})


def gen_where(b: RandomGraph, op: str) -> None:
    a = b.operand(ANY)
    cond = b.operand(("bool",), shape=b.broadcastable(a.type.shape))
    other = b.operand((a.type.logical.dtype.name,), shape=b.broadcastable(a.type.shape))
    b.add(op, [cond, a, other] if b.draw(st.booleans()) else [cond, other, a])


def gen_reshape(b: RandomGraph, op: str) -> None:
    x = b.operand(ANY)
    factors = [p for d in x.type.shape for p in _prime_factors(d)]
    shape = [1] * b.draw(st.integers(0 if not factors else 1, 4))
    for p in factors:
        shape[b.draw(st.integers(0, len(shape) - 1))] *= p
    b.add(op, [x], {"shape": shape})


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def gen_permute(b: RandomGraph, op: str) -> None:
    x = b.operand(ANY)
    dims = b.draw(st.permutations(range(x.type.rank)))
    b.add(op, [x], {"dims": [d - x.type.rank if b.draw(st.booleans()) else d for d in dims]})


def gen_slice(b: RandomGraph, op: str) -> None:
    x = b.operand(ANY, min_rank=1)
    bound = st.integers(-10, 10) | st.integers(-(2**70), 2**70)
    attrs = {"axis": b.axis(x.type.rank), "step": b.draw(st.integers(1, 3))}
    for key in ("start", "end"):
        if b.draw(st.booleans()):
            attrs[key] = b.draw(bound)
    b.add(op, [x], attrs)


def gen_select(b: RandomGraph, op: str) -> None:
    x = b.operand(ANY, min_rank=1)
    axis = b.axis(x.type.rank)
    n = x.type.shape[axis]
    b.add(op, [x], {"axis": axis, "index": b.draw(st.integers(-n, n - 1))})


def gen_expand(b: RandomGraph, op: str) -> None:
    x = b.operand(ANY, max_rank=3)
    lead = b.draw(st.lists(st.integers(1, 3), max_size=2))
    shape = [*lead, *(b.draw(st.integers(1, 3)) if d == 1 else d for d in x.type.shape)]
    b.add(op, [x], {"shape": shape})


def gen_concat(b: RandomGraph, op: str) -> None:
    x = b.operand(ANY, min_rank=1)
    axis = b.axis(x.type.rank)
    others = []
    for _ in range(b.draw(st.integers(0, 2))):
        shape = list(x.type.shape)
        shape[axis] = b.draw(st.integers(1, 3))
        others.append(b.operand((x.type.logical.dtype.name,), shape=tuple(shape)))
    b.add(op, [x, *others], {"axis": axis})


def gen_pad(b: RandomGraph, op: str) -> None:
    x = b.operand(ANY)
    pads = []
    for d in x.type.shape:
        before = b.draw(st.integers(-d, 2))
        pads += [before, b.draw(st.integers(-(d + min(before, 0)), 2))]
    value = float_attrs
    if x.type.dtype.is_integer:  # the fill value must fit an integer dtype
        info = np.iinfo(x.type.dtype.np)
        value = st.integers(max(int(info.min), -(2**53)), min(int(info.max), 2**53)).map(float)
    b.add(op, [x], {"pads": pads, "value": b.draw(value)})


def gen_linear(b: RandomGraph, op: str) -> None:
    x = b.operand(("f32",), min_rank=1)
    k, n = x.type.shape[-1], b.draw(st.integers(1, 6))
    weight = b.operand(("f32",), shape=(n, k))
    bias = [b.operand(("f32",), shape=(n,))] if b.draw(st.booleans()) else []
    b.add(op, [x, weight, *bias])


def gen_matmul(b: RandomGraph, op: str) -> None:
    a = b.operand(("f32",), min_rank=1)
    k = a.type.shape[-1]
    if b.draw(st.booleans()):
        shape = (k,)
    else:
        shape = (*b.broadcastable(a.type.shape[:-2]), k, b.draw(st.integers(1, 4)))
    other = b.operand(("f32",), shape=shape)
    b.add(op, [a, other])


def gen_conv2d(b: RandomGraph, op: str) -> None:
    x = b.operand(("f32",), min_rank=4, max_rank=4)
    c, h, w = x.type.shape[1:]
    groups = b.draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    out = groups * b.draw(st.integers(1, 2))
    attrs = {
        "stride": b.draw(st.lists(st.integers(1, 3), min_size=2, max_size=2)),
        "padding": b.draw(st.lists(st.integers(0, 2), min_size=2, max_size=2)),
        "dilation": b.draw(st.lists(st.integers(1, 2), min_size=2, max_size=2)),
        "groups": groups,
    }
    kernel = [b.draw(st.integers(1, 3)) for _ in range(2)]
    for i, size in enumerate((h, w)):
        if conv_out(size, kernel[i], attrs["stride"][i], attrs["padding"][i], attrs["dilation"][i]) < 1:
            kernel[i] = 1  # a 1-wide kernel always fits
    weight = b.operand(("f32",), shape=(out, c // groups, *kernel))
    bias = [b.operand(("f32",), shape=(out,))] if b.draw(st.booleans()) else []
    b.add(op, [x, weight, *bias], attrs)


def gen_pool(b: RandomGraph, op: str) -> None:
    x = b.operand(("f32",), min_rank=4, max_rank=4)
    kernel = [b.draw(st.integers(1, 3)) for _ in range(2)]
    attrs = {
        "kernel": kernel,
        "stride": [b.draw(st.integers(1, 3)) for _ in range(2)],
        "padding": [b.draw(st.integers(0, k // 2)) for k in kernel],
        "ceil_mode": b.draw(st.booleans()),
    }
    if op == "max_pool2d":
        attrs["dilation"] = [b.draw(st.integers(1, 2)) for _ in range(2)]
    else:
        attrs["count_include_pad"] = b.draw(st.booleans())
        attrs["divisor"] = b.draw(st.none() | st.integers(1, 9))
    dilation = attrs.get("dilation", (1, 1))
    for i, size in enumerate(x.type.shape[2:]):
        if conv_out(size, kernel[i], attrs["stride"][i], attrs["padding"][i], dilation[i], attrs["ceil_mode"]) < 1:
            kernel[i], attrs["padding"][i] = 1, 0
    b.add(op, [x], attrs)


def gen_adaptive(b: RandomGraph, op: str) -> None:
    x = b.operand(("f32",), min_rank=4, max_rank=4)
    b.add(op, [x], {"output_size": [b.draw(st.integers(1, 5)) for _ in range(2)]})


def gen_batch_norm(b: RandomGraph, op: str) -> None:
    x = b.operand(("f32",), min_rank=2)
    params = [b.operand(("f32",), shape=(x.type.shape[1],)) for _ in range(4)]
    b.add(op, [x, *params], {"eps": b.draw(finite_attrs)})


def gen_layer_norm(b: RandomGraph, op: str) -> None:
    x = b.operand(("f32",), min_rank=1)
    dims = b.draw(st.integers(1, min(2, x.type.rank)))
    affine = [b.operand(("f32",), shape=x.type.shape[x.type.rank - dims :]) for _ in range(b.draw(st.integers(0, 2)))]
    b.add(op, [x, *affine], {"dims": dims, "eps": b.draw(finite_attrs)})


def gen_softmax(b: RandomGraph, op: str) -> None:
    x = b.operand(FLOATS)
    b.add(op, [x], {"axis": b.axis(x.type.rank)})


def gen_embedding(b: RandomGraph, op: str) -> None:
    weight = b.operand(("f32",), min_rank=2, max_rank=2)
    shape = b.draw(st.lists(st.integers(1, 3), max_size=2).map(tuple))
    # indices are constants: random inputs would be out of range
    indices = b.rng.integers(0, weight.type.shape[0], size=shape).astype(np.int64)
    b.add(op, [b.g.const(b.draw(names), indices), weight])


def gen_indexing(b: RandomGraph, op: str) -> None:
    # indices are constants in range (random inputs would be out of range)
    x = b.operand(("f32",), min_rank=1)
    axis = b.axis(x.type.rank)
    size = x.type.shape[axis]
    if op == "gather":
        shape = [b.draw(st.integers(1, d)) for d in x.type.shape]
        shape[axis] = b.draw(st.integers(1, 4))
    else:
        shape = b.draw(st.lists(st.integers(1, 3), max_size=2))
    index = b.rng.integers(0, size, size=tuple(shape)).astype(np.int64)
    b.add(op, [x, b.g.const(b.draw(names), index)], {"axis": axis})


def gen_cumsum(b: RandomGraph, op: str) -> None:
    x = b.operand(NUMERIC, min_rank=1)
    b.add(op, [x], {"axis": b.axis(x.type.rank)})


def gen_recurrent(b: RandomGraph, op: str) -> None:
    steps, batch, hidden = (b.draw(st.integers(1, 3)) for _ in range(3))
    gates = 4 if op == "lstm" else 3
    gx = b.operand(("f32",), shape=(steps, batch, gates * hidden))
    states = [b.operand(("f32",), shape=(batch, hidden)) for _ in range(2 if op == "lstm" else 1)]
    w = b.operand(("f32",), shape=(gates * hidden, hidden))
    bias = b.operand(("f32",), shape=(gates * hidden,))
    attrs = {"reverse": b.draw(st.booleans()), "int8_state": b.draw(st.booleans())}
    if op == "lstm":
        attrs["cell"] = b.draw(st.booleans())
    b.add(op, [gx, *states, w, bias], attrs)


def gen_attention(b: RandomGraph, op: str) -> None:
    q = b.operand(("f32",), min_rank=2)
    *batch, _, e = q.type.shape
    s = b.draw(st.integers(1, 4))
    k = b.operand(("f32",), shape=(*b.broadcastable(tuple(batch)), s, e))
    v = b.operand(("f32",), shape=(*b.broadcastable(tuple(batch)), s, b.draw(st.integers(1, 4))))
    attrs = {"scale": b.draw(st.none() | finite_attrs)}
    mask = []
    if b.draw(st.booleans()):
        scores = (*batch, q.type.shape[-2], s)
        mask = [b.operand((b.draw(st.sampled_from(["bool", "f32"])),), shape=b.broadcastable(scores))]
    else:
        attrs["is_causal"] = b.draw(st.booleans())
    b.add(op, [q, k, v, *mask], attrs)


def gen_reduce(b: RandomGraph, op: str) -> None:
    x = b.operand(FLOATS if op == "mean" else NUMERIC)
    rank = x.type.rank
    axes = b.draw(st.lists(st.integers(0, max(rank, 1) - 1), unique=True, max_size=rank))
    b.add(
        op,
        [x],
        {"axes": [a - rank if rank and b.draw(st.booleans()) else a for a in axes], "keepdim": b.draw(st.booleans())},
    )


def gen_argmax(b: RandomGraph, op: str) -> None:
    x = b.operand(NUMERIC)
    b.add(op, [x], {"axis": b.axis(x.type.rank), "keepdim": b.draw(st.booleans())})


def gen_quantize(b: RandomGraph, op: str) -> None:
    x = b.operand(("f32",))
    b.add(op, [x], type=b.per_tensor_quant(x.type.shape))


def gen_dequantize(b: RandomGraph, op: str) -> None:
    quantised = [v for v in b.g.values() if v.type.encoding is not None and not v.type.encoding.needs_components]
    x = b.draw(st.sampled_from(quantised)) if quantised and b.draw(st.booleans()) else b.operand(("f32",))
    b.add(op, [x])


def gen_const(b: RandomGraph, op: str) -> None:
    # constants appear as operands everywhere; here also zero-size and non-f32 ones, which no op needs
    shape = b.draw(st.lists(st.integers(0, 5), max_size=3).map(tuple))
    b.new_value(shape, b.draw(st.sampled_from(ANY)), as_const=True)


GENERATORS: dict[str, Callable[[RandomGraph, str], None]] = {
    **dict.fromkeys(
        ["sigmoid", "tanh", "silu", "hardswish", "hardsigmoid", "exp", "log", "sqrt", "rsqrt", "erf"], unary(FLOATS)
    ),
    **dict.fromkeys(["relu", "abs", "neg"], unary(NUMERIC)),
    **dict.fromkeys(["add", "mul", "maximum", "minimum"], binary(ANY)),
    **dict.fromkeys(["sub", "div"], binary(NUMERIC)),
    **dict.fromkeys(["eq", "ne", "lt", "le", "gt", "ge"], binary(ANY)),
    **dict.fromkeys(["logical_and", "logical_or"], binary(("bool",))),
    "logical_not": unary(("bool",)),
    "gelu": gen_gelu,
    "pow": gen_pow,
    "clamp": gen_clamp,
    "dropout": gen_dropout,
    "cast": gen_cast,
    "where": gen_where,
    "reshape": gen_reshape,
    "permute": gen_permute,
    "slice": gen_slice,
    "select": gen_select,
    "expand": gen_expand,
    "concat": gen_concat,
    "pad": gen_pad,
    "linear": gen_linear,
    "matmul": gen_matmul,
    "conv2d": gen_conv2d,
    "max_pool2d": gen_pool,
    "avg_pool2d": gen_pool,
    "adaptive_avg_pool2d": gen_adaptive,
    "batch_norm": gen_batch_norm,
    "layer_norm": gen_layer_norm,
    "softmax": gen_softmax,
    "log_softmax": gen_softmax,
    "embedding": gen_embedding,
    "gather": gen_indexing,
    "index_select": gen_indexing,
    "cumsum": gen_cumsum,
    "lstm": gen_recurrent,
    "gru": gen_recurrent,
    "scaled_dot_product_attention": gen_attention,
    **dict.fromkeys(["mean", "sum", "amax"], gen_reduce),
    "argmax": gen_argmax,
    "quantize": gen_quantize,
    "dequantize": gen_dequantize,
    "const": gen_const,
}


@st.composite
def graphs(draw: Callable, max_ops: int = 8) -> Graph:
    """A random valid graph of up to ``max_ops`` op steps (constants come along as operands)."""
    b = RandomGraph(draw)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(sorted(GENERATORS)))
        GENERATORS[op](b, op)
    values = list(b.g.values())
    b.g.set_outputs([values[-1], *draw(st.lists(st.sampled_from(values), max_size=2))])
    return b.g


def test_every_registered_op_has_a_generator():
    missing = sorted(set(all_ops()) - set(GENERATORS))
    assert not missing, f"ops without a random-graph generator in {__name__}.GENERATORS: {missing}"


# -- printing and parsing ---------------------------------------------------------------------


@settings(max_examples=150)
@given(g=graphs())
def test_printed_graph_parses_back_to_the_same_text(g):
    text = str(mcir.verify(g))
    assert str(mcir.parse(text)) == text


def random_inputs(g: Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for v in g.inputs:
        npdt = v.type.dtype.np
        if v.type.dtype.is_integer:
            info = np.iinfo(npdt)
            out.append(rng.integers(info.min, info.max, size=v.type.shape, endpoint=True).astype(npdt))
        elif v.type.dtype == dtypes.boolean:
            out.append(rng.random(v.type.shape) < 0.5)
        else:
            x = np.asarray(rng.standard_normal(v.type.shape) * 4)
            x[rng.random(v.type.shape) < 0.1] = np.nan
            out.append(x.astype(npdt))
    return out


def stored_bytes(out: np.ndarray | dict[str, np.ndarray]) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """An output's identity: component, dtype, shape and bytes (per-axis constants are dicts).

    All NaNs count as one: the text has a single ``nan``, so a NaN attribute's sign and payload
    (which hypothesis varies, and which a NaN result inherits) do not survive printing.
    """
    parts = out if isinstance(out, dict) else {"data": out}
    identity = []
    for key, a in sorted(parts.items()):
        a = np.array(a)  # a copy, 0-d arrays included
        if a.dtype.kind == "f" or a.dtype == ml_dtypes.bfloat16:
            a[np.isnan(a)] = np.nan
        identity.append((key, str(a.dtype), a.shape, a.tobytes()))
    return identity


@given(g=graphs(), seed=st.integers(0, 2**16))
def test_saved_and_loaded_graph_prints_and_computes_identically(g, seed):
    with tempfile.TemporaryDirectory() as tmp:
        loaded = mcir.load(mcir.save(g, Path(tmp) / "model"))
    assert str(loaded) == str(g)
    inputs = random_inputs(g, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nan/inf arithmetic and casts of nan
        want = mcir.interpret(g, *inputs)
        got = mcir.interpret(loaded, *inputs)
    for i, (a, b) in enumerate(zip(got, want)):
        assert stored_bytes(a) == stored_bytes(b), f"output {i} differs after save/load:\n{a}\n{b}\n{g}"


# -- the parser under fuzzing ----------------------------------------------------------------------

# fragments that reach the parser's corners: malformed strings and encodings, huge and odd numbers,
# deep nesting, keywords out of place
# fmt: off
FRAGMENTS = [
    "%", "@", '"', "\\", "[", "]", "{", "}", "<", ">", "(", ")", ",", ":", "=", "->", "#", "\n", " ", "//",
    "#quant<axis=0>", "#quant<scale=0.5>", "#quant<scale=0.5, zero_point=300>", '#quant<axis="a">',
    "#quant<scale=[1]>", "#quant<zero_point=none>", "#quant<scale=true>", "#quant<scale=0.1, axis=0>", "#foo<>",
    "dense<[1, 2]>", "dense<[]>", "dense<[true]>", "dense<[nan]>", "dense<[1e999]>", 'loc("a", "b")',
    'loc("\\q", "")', '"\\u12"', '"a\nb"', '"\\ud800"', "-1", "0", "+3", "1e999", "-inf", "nan", "none", "true",
    "1" * 30, "9" * 5000, "[" * 3000 + "]" * 3000, "[[1], [2]]", "f32[]", "bool[2]", "b1[8]", "i8[2,2]",
    "const", "return", "graph", "dense", "loc", "relu", "conv2d", "%x", "%y", "@g", "{axis=-1}", "{dims=[2, 1]}",
    "{min=" + "9" * 400 + "}", '{dtype="b1"}', '{approximate="x"}', "{shape=[-1]}", "{pads=[]}",
]
# fmt: on


# words the text form is made of: a word swapped for another keeps the syntax and tests the semantics
WORDS = sorted(
    {
        *all_ops(),
        *dtypes.ALL,
        "quant",
        "graph",
        "const",
        "dense",
        "loc",
        "return",
        "none",
        "true",
        "false",
        *(attr for op in all_ops().values() for attr in op.attrs),
    }
)
numbers = (
    st.integers(-3, 3) | st.integers(-(2**70), 2**70) | st.floats() | st.sampled_from(["9" * 5000, "1e999"])
).map(str)
TOKEN = re.compile(r"(?P<number>[-+]?\d[\w.+\-]*)|(?P<word>[A-Za-z_]\w*)|(?P<value>%[\w.$\-]+)|(?P<other>\S)")


@st.composite
def mutated_texts(draw: Callable) -> str:
    """The text of a random graph after a few random edits, most of which keep it lexically valid."""
    text = str(draw(graphs(max_ops=4)))
    for _ in range(draw(st.integers(1, 3))):
        tokens = list(TOKEN.finditer(text))
        m = draw(st.sampled_from(tokens))
        kind = draw(st.sampled_from(["number", "word", "value", "token", "fragment", "delete", "line"]))
        if kind in ("number", "word", "value") and m.lastgroup != kind:
            m = draw(st.sampled_from([t for t in tokens if t.lastgroup == kind] or tokens))
        if kind == "number":
            new = draw(numbers)
        elif kind == "word":
            new = draw(st.sampled_from(WORDS))
        elif kind == "value":
            new = draw(st.sampled_from([t.group() for t in tokens if t.lastgroup == "value"] + ["%new"]))
        elif kind == "token":
            new = draw(st.sampled_from([t.group() for t in tokens]) | st.text(max_size=3))
        elif kind == "fragment":
            new = m.group() + draw(st.sampled_from(FRAGMENTS))
        elif kind == "delete":
            new = ""
        else:  # a line dropped, duplicated or moved: SSA order, duplicate names, missing return
            lines = text.split("\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            line = lines.pop(i)
            if draw(st.booleans()):
                lines.insert(j, line)
            if draw(st.booleans()):
                lines.insert(j, line)
            text = "\n".join(lines)
            continue
        text = text[: m.start()] + new + text[m.end() :]
    return text


POSITION = re.compile(r"^fuzz\.mcir:\d+:\d+: ")


@settings(max_examples=400)
@given(text=mutated_texts())
def test_parser_raises_only_mcir_errors_with_a_position(text):
    try:
        mcir.parse(text, source="fuzz.mcir")
    except mcir.McirError as e:
        event("syntax error" if "unexpected" in str(e) else "semantic error")
        assert POSITION.match(str(e)), f"no file:line:col in {type(e).__name__}: {e}"
    else:
        event("parsed")


# "¦" marks where a fragment goes: inside a shape, an attribute value, a type, a string, between ops
MARKED = (
    'graph @g(%x: f32[2¦]) -> (f32[2]) {\n  %y = clamp(%x) {min=¦0.0} : f32[2]¦ loc("m¦", "f.py:1")\n¦  return %y\n}\n'
)


@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_parser_meets_each_fragment_anywhere_with_a_positioned_mcir_error(fragment):
    parts = MARKED.split("¦")
    for i in range(1, len(parts)):
        text = "".join(parts[:i]) + fragment + "".join(parts[i:])
        try:
            mcir.parse(text, source="fuzz.mcir")
        except mcir.McirError as e:
            assert POSITION.match(str(e)), f"no file:line:col in {type(e).__name__}: {e}"


@pytest.mark.parametrize(
    "text",
    [
        "graph @g(%x: i8[2] #quant<axis=0>) -> (f32[2]) {\n  %y = relu(%x) : f32[2]\n  return %y\n}\n",
        "graph @g(%x: f32[2]) -> (i8[2] #quant<axis=0>) {\n  %q = quantize(%x) : i8[2] #quant<axis=0>\n  return %q\n}",
    ],
    ids=["input", "op-result"],
)
def test_only_constants_may_have_per_axis_quantised_types(text):
    # the scales of a per-axis type are constant data: an input or a computed value cannot carry them
    with pytest.raises(mcir.ParseError, match="only a constant can have the type i8"):
        mcir.parse(text, source="fuzz.mcir")


def test_float_attribute_printing_keeps_the_sign_of_zero():
    g = Graph("g")
    x = g.add_input("x", TensorType((2,), dtypes.f32))
    g.set_outputs([g.add("pad", [x], {"pads": [1, 0], "value": -0.0})])
    (y,) = mcir.interpret(mcir.parse(str(g)), np.ones(2, np.float32))
    assert math.copysign(1.0, y[0]) == -1.0
