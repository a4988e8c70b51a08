"""The smallest valid graph for every entry of the kernel registry (issue #17, guard pages).

``cases()`` walks ``mcir.codegen.kernels.registered()``: for each entry it expands the operand and
result patterns into concrete signatures (``f32``, ``u8#quant``, ``i8#csr``...) and builds one op per
choice of signature at each position (so every alternative of every pattern appears at least once),
with small shapes and attributes from ``FORMS``; a choice is kept only when the graph verifies and
``lookup`` selects exactly that entry. Operands are graph inputs wherever the ABI can pass them and
the kernel does not pack them at compile time (constants otherwise), so the guard pages sit right
next to what kernels read and write. ``SKIPPED`` lists the entries no such graph exists for, each
with its reason; a test checks that every other entry yields at least one case.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from mcir import dtypes
from mcir.encodings import Binary, Dynamic, Int2, Int4, Pow2, Quant, Round, Ternary, to_csr, to_nm
from mcir.errors import McirError
from mcir.ir import Graph, Value
from mcir.types import TensorType

#: dtypes the C ABI passes as plain tensors (mcir.codegen.lowering.DTYPE_CODES)
ABI_DTYPES = {"f32", "f16", "i64", "i32", "i16", "i8", "u8", "bool"}


@dataclass(frozen=True)
class Form:
    """Operand shapes and attributes of one op's smallest interesting instance; ``roles`` marks
    operands whose run-time data must be valid (``index:N``: integers in [0, N), ``positive``)."""

    shapes: tuple[tuple[int, ...], ...]
    attrs: dict[str, Any]
    roles: tuple[str, ...] = ()


_UNARY = Form(((2, 24),), {})
_BINARY = Form(((2, 24), (2, 24)), {})
FORMS: dict[str, Form] = {
    **{
        name: _UNARY
        for name in (
            "abs",
            "relu",
            "neg",
            "erf",
            "exp",
            "gelu",
            "hardsigmoid",
            "hardswish",
            "log",
            "rsqrt",
            "sigmoid",
            "silu",
            "sqrt",
            "tanh",
            "logical_not",
            "dequantize",
            "quantize",
            "cast",
        )
    },
    **{
        name: _BINARY for name in ("add", "sub", "mul", "div", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge")
    },
    "logical_and": _BINARY,
    "logical_or": _BINARY,
    "clamp": Form(((2, 24),), {"min": -1.0, "max": 1.0}),
    "pow": Form(((2, 24),), {"exponent": 2.0}),
    "where": Form(((2, 24), (2, 24), (2, 24)), {}),
    "concat": Form(((2, 3), (2, 5)), {"axis": 1}),
    "expand": Form(((2, 1, 8),), {"shape": [2, 3, 8]}),
    "permute": Form(((2, 3, 4),), {"dims": [2, 0, 1]}),
    "pad": Form(((2, 3, 4),), {"pads": [0, 0, 1, 1, 2, 0], "value": 0.5}),
    "select": Form(((3, 4, 5),), {"axis": 1, "index": 2}),
    "slice": Form(((3, 8, 5),), {"axis": 1, "start": 1, "end": 7, "step": 2}),
    "cumsum": Form(((2, 24),), {"axis": 1}),
    "amax": Form(((2, 3, 8),), {"axes": [2]}),
    "mean": Form(((2, 3, 8),), {"axes": [2]}),
    "sum": Form(((2, 3, 8),), {"axes": [2]}),
    "argmax": Form(((2, 3, 8),), {"axis": 2}),
    "softmax": Form(((2, 24),), {"axis": 1}),
    "log_softmax": Form(((2, 24),), {"axis": 1}),
    "layer_norm": Form(((2, 3, 16), (16,), (16,)), {"dims": 1}),
    "batch_norm": Form(((1, 4, 5, 5), (4,), (4,), (4,), (4,)), {}, ("", "", "", "", "positive")),
    "avg_pool2d": Form(((1, 4, 7, 7),), {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1]}),
    "max_pool2d": Form(((1, 4, 7, 7),), {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1]}),
    "adaptive_avg_pool2d": Form(((1, 4, 7, 7),), {"output_size": [3, 3]}),
    "embedding": Form(((2, 5), (10, 8)), {}, ("index:10", "")),
    "gather": Form(((4, 6), (3, 6)), {"axis": 0}, ("", "index:4")),
    "index_select": Form(((4, 6), (5,)), {"axis": 0}, ("", "index:4")),
    "linear": Form(((2, 64), (16, 64), (16,)), {}),
    "conv2d": Form(((1, 8, 6, 6), (16, 8, 3, 3), (16,)), {"padding": [1, 1]}),
    "matmul": Form(((2, 8, 16), (2, 16, 8)), {}),
    "scaled_dot_product_attention": Form(((1, 2, 4, 8), (1, 2, 6, 8), (1, 2, 6, 8), (1, 1, 4, 6)), {}),
    "lstm": Form(((3, 2, 32), (2, 8), (2, 8), (32, 8), (32,)), {}),
    "gru": Form(((3, 2, 24), (2, 8), (24, 8), (24,)), {}),
}

#: second forms for ops whose optional operands change other shapes (an LSTMP's state is [B, P])
MORE_FORMS: dict[str, Form] = {
    "lstm": Form(((3, 2, 32), (2, 4), (2, 8), (32, 4), (32,), (4, 8)), {}),
}


def _forms(op: str) -> list[Form]:
    return [f for f in (FORMS.get(op), MORE_FORMS.get(op)) if f is not None]


def _form(op: str, count: int) -> Form:
    return next(f for f in _forms(op) if len(f.shapes) == count)


#: entries no graph selects, with the reason (reviewed: keep short, every line a fact)
SKIPPED: dict[str, str] = {}


@dataclass(frozen=True)
class Case:
    """One op selecting one registry entry with one choice of operand and result signatures."""

    key: str  # "op kernel_name (sig, sig) -> sig"
    op: str
    kernel: str
    operands: tuple[str, ...]
    result: str

    def build(self, g: Graph, prefix: str, feeds: dict[str, Callable[[], np.ndarray]]) -> list[Value]:
        """Add this case's inputs, constants and op to ``g``; return the graph outputs it adds.
        ``feeds`` gets a data maker for each new graph input (valid indices, positive variances)."""
        return _build(self, g, prefix, feeds)


def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(key.encode()))  # the same data in every process


def _quant_param(dtype: str) -> Quant:
    return Quant(scale=0.05, zero_point=128 if dtype == "u8" else 0)


def _weight_like(sig: str) -> bool:
    """Signatures only constants can carry (per-axis components, packed weights, 16-bit storage)."""
    return sig in ("f16", "bf16") or ("#" in sig and sig.split("#")[1] not in ("quant", "dynamic", "binary", "round"))


def _constant(g: Graph, name: str, sig: str, shape: tuple[int, ...], rng: np.random.Generator) -> Value:
    dense = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    dtype, _, enc = sig.partition("#")
    if not enc:
        if dtype == "bool":
            return g.const(name, dense > 0, TensorType(shape, dtypes.boolean))
        dt = dtypes.ALL[dtype]
        data = dense if dt.kind == "float" else np.rint(dense * 4)
        return g.const(name, data.astype(dt.np), TensorType(shape, dt))
    if enc == "quant":
        if len(shape) >= 1 and dtype in ("i8", "i32"):  # per-axis, as quant8 stores weights and biases
            n = shape[0]
            scale = (np.abs(dense).reshape(n, -1).max(axis=1) / 127 + 1e-3).astype(np.float32)
            q = np.rint(dense / scale.reshape((-1,) + (1,) * (len(shape) - 1)))
            return g.const(
                name,
                {"data": q.astype(dtypes.ALL[dtype].np), "scale": scale},
                TensorType(shape, dtypes.ALL[dtype], Quant(axis=0)),
            )
        t = TensorType(shape, dtypes.ALL[dtype], _quant_param(dtype))
        return g.const(name, t.encode(dense), t)
    if enc in ("csr", "nm"):
        sparse = dense.reshape(shape[0], -1, 4).copy()
        sparse[:, :, 1::2] = 0  # 2 of every 4: valid for both
        sparse = sparse.reshape(shape)
        t, parts = to_csr(sparse, dtypes.ALL[dtype]) if enc == "csr" else to_nm(sparse, 2, 4, dtypes.ALL[dtype])
        return g.const(name, parts, t)
    if enc == "codebook":
        from mcir.passes.cluster import cluster_weight

        t, parts = cluster_weight(dense, 4, "layer", int8=True)  # an int8 grid: the dynamic kernel needs it
        return g.const(name, parts, t)
    if enc == "sparse_codebook":
        from mcir.passes.cluster import cluster_sparse_weight

        flat = dense.reshape(-1).copy()
        flat[1::3] = 0  # a third pruned: gaps of 0 and 1
        t, parts = cluster_sparse_weight(flat.reshape(shape), 5)
        return g.const(name, parts, t)
    encodings = {"binary": Binary(0), "ternary": Ternary(0), "int4": Int4(32), "int2": Int2(32), "pow2": Pow2(4)}
    t = TensorType(shape, dtypes.ALL[dtype], encodings[enc])
    return g.const(name, t.encode(dense), t)


def _input(
    g: Graph, name: str, sig: str, shape: tuple[int, ...], role: str, feeds: dict, rng: np.random.Generator
) -> Value:
    dtype, _, enc = sig.partition("#")
    if enc in ("binary", "dynamic", "round"):  # run-time encoded values come from quantize of an f32 input
        x = _input(g, name + "_f", "f32", shape, role, feeds, rng)
        t = TensorType(shape, dtypes.ALL[dtype], {"binary": Binary(0), "dynamic": Dynamic(0), "round": Round()}[enc])
        return g.add("quantize", [x], type=t, result=name)
    t = TensorType(shape, dtypes.ALL[dtype], _quant_param(dtype) if enc == "quant" else None)
    v = g.add_input(name, t)
    seed = int(rng.integers(2**31))

    def make() -> np.ndarray:
        r = np.random.default_rng(seed)
        np_dtype = t.dtype.np
        if role.startswith("index:"):
            return r.integers(0, int(role[6:]), shape).astype(np_dtype)
        if t.dtype == dtypes.boolean:
            return r.random(shape) < 0.5
        if t.dtype.kind == "float":
            x = r.standard_normal(shape)
            return (np.abs(x) + 0.5 if role == "positive" else x).astype(np_dtype)
        info = np.iinfo(np_dtype)
        lo, hi = (0, 256) if enc == "quant" or info.min == 0 else (-6, 7)
        return r.integers(max(lo, info.min), min(hi, int(info.max) + 1), shape).astype(np_dtype)

    feeds[name] = make
    return v


def _result_type(sig: str, inferred: TensorType) -> TensorType | None:
    if sig == "any":
        return None
    dtype, _, enc = sig.partition("#")
    if not enc:
        return TensorType(inferred.shape, dtypes.ALL[dtype])
    e = {"quant": _quant_param(dtype), "binary": Binary(0), "dynamic": Dynamic(0), "round": Round()}.get(enc)
    if e is None:
        raise McirError(f"no run-time result of encoding #{enc}")
    return TensorType(inferred.shape, dtypes.ALL[dtype], e)


def _build(case: Case, g: Graph, prefix: str, feeds: dict) -> list[Value]:
    from mcir.codegen.kernels import registered
    from mcir.ops import registry

    gen = next(k for k in registered()[case.op] if k.name == case.kernel)
    form = _form(case.op, len(case.operands))
    rng = _rng(case.key)
    operands = []
    for i, sig in enumerate(case.operands):
        shape = form.shapes[i]
        role = form.roles[i] if i < len(form.roles) else ""
        name = f"{prefix}_{i}"
        if i in gen.constant or _weight_like(sig) or (sig.startswith("t2") and i == 0):
            operands.append(_constant(g, name, sig, shape, rng))
        else:
            operands.append(_input(g, name, sig, shape, role, feeds, rng))
    attrs = dict(form.attrs)
    if case.op in ("lstm", "gru") and "i8#quant" in case.operands:
        attrs["int8_state"] = True  # an int8 W_hh multiplies an int8 state (as quant8 sets it)
    if case.op == "cast":
        attrs["dtype"] = "f32" if case.result == "any" else case.result.split("#")[0]
    opdef = registry.get(case.op)
    full = opdef.complete_attrs(attrs, where=case.op)
    if case.op in ("quantize", "dequantize"):
        inferred = TensorType(operands[0].type.shape, dtypes.f32)
    else:
        inferred = opdef.infer_type([v.type for v in operands], full, where=case.op)
    y = g.add(case.op, operands, attrs, type=_result_type(case.result, inferred), result=prefix)
    t = y.type
    if isinstance(t.encoding, Dynamic):  # no dequantize kernel: the int8 layer that reads it is the sink
        w = _constant(g, prefix + "_sink_w", "i8#quant", (4, t.shape[-1]), rng)
        return [g.add("linear", [y, w], result=prefix + "_f32")]
    if t.encoding is not None and (t.encoding.needs_components or t.dtype.name not in ABI_DTYPES):
        y = g.add("dequantize", [y], result=prefix + "_f32")
    elif t.dtype.name not in ABI_DTYPES:
        y = g.add("cast", [y], {"dtype": dtypes.f32}, result=prefix + "_f32")
    return [y]


def _choices(gen) -> list[tuple[tuple[str, ...], str]]:
    """Signature choices for an entry: for every position and every alternative there, one choice
    that puts it there (other positions: the same dtype where they allow it, else their first)."""
    from mcir.codegen.kernels import expand

    res = sorted(expand(gen.result)) if gen.result != "any" else ["any"]
    if gen.op == "cast":  # the result dtype is the attribute: every plain one
        res = sorted(expand("any"))
    out = []
    for count in [len(f.shapes) for f in _forms(gen.op) if gen.accepts_arity(len(f.shapes))]:
        alts = [sorted(expand(gen.pattern_at(i))) for i in range(count)]
        for pos in range(count + 1):  # pos == count: vary the result
            for alt in res if pos == count else alts[pos]:
                sigs = []
                for i in range(count):
                    if i == pos:
                        sigs.append(alt)
                    else:
                        base = alt.split("#")[0]
                        same = [a for a in alts[i] if a == alt] or [a for a in alts[i] if a.split("#")[0] == base]
                        sigs.append(same[0] if same else alts[i][0])
                # the result follows the first operand where it may (quantised moves keep their encoding)
                result = alt if pos == count else next((r for r in res if r == sigs[0]), res[0]) if sigs else res[0]
                out.append((tuple(sigs), result))
    return list(dict.fromkeys(out))


@cache
def cases() -> tuple[Case, ...]:
    """Every buildable case, in registry order (entries without one: ``missing()``)."""
    from mcir.codegen.kernels import lookup, registered
    from mcir.verifier import verify

    out = []
    for op, gens in sorted(registered().items()):
        for gen in gens:
            for sigs, result in _choices(gen):
                case = Case(f"{op} {gen.name} ({', '.join(sigs)}) -> {result}", op, gen.name, sigs, result)
                g = Graph("probe")
                try:
                    outs = case.build(g, "v", {})
                    g.set_outputs(outs)
                    verify(g)
                    target_op = next(o for o in g.ops if o.result.name == "v")
                    if lookup(target_op).name != gen.name:
                        continue
                    for other in g.ops:  # the helpers (quantize of inputs, dequantize of outputs) run too
                        if other.name != "const" and other is not target_op:
                            lookup(other)
                except McirError:
                    continue
                out.append(case)
    return tuple(out)


def missing() -> list[str]:
    """``op kernel`` of registry entries no case selects."""
    from mcir.codegen.kernels import registered

    have = {(c.op, c.kernel) for c in cases()}
    return [
        f"{op} {g.name} {g.describe()}"
        for op, gens in sorted(registered().items())
        for g in gens
        if (op, g.name) not in have
    ]


def case_graph(selected: list[Case]) -> tuple[Graph, dict[str, Callable[[], np.ndarray]]]:
    """One graph holding every selected case side by side (one compile), and its input makers."""
    g = Graph("guarded")
    feeds: dict[str, Callable[[], np.ndarray]] = {}
    outs: list[Value] = []
    for i, case in enumerate(selected):
        outs += case.build(g, f"c{i}", feeds)
    g.set_outputs(outs)
    return g, feeds
