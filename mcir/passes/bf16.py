"""bf16: linear layers compute on bf16 inputs with f32 accumulation; weights stored in bf16.

Each selected ``linear`` gets its weight rounded to bf16 (half the bytes) and its input rounded
to bf16 by a ``quantize`` into ``#round`` (one per activation, however many layers read it); the
products are summed in f32 and the result, bias and everything between layers stay f32. Before::

    %fc1.weight = const : f32[256,784]
    %fc1 = linear(%x, %fc1.weight, %fc1.bias) : f32[1,256]

After ``bf16``::

    %fc1.weight = const : bf16[256,784]
    %x.bf = quantize(%x) : bf16[1,784] #round<>
    %fc1 = linear(%x.bf, %fc1.weight, %fc1.bias) : f32[1,256]

``y[m,n] = b[n] + sum_k bf(x[m,k]) * bf(w[n,k])`` with ``bf`` = round to nearest even to 8
significant bits: each factor has a relative error <= 2^-9 (normal range), so each product
<= 2^-8 + 2^-18, and ``|y - y_f32| <= (2^-8 + 2^-18) * sum_k |x[m,k] w[n,k]|`` up to f32 summation error. On
the test and benchmark models that is an SQNR of 47-56 dB (tests/test_bf16_pass.py states the bounds).

``conv2d`` layers (``ops`` includes it) keep f32 activations and compute: their weights are
stored in bf16 and widened as they stream (the ``half(dtype=bf16)`` kernel), because mcir has no
bf16-input convolution kernel yet. ``matmul`` of two activations (attention) stays f32.

A layer is converted only if the backend has a kernel for the new types (``mcir.stats.try_kernel``);
a weight other ops also read stays f32 for them (the layer gets its own bf16 copy).

Preserves: approximate; the report measures max |delta| and SQNR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mcir import dtypes
from mcir.analysis.layers import check_skip, select_layers
from mcir.encodings import Round
from mcir.errors import McirError
from mcir.ir import Graph, Op, Value
from mcir.pass_base import Pass, PassContext, option
from mcir.patterns import constant_array
from mcir.rewriter import Rewriter
from mcir.stats import try_kernel
from mcir.types import TensorType

#: the ops the pass can convert, and what it does to each
SUPPORTED = {"linear": "bf16 inputs and weights, f32 accumulation", "conv2d": "bf16 weights only"}


@dataclass(frozen=True)
class BF16(Pass):
    """Linear layers on bf16 inputs and bf16 weights with f32 accumulation (AMX / AVX-512 BF16 kernels)."""

    name: ClassVar[str] = "bf16"
    preserves: ClassVar[str] = "approximate: inputs and weights rounded to bf16 (2^-9 relative each), f32 sums"
    ops: str = option("linear,conv2d", "comma-separated ops to convert: linear (bf16 compute), conv2d (bf16 weights)")
    skip: str = option("none", "layers kept in f32: none, first, last, ends or a regex")
    min_elements: int = option(1024, "leave weights with fewer elements in f32")

    def __post_init__(self) -> None:
        check_skip(self.skip)
        bad = [o for o in self.op_names() if o not in SUPPORTED]
        if bad or not self.op_names():
            raise McirError(
                f"bf16: ops={self.ops!r}: {', '.join(bad) or 'empty'} not supported; choose from "
                + ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items())
            )
        if self.min_elements < 1:
            raise McirError(f"bf16: min_elements={self.min_elements} must be >= 1")

    def op_names(self) -> tuple[str, ...]:
        return tuple(o.strip() for o in self.ops.split(",") if o.strip())

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        rw = Rewriter(graph)
        rounded: dict[int, Value] = {}  # id(activation) -> its quantize into #round
        wanted = self.op_names()
        for op in select_layers(graph, self.skip):
            x, w = op.operands[0], op.operands[1]
            if op.name not in wanted or w.type.dtype != dtypes.f32 or w.type.numel < self.min_elements:
                continue
            if x.type.encoding is not None or x.type.dtype != dtypes.f32:
                continue  # already converted by another pass (int8, dynamic): leave it
            wt = TensorType(w.type.shape, dtypes.bf16)
            stored = constant_array(w).astype(dtypes.bf16.np)
            inputs = {1: (wt, stored)}
            if op.name == "linear":
                inputs[0] = (TensorType(x.type.shape, dtypes.bf16, Round()), None)
            trial = try_kernel(op, inputs)
            if not trial.ok:
                ctx.warn(f"bf16: {_where(op)} stays f32: {trial.problem}")
                continue
            if len(w.uses) == 1:
                rw.set_data(w.producer, stored, wt)
            else:  # also read by another op (a tied table): this layer gets its own bf16 copy
                rw.set_operand(op, 1, rw.const(f"{w.name}.bf16", stored, wt))
            if op.name == "linear":
                rw.set_operand(op, 0, _rounded_input(rw, graph, x, rounded))


def _rounded_input(rw: Rewriter, graph: Graph, x: Value, memo: dict[int, Value]) -> Value:
    """``quantize(x) : bf16 #round<>``, one per value, right after ``x`` is made."""
    if id(x) not in memo:
        t = TensorType(x.type.shape, dtypes.bf16, Round())
        anchor = x.producer
        if anchor is None or anchor.name == "const":
            first = next(o for o in graph.ops if o.name != "const")
            memo[id(x)] = rw.insert_before(first, "quantize", [x], type=t, result=f"{x.name}.bf")
        else:
            memo[id(x)] = rw.insert_after(anchor, "quantize", [x], type=t, result=f"{x.name}.bf")
    return memo[id(x)]


def _where(op: Op) -> str:
    return f"{op.name} %{op.result.name}" + (f" ({op.loc.module})" if op.loc and op.loc.module else "")
