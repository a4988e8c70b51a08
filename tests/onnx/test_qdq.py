"""Quantised ONNX (QDQ, as ONNX Runtime's quantize_static writes it) imports as mcir's int8 types."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

import mcir
from mcir import dtypes
from mcir.encodings import Quant


class _Batches(CalibrationDataReader):
    def __init__(self, name: str, shape: list[int]) -> None:
        rng = np.random.default_rng(0)
        self.batches = iter([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(8)])

    def get_next(self):
        return next(self.batches, None)


def quantized(path, tmp_path):
    """``path`` quantised by ONNX Runtime: QDQ, int8 weights per channel, u8 activations."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = session.get_inputs()[0]
    out = tmp_path / f"{path.stem}_qdq.onnx"
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs advice at WARNING
    quantize_static(
        str(path), str(out), _Batches(x.name, x.shape), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return out, x


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_ort_quantized_models_compile_to_int8_kernels(name, exported, tmp_path):
    path = exported(name)[2]
    qpath, x_info = quantized(path, tmp_path)
    graph = mcir.from_onnx(qpath)
    weighted = [op for op in graph.compute_ops() if op.name in ("linear", "conv2d")]
    assert weighted
    for op in weighted:
        x, w = op.operands[0].type, op.operands[1].type
        assert x.dtype == dtypes.u8 and isinstance(x.encoding, Quant) and x.encoding.axis is None, op
        assert w.dtype == dtypes.i8 and w.encoding == Quant(axis=0), op
        if len(op.operands) == 3:
            assert op.operands[2].type.dtype == dtypes.i32
    x = np.random.default_rng(5).standard_normal(x_info.shape).astype(np.float32)
    want = ort.InferenceSession(str(qpath), providers=["CPUExecutionProvider"]).run(None, {x_info.name: x})[0]
    step = graph.outputs[0].producer.operands[0].type.encoding.scale  # the output's quantisation step
    interp = mcir.interpret(graph, x)[0]
    assert np.abs(interp - want).max() <= step * 1.01  # the same integers up to one rounding step
    native = mcir.compile(graph, tmp_path / name)(x)[0]
    assert np.abs(native - interp).max() <= step * 1.01


class _Convs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 4, 3)
        self.fc = torch.nn.Parameter(torch.randn(4 * 6 * 6, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.c2(torch.relu(self.c1(x))), 1) @ self.fc


def test_qoperator_models_qlinearconv_and_qlinearmatmul(tmp_path):
    from conftest import export_torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _Convs().eval()
    example = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))  # the global RNG stays as it was
    path = export_torch(model, (example,), tmp_path / "convs.onnx")
    qpath = tmp_path / "convs_qop.onnx"
    quantize_static(
        str(path), str(qpath), _Batches("input.1", [1, 3, 8, 8]), quant_format=QuantFormat.QOperator,
        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    import onnx

    assert {"QLinearConv", "QLinearMatMul"} <= {n.op_type for n in onnx.load(str(qpath)).graph.node}
    graph = mcir.from_onnx(qpath)
    layers = [op for op in graph.compute_ops() if op.name in ("conv2d", "linear")]
    assert len(layers) == 3 and all(op.result.type.dtype == dtypes.u8 for op in layers)
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(str(qpath), providers=["CPUExecutionProvider"]).run(None, {"input.1": x})[0]
    step = layers[-1].result.type.encoding.scale
    assert np.abs(mcir.interpret(graph, x)[0] - want).max() <= step * 1.01
    assert np.abs(mcir.compile(graph, tmp_path / "convs")(x)[0] - want).max() <= step * 1.01
