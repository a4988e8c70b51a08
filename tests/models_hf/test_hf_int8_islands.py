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
    q = _quant8_bert()
    rows = float_islands(q)
    kinds = {row[1].rsplit(" -> ", 1)[-1] for row in rows}
    assert {"layer_norm", "scaled_dot_product_attention"} <= kinds
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
