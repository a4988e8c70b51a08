"""What stays float in a quant8 HF BERT (2 layers), stated as a table (issue #11 item 3).

quant8 runs attention on u8 (``int8_sdpa``, default on): of the 8 quantize ops the float path left
in a 2-layer encoder, 6 remain (4 layer norms, 2 GELUs). With ``int8_norm=true`` the residual adds
and layer norms run on u8 too and only the 2 GELUs remain; it is off by default because the u8
residual stream costs deep encoders too much accuracy (docs/passes.md). Every remaining float
island is named with its reason."""

from __future__ import annotations

import mcir
from mcir.passes.quant_fusion import FLOAT_REASONS, float_islands, remaining_conversions

from .hf_models import build, inputs


def _quant8_bert(pipeline: str = "fold,quant8"):
    model, xs = build("bert"), inputs("bert", batch=1)
    graph = mcir.trace(model, xs)
    calib = [tuple(t.numpy() for t in inputs("bert", seed=s, batch=1)) for s in range(4)]
    return mcir.run_passes(graph, pipeline, calibration=calib)


def _float_quantizes(g) -> int:
    return sum(1 for op in g.compute_ops() if op.name == "quantize" and op.operands[0].type.encoding is None)


ALL_INT8 = "fold,quantize(int8_norm=true)"
FLOAT_PATH = "fold,quantize(int8_sdpa=false, int8_norm=false)"


def test_quant8_runs_attention_on_u8_and_keeps_the_residual_stream_f32():
    q = _quant8_bert()
    for op in q.compute_ops():
        if op.name == "scaled_dot_product_attention":
            assert [v.type.dtype.name for v in op.operands[:3]] == ["u8"] * 3 and op.attrs["u8_probs"]
            assert op.result.type.dtype.name == "u8"
        if op.name == "layer_norm":
            assert op.operands[0].type.encoding is None and op.result.type.encoding is None


def test_attention_residual_adds_and_layer_norms_run_on_u8_with_int8_norm():
    q = _quant8_bert(ALL_INT8)
    by_name = {}
    for op in q.compute_ops():
        by_name.setdefault(op.name, []).append(op)
    for op in by_name["scaled_dot_product_attention"]:
        assert [v.type.dtype.name for v in op.operands[:3]] == ["u8"] * 3 and op.attrs["u8_probs"]
        assert op.result.type.dtype.name == "u8"
    norms = by_name["layer_norm"]  # embeddings + 2 per layer
    assert [n.operands[0].type.dtype.name for n in norms] == ["f32"] + ["u8"] * 4  # the embedding sum is f32
    assert [n.result.type.dtype.name for n in norms] == ["u8"] * 4 + ["f32"]  # the graph returns f32
    residual = [op for op in by_name["add"] if any(u.name == "layer_norm" for u in op.result.users)]
    assert len(residual) == 5 and sum(op.result.type.dtype.name == "u8" for op in residual) == 4


def test_island_count_before_and_after_the_int8_transformer_path():
    before, default, all_int8 = _quant8_bert(FLOAT_PATH), _quant8_bert(), _quant8_bert(ALL_INT8)
    assert _float_quantizes(before) == 8  # 4 layer norms, 2 attentions, 2 GELUs
    assert _float_quantizes(default) == 6  # 4 layer norms, 2 GELUs
    assert _float_quantizes(all_int8) == 2  # the 2 GELUs

    def kinds(g):
        return {row[1].rsplit(" -> ", 1)[-1] for row in float_islands(g)}

    assert {"layer_norm", "scaled_dot_product_attention", "add"} <= kinds(before)
    assert "scaled_dot_product_attention" not in kinds(default) and "layer_norm" in kinds(default)
    assert kinds(all_int8) == {"gelu", "graph outputs"}


def test_bert_ffn_gelu_stays_float_and_is_listed_as_an_island():
    # gelu has an exact u8 table kernel (tests/codegen/test_int8_lut.py), but quant8 keeps it float:
    # requantising its input amplifies 1-LSB differences of the up-projection to 3 LSB after it
    q = _quant8_bert()
    gelus = [op for op in q.compute_ops() if op.name == "gelu"]
    assert gelus
    for op in gelus:
        assert op.operands[0].type.encoding is None and op.result.type.encoding is None
    assert any(row[1].rsplit(" -> ", 1)[-1] == "gelu" for row in float_islands(q))


def test_every_float_island_of_bert_is_listed_with_its_reason():
    for q in (_quant8_bert(), _quant8_bert(FLOAT_PATH), _quant8_bert(ALL_INT8)):
        rows = float_islands(q)
        assert all(row[1].rsplit(" -> ", 1)[-1] in FLOAT_REASONS for row in rows), rows  # none unexplained
        quantizes = _float_quantizes(q)
        assert sum(int(r[2]) for r in rows if r[0].startswith("f32")) == quantizes
        (note,) = remaining_conversions(q)
        assert note.startswith(f"{quantizes} quantize op(s) remain") and "why" in note


def test_the_island_table_is_in_the_pipeline_warnings():
    model, xs = build("bert"), inputs("bert", batch=1)
    graph = mcir.trace(model, xs)
    calib = [tuple(t.numpy() for t in inputs("bert", seed=s, batch=1)) for s in range(2)]
    report = mcir.run_passes(graph, "fold,quant8", calibration=calib).meta["report"]
    assert any("float islands" in w and "layer_norm" in w for w in report.warnings)
