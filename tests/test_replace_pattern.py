"""mcir.replace_pattern: patterns and replacements written as plain torch functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mcir


class SwishNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        h = self.a(x)
        h = h * torch.sigmoid(h)
        y = self.b(h)
        return torch.sigmoid(y) * y  # the commuted form matches only if written that way


def test_swish_becomes_silu_and_values_are_unchanged():
    torch.manual_seed(0)
    model = SwishNet().eval()
    x = torch.randn(2, 8)
    g = mcir.trace(model, (x,))

    def pattern(x):
        return x * torch.sigmoid(x)

    def replacement(x):
        return F.silu(x)

    assert mcir.replace_pattern(g, pattern, replacement) == 1
    mcir.verify(g)
    names = [op.name for op in g.compute_ops()]
    assert names.count("silu") == 1 and names.count("sigmoid") == 1
    np.testing.assert_allclose(mcir.interpret(g, x.numpy())[0], model(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_multi_input_pattern_with_constants_and_attributes():
    class M(nn.Module):
        def forward(self, x, y):
            return F.gelu(x + y * 2.0, approximate="tanh") + F.gelu(x + y * 3.0, approximate="tanh")

    x, y = torch.randn(3, 5), torch.randn(3, 5)
    g = mcir.trace(M(), (x, y))

    def pattern(a, b):
        return F.gelu(a + b * 2.0, approximate="tanh")

    def replacement(a, b):
        return F.gelu(a + b + b, approximate="tanh")

    assert mcir.replace_pattern(g, pattern, replacement) == 1  # the 3.0 constant does not match
    np.testing.assert_allclose(mcir.interpret(g, x.numpy(), y.numpy())[0], M()(x, y).numpy(), rtol=1e-5, atol=1e-6)


def test_mismatched_signatures_are_refused():
    g = mcir.trace(SwishNet().eval(), (torch.randn(2, 8),))
    with pytest.raises(mcir.McirError, match="pattern takes 1 argument"):
        mcir.replace_pattern(g, lambda x: torch.relu(x), lambda x, y: x)
