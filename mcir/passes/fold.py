"""fold: exact simplifications — constant folding, BatchNorm folding, no-op removal, CSE, DCE.

Before::

    %w = const : f32[32,3,3,3]
    %c = conv2d(%x, %w) {padding=[1, 1]} : f32[1,32,32,32]
    %bn = batch_norm(%c, %g, %beta, %mean, %var) : f32[1,32,32,32]
    %d = dropout(%bn) {p=0.1} : f32[1,32,32,32]
    %r = reshape(%d) {shape=[1, 32, 32, 32]} : f32[1,32,32,32]

After::

    %w = const : f32[32,3,3,3]             # w' = w * gamma / sqrt(var + eps) per output channel
    %w.bias = const : f32[32]              # b' = (b - mean) * gamma / sqrt(var + eps) + beta
    %bn = conv2d(%x, %w, %w.bias) {padding=[1, 1]} : f32[1,32,32,32]

Preserves: exact up to float rounding (BatchNorm folding reassociates one multiply:
outputs agree within ~1e-6 relative); every other rule is bit-exact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mcir.interp import Interpreter
from mcir.ir import Graph, Op
from mcir.pass_base import Pass, PassContext, option
from mcir.patterns import Match, Pat, RewritePattern, RuleSet, apply_rules, constant_array
from mcir.rewriter import Rewriter, dead_code_elimination

X = Pat.var("x")


def _same_type_as_x(m: Match) -> bool:
    """The rewrite is a no-op only if x already has the result's type (no broadcasting)."""
    return m.x.type == m.root.result.type


def _identity_perm(m: Match) -> bool:
    return tuple(m.root.attrs["dims"]) == tuple(range(len(m.root.attrs["dims"])))


def _whole_slice(m: Match) -> bool:
    return m.root.result.type.shape == m.x.type.shape


def _compose_permutes(m: Match, rw: Rewriter):
    inner, outer = m.op("inner").attrs["dims"], m.root.attrs["dims"]
    return rw.insert_before(m.root, "permute", [m.x], {"dims": [inner[d] for d in outer]})


def _merge_reshapes(m: Match, rw: Rewriter):
    return rw.insert_before(m.root, "reshape", [m.x], {"shape": m.root.attrs["shape"]})


NOOPS = RuleSet(
    "fold.noops",
    [
        # dropout(x) -> x   (inference semantics)
        (Pat("dropout", X), lambda m, rw: m.x),
        # reshape(x) -> x   when the shape is unchanged
        (Pat("reshape", X, where=_same_type_as_x), lambda m, rw: m.x),
        # reshape(reshape(x)) -> reshape(x)
        (Pat("reshape", Pat("reshape", X, name="inner")), _merge_reshapes),
        # permute(x) -> x   when dims are the identity
        (Pat("permute", X, where=_identity_perm), lambda m, rw: m.x),
        # permute(permute(x)) -> permute(x) with composed dims
        (Pat("permute", Pat("permute", X, name="inner")), _compose_permutes),
        # expand(x) -> x   when the shape is unchanged
        (Pat("expand", X, where=_same_type_as_x), lambda m, rw: m.x),
        # cast(x) -> x   when the dtype is unchanged
        (Pat("cast", X, where=_same_type_as_x), lambda m, rw: m.x),
        # slice(x) -> x   when it keeps the whole axis
        (Pat("slice", X, where=_whole_slice), lambda m, rw: m.x),
        # concat(x) -> x   with a single operand
        (Pat("concat", X), lambda m, rw: m.x),
        # x * 1 -> x,  1 * x -> x
        (Pat("mul", X, Pat.const(value=1), commutative=True, where=_same_type_as_x), lambda m, rw: m.x),
        # x + 0 -> x,  0 + x -> x
        (Pat("add", X, Pat.const(value=0), commutative=True, where=_same_type_as_x), lambda m, rw: m.x),
        # x - 0 -> x
        (Pat("sub", X, Pat.const(value=0), where=_same_type_as_x), lambda m, rw: m.x),
        # x / 1 -> x
        (Pat("div", X, Pat.const(value=1), where=_same_type_as_x), lambda m, rw: m.x),
        # neg(neg(x)) -> x
        (Pat("neg", Pat("neg", X)), lambda m, rw: m.x),
        # relu(relu(x)) -> relu(x)
        (Pat("relu", Pat("relu", X, name="inner")), lambda m, rw: m["inner"]),
        # dequantize(quantize(x)) stays (it rounds); quantize(dequantize(q)) -> q   with the same encoding
        (Pat("quantize", Pat("dequantize", X), where=_same_type_as_x), lambda m, rw: m.x),
    ],
)


def _float_const(v) -> bool:
    return v.is_constant and v.producer.data is not None and v.type.encoding is None and v.type.dtype.is_float


class FoldBatchNorm(RewritePattern):
    """batch_norm(conv2d(x, w, b)) -> conv2d(x, w', b'); batch_norm(linear(x, w, b)) -> linear(x, w', b')
    for a rank-2 linear (BatchNorm1d over features)."""

    roots = frozenset({"batch_norm"})
    name = "batch_norm(conv2d|linear(x, w, b)) -> conv2d|linear(x, w', b')"

    def match_and_rewrite(self, op: Op, rw: Rewriter) -> bool:
        src = op.operands[0]
        layer = src.producer
        if layer is None or layer.name not in ("conv2d", "linear") or len(src.uses) != 1:
            return False
        if any(v is src for v in rw.graph.outputs):
            return False
        if layer.name == "linear" and src.type.rank != 2:
            return False  # BatchNorm1d on [N, L, C] normalises L, not the linear's features
        w = layer.operands[1]
        b = layer.operands[2] if len(layer.operands) == 3 else None
        params = op.operands[1:]
        if not _float_const(w) or (b is not None and not _float_const(b)) or not all(map(_float_const, params)):
            return False
        gamma, beta, mean, var = (constant_array(v).astype(np.float64) for v in params)
        scale = gamma / np.sqrt(var + op.attrs["eps"])
        wf = constant_array(w).astype(np.float64)
        new_w = (wf * scale.reshape((-1,) + (1,) * (wf.ndim - 1))).astype(np.float32)
        bias0 = constant_array(b).astype(np.float64) if b is not None else 0.0
        new_b = ((bias0 - mean) * scale + beta).astype(np.float32)
        w_val = self._reuse_or_new(rw, w, new_w, w.name)
        b_val = (
            self._reuse_or_new(rw, b, new_b, _bias_name(w.name))
            if b is not None
            else rw.const(_bias_name(w.name), new_b)
        )
        new = rw.insert_before(op, layer.name, [layer.operands[0], w_val, b_val], layer.attrs, loc=layer.loc)
        rw.replace_op(op, new)
        return True

    @staticmethod
    def _reuse_or_new(rw: Rewriter, value, data: np.ndarray, name: str):
        if len(value.uses) == 1:  # only this layer reads it: update in place, keep the name
            rw.set_data(value.producer, data)
            return value
        return rw.const(name, data)


def _bias_name(weight_name: str) -> str:
    stem = weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name
    return f"{stem}.bias"


class ConstantFold(RewritePattern):
    """op(const, const, ...) -> const, evaluated by the reference interpreter.

    Skipped when the result would be much larger than its operands (e.g. an expand of
    a scalar), since that would grow the library instead of shrinking it.
    """

    roots = None
    name = "op(const...) -> const"

    def __init__(self, max_growth_elements: int) -> None:
        self.max_growth = max_growth_elements

    def match_and_rewrite(self, op: Op, rw: Rewriter) -> bool:
        if op.name == "const" or not op.operands:
            return False
        if not all(v.is_constant and v.producer.data is not None for v in op.operands):
            return False
        t = op.result.type
        if t.encoding is not None and t.encoding.needs_components:
            return False
        in_elems = sum(v.type.numel for v in op.operands)
        if t.numel > in_elems and t.numel - in_elems > self.max_growth:
            return False
        data = Interpreter(rw.graph).run_op(op, [v.producer.data for v in op.operands])
        new = rw.const(op.result.name + ".folded", data, t, loc=op.loc)
        rw.replace_op(op, new)
        return True


def constant_digest(op: Op) -> str:
    """A hash of a const op's stored data (all components), for finding identical constants."""
    parts = op.data if isinstance(op.data, dict) else {"data": op.data}
    digest = hashlib.blake2b(digest_size=16)
    for k in sorted(parts):
        digest.update(k.encode())
        digest.update(np.ascontiguousarray(parts[k]).tobytes())
    return digest.hexdigest()


#: elements of each component a constant's quick key samples (evenly spaced, the first and last included)
SAMPLE = 64


def constant_sample(op: Op) -> tuple:
    """A cheap key of a const op's data: a few evenly spaced elements of every component.

    Equal constants have equal samples; constants with equal samples are compared in full
    (``same_data``) before they are merged. Hashing all of a BERT-base's 340 MB of weights
    to find the (usually no) duplicates took 2.4 s of ``fold``."""
    parts = op.data if isinstance(op.data, dict) else {"data": op.data}
    key = []
    for name in sorted(parts):
        flat = np.asarray(parts[name]).reshape(-1)
        picks = np.unique(np.linspace(0, flat.size - 1, num=min(SAMPLE, flat.size)).astype(np.int64))
        key.append((name, flat.size, flat[picks].tobytes()))
    return tuple(key)


def same_data(a: Op, b: Op) -> bool:
    """Whether two const ops store identical components (bit for bit: -0.0 and NaN payloads count)."""
    pa = a.data if isinstance(a.data, dict) else {"data": a.data}
    pb = b.data if isinstance(b.data, dict) else {"data": b.data}
    if sorted(pa) != sorted(pb):
        return False
    for name in pa:
        x, y = np.ascontiguousarray(pa[name]), np.ascontiguousarray(pb[name])
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True


def _cse_key(op: Op) -> Any:
    t = op.result.type
    if op.name == "const":
        return None if op.data is None else ("const", str(t), constant_sample(op))
    return (op.name, tuple(id(v) for v in op.operands), tuple(sorted(op.attrs.items())), str(t))


def eliminate_common_subexpressions(graph: Graph, rw: Rewriter) -> int:
    """Merge ops computing the same thing (same kind, operands, attributes, type) and identical
    constants; the first occurrence survives. Returns how many ops were merged."""
    seen: dict[Any, list[Op]] = {}  # key -> the surviving ops with it (constants: equal samples, different data)
    merged = 0
    for op in list(graph.ops):
        if op.graph is not graph:
            continue
        key = _cse_key(op)
        if key is None:
            continue
        candidates = seen.setdefault(key, [])
        first = next((c for c in candidates if op.name != "const" or same_data(c, op)), None)
        if first is None:
            candidates.append(op)
            continue
        rw.replace_op(op, first.result, keep_name=False)
        merged += 1
    return merged


@dataclass(frozen=True)
class Fold(Pass):
    """Exact simplifications: constant folding, BatchNorm into conv/linear, no-op removal, CSE, DCE."""

    name: ClassVar[str] = "fold"
    preserves: ClassVar[str] = "exact (BatchNorm folding: within float rounding, ~1e-6 relative)"
    constants: bool = option(True, "evaluate ops whose operands are all constants")
    batch_norm: bool = option(True, "fold inference BatchNorm into the preceding conv2d/linear")
    cse: bool = option(True, "merge duplicate ops and identical constants")
    max_growth: int = option(4096, "largest element growth allowed when folding a constant")

    def rules(self) -> RuleSet:
        rules = NOOPS
        if self.batch_norm:
            rules = rules + RuleSet("fold.batch_norm", [FoldBatchNorm()])
        if self.constants:
            rules = rules + RuleSet("fold.constants", [ConstantFold(self.max_growth)])
        return rules

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        rules = self.rules()
        rw = Rewriter(graph)
        for _ in range(8):  # CSE can expose new folds and vice versa; this converges in 1-2 rounds
            changed = apply_rules(graph, rules, rewriter=rw)
            if self.cse:
                changed += eliminate_common_subexpressions(graph, rw)
            changed += dead_code_elimination(graph, rw)
            if not changed:
                break
