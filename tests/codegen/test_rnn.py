"""Sequence models natively: nn.LSTM / nn.GRU in every configuration torch offers (layers,
directions, batch_first, given or zero initial state, unbatched, no bias), text classifiers
built on them, and a 1-D convolutional keyword-spotting net (40 mel bands x 100 frames).

Bounds: native against the interpreter within helpers.RTOL; both against torch within 1e-5
of the largest output (a recurrence of 50 steps included), every output of the call (y, h_n, c_n).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mcir

from .helpers import build, check_native, runnable_targets

TOL = 1e-5

# torch.export's own notice about nn.LSTM/GRU's _flat_weights list; the weights are traced correctly
pytestmark = pytest.mark.filterwarnings("ignore:The tensor attributes self.rnn._flat_weights")


def _close(got: np.ndarray, ref: np.ndarray, tol: float = TOL) -> None:
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max()


class AllOutputs(nn.Module):
    """Returns y, h_n (and c_n): every result of the layer is checked."""

    def __init__(self, rnn: nn.Module, with_state: bool = False) -> None:
        super().__init__()
        self.rnn = rnn
        self.with_state = with_state

    def forward(self, x, h0=None, c0=None):
        if isinstance(self.rnn, nn.LSTM):
            y, (h, c) = self.rnn(x, (h0, c0)) if self.with_state else self.rnn(x)
            return y, h, c
        y, h = self.rnn(x, h0) if self.with_state else self.rnn(x)
        return y, h


CONFIGS = [
    dict(),
    dict(num_layers=2),
    dict(bidirectional=True),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(bias=False, batch_first=True),
]


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_rnn_layer_matches_torch_with_both_tracers(tmp_path, cls, config):
    torch.manual_seed(0)
    model = AllOutputs(cls(6, 8, **config)).eval()
    x = torch.randn(4, 5, 6)
    with torch.no_grad():
        refs = [r.numpy() for r in model(x)]
    for tracer in ("export", "fx"):
        graph = mcir.trace(model, x, tracer=tracer)
        natives = check_native(graph, tmp_path, x.numpy())
        for got, ref in zip(natives, refs):
            _close(got, ref)


PROJ_CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(bias=False),
]


@pytest.mark.parametrize("config", PROJ_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_lstm_with_projection_matches_torch_with_both_tracers(tmp_path, config):
    # LSTMP: h = (o * tanh(c)) W_hr^T each step; h, y and W_hh are proj_size wide, c stays hidden wide.
    # 40 and 24 are not multiples of the vector width: both GEMMs of a step have partial panels
    torch.manual_seed(11)
    model = AllOutputs(nn.LSTM(6, 40, proj_size=24, **config)).eval()
    x = torch.randn(7, 3, 6)
    with torch.no_grad():
        refs = [r.numpy() for r in model(x)]
    assert [r.shape[-1] for r in refs] == [24 * (2 if config.get("bidirectional") else 1), 24, 40]
    for tracer in ("export", "fx"):
        graph = mcir.trace(model, x, tracer=tracer)
        assert all(len(op.operands) == 6 for op in graph.compute_ops() if op.name == "lstm")
        for got, ref in zip(check_native(graph, tmp_path, x.numpy()), refs):
            _close(got, ref)


def test_lstm_with_projection_and_a_given_state(tmp_path):
    torch.manual_seed(12)
    model = AllOutputs(nn.LSTM(5, 12, proj_size=4, num_layers=2), with_state=True).eval()
    x, h0, c0 = torch.randn(6, 2, 5), torch.randn(2, 2, 4), torch.randn(2, 2, 12)
    graph = mcir.trace(model, (x, h0, c0))
    with torch.no_grad():
        refs = [r.numpy() for r in model(x, h0, c0)]
    for got, ref in zip(check_native(graph, tmp_path, x.numpy(), h0.numpy(), c0.numpy()), refs):
        _close(got, ref)


def test_quant8_of_an_lstm_with_projection_keeps_the_recurrence_float(tmp_path):
    # the projected state is not bounded by 1, so the fixed int8 state grid does not apply: the input
    # projections become int8 layers, W_hh and W_hr stay f32
    torch.manual_seed(13)
    model = AllOutputs(nn.LSTM(16, 32, proj_size=12, bidirectional=True)).eval()
    gen = torch.Generator().manual_seed(14)
    xs = [torch.randn(10, 2, 16, generator=gen) for _ in range(6)]
    graph = mcir.trace(model, xs[0])
    q = mcir.run_passes(graph, "fold,quant8", calibration=[(x.numpy(),) for x in xs[1:]])
    recurrent = [op for op in q.compute_ops() if op.name == "lstm"]
    assert recurrent and not any(op.attrs["int8_state"] for op in recurrent)
    assert all(op.operands[3].type.dtype.name == "f32" for op in recurrent)
    assert any(op.operands[1].type.dtype.name == "i8" for op in q.compute_ops() if op.name == "linear")
    natives = build(q, tmp_path)(xs[0].numpy())
    with torch.no_grad():
        refs = [r.numpy() for r in model(xs[0])]
    for got, want, ref in zip(natives, mcir.interpret(q, xs[0].numpy()), refs):
        _close(got, want, 1e-4)
        noise = ((got.astype(np.float64) - ref) ** 2).sum()
        assert 10 * np.log10((ref.astype(np.float64) ** 2).sum() / noise) >= 30


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_given_initial_state_is_an_input(tmp_path, cls):
    torch.manual_seed(1)
    model = AllOutputs(cls(3, 4, num_layers=2, bidirectional=True), with_state=True).eval()
    x, h0, c0 = torch.randn(6, 2, 3), torch.randn(4, 2, 4), torch.randn(4, 2, 4)
    inputs = (x, h0, c0) if cls is nn.LSTM else (x, h0)
    graph = mcir.trace(model, inputs)
    with torch.no_grad():
        refs = [r.numpy() for r in model(*inputs)]
    natives = check_native(graph, tmp_path, *[t.numpy() for t in inputs])
    for got, ref in zip(natives, refs):
        _close(got, ref)


def test_unbatched_sequence(tmp_path):
    torch.manual_seed(2)
    model = AllOutputs(nn.LSTM(3, 4)).eval()
    x = torch.randn(7, 3)
    graph = mcir.trace(model, x)
    with torch.no_grad():
        refs = [r.numpy() for r in model(x)]
    for got, ref in zip(check_native(graph, tmp_path, x.numpy()), refs):
        _close(got, ref)


def test_cell_state_is_computed_only_when_used():
    torch.manual_seed(3)

    class LastHidden(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(3, 4)

        def forward(self, x):
            return self.rnn(x)[1][0]

    graph = mcir.trace(LastHidden().eval(), torch.randn(5, 1, 3))
    lstm_ops = [op for op in graph.compute_ops() if op.name == "lstm"]
    assert [op.attrs["cell"] for op in lstm_ops] == [False]
    # the input projection of all steps is one ordinary linear layer: quant8 and the weight passes see it
    assert [op.name for op in graph.compute_ops()][:2] == ["linear", "lstm"]


class TextClassifier(nn.Module):
    """Embedding -> (bi)LSTM or GRU -> the last step's features -> classes."""

    def __init__(self, cls: type, vocab: int = 200, dim: int = 32, hidden: int = 48, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.rnn = cls(dim, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, ids):
        y, _ = self.rnn(self.emb(ids))
        return self.fc(y[:, -1])


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_text_classifier_fp32_and_int8(tmp_path, cls):
    torch.manual_seed(4)
    model = TextClassifier(cls).eval()
    gen = torch.Generator().manual_seed(5)
    batches = [torch.randint(1, 200, (2, 20), generator=gen) for _ in range(9)]
    graph = mcir.trace(model, batches[0])
    with torch.no_grad():
        ref = model(batches[0]).numpy()
    (native,) = check_native(graph, tmp_path, batches[0].numpy())
    _close(native, ref)
    q = mcir.run_passes(graph, "fold,quant8", calibration=[(b.numpy(),) for b in batches[1:]])
    assert any(op.operands[1].type.dtype.name == "i8" for op in q.compute_ops() if op.name == "linear")
    lib = build(q, tmp_path)
    (native_q,) = lib(batches[0].numpy())
    (interp_q,) = mcir.interpret(q, batches[0].numpy())
    _close(native_q, interp_q, 1e-4)
    noise = ((native_q.astype(np.float64) - ref) ** 2).sum()
    assert 10 * np.log10((ref.astype(np.float64) ** 2).sum() / noise) >= 30


class KeywordSpotter(nn.Module):
    """A 1-D conv keyword spotter on 40 mel bands x 100 frames: a strided stem, depthwise-separable
    blocks (one dilated), max and global average pooling over time, 12 keywords."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(40, 64, 5, stride=2, padding=2), nn.BatchNorm1d(64), nn.ReLU())
        blocks = []
        for dilation in (1, 2):
            blocks += [
                nn.Conv1d(64, 64, 3, padding=dilation, dilation=dilation, groups=64, bias=False),
                nn.BatchNorm1d(64),
                nn.ReLU(),
                nn.Conv1d(64, 64, 1),
                nn.ReLU(),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.MaxPool1d(2)
        self.grouped = nn.Conv1d(64, 64, 3, padding="same", groups=4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 12))

    def forward(self, mel):
        return self.head(torch.relu(self.grouped(self.pool(self.blocks(self.stem(mel))))))


def test_keyword_spotting_conv1d_net_fp32_and_int8(tmp_path):
    torch.manual_seed(6)
    model = KeywordSpotter().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(7)
    mels = [torch.randn(1, 40, 100, generator=gen) for _ in range(9)]
    for tracer in ("export", "fx"):
        graph = mcir.trace(model, mels[0], tracer=tracer)
        with torch.no_grad():
            ref = model(mels[0]).numpy()
        (native,) = check_native(graph, tmp_path, mels[0].numpy())
        _close(native, ref)
    q = mcir.run_passes(graph, "fold,quant8", calibration=[(m.numpy(),) for m in mels[1:]])
    convs = [op for op in q.compute_ops() if op.name == "conv2d"]
    assert convs and all(op.operands[1].type.dtype.name == "i8" for op in convs)
    (native_q,) = build(q, tmp_path)(mels[0].numpy())
    noise = ((native_q.astype(np.float64) - ref) ** 2).sum()
    assert 10 * np.log10((ref.astype(np.float64) ** 2).sum() / noise) >= 30


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.MaxPool1d(3, stride=2, padding=1),
        lambda: nn.AvgPool1d(4, stride=2),
        lambda: nn.AdaptiveAvgPool1d(5),
        lambda: nn.AdaptiveMaxPool1d(1),
        lambda: nn.AdaptiveMaxPool1d(4),
    ],
)
def test_1d_pooling(tmp_path, make):
    model = make().eval()
    x = torch.randn(2, 3, 20)
    for tracer in ("export", "fx"):
        graph = mcir.trace(model, x, tracer=tracer)
        (native,) = check_native(graph, tmp_path, x.numpy())
        _close(native, model(x).numpy())


def test_adaptive_max_pool1d_with_uneven_windows_fails_clearly():
    with pytest.raises(mcir.McirError, match="divides the length"):
        mcir.trace(nn.AdaptiveMaxPool1d(3), torch.randn(1, 2, 20))


@pytest.mark.parametrize(
    "conv, pool",
    [
        (dict(kernel_size=3, padding=2, dilation=2), nn.MaxPool1d(3, stride=2, padding=1)),
        (dict(kernel_size=5, padding="same", groups=4), nn.AvgPool1d(4, stride=2)),
        (dict(kernel_size=3, padding=1, groups=16, bias=False), nn.AdaptiveAvgPool1d(5)),  # depthwise
        (dict(kernel_size=3, stride=2), nn.AdaptiveMaxPool1d(1)),
    ],
    ids=["dilated-max", "grouped-avg", "depthwise-adaptive_avg", "strided-global_max"],
)
def test_conv1d_and_1d_pools_stay_int8_natively(tmp_path, conv, pool):
    # after quant8 every conv1d is an int8 conv2d and every 1-D pool runs on u8 values (no float island);
    # native vs interpreter: int32 sums are exact, only the f32 output's rounding differs
    torch.manual_seed(15)
    model = nn.Sequential(
        nn.Conv1d(16, 16, 1), nn.ReLU(), nn.Conv1d(16, 16, **conv), nn.ReLU(), pool, nn.Conv1d(16, 8, 1)
    ).eval()
    gen = torch.Generator().manual_seed(16)
    xs = [torch.randn(1, 16, 30, generator=gen) for _ in range(13)]
    q = mcir.run_passes(mcir.trace(model, xs[0]), "fold,quant8", calibration=[(x.numpy(),) for x in xs[1:]])
    ops = list(q.compute_ops())
    assert [op.operands[1].type.dtype.name for op in ops if op.name == "conv2d"] == ["i8"] * 3
    pools = [op for op in ops if "pool" in op.name]
    assert len(pools) == 1 and pools[0].operands[0].type.dtype.name == "u8"
    assert not any(op.name in ("relu", "amax") for op in ops)
    (native,) = build(q, tmp_path)(xs[0].numpy())
    (interp,) = mcir.interpret(q, xs[0].numpy())
    _close(native, interp)
    with torch.no_grad():
        ref = model(xs[0]).numpy()
    # xs[0] is held out of the calibration: its activations may pass the calibrated ranges and clip
    noise = ((native.astype(np.float64) - ref) ** 2).sum()
    assert 10 * np.log10((ref.astype(np.float64) ** 2).sum() / noise) >= 25


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_quant8_makes_w_hh_int8_and_the_kernel_matches_the_interpreter(tmp_path, cls):
    torch.manual_seed(8)
    model = AllOutputs(cls(16, 32, num_layers=2, bidirectional=True)).eval()
    gen = torch.Generator().manual_seed(9)
    xs = [torch.randn(12, 3, 16, generator=gen) for _ in range(5)]
    graph = mcir.trace(model, xs[0])
    q = mcir.run_passes(graph, "quant8", calibration=[(x.numpy(),) for x in xs[1:]])
    recurrent = [op for op in q.compute_ops() if op.name in ("lstm", "gru")]
    assert recurrent and all(op.attrs["int8_state"] for op in recurrent)
    assert all(op.operands[-2].type.dtype.name == "i8" for op in recurrent)
    lib = build(q, tmp_path)
    natives = lib(xs[0].numpy())
    interps = mcir.interpret(q, xs[0].numpy())
    with torch.no_grad():
        refs = [r.numpy() for r in model(xs[0])]
    for got, want, ref in zip(natives, interps, refs):
        # the same int8 arithmetic; a state exactly between two codes may round the other way (1/127)
        _close(got, want, 1e-3)
        noise = ((got.astype(np.float64) - ref) ** 2).sum()
        assert 10 * np.log10((ref.astype(np.float64) ** 2).sum() / noise) >= 30


@pytest.mark.parametrize("target", [t for t in ("x86-64-v2", "x86-64-v3") if t in runnable_targets()])
def test_recurrences_on_portable_targets(tmp_path, target):
    # without VNNI the int8 W_hh product takes the widened vpmaddwd path; without AVX-512 fewer lanes
    torch.manual_seed(10)
    model = AllOutputs(nn.GRU(8, 24, bidirectional=True)).eval()
    x = torch.randn(6, 2, 8)
    graph = mcir.trace(model, x)
    check_native(graph, tmp_path, x.numpy(), target=target)
    q = mcir.run_passes(graph, "quant8", calibration=[(torch.randn(6, 2, 8).numpy(),) for _ in range(3)])
    natives = build(q, tmp_path, target=target)(x.numpy())
    for got, want in zip(natives, mcir.interpret(q, x.numpy())):
        _close(got, want, 1e-3)


def test_int8_w_hh_with_a_projection_is_a_clear_codegen_error(tmp_path):
    # quant8 never makes it (the projected state is unbounded); written by hand it is refused, not miscompiled
    text = """graph @g(%gx: f32[3,1,16], %h0: f32[1,2], %c0: f32[1,4]) -> (f32[3,1,2]) {
  %w = const : i8[16,2] #quant<axis=0>
  %b = const : f32[16]
  %r = const : f32[2,4]
  %y = lstm(%gx, %h0, %c0, %w, %b, %r) {int8_state=true} : f32[3,1,2]
  return %y
}"""
    graph = mcir.parse(text)
    consts = {op.result.name: op for op in graph.ops if op.name == "const"}
    consts["w"].data = {"data": np.ones((16, 2), np.int8), "scale": np.full(16, 0.1, np.float32)}
    consts["b"].data = np.zeros(16, np.float32)
    consts["r"].data = np.ones((2, 4), np.float32)
    with pytest.raises(mcir.McirError, match="int8 W_hh with a projection"):
        build(graph, tmp_path)


def test_half_stores_an_lstmp_w_hh_in_16_bits(tmp_path):
    torch.manual_seed(17)
    model = AllOutputs(nn.LSTM(8, 64, proj_size=32)).eval()
    x = torch.randn(6, 2, 8)
    half = mcir.run_passes(mcir.trace(model, x), "half")
    (op,) = [op for op in half.compute_ops() if op.name == "lstm" and not op.attrs["cell"]]
    assert op.operands[3].type.dtype.name == "f16"  # W_hh [256, 32]; the half pass leaves W_hr f32
    natives = check_native(half, tmp_path, x.numpy())
    with torch.no_grad():
        refs = [r.numpy() for r in model(x)]
    for got, ref in zip(natives, refs):
        _close(got, ref, 1e-3)
