"""Unary activations on quantised u8/i8 values by a 256-entry table (kernels/quant_lut.py):
bit equal to the interpreter for every stored byte, and GELU between a transformer FFN's two
linears stays in int8 after quant8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mcir
from mcir import dtypes
from mcir.codegen.kernels.quant_lut import TABLE_ACTIVATIONS
from mcir.encodings import Quant
from mcir.ir import Graph
from mcir.types import TensorType

from .helpers import build

IN = {"u8": Quant(scale=0.05, zero_point=120), "i8": Quant(scale=0.04, zero_point=-3)}
OUT = Quant(scale=0.027, zero_point=9)


@pytest.mark.parametrize("name", TABLE_ACTIVATIONS)
@pytest.mark.parametrize("dtype", ["u8", "i8"])
def test_table_activation_is_bit_equal_to_the_interpreter_on_every_byte(tmp_path, name, dtype):
    g = Graph("lut")
    x = g.add_input("x", TensorType((4, 64), dtypes.by_name(dtype), IN[dtype]))
    attrs = {"approximate": "tanh"} if name == "gelu" and dtype == "i8" else {}
    g.set_outputs([g.add(name, [x], attrs, type=TensorType((4, 64), dtypes.u8, OUT))])
    xs = np.arange(256, dtype=np.uint8).view(dtypes.by_name(dtype).np).reshape(4, 64)  # every stored value
    (native,) = build(g, tmp_path)(xs)
    np.testing.assert_array_equal(native, mcir.interpret(g, xs)[0])


class Ffn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(64, 256)
        self.down = torch.nn.Linear(256, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x)))


def test_quant8_keeps_gelu_between_linears_float(tmp_path):
    # the u8 table kernel is exact per op (the tests above); quant8 does not use it between layers because
    # requantising before gelu amplifies 1-LSB differences of the producing layer (FLOAT_REASONS["gelu"])
    torch.manual_seed(0)
    model = Ffn().eval()
    x = torch.randn(1, 16, 64)
    g = mcir.trace(model, (x,))
    calib = [(np.random.default_rng(s).standard_normal((1, 16, 64)).astype(np.float32),) for s in range(4)]
    q = mcir.run_passes(g, "fold,quant8", calibration=calib)
    (gelu,) = [op for op in q.compute_ops() if op.name == "gelu"]
    assert gelu.operands[0].type.encoding is None and gelu.result.type.encoding is None
    native = build(q, tmp_path)(x.numpy())[0]
    ref = mcir.interpret(q, x.numpy())[0]
    assert np.abs(native - ref).max() <= 1e-6 + np.abs(ref).max() / 127
    with torch.inference_mode():
        y = model(x).numpy()
    sqnr = 10 * np.log10((y.astype(np.float64) ** 2).sum() / ((ref - y.astype(np.float64)) ** 2).sum())
    assert sqnr >= 30.0, sqnr
