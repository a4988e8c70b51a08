"""Group / instance norm, padding modes, interpolation and transposed convolution, expressed with
existing IR ops: traced by both tracers, run natively, compared with torch.

Bounds: native against the interpreter within helpers.RTOL; against torch within 1e-5 of the
largest output (norms, interpolation, transposed convolution compute in a different order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mcir

from .helpers import check_native


class Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _check(tmp_path, model: nn.Module, x: torch.Tensor, tracers=("export", "fx")) -> mcir.Graph:
    model = nn.Sequential(model).eval()  # symbolic tracing keeps a torch.nn child whole (its module mapping)
    x = x.contiguous()
    with torch.no_grad():
        ref = model(x).numpy()
    for tracer in tracers:
        graph = mcir.trace(model, x, tracer=tracer)
        (native,) = check_native(graph, tmp_path, x.numpy())
        assert native.shape == ref.shape
        assert np.abs(native - ref).max() <= 1e-5 * np.abs(ref).max()
    return graph


X = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(0))


def _randomised(module: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-1, 1)
    return module


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.GroupNorm(2, 4),
        lambda: nn.GroupNorm(4, 4, affine=False),
        lambda: nn.InstanceNorm2d(4, affine=True),
        lambda: nn.InstanceNorm2d(4),
    ],
)
def test_group_and_instance_norm(tmp_path, make):
    _check(tmp_path, _randomised(make()), X)


def test_instance_norm_with_running_stats_is_batch_norm(tmp_path):
    norm = nn.InstanceNorm1d(4, affine=True, track_running_stats=True)
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    _check(tmp_path, _randomised(norm), X[:, :, 0])


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes(tmp_path, mode):
    _check(tmp_path, Fn(lambda x: F.pad(x, (2, 1, 1, 3), mode=mode)), X)
    _check(tmp_path, Fn(lambda x: F.pad(x, (3, 2), mode=mode)), X[:, :, 0])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(scale_factor=2, mode="nearest"),
        dict(size=(7, 4), mode="nearest"),
        dict(size=(8, 9), mode="nearest-exact"),
        dict(scale_factor=2, mode="bilinear"),
        dict(size=(7, 9), mode="bilinear", align_corners=True),
        dict(scale_factor=0.5, mode="bilinear"),
        dict(size=(9, 11), mode="bicubic"),
    ],
)
def test_interpolate_2d(tmp_path, kwargs):
    graph = _check(tmp_path, Fn(lambda x: F.interpolate(x, **kwargs)), X)
    if kwargs["mode"].startswith("nearest"):
        assert [op.name for op in graph.compute_ops()] == ["reshape", "index_select"]


def test_interpolate_1d_linear(tmp_path):
    _check(tmp_path, Fn(lambda x: F.interpolate(x, scale_factor=3, mode="linear")), X[:, :, 0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.ConvTranspose2d(4, 6, 3),
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
        lambda: nn.ConvTranspose2d(4, 4, (3, 2), stride=(2, 3), padding=(0, 1), groups=2, dilation=2),
        lambda: nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1, bias=False),
    ],
)
def test_conv_transpose2d(tmp_path, make):
    _check(tmp_path, _randomised(make()), X)


@pytest.mark.parametrize(
    "make",
    [lambda: nn.ConvTranspose1d(4, 3, 5, stride=2, padding=2, output_padding=1), lambda: nn.ConvTranspose1d(4, 4, 3)],
)
def test_conv_transpose1d(tmp_path, make):
    _check(tmp_path, _randomised(make()), X[:, :, 0])
