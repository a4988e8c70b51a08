"""quant8 at the IR level: accuracy and SQNR bounds on real models, the integer path's shape,
and clear errors for bad options and calibration data. (Native INT8 kernels are tested in
tests/codegen; here the reference interpreter is the judge.)"""

from __future__ import annotations

import models
import numpy as np
import pytest
from metrics import accuracy, sqnr_db

import mcir
from mcir.pass_manager import GraphStats


def test_digits_mlp_static_quant8_loses_at_most_half_a_point(digits):
    g = digits["batch_graph"]
    g8 = mcir.run_passes(g, "quant8", calibration=digits["batch_calibration"])
    before = accuracy(g, digits["x_test"], digits["y_test"])
    after = accuracy(g8, digits["x_test"], digits["y_test"])
    assert before >= 0.97
    assert after >= before - 0.005, (before, after)


def test_integer_path_has_no_conversions_between_int8_layers(digits):
    calib = [(digits["x_train"][i : i + 1],) for i in range(64)]
    g8 = mcir.run_passes(digits["graph"], "quant8", calibration=calib)
    kinds = [op.name for op in g8.compute_ops()]
    assert kinds == ["quantize", "linear", "linear", "linear"], g8  # relu folded into u8 saturation
    linears = [op for op in g8.compute_ops() if op.name == "linear"]
    assert [str(op.result.type.dtype) for op in linears] == ["u8", "u8", "f32"]
    assert all(str(op.operands[1].type.dtype) == "i8" and str(op.operands[2].type.dtype) == "i32" for op in linears)
    # weights shrink to about a quarter (int8 data + one f32 scale per row, biases stay 32-bit)
    before, after = GraphStats.of(digits["graph"]), GraphStats.of(g8)
    assert after.weight_bytes <= 0.28 * before.weight_bytes


@pytest.mark.parametrize("name", ["cnn", "encoder"])
def test_cnn_and_encoder_sqnr_at_least_30_db(name):
    model, inputs = models.build(name)
    g = mcir.trace(model, inputs)
    xs = [tuple(t.numpy() for t in inputs)]
    rng = np.random.default_rng(0)
    calib = []
    for _ in range(8):
        calib.append(
            tuple(
                rng.standard_normal(x.shape).astype(x.dtype)
                if x.dtype.kind == "f"
                else rng.integers(0, 100, x.shape).astype(x.dtype)
                for x in xs[0]
            )
        )
    calib.append(xs[0])
    g8 = mcir.run_passes(g, "fold,quant8", calibration=calib)
    assert any(op.name == "linear" and str(op.operands[1].type.dtype) == "i8" for op in g8.compute_ops())
    ref = mcir.interpret(g, *xs[0])[0]
    got = mcir.interpret(g8, *xs[0])[0]
    assert sqnr_db(ref, got) >= 30.0


def test_cnn_integer_path_runs_through_pool_residual_and_flatten():
    model, inputs = models.build("cnn")
    g = mcir.trace(model, inputs)
    x = inputs[0].numpy()
    g8 = mcir.run_passes(g, "fold,quant8", calibration=[(x,)])
    quantizes = [op for op in g8.compute_ops() if op.name == "quantize"]
    assert len(quantizes) == 1 and quantizes[0].operands[0] is g8.inputs[0], g8
    assert not any(op.name == "dequantize" for op in g8.compute_ops())


@pytest.mark.parametrize("method", ["minmax", "percentile(99.99)", "entropy"])
@pytest.mark.parametrize("weights", ["per_channel", "per_tensor"])
def test_calibration_methods_and_weight_granularities(digits, method, weights):
    calib = [(digits["x_train"][i : i + 1],) for i in range(32)]
    g8 = mcir.run_passes(digits["graph"], f"quant8(calibration={method},weights={weights})", calibration=calib)
    x = digits["x_test"][:1]
    assert sqnr_db(mcir.interpret(digits["graph"], x)[0], mcir.interpret(g8, x)[0]) >= 25.0


def test_skip_keeps_matching_layers_in_float(digits):
    calib = [(digits["x_train"][i : i + 1],) for i in range(8)]
    g8 = mcir.run_passes(digits["graph"], "quant8(skip=fc3)", calibration=calib)
    fc3 = [op for op in g8.compute_ops() if op.name == "linear"][-1]
    assert fc3.operands[1].type.encoding is None and fc3.operands[0].type.encoding is None


def test_without_calibration_data_the_report_warns(digits):
    g8 = mcir.run_passes(digits["graph"], "quant8")
    assert any("no calibration data" in w for w in g8.meta["report"].warnings)


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("quant8(bits=3)", "bits=3 is not supported"),
        ("quant8(calibration=median)", "calibration 'median' is not one of"),
        ("quant8(calibration=percentile(20))", "50 < P <= 100"),
        ("quant8(skip='fc[')", "nor a valid regular expression"),
        ("quant8(weights=per_row)", "must be one of per_channel, per_tensor"),
    ],
)
def test_bad_options_are_reported_in_the_pipeline(digits, pipeline, message):
    with pytest.raises(mcir.ParseError, match=message):
        mcir.run_passes(digits["graph"], pipeline)


def test_calibration_with_wrong_shapes_names_the_batch_and_input(digits):
    with pytest.raises(mcir.McirError, match=r"calibration batch 1: input %x must have shape \[1, 64\]"):
        mcir.run_passes(digits["graph"], "quant8", calibration=[(digits["x_train"][:1],), (np.zeros(64, np.float32),)])
    with pytest.raises(mcir.McirError, match="calibration batch 0 has 2 arrays; the graph takes 1 input"):
        mcir.run_passes(digits["graph"], "quant8", calibration=[(digits["x_train"][:1], digits["x_train"][:1])])
