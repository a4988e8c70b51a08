"""What stays float in a quant8 HF BERT, stated as a table (issue #11 item 3): the FFN runs
linear -> GELU -> linear on u8, and every remaining float island is named with its reason."""

from __future__ import annotations

import mcir
from mcir.passes.quant_fusion import FLOAT_REASONS, float_islands, remaining_conversions

from .hf_models import build, inputs


def _quant8_bert():
    model, xs = build("bert"), inputs("bert", batch=1)
    graph = mcir.trace(model, xs)
    calib = [tuple(t.numpy() for t in inputs("bert", seed=s, batch=1)) for s in range(4)]
    return mcir.run_passes(graph, "fold,quant8", calibration=calib)


def test_bert_ffn_is_integer_from_linear_through_gelu_to_linear():
    q = _quant8_bert()
    gelus = [op for op in q.compute_ops() if op.name == "gelu"]
    assert gelus
    for op in gelus:
        assert str(op.operands[0].type.dtype) == "u8" and str(op.result.type.dtype) == "u8"
        assert op.operands[0].producer.name == "linear"  # the up-projection writes u8 (requantised in its epilogue)
        assert [u.name for u in op.result.users] == ["linear"]


def test_every_float_island_of_bert_is_listed_with_its_reason():
    q = _quant8_bert()
    rows = float_islands(q)
    kinds = {row[1].rsplit(" -> ", 1)[-1] for row in rows}
    assert {"layer_norm", "scaled_dot_product_attention"} <= kinds
    assert "gelu" not in kinds
    assert all(row[1].rsplit(" -> ", 1)[-1] in FLOAT_REASONS for row in rows), rows  # none unexplained
    quantizes = sum(1 for op in q.compute_ops() if op.name == "quantize" and op.operands[0].type.encoding is None)
    assert sum(int(r[2]) for r in rows if r[0].startswith("f32")) == quantizes
    (note,) = remaining_conversions(q)
    assert note.startswith(f"{quantizes} quantize op(s) remain") and "why" in note


def test_the_island_table_is_in_the_pipeline_warnings():
    model, xs = build("bert"), inputs("bert", batch=1)
    graph = mcir.trace(model, xs)
    calib = [tuple(t.numpy() for t in inputs("bert", seed=s, batch=1)) for s in range(2)]
    report = mcir.run_passes(graph, "fold,quant8", calibration=calib).meta["report"]
    assert any("float islands" in w and "layer_norm" in w for w in report.warnings)
