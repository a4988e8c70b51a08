"""The prune pass: unstructured and N:M magnitude pruning into sparse encodings (when the cost
rule says they pay), option errors, the per-layer report, defaults on the shared models, and
the digits MLP's accuracy after pruning without retraining."""

from __future__ import annotations

import sys
from pathlib import Path

import models
import numpy as np
import pytest

import mcir
from mcir import dtypes
from mcir.analysis.sparse_cost import dense_bytes, prefer_sparse, sparse_bytes
from mcir.encodings import NM, Csr
from mcir.pass_manager import GraphStats
from mcir.types import TensorType

ROOT = Path(__file__).resolve().parents[1]


def linear_graph(w: np.ndarray, n_in: int | None = None) -> mcir.Graph:
    g = mcir.Graph("g")
    x = g.add_input("x", mcir.tensor([2, w.shape[1]]))
    wv = g.const("w", w.astype(np.float32))
    g.set_outputs([g.add("linear", [x, wv], result="y")])
    return g


def weight(g: mcir.Graph, name: str = "w") -> tuple[TensorType, np.ndarray]:
    v = g.value(name)
    return v.type, v.type.decode(v.producer.data)


# -- the cost rule -------------------------------------------------------------------------------


def test_sparse_bytes_match_the_encodings():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((64, 48)) * (rng.random((64, 48)) < 0.2)
    for dt in (dtypes.f32, dtypes.i8):
        t, _ = mcir.encodings.to_csr(dense, dt)
        assert sparse_bytes("csr", 64, 48, t.encoding.nnz, dt) == t.nbytes
    nm = np.where(np.arange(48) % 4 < 2, dense + 1, 0.0)
    t, _ = mcir.encodings.to_nm(nm, 2, 4, dtypes.i8)
    assert sparse_bytes("nm", 64, 48, 0, dtypes.i8, 2, 4) == t.nbytes
    assert dense_bytes(64, 48, dtypes.i8) == 64 * 48 + 4 * 64


def test_prefer_sparse_thresholds():
    # f32 CSR: 8 bytes per non-zero; pays at 10 % and 30 %, not at 50 % (no fewer bytes) nor 40 % (too dense)
    assert prefer_sparse("csr", 256, 256, 6554, dtypes.f32)
    assert prefer_sparse("csr", 256, 256, 19660, dtypes.f32)
    assert not prefer_sparse("csr", 256, 256, 26214, dtypes.f32)
    assert not prefer_sparse("csr", 256, 256, 32768, dtypes.f32)
    # i8 CSR: 5 bytes per non-zero against 1 per weight
    assert prefer_sparse("csr", 256, 256, 6554, dtypes.i8)
    assert not prefer_sparse("csr", 256, 256, 13107, dtypes.i8)
    # N:M stores a u8 index per kept value: 2:4 pays in f32, not in i8 (no fewer bytes); 1:4 is
    # smaller in i8 but slower than the dense int8 kernel (measured), 1:8 pays
    assert prefer_sparse("nm", 256, 256, 0, dtypes.f32, 2, 4)
    assert not prefer_sparse("nm", 256, 256, 0, dtypes.i8, 2, 4)
    assert not prefer_sparse("nm", 256, 256, 0, dtypes.i8, 1, 4)
    assert prefer_sparse("nm", 256, 256, 0, dtypes.i8, 1, 8)
    # short rows: the row pointers cost more than the zeros save
    assert not prefer_sparse("csr", 16, 2, 8, dtypes.f32)


# -- unstructured and N:M -------------------------------------------------------------------------


def test_layer_sparsity_zeroes_the_smallest_magnitudes():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 40))
    g = mcir.run_passes(linear_graph(w), "prune(sparsity=0.8,skip=none)")
    t, got = weight(g)
    assert isinstance(t.encoding, Csr) and t.encoding.nnz == 256  # 20 % of 1280 kept, stored as #csr
    kept = np.abs(w.astype(np.float32)) >= np.sort(np.abs(w.astype(np.float32)).ravel())[-256]
    np.testing.assert_array_equal(got, np.where(kept, w.astype(np.float32), 0))


def test_threshold_replaces_sparsity():
    w = np.array([[0.05, -0.2, 0.1, 0.3], [-0.01, 0.5, -0.15, 0.0]])
    g = mcir.run_passes(linear_graph(w), "prune(threshold=0.1,skip=none,storage=dense)")
    _, got = weight(g)
    np.testing.assert_array_equal(got, np.float32([[0, -0.2, 0, 0.3], [0, 0.5, -0.15, 0]]))


def test_global_scope_ranks_across_layers_with_a_cap():
    g = mcir.Graph("g")
    x = g.add_input("x", mcir.tensor([1, 8]))
    big = g.const("big", np.full((8, 8), 2.0, np.float32))
    small = g.const("small", np.full((4, 8), 0.01, np.float32))
    h = g.add("linear", [x, big], result="h")
    g.set_outputs([g.add("linear", [h, small], result="y")])
    out = mcir.run_passes(g, "prune(sparsity=0.25,scope=global,skip=none,storage=dense)")
    # 24 of 96 weights go; all are in the small layer, which loses at most 95 % (30 of 32)
    assert np.count_nonzero(weight(out, "big")[1]) == 64
    assert np.count_nonzero(weight(out, "small")[1]) == 32 - 24
    out = mcir.run_passes(g, "prune(sparsity=0.5,scope=global,skip=none,storage=dense)")
    assert np.count_nonzero(weight(out, "small")[1]) == 2  # capped by max_layer_sparsity=0.95
    assert np.count_nonzero(weight(out, "big")[1]) == 64 - (48 - 30)


def test_nm_keeps_n_of_every_m():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 32))
    g = mcir.run_passes(linear_graph(w), "prune(pattern=2:4,skip=none,storage=sparse)")
    t, got = weight(g)
    assert isinstance(t.encoding, NM) and (t.encoding.n, t.encoding.m) == (2, 4)
    groups = got.reshape(16, 8, 4)
    assert ((groups != 0).sum(axis=2) == 2).all()
    top2 = np.sort(np.abs(w.astype(np.float32)).reshape(16, 8, 4), axis=2)[:, :, 2:]
    np.testing.assert_array_equal(np.sort(np.abs(groups), axis=2)[:, :, 2:], top2)


def test_kept_dense_when_sparse_does_not_pay():
    rng = np.random.default_rng(3)
    g = mcir.run_passes(linear_graph(rng.standard_normal((32, 32))), "prune(skip=none)")
    t, got = weight(g)
    assert t.encoding is None and np.count_nonzero(got) == 512
    (note,) = g.meta["prune"][0].notes
    assert "kept dense with zeros" in note and "density 0.50; #csr f32 pays at <= 0.30" in note
    assert any("kept dense with zeros" in w for w in g.meta["report"].warnings)


def test_nm_stays_dense_where_the_library_would_embed_more():
    # a 10-row layer: the 2:4 kernel's layout pads rows to its row groups, more bytes than dense
    w = np.random.default_rng(2).standard_normal((10, 32))
    g = mcir.run_passes(linear_graph(w), "prune(pattern=2:4,skip=none)")
    t, got = weight(g)
    assert t.encoding is None
    assert ((got.reshape(10, 8, 4) != 0).sum(axis=2) <= 2).all()  # pruned all the same
    (note,) = g.meta["prune"][0].notes
    assert "kept dense with zeros" in note and "#nm would embed" in note


def test_shared_weight_with_a_skipped_layer_gets_its_own_copy():
    g = mcir.Graph("g")
    x = g.add_input("x", mcir.tensor([1, 8]))
    w = g.const("w", np.random.default_rng(4).standard_normal((8, 8)).astype(np.float32))
    h = g.add("linear", [x, w], result="h")
    g.set_outputs([g.add("linear", [h, w], result="y")])
    out = mcir.run_passes(g, "prune(sparsity=0.9,storage=sparse)")  # skip=last keeps %y's use dense
    (h_op, y_op) = list(out.compute_ops())
    assert h_op.operands[1].name == "w.pruned" and isinstance(h_op.operands[1].type.encoding, Csr)
    assert y_op.operands[1].name == "w" and y_op.operands[1].type.encoding is None


def test_report_rows_and_effective_macs():
    rng = np.random.default_rng(5)
    g = mcir.run_passes(linear_graph(rng.standard_normal((64, 64))), "prune(sparsity=0.9,skip=none)")
    (report,) = g.meta["prune"]
    (row,) = report.rows
    assert row.before.macs == 2 * 64 * 64 and row.after.macs == 2 * 64 * 64 * row.after.nonzero // 4096
    assert row.sparsity == pytest.approx(0.9, abs=1e-3)
    assert row.after.bytes == g.value("w").type.nbytes < row.before.bytes
    stats = GraphStats.of(g)  # the pipeline table counts sparse layers the same way
    assert (report.total_after[0], report.total_after[2]) == (stats.params, stats.macs)
    text = report.table()
    assert "prune(sparsity=0.9,skip=none)" in text and "90.0%" in text and "f32 #csr<nnz=410>" in text


# -- option errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pipeline, message",
    [
        ("prune(sparsity=1.0)", "sparsity=1.0 must be in [0, 1)"),
        ("prune(sparsity=-0.1)", "sparsity=-0.1 must be in [0, 1)"),
        ("prune(threshold=-1)", "threshold=-1.0 must be a finite number >= 0"),
        ("prune(threshold=0.1,sparsity=0.7)", "give either sparsity or threshold, not both"),
        ("prune(pattern=4:2)", "pattern=4:2: need 0 < N < M <= 256"),
        ("prune(pattern=2:4,granularity=channel)", "pattern=2:4 applies to granularity=weight"),
        ("prune(pattern=2:4,sparsity=0.9)", "pattern=2:4 fixes the sparsity at 0.5"),
        ("prune(skip='*fc')", "skip='*fc' is neither one of none, first, last, ends nor a valid regular expression"),
        ("prune(round_to=0)", "round_to=0 must be at least 1"),
        ("prune(granularity=head,storage=sparse)", "storage=sparse applies to granularity=weight"),
        ("prune(granularity=rows)", "option 'granularity' of pass 'prune' must be one of weight, channel"),
        ("prune(pattern=2)", "option 'pattern' of pass 'prune' must be N:M, e.g. 2:4"),
    ],
)
def test_bad_options_are_pipeline_errors(pipeline, message):
    with pytest.raises(mcir.ParseError) as err:
        mcir.run_passes(linear_graph(np.ones((4, 4))), pipeline)
    assert message in str(err.value)
    assert "^" in str(err.value)  # a caret under the pass


def test_nm_leaves_layers_whose_rows_do_not_divide_m_alone_with_a_note():
    g = mcir.run_passes(linear_graph(np.ones((4, 6))), "prune(pattern=2:4,skip=none)")
    t, got = weight(g)
    assert t.encoding is None and np.count_nonzero(got) == 24
    (note,) = g.meta["prune"][0].notes
    assert "left alone by pattern=2:4 (rows not a multiple of 4): y (rows of 6)" in note


def test_no_layer_to_prune():
    g = mcir.Graph("g")
    x = g.add_input("x", mcir.tensor([2, 3]))
    g.set_outputs([g.add("relu", [x])])
    with pytest.raises(mcir.McirError, match="granularity=weight: the graph has no linear or conv2d layer"):
        mcir.run_passes(g, "prune")


# -- defaults on the shared models ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn", "encoder"])
@pytest.mark.parametrize("pipeline", ["prune", "prune,quant8"])
def test_defaults_run_on_the_models(name, pipeline):
    model, inputs = models.build(name)
    g = mcir.trace(model, inputs)
    xs = [tuple(t.numpy() for t in inputs)]
    out = mcir.run_passes(g, pipeline, sample_inputs=xs)
    rows = out.meta["report"].rows
    assert rows[-1].max_abs_err is not None and np.isfinite(rows[-1].max_abs_err)
    last = [op for op in out.compute_ops() if op.name in ("linear", "conv2d")][-1]
    report = out.meta["prune"][0]
    assert report.rows and all(r.sparsity == pytest.approx(0.5, abs=0.01) for r in report.rows)
    assert last.loc.module not in {r.before.name for r in report.rows}  # skip=last keeps the classifier
    mcir.interpret(out, *xs[0])


# -- the digits example: accuracy and bytes --------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    sys.path.insert(0, str(ROOT / "examples" / "digits"))
    try:
        import model as digits_model
    finally:
        sys.path.pop(0)
    model, acc = digits_model.train()
    _, _, x_test, y_test = digits_model.load_data()
    import torch

    return mcir.trace(model, (torch.zeros(1, 64),)), acc, x_test, y_test, x_train_batches(digits_model)


def x_train_batches(digits_model) -> list[tuple[np.ndarray]]:
    x_train = digits_model.load_data()[0]
    return [(x_train[i : i + 1],) for i in range(0, 256, 16)]


def accuracy(g: mcir.Graph, x: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy of a graph traced with batch 1 (one interpreter run per sample)."""
    predictions = [int(np.argmax(mcir.interpret(g, x[i : i + 1])[0])) for i in range(len(x))]
    return float((np.array(predictions) == y).mean())


@pytest.mark.slow
def test_digits_half_pruned_keeps_accuracy(digits):
    g, acc, x_test, y_test, _ = digits
    assert accuracy(g, x_test, y_test) == pytest.approx(acc, abs=1e-9)
    pruned = mcir.run_passes(g, "prune(sparsity=0.5)")
    assert accuracy(pruned, x_test, y_test) >= acc - 0.01  # measured: 99.1 % -> 98.4 %


@pytest.mark.slow
def test_digits_sparse_int8_bytes(digits):
    g, _, x_test, y_test, calib = digits
    dense = GraphStats.of(g).weight_bytes
    pruned = mcir.run_passes(g, "prune(sparsity=0.9)")
    out = mcir.run_passes(pruned, "quant8", calibration=calib)
    kinds = {op.operands[1].name: op.operands[1].type for op in out.compute_ops() if op.name == "linear"}
    assert str(kinds["fc1.weight"]).startswith("i8[256,64] #csr<")
    assert str(kinds["fc2.weight"]).startswith("i8[128,256] #csr<")
    assert str(kinds["fc3.weight"]) == "i8[10,128] #quant<axis=0>"  # skip=last: the classifier is not pruned
    # the integer path stays integer through the sparse layers: only the input is quantised
    assert sum(op.name == "quantize" for op in out.compute_ops()) == 1
    ratio = GraphStats.of(out).weight_bytes / dense
    # measured 15.8 %, not the 5 % asked for: #csr keeps a 4-byte column index per int8 value
    # (5 bytes per kept weight = 12.5 % of fp32 at 10 % density), plus int32 biases and f32 row
    # scales (1.6 %) and row pointers (0.8 %); see docs/passes.md
    assert ratio < 0.16
    # quantising the sparse layers costs (almost) nothing on top of pruning them
    assert accuracy(out, x_test, y_test) >= accuracy(pruned, x_test, y_test) - 0.01


# -- prune, then quant8 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pipeline, expect",
    [
        ("prune(sparsity=0.9,skip=none),quant8", "i8[64,64] #csr<"),  # 10 % density: sparse int8 pays
        ("prune(sparsity=0.75,skip=none),quant8", "i8[64,64] #quant<axis=0>"),  # #csr f32 pays, i8 does not
        ("prune(pattern=1:8,skip=none),quant8", "i8[64,64] #nm<n=1, m=8>"),
        ("prune(pattern=1:4,skip=none),quant8", "i8[64,64] #quant<axis=0>"),  # smaller, but slower than dense
        ("prune(pattern=2:4,skip=none),quant8", "i8[64,64] #quant<axis=0>"),  # a u8 index per int8 value
    ],
)
def test_quant8_keeps_sparse_weights_sparse_when_it_pays(pipeline, expect):
    rng = np.random.default_rng(6)
    g = linear_graph(rng.standard_normal((64, 64)))
    pruned = mcir.run_passes(g, pipeline.split(",quant8")[0])
    x = rng.standard_normal((2, 64)).astype(np.float32)
    out = mcir.run_passes(pruned, "quant8", calibration=[(x,)])
    w = next(op for op in out.compute_ops() if op.name == "linear").operands[1]
    assert str(w.type).startswith(expect)
    want = constant_array_of(pruned, "w")
    got = w.type.decode(w.producer.data)
    assert ((got != 0) <= (want != 0)).all()  # zeros stay zeros
    half_step = np.abs(want).max(axis=1, keepdims=True) / 254  # int8 rounding, per-row scale
    assert (np.abs(got - want) <= half_step + 1e-7).all()


def constant_array_of(g: mcir.Graph, name: str) -> np.ndarray:
    v = g.value(name)
    return v.type.decode(v.producer.data)
