"""What users see when a model cannot be traced: an McirError naming the torch op, the
module path and the line of their code, with a hint; never a raw torch traceback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mcir


class CumulativeHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        return torch.cumprod(h, dim=1)  # no IR op for this


class BranchOnValues(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return x * 2
        return x - 1


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 4)  # Elman RNN: mcir has LSTM and GRU only

    def forward(self, x):
        return self.rnn(x)[0]


class Noisy(nn.Module):
    def forward(self, x):
        return x + torch.randn(4)


@pytest.mark.parametrize(("tracer", "op"), [("export", "aten.cumprod"), ("fx", "torch.cumprod")])
def test_unsupported_op_names_op_module_and_source_line(tracer, op):
    with pytest.raises(mcir.UnsupportedError) as info:
        mcir.trace(CumulativeHead(), torch.randn(2, 4), tracer=tracer)
    text = str(info.value)
    assert op in text
    assert "top-level module" in text
    assert "test_trace_errors.py:" in text and "torch.cumprod(h, dim=1)" in text


def test_unsupported_module_names_its_path():
    with pytest.raises(mcir.UnsupportedError, match=r"aten\.rnn_tanh.*module 'rnn'.*test_trace_errors\.py:\d+"):
        mcir.trace(Recurrent(), torch.randn(3, 2, 4))
    with pytest.raises(mcir.UnsupportedError, match=r"torch\.nn\.RNN.*module 'rnn'.*tracer='export'"):
        mcir.trace(Recurrent(), torch.randn(3, 2, 4), tracer="fx")


def test_data_dependent_control_flow_is_explained(capsys):
    with pytest.raises(mcir.UnsupportedError) as info:
        mcir.trace(BranchOnValues(), torch.randn(2, 4))
    text = str(info.value)
    assert "torch.export could not trace BranchOnValues" in text
    assert "if x.sum() > 0:" in text and "data-dependent control flow" in text and "tracer='fx'" in text
    assert "def forward" not in capsys.readouterr().err  # torch's partial-graph dump is not shown
    with pytest.raises(mcir.UnsupportedError, match=r"symbolic_trace could not trace BranchOnValues.*tracer='export'"):
        mcir.trace(BranchOnValues(), torch.randn(2, 4), tracer="fx")


def test_random_numbers_are_refused():
    with pytest.raises(mcir.UnsupportedError, match=r"aten\.randn.*random numbers.*as an input"):
        mcir.trace(Noisy(), torch.randn(2, 4))


def test_bad_arguments():
    with pytest.raises(mcir.McirError, match="unknown tracer 'jit'"):
        mcir.trace(Noisy(), torch.randn(2, 4), tracer="jit")
    with pytest.raises(mcir.McirError, match=r"needs a torch\.nn\.Module"):
        mcir.trace(lambda x: x, torch.randn(2))
    with pytest.raises(mcir.UnsupportedError, match=r"float64.*\.float\(\)"):
        mcir.trace(nn.ReLU(), torch.randn(2, dtype=torch.float64))


def test_using_an_uncomputed_extra_result_is_an_error():
    class WithIndices(nn.Module):
        def forward(self, x):
            values, indices = nn.functional.max_pool2d(x, 2, return_indices=True)
            return values + indices.float()

    with pytest.raises(mcir.UnsupportedError, match="which mcir does not compute"):
        mcir.trace(WithIndices(), torch.randn(1, 1, 4, 4))


def test_supported_table_lists_what_the_frontend_maps():
    from mcir.frontend.torch_calls import supported

    table = supported()
    assert {"aten.linear", "aten.conv2d", "aten.scaled_dot_product_attention"} <= set(table["aten"])
    assert {"torch.flatten", "operator.add", "torch.nn.functional.relu"} <= set(table["functions"])
    assert {"Tensor.view", "Tensor.size"} <= set(table["methods"])
    assert {"torch.nn.Linear", "torch.nn.BatchNorm2d"} <= set(table["modules"])
