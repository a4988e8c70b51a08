"""The fuzzing harness of issue #17: real graphs, printed and saved, then mutated.

Seeds are small graphs that every encoding and the common ops appear in (an MLP and a conv net,
compressed by the real passes: quant8, prune to CSR and 2:4, binarize, ternarize, cluster, int4).
A case is a seed plus one mutation of

* its text (a number, parameter value, dimension or attribute replaced by a hostile value: 0, -1,
  2.7, inf, nan, a string, none, 2^62, 1e400, a list; or a line deleted or duplicated), or
* one element of one component array of an encoded constant (an index, a row pointer, a padding
  word, a scale) set to an extreme value of its dtype,

run through parse -> verify -> interpret and, when asked, compile + run. The contract: every
failure is a ``McirError``; anything else (ValueError, IndexError, a crash) is a bug.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

import mcir
from mcir.errors import McirError
from mcir.ir import Graph, _freeze_data
from mcir.printer import print_graph
from mcir.sample_inputs import random_batches

#: values a text mutation substitutes (the audit's findings and their neighbours)
HOSTILE_VALUES = (
    "0", "-1", "1", "2.7", "inf", "-inf", "nan", '"a"', "none", "true", "[1, 2]", "4611686018427387904",
    "99999999999999999999", "1e400", "-0.0", "256", "65", "1e-45",
)  # fmt: skip

MLP = """graph @mlp(%x: f32[2,64]) -> (f32[2,10]) {
  %w1 = const : f32[32,64]
  %b1 = const : f32[32]
  %h = linear(%x, %w1, %b1) : f32[2,32]
  %r = relu(%h) : f32[2,32]
  %w2 = const : f32[10,32]
  %b2 = const : f32[10]
  %o = linear(%r, %w2, %b2) : f32[2,10]
  %p = softmax(%o) {axis=1} : f32[2,10]
  return %p
}"""

CONV = """graph @conv(%x: f32[1,3,8,8]) -> (f32[1,10]) {
  %w1 = const : f32[8,3,3,3]
  %b1 = const : f32[8]
  %c = conv2d(%x, %w1, %b1) {padding=[1, 1]} : f32[1,8,8,8]
  %r = relu(%c) : f32[1,8,8,8]
  %m = max_pool2d(%r) {kernel=[2, 2], stride=[2, 2]} : f32[1,8,4,4]
  %f = reshape(%m) {shape=[1, 128]} : f32[1,128]
  %w2 = const : f32[10,128]
  %o = linear(%f, %w2) : f32[1,10]
  %s = clamp(%o) {min=-3.0, max=3.0} : f32[1,10]
  return %s
}"""

PIPELINES = (
    "",
    "fold,quant8",
    "prune(sparsity=0.7, skip=none, storage=sparse)",
    "prune(pattern=2:4, skip=none, storage=sparse)",
    "binarize(skip=none)",
    "ternarize(skip=none)",
    "cluster(bits=4, skip=none)",
    "quantize(bits=4, skip=none)",
)


def _with_weights(text: str, seed: int) -> Graph:
    g = mcir.parse(text, verify=False)
    rng = np.random.default_rng(seed)
    for op in g.constants():
        t = op.result.type
        op.data = _freeze_data((rng.standard_normal(t.shape) * 0.3).astype(np.float32), t)
    return mcir.verify(g)


@dataclass(frozen=True)
class Seed:
    """A real graph: its printed text and its constants' stored components."""

    name: str
    text: str
    weights: dict[str, dict[str, np.ndarray]]  # constant name -> component -> array


def _seed(name: str, g: Graph) -> Seed:
    weights = {}
    for op in g.constants():
        data = op.data if isinstance(op.data, dict) else {"data": op.data}
        weights[op.result.name] = {k: np.array(v) for k, v in data.items()}
    return Seed(name, print_graph(g), weights)


@cache
def seeds() -> tuple[Seed, ...]:
    """Every base graph through every pipeline that applies to it (built once per process)."""
    out = []
    for base_name, text in (("mlp", MLP), ("conv", CONV)):
        base = _with_weights(text, 0)
        batches = random_batches(base, 4, seed=1)
        for pipeline in PIPELINES:
            g = mcir.run_passes(base, pipeline, calibration=batches) if pipeline else base
            out.append(_seed(f"{base_name}:{pipeline or 'f32'}", g))
    return tuple(out)


@dataclass(frozen=True)
class Case:
    """One mutated graph; ``describe`` says what was changed (for the failure message)."""

    seed: Seed
    text: str
    weights: dict[str, dict[str, np.ndarray]]
    describe: str


_TOKEN = re.compile(r'(?<=[=\[,(<: ])(-?[0-9][0-9.e+-]*|"[^"]*"|none|true|false|inf|nan)(?=[\],)>} \n])')


def mutate_text(seed: Seed, pick: int, value: str) -> Case:
    """Replace the ``pick``-th literal token of the text (numbers, dims, strings, none...) by ``value``."""
    tokens = list(_TOKEN.finditer(seed.text))
    m = tokens[pick % len(tokens)]
    text = seed.text[: m.start()] + value + seed.text[m.end() :]
    return Case(seed, text, seed.weights, f"{seed.name}: token {m.group()!r} at {m.start()} -> {value!r}")


def mutate_line(seed: Seed, pick: int, duplicate: bool) -> Case:
    """Delete or duplicate one line of the body."""
    lines = seed.text.split("\n")
    i = 1 + pick % max(1, len(lines) - 2)
    new = lines[: i + 1] + lines[i:] if duplicate else lines[:i] + lines[i + 1 :]
    return Case(seed, "\n".join(new), seed.weights, f"{seed.name}: line {i} {'duplicated' if duplicate else 'deleted'}")


def extremes(dtype: np.dtype) -> list[Any]:
    if dtype.kind == "f":
        return [np.nan, np.inf, -np.inf, 0.0, -1.0, 3.4e38]
    info = np.iinfo(dtype)
    return [info.min, info.max, 0, 1, -1 if info.min < 0 else info.max // 2 + 1]


def mutate_component(seed: Seed, pick: int, element: int, which: int) -> Case:
    """Set one element of one stored component to an extreme value of its dtype."""
    slots = [(name, comp) for name, parts in seed.weights.items() for comp in parts if parts[comp].size]
    name, comp = slots[pick % len(slots)]
    weights = {k: dict(v) for k, v in seed.weights.items()}
    arr = np.array(weights[name][comp])
    flat = arr.reshape(-1)
    values = extremes(arr.dtype)
    value = values[which % len(values)]
    index = element % flat.size
    flat[index] = value
    weights[name][comp] = arr
    return Case(seed, seed.text, weights, f"{seed.name}: %{name}::{comp}[{index}] = {value!r}")


def build(case: Case) -> Graph:
    """Parse and load a case as ``mcir.load`` does: text, then components checked, then verify."""
    g = mcir.parse(case.text, verify=False)
    for op in g.constants():
        if op.data is None and op.result.name in case.weights:
            parts = case.weights[op.result.name]
            t = op.result.type
            op.data = _freeze_data(
                parts if t.encoding is not None and t.encoding.needs_components else parts.get("data"), t
            )
    return mcir.verify(g)


#: interpret only graphs this small (elements over all values): a mutated dimension may ask for gigabytes
MAX_INTERPRET_ELEMENTS = 1 << 20


def run_case(case: Case, compile_dir: Path | None = None) -> str:
    """Run a case; return how far it got ("refused", "interpreted", "compiled"...). Raises any
    non-McirError exception: the bug the fuzzer looks for."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            g = build(case)
        except McirError:
            return "refused"
        if any(op.data is None for op in g.constants()):
            return "verified (constants without data)"
        if sum(v.type.numel for v in g.values()) > MAX_INTERPRET_ELEMENTS:
            return "verified (too large to run)"
        inputs = random_batches(g, 1, seed=2)[0]
        try:
            ref = mcir.interpret(g, *inputs)
        except McirError:
            return "refused by the interpreter"
        if compile_dir is None:
            return "interpreted"
        try:
            lib = mcir.compile(g, compile_dir / "case")
        except McirError:
            return "refused by the compiler"
        native = lib(*inputs)
        worst = max((_difference(n, np.asarray(r)) for n, r in zip(native, ref)), default=0.0)
        # reported, not raised: int8 bias rounding and sparse layers fed inf/NaN now have one semantics
        # (docs/ir.md, "Edge values"), but a contraction whose partial sums overflow f32 while its exact
        # result does not still depends on the order of the sum; the figure goes into the fuzz report
        return "compiled" if worst <= 1e-4 else "compiled, DIFFERS from the interpreter"


def _difference(native: np.ndarray, ref: np.ndarray) -> float:
    """Relative max |Δ| of float outputs (NaN positions must agree: inf otherwise); integer outputs
    count ±1 LSB (the requantisation's rounding) as equal."""
    if ref.dtype.kind == "f":
        if not np.array_equal(np.isnan(native), np.isnan(ref)):
            return float("inf")
        finite = np.isfinite(ref)
        if not finite.any():
            return 0.0
        scale = max(float(np.abs(ref[finite]).max()), 1e-30)
        return float(np.abs(native[finite].astype(np.float64) - ref[finite]).max()) / scale
    lsb = np.abs(native.astype(np.int64) - ref.astype(np.int64)).max(initial=0)
    return 0.0 if lsb <= 1 else float(lsb)
