"""The op trait vocabulary: what an op *is*, declared once on its definition.

Passes and the backend ask the registry (``registry.ops_with(MOVEMENT, UNARY)``,
``registry.get(name).traits``) instead of keeping their own lists of op names, so a new
op is classified in one place and a test (``tests/test_op_traits.py``) fails when it is not::

    @defop("relu", traits={ELEMENTWISE, UNARY, ACTIVATION})

Every op has at least one *kind* (what family it belongs to) and any number of
*properties*. A weighted layer also declares where its weight is (``WeightLayout``).
This module imports nothing from mcir: the registry validates against it.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- kinds: every op has at least one --------------------------------------------------------
ELEMENTWISE = "elementwise"
MOVEMENT = "movement"
PADDING = "padding"
CONTRACTION = "contraction"
LOOKUP = "lookup"
NORMALIZATION = "normalization"
REDUCTION = "reduction"
POOLING = "pooling"
SCAN = "scan"
SOURCE = "source"

# -- properties --------------------------------------------------------------------------------
UNARY = "unary"
BINARY = "binary"
COMMUTATIVE = "commutative"
ACTIVATION = "activation"
VIEW = "view"
CONVERSION = "conversion"
QUANTIZATION = "quantization"
WEIGHTED = "weighted"
ATTENTION = "attention"
SHAPE_ATTR = "shape_attr"
RECURRENT = "recurrent"

KINDS: dict[str, str] = {
    ELEMENTWISE: "result[i] depends only on the operands at i (after broadcasting)",
    MOVEMENT: "every result element is a copy of an operand element (rearranged, no arithmetic, no new values)",
    PADDING: "the operand copied into a larger tensor whose new positions hold a constant",
    CONTRACTION: "multiply-accumulates over an axis shared by its operands (GEMM, convolution, attention)",
    LOOKUP: "gathers rows of a table operand by integer indices",
    NORMALIZATION: "rescales values by statistics (given or computed) along some axes",
    REDUCTION: "combines the values along some axes into one",
    POOLING: "combines the values in spatial windows",
    SCAN: "a running combination along an axis: result[i] combines operand[..., :i+1] (cumsum)",
    SOURCE: "has no operands: its value comes from data",
}

PROPERTIES: dict[str, str] = {
    UNARY: "exactly one operand",
    BINARY: "an elementwise op of two operands, broadcasting",
    COMMUTATIVE: "f(a, b) == f(b, a)",
    ACTIVATION: "a unary elementwise nonlinearity placed after layers (relu, gelu, ...)",
    VIEW: "the result is the operand's bytes unchanged (shares its storage, no kernel needed)",
    CONVERSION: "changes how each element is stored (dtype, quantisation), not what it means",
    QUANTIZATION: "moves a value into or out of a quantised encoding",
    WEIGHTED: "has a weight operand (a constant in a trained model); see WeightLayout",
    ATTENTION: "scaled dot-product attention over (query, key, value)",
    SHAPE_ATTR: "its 'shape' attribute spells a static shape (traced example sizes, not a property of the op)",
    RECURRENT: "steps through a sequence carrying a state (LSTM/GRU): step t needs step t-1's result",
}

VOCABULARY: dict[str, str] = {**KINDS, **PROPERTIES}


@dataclass(frozen=True)
class WeightLayout:
    """Where a weighted layer's weight is and what its axes mean.

    ``operand`` is the weight's operand index; ``out_axis`` the weight axis along which the
    layer's output channels/features lie (what channel pruning removes), ``in_axis`` the axis
    consumed from the input (None when nothing is contracted, e.g. a lookup table's rows);
    ``spatial`` is True when the weight also has kernel-window axes (convolutions).
    """

    operand: int
    out_axis: int
    in_axis: int | None
    spatial: bool = False


def problems(
    name: str, operands: tuple[str, ...], attrs: tuple[str, ...], traits: frozenset[str], weight: WeightLayout | None
) -> list[str]:
    """What is wrong with an op's classification (empty when it is consistent)."""
    out = [
        f"'{name}': unknown trait '{t}' (known: {', '.join(VOCABULARY)})" for t in sorted(traits - VOCABULARY.keys())
    ]
    if not traits & KINDS.keys():
        out.append(f"'{name}' has no kind: declare one of {', '.join(KINDS)}")
    variadic = len(operands) == 1 and operands[0].endswith("*")
    if UNARY in traits and (variadic or len(operands) != 1):
        out.append(f"'{name}' is declared unary but takes ({', '.join(operands)})")
    if BINARY in traits and (ELEMENTWISE not in traits or len(operands) != 2):
        out.append(f"'{name}' is declared binary but is not an elementwise op of two operands")
    if COMMUTATIVE in traits and BINARY not in traits:
        out.append(f"'{name}' is declared commutative but not binary")
    for prop in (ACTIVATION, CONVERSION):
        if prop in traits and not {ELEMENTWISE, UNARY} <= traits:
            out.append(f"'{name}' is declared {prop} but is not unary elementwise")
    if VIEW in traits and UNARY not in traits:
        out.append(f"'{name}' is declared a view but is not unary")
    if (WEIGHTED in traits) != (weight is not None):
        out.append(f"'{name}': the '{WEIGHTED}' trait and a WeightLayout go together (one without the other)")
    if SHAPE_ATTR in traits and "shape" not in attrs:
        out.append(f"'{name}' is declared {SHAPE_ATTR} but has no 'shape' attribute")
    if weight is not None and not 0 <= weight.operand < len(operands):
        out.append(f"'{name}': weight operand {weight.operand} out of range for ({', '.join(operands)})")
    return out
