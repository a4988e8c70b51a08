"""Op traits: every registered op is classified once, on its definition, with the shared
vocabulary (mcir/ops/traits.py); the int8 sets that passes keep are a contract with the
kernel registry, checked here against it."""

from __future__ import annotations

import pytest

from mcir.errors import McirError
from mcir.ops import registry, traits
from mcir.ops.registry import all_ops, defop, ops_with
from mcir.passes import quant_fusion


@pytest.mark.parametrize("name", sorted(all_ops()))
def test_every_op_declares_a_consistent_classification(name):
    op = all_ops()[name]
    assert op.traits & traits.KINDS.keys(), f"'{name}' has no kind trait: declare one of {list(traits.KINDS)}"
    assert op.trait_problems() == []


def test_an_unknown_trait_is_refused_when_the_op_is_declared():
    with pytest.raises(McirError, match="unknown trait.*elementwsie"):
        defop("test_typo_op", traits={"elementwsie"})(lambda x: x)
    assert not registry.exists("test_typo_op")


def test_classification_problems_are_named():
    assert traits.problems("f", ("x",), (), frozenset(), None) == [
        "'f' has no kind: declare one of " + ", ".join(traits.KINDS)
    ]
    assert (
        "declared unary but takes (a, b)"
        in traits.problems("f", ("a", "b"), (), frozenset({"elementwise", "unary"}), None)[0]
    )
    assert (
        "commutative but not binary"
        in traits.problems("f", ("x",), (), frozenset({"elementwise", "commutative"}), None)[0]
    )
    weighted = traits.problems("f", ("x", "w"), (), frozenset({"contraction", "weighted"}), None)
    assert "WeightLayout" in weighted[0]
    assert "no 'shape' attribute" in traits.problems("f", ("x",), (), frozenset({"movement", "shape_attr"}), None)[0]


def test_trait_queries_give_the_families_passes_rely_on():
    assert ops_with(traits.WEIGHTED, traits.CONTRACTION) == {"linear", "conv2d"}
    assert ops_with(traits.VIEW) == {"reshape", "dropout"}
    assert ops_with(traits.SHAPE_ATTR) == {"reshape", "expand"}
    assert ops_with(traits.MOVEMENT, traits.UNARY) == {"reshape", "permute", "slice", "select", "expand"}
    assert {"add", "mul", "maximum", "minimum"} <= ops_with(traits.COMMUTATIVE)
    assert not {"sub", "div", "lt"} & ops_with(traits.COMMUTATIVE)


def test_weight_layouts_name_the_weight_operand_and_channel_axes():
    for name in ops_with(traits.WEIGHTED):
        op = all_ops()[name]
        assert op.operand_names()[op.weight.operand] == "weight"
    assert all_ops()["linear"].weight == traits.WeightLayout(operand=1, out_axis=0, in_axis=1)
    assert all_ops()["conv2d"].weight.spatial
    assert all_ops()["embedding"].weight.out_axis == 1  # features are columns of the table


# -- the int8 contract ---------------------------------------------------------------------------


def _int8_entries(op: str) -> list[tuple[str, ...]]:
    from mcir.codegen.kernels import registered

    return [g.operands for g in registered().get(op, []) if g.operands and "u8#quant" in g.operands[0]]


@pytest.mark.parametrize("op", sorted(quant_fusion.INT8_LAYERS))
def test_int8_layers_have_u8_by_i8_kernels(op):
    assert any("i8#quant" in ops[1].split("|") for ops in _int8_entries(op)), f"no u8 x i8 kernel for {op}"


@pytest.mark.parametrize("op", sorted(quant_fusion.FUSABLE - quant_fusion.INT8_LAYERS))
def test_int8_activation_ops_have_u8_kernels(op):
    n = quant_fusion.INT8_TRANSFORMER_OPS.get(op)  # leading u8 operands; the others are f32 parameters or masks
    assert any(all("u8#quant" in p for p in ops[:n]) for ops in _int8_entries(op)), f"no u8 kernel for {op}"


@pytest.mark.parametrize("op", sorted(quant_fusion.MOVES))
def test_int8_moves_run_on_u8_and_commute_with_quantisation(op):
    assert registry.has_trait(op, traits.VIEW) or _int8_entries(op), f"no u8 kernel for {op}"
    # quantisation is monotonic: it commutes with pure data movement and with max
    assert registry.has_trait(op, traits.MOVEMENT) or op == "max_pool2d"


def test_ops_transparent_to_u8_are_moves_views_or_removed_by_fusion():
    fused_away = {"relu", "clamp"}  # quantize(relu(y)) -> quantize(y) when the u8 range starts at 0
    assert quant_fusion.MOVES | ops_with(traits.VIEW) | fused_away == quant_fusion.TRANSPARENT
    assert fused_away <= ops_with(traits.ACTIVATION)


def test_the_frontend_names_layer_results_after_their_module_by_trait():
    from mcir.frontend.torch_import import is_layer_op

    layers = {name for name in all_ops() if is_layer_op(name)}
    assert layers == {"linear", "conv2d", "embedding", "batch_norm", "layer_norm"} | {
        "scaled_dot_product_attention",
        "max_pool2d",
        "avg_pool2d",
        "adaptive_avg_pool2d",
    }
