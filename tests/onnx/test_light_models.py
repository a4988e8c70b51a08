"""The real CNN architectures in the onnx wheel (backend/test/data/light): import, compile, match ONNX Runtime.

Their weights are constants (ConstantOfShape), so the final softmax is uniform: the comparison is on the
logits before it. benchmarks/onnx_conformance.py --light runs all nine models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import mcir

LIGHT = Path(onnx.__file__).parent / "backend/test/data/light"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet", "shufflenet"])
def test_light_model_matches_onnx_runtime_natively(name, tmp_path):
    model = onnx.load(str(LIGHT / f"light_{name}.onnx"))
    softmax = model.graph.node[-1]
    assert softmax.op_type == "Softmax"
    model.graph.output.append(helper.make_tensor_value_info(softmax.input[0], onnx.TensorProto.FLOAT, None))
    graph = mcir.from_onnx(model)
    x = np.random.default_rng(0).standard_normal(graph.inputs[0].type.shape).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: x})
    got = mcir.compile(graph, tmp_path / name)(x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())
