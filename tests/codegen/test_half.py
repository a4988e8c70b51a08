"""Weights stored in 16 bits, computed in f32 (the ``half`` pass): library bytes, accuracy, targets.

Bounds: native against the interpreter of the half graph within helpers.RTOL (the same rounded
weights, f32 arithmetic); against the f32 torch model within 1e-3 of the largest output for f16
(measured 2e-4 to 4e-4), 1e-2 for bf16; the embedded weight bytes at most 0.51 of fp32's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mcir
from mcir.errors import CodegenError

from .helpers import build, check_native, runnable_targets


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


class Tagger(nn.Module):
    """Embedding -> LSTM -> linear: every kind of weight the pass converts."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(300, 64)
        self.rnn = nn.LSTM(64, 64, batch_first=True)
        self.fc = nn.Linear(64, 300)

    def forward(self, ids):
        return self.fc(self.rnn(self.emb(ids))[0])


@pytest.mark.parametrize(("dtype", "tol"), [("f16", 1e-3), ("bf16", 1e-2)])
def test_half_weights_halve_the_library_and_stay_close(tmp_path, dtype, tol):
    torch.manual_seed(0)
    model = Tagger().eval()
    ids = torch.randint(0, 300, (2, 10))
    graph = mcir.trace(model, ids)
    half = mcir.run_passes(graph, f"half(dtype={dtype})")
    kinds = {op.operands[{"linear": 1, "embedding": 1, "lstm": 3}[op.name]].type.dtype.name
             for op in half.compute_ops() if op.name in ("linear", "embedding", "lstm")}  # fmt: skip
    assert kinds == {dtype}
    (native,) = check_native(half, tmp_path, ids.numpy())
    with torch.no_grad():
        ref = model(ids).numpy()
    assert _rel(native, ref) <= tol
    lib32 = build(graph, tmp_path)
    lib16 = build(half, tmp_path)
    assert lib16.weight_bytes <= 0.51 * lib32.weight_bytes


def test_f16_halves_an_hf_bert_within_1e3(tmp_path):
    pytest.importorskip("transformers")
    from tests.models_hf.hf_models import build as hf_build
    from tests.models_hf.hf_models import inputs

    model, xs = hf_build("bert"), inputs("bert")
    graph = mcir.trace(model, xs)
    half = mcir.run_passes(graph, "half(min_elements=64)")  # every matrix of this tiny model
    arrays = [t.numpy() for t in xs]
    (native,) = check_native(half, tmp_path, *arrays)
    with torch.no_grad():
        ref = model(*xs).numpy()
    assert _rel(native, ref) <= 1e-3
    # biases and layer-norm vectors (f32) and position-id buffers (i64) stay: 3.3 KB of this hidden-32
    # model's 95 KB, so 0.52 here (a sliver at real sizes: BERT-tiny in docs/benchmarks.md)
    assert build(half, tmp_path).weight_bytes <= 0.53 * build(graph, tmp_path).weight_bytes


def test_shared_weights_stay_f32_when_another_op_needs_f32():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(64, 32))

        def forward(self, x):
            return torch.nn.functional.linear(x, self.w) + (x @ self.w.T)  # matmul reads the same weight

    graph = mcir.trace(Tied(), torch.randn(2, 32))
    half = mcir.run_passes(graph, "half(min_elements=1)")
    assert all(op.result.type.dtype.name == "f32" for op in half.constants())


def test_f16_needs_f16c_and_bf16_runs_anywhere(tmp_path):
    torch.manual_seed(1)
    model = nn.Linear(64, 64).eval()
    x = torch.randn(1, 64)
    graph = mcir.trace(model, x)
    with pytest.raises(CodegenError, match="F16C"):
        build(mcir.run_passes(graph, "half(min_elements=1)"), tmp_path, target="x86-64-v2")
    if "x86-64-v2" in runnable_targets():
        bf16 = mcir.run_passes(graph, "half(dtype=bf16,min_elements=1)")
        check_native(bf16, tmp_path, x.numpy(), target="x86-64-v2")


def test_f16_refuses_weights_beyond_its_range():
    model = nn.Linear(32, 32)
    with torch.no_grad():
        model.weight[0, 0] = 1e5
    graph = mcir.trace(model, torch.randn(1, 32))
    with pytest.raises(mcir.McirError, match="bf16"):
        mcir.run_passes(graph, "half(min_elements=1)")


def test_half_after_quant8_stores_what_stays_float_in_f16(tmp_path):
    torch.manual_seed(2)
    model = Tagger().eval()
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, 300, (2, 10), generator=gen) for _ in range(5)]
    graph = mcir.trace(model, batches[0])
    q = mcir.run_passes(graph, "fold,quant8,half", calibration=[(b.numpy(),) for b in batches[1:]])
    stored = {op.name: op.operands[1].type.dtype.name for op in q.compute_ops() if op.name in ("linear", "embedding")}
    assert stored == {"linear": "i8", "embedding": "f16"}
    lib = build(q, tmp_path)
    (native,) = lib(batches[0].numpy())
    (interp,) = mcir.interpret(q, batches[0].numpy())
    assert _rel(native, interp) <= 1e-4


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_convolutions_gemm_grouped_and_depthwise(tmp_path, dtype):
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise: the direct kernel
        nn.Conv2d(16, 32, 3, stride=2, groups=2),  # grouped GEMM
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    graph = mcir.trace(model, x)
    half = mcir.run_passes(graph, f"half(dtype={dtype},min_elements=64)")
    convs = [op for op in half.compute_ops() if op.name == "conv2d"]
    assert [op.operands[1].type.dtype.name for op in convs] == [dtype] * 3
    (native,) = check_native(half, tmp_path, x.numpy())
    with torch.no_grad():
        ref = model(x).numpy()
    assert _rel(native, ref) <= (1e-3 if dtype == "f16" else 1e-2)
