"""Fusion rules keeping consecutive int8 layers integer (used by quantize; exact).

Each rule leaves the interpreter's results unchanged: quantisation q(v) = clamp(round(v/s) + z)
is monotonic, so it commutes with data movement and max; a u8 range starting at 0 already
saturates like ReLU; and "compute in float, then quantize" is what an int8 layer with a
quantised result type means.
"""

from __future__ import annotations

from collections import Counter

from mcir.encodings import NM, Csr, Quant
from mcir.ir import Graph, Op
from mcir.pass_base import rules_pass
from mcir.patterns import Match, Pat, RuleSet
from mcir.report import format_table
from mcir.rewriter import Rewriter

# -- the contract with the int8 backend ------------------------------------------------------------
# These name what mcir/codegen/kernels runs in int8 (gemm_i8.py, conv_i8.py, quant.py). They are a
# promise about kernels, not a property of the ops, so they are not op traits; tests/test_op_traits.py
# checks them against the kernel registry, so a kernel removed there fails a test instead of leaving
# quantised graphs that do not compile. (Reading the registry here would import llvmlite into passes.)

#: weighted layers with u8-activation x i8-weight kernels (the weight is operand 1)
INT8_LAYERS = frozenset({"linear", "conv2d"})
#: ops with kernels on u8 activations, run in u8 when their result feeds int8 layers anyway
INT8_ACTIVATION_OPS = frozenset({"add", "avg_pool2d", "adaptive_avg_pool2d", "mean"})
#: ops of the int8 transformer path (norm_i8.py, attention_i8.py) and how many leading operands are
#: u8 activations (the rest stay f32: layer_norm's weight and bias, attention's mask)
INT8_TRANSFORMER_OPS = {"layer_norm": 1, "scaled_dot_product_attention": 3}
#: ops with int8 kernels that can write u8 results directly (requantisation in the epilogue)
FUSABLE = INT8_LAYERS | {"matmul"} | INT8_ACTIVATION_OPS | set(INT8_TRANSFORMER_OPS)
#: data movement and max with u8 kernels (or views): they commute with quantisation
MOVES = frozenset({"reshape", "permute", "slice", "select", "max_pool2d"})
#: ops a u8 value passes through unchanged in meaning: MOVES, relu/clamp (the u8 range's saturation
#: removes them, see FUSION) and dropout (a view)
TRANSPARENT = MOVES | {"relu", "clamp", "dropout"}

X = Pat.var("x")
Y = Pat.var("y")


def _per_tensor(t) -> bool:
    return isinstance(t.encoding, Quant) and t.encoding.axis is None


def _int8_operands(op: Op) -> bool:
    """Activations are per-tensor quantised; weights/biases (operands 1, 2 of linear/conv2d) are quantised
    (int8 sparse weights, #csr/#nm in i8 with per-row scales, count as quantised)."""
    if op.name in INT8_LAYERS:
        acts, params = op.operands[:1], op.operands[1:]
        return _per_tensor(acts[0].type) and all(_int_param(p.type) for p in params)
    if op.name == "layer_norm":  # u8 -> u8 and f32 -> u8 both have kernels; weight and bias stay f32
        x = op.operands[0].type
        return _per_tensor(x) or (x.encoding is None and x.dtype.is_float)
    if op.name in INT8_TRANSFORMER_OPS:
        return all(_per_tensor(v.type) for v in op.operands[: INT8_TRANSFORMER_OPS[op.name]])
    return all(_per_tensor(v.type) for v in op.operands)


def _int_param(t) -> bool:
    return isinstance(t.encoding, Quant) or (isinstance(t.encoding, Csr | NM) and t.dtype.is_integer)


def _u8_range(m: Match) -> tuple[float, float]:
    enc = m.root.result.type.encoding
    return enc.scale * (0 - enc.zero_point), enc.scale * (255 - enc.zero_point)


def _relu_subsumed(m: Match) -> bool:
    return _u8_range(m)[0] >= 0.0


def _clamp_subsumed(m: Match) -> bool:
    lo, hi = _u8_range(m)
    attrs = m.op("c").attrs
    return (attrs["min"] is None or lo >= attrs["min"]) and (attrs["max"] is None or hi <= attrs["max"])


def _requantize_in_kernel(m: Match, rw: Rewriter):
    # the layer's only use is this quantize: give the layer the quantised type (it keeps its name)
    layer = m.op("layer")
    rw.set_type(layer.result, m.root.result.type)
    return layer.result


def _quantize(m: Match, rw: Rewriter, source):
    return rw.insert_before(m.root, "quantize", [source], type=m.root.result.type)


def _narrowing_shared(m: Match) -> bool:
    """A select/slice of a value with other readers (attention's q/k/v taken from one in_proj output):
    moving the quantize above it would quantize the whole value for one slice, once per slice with its
    own scale (measured on the benchmark encoder: three quantizes and three u8 head permutes of the
    768-wide projection per layer, two thirds of it discarded), and it could not fuse into the producer
    anyway (the producer has several readers)."""
    return m.op("move").name in ("select", "slice") and len(m.y.uses) > 1


def _move_first(m: Match, rw: Rewriter):
    move = m.op("move")
    t = m.root.result.type
    q = rw.insert_before(
        move, "quantize", [m.y], type=type(t)(m.y.type.shape, t.dtype, t.encoding), result=f"{m.y.name}.q"
    )
    if len(move.result.uses) == 1:  # only this quantize reads it: move the op to u8 in place (keeps its name)
        rw.set_operand(move, 0, q)
        rw.set_type(move.result, t)
        return move.result
    return rw.insert_before(m.root, move.name, [q], move.attrs, type=t, loc=move.loc)


FUSION = RuleSet(
    "quant_fusion",
    [
        # quantize(layer(...): f32) -> layer(...): u8   (requantisation in the int8 kernel's epilogue)
        (
            Pat(
                "quantize",
                Pat(
                    FUSABLE,
                    name="layer",
                    any_operands=True,
                    single_use=True,
                    where=lambda m: _int8_operands(m.op("layer")),
                ),
            ),
            _requantize_in_kernel,
        ),
        # quantize(relu(y)) -> quantize(y)   when the u8 range starts at 0 (saturation is the ReLU)
        (Pat("quantize", Pat("relu", Y), where=_relu_subsumed), lambda m, rw: _quantize(m, rw, m.y)),
        # quantize(clamp(y, lo, hi)) -> quantize(y)   when the u8 range lies inside [lo, hi] (ReLU6)
        (Pat("quantize", Pat("clamp", Y, name="c"), where=_clamp_subsumed), lambda m, rw: _quantize(m, rw, m.y)),
        # quantize(move(y)) -> move(quantize(y))   for reshape/permute/slice/select/max_pool2d, except
        # past a select/slice of a value others read too (see _narrowing_shared)
        (Pat("quantize", Pat(MOVES, Y, name="move"), where=lambda m: not _narrowing_shared(m)), _move_first),
        # quantize(x) -> x   when x already has the quantised type
        (Pat("quantize", X, where=lambda m: m.x.type == m.root.result.type), lambda m, rw: m.x),
        # quantize(dequantize(q)) -> q   with the same type
        (Pat("quantize", Pat("dequantize", X), where=lambda m: m.x.type == m.root.result.type), lambda m, rw: m.x),
    ],
)


#: why a float value next to the int8 path stays float, by the op on the float side
FLOAT_REASONS = {
    "graph inputs": "the model's inputs are float: one quantize where they enter",
    "graph outputs": "the graph returns f32",
    "layer_norm": "layer_norm reads the f32 residual: a u8 residual stream (quantize(int8_norm=true)) costs "
    "too much accuracy in deep encoders (BERT-base 32.5 -> 23.9 dB); its result is quantised once for the next layers",
    "scaled_dot_product_attention": "attention runs in f32 here: quantize(int8_sdpa=false), or q/k/v had no "
    "calibrated range",
    "softmax": "softmax runs in f32 (exp and the row sum); attention written as matmuls is int8 with "
    "quantize(attention=true) around it",
    "add": "an add with a float operand or a float consumer: the f32 residual stream (see layer_norm)",
    "embedding": "embedding tables stay float (f16 with the half pass)",
    "gelu": "gelu has an exact u8 table kernel, but requantising its input turns a 1-LSB rounding difference of "
    "the up-projection into up to 3 LSB after it (measured on a 4-layer encoder): kept float",
}


def float_islands(graph: Graph) -> list[list[str]]:
    """Rows ``[conversion, float op, count, why]``: each place where the int8 path meets float,
    grouped by the op on the float side (what still needs an integer kernel or fusion)."""
    quantized: Counter[str] = Counter()
    for op in graph.compute_ops():
        if op.name == "quantize" and op.operands[0].type.encoding is None:
            src = op.operands[0].producer
            quantized["graph inputs" if src is None else src.name] += 1
    float_out: Counter[str] = Counter()
    for op in graph.compute_ops():
        # an int8 op writing f32 (a layer_norm of f32 into f32 is no int8 op, though it could write u8)
        reads_int8 = any(_per_tensor(v.type) for v in op.operands)
        if op.name in FUSABLE and op.result.type.encoding is None and _int8_operands(op) and reads_int8:
            if any(v is op.result for v in graph.outputs):
                float_out["graph outputs"] += 1
            for user in op.result.users:
                if user.name != "quantize":
                    float_out[_float_reader(user)] += 1
    rows = []
    for label, counts in (("f32 -> u8 (quantize after)", quantized), ("int8 layer -> f32 (read by)", float_out)):
        for name, n in sorted(counts.items()):
            last = name.rsplit(" -> ", 1)[-1]
            rows.append([label, name, str(n), FLOAT_REASONS.get(last, f"{last} has no kernel on u8 values")])
    return rows


def _float_reader(op: Op) -> str:
    """The op that needs a float value, seen through data movement: ``reshape -> permute -> softmax``."""
    chain = [op.name]
    while op.name in TRANSPARENT and len(op.result.users) == 1:
        op = op.result.users[0]
        chain.append(op.name)
    return " -> ".join(chain)


def remaining_conversions(graph: Graph) -> list[str]:
    """Human notes on float<->int8 conversions left in a quantised graph, and why: one table
    (``float_islands``), empty when the graph is integer from its first quantize to its end."""
    rows = float_islands(graph)
    if not rows:
        return []
    total = sum(int(r[2]) for r in rows if r[0].startswith("f32"))
    head = ["conversion", "float op", "count", "why"]
    return [f"{total} quantize op(s) remain; float islands:\n" + format_table(head, rows, "llrl")]


QuantFusion = rules_pass(
    FUSION,
    name="quant_fusion",
    preserves="exact",
    doc="Keep int8 layers integer: fuse requantisation, ReLU/clamp and data movement into u8.",
)
