"""Indexing with tensors, running sums, repeat and 1-D convolution: torch modules traced by both
tracers, run by the interpreter and natively.

Bounds: integer and bool results exact; f32 within helpers.RTOL of the interpreter and 1e-5
(relative to the largest output) of torch; an index outside its axis is the library's
MCIR_ERR_INDEX_OUT_OF_RANGE, not a wild read.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mcir
from mcir.errors import McirError

from .helpers import build, check_native


class Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, a, b=None, c=None):  # named parameters: symbolic tracing cannot iterate *args
        return self.fn(*[x for x in (a, b, c) if x is not None])


def _check(tmp_path, fn, *xs, tracers=("export", "fx")):
    model = Fn(fn)
    with torch.no_grad():
        ref = fn(*xs).numpy()
    for tracer in tracers:
        graph = mcir.trace(model, xs, tracer=tracer)
        (native,) = check_native(graph, tmp_path, *[x.numpy() for x in xs])
        assert native.dtype == ref.dtype and native.shape == ref.shape
        if ref.dtype.kind == "f":
            assert np.abs(native - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1e-30)
        else:
            np.testing.assert_array_equal(native, ref)
    return graph


X = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_with_a_runtime_index_along_each_axis(tmp_path, axis):
    gen = torch.Generator().manual_seed(1)
    size = X.shape[axis]
    index_shape = list(X.shape)
    index_shape[axis] = 6  # index may be longer along the gathered axis, not shorter elsewhere
    idx = torch.randint(0, size, index_shape, generator=gen)
    graph = _check(tmp_path, lambda x, i: torch.gather(x, axis, i), X, idx)
    assert [op.name for op in graph.compute_ops()] == ["gather"]


def test_gather_of_buffers_like_bert_token_types(tmp_path):
    # BERT's embeddings gather a zeros buffer with a position-id buffer: constants only
    class TokenTypes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("types", torch.zeros(1, 16, dtype=torch.long))
            self.register_buffer("pos", torch.arange(16).expand(1, -1))
            self.emb = nn.Embedding(2, 4)

        def forward(self, x):
            t = torch.gather(self.types[:, : x.shape[1]], 1, self.pos[:, : x.shape[1]])
            return x + self.emb(t.expand(x.shape[0], -1))

    model = TokenTypes().eval()
    x = torch.randn(2, 5, 4)
    graph = mcir.trace(model, x)
    (native,) = check_native(graph, tmp_path, x.numpy())
    np.testing.assert_allclose(native, model(x).detach().numpy(), rtol=0, atol=1e-6)


def test_index_select_with_a_runtime_index(tmp_path):
    idx = torch.tensor([[2, 0], [3, 4]]).reshape(-1)
    _check(tmp_path, lambda x, i: torch.index_select(x, 1, i), X, idx)


def test_index_out_of_range_is_an_error_code_not_a_read(tmp_path):
    graph = mcir.trace(Fn(lambda x, i: torch.index_select(x, 1, i)), (X, torch.tensor([0, 1])))
    lib = build(graph, tmp_path)
    with pytest.raises(McirError, match="INDEX_OUT_OF_RANGE"):
        lib(X.numpy(), np.array([0, 5]))
    with pytest.raises(McirError, match="INDEX_OUT_OF_RANGE"):
        lib(X.numpy(), np.array([-1, 0]))
    with pytest.raises(McirError, match="out of range"):
        mcir.interpret(graph, X.numpy(), np.array([0, -1]))


def test_advanced_indexing_with_constant_grids_becomes_one_index_select(tmp_path):
    # what transformers' create_bidirectional_mask does: mask[batch_arange[:, None, None, None], kv_arange]
    def build_mask(mask):
        b = torch.arange(mask.shape[0])[:, None, None, None]
        kv = torch.arange(mask.shape[1])[None, None, None, :]
        return mask.bool()[b, kv]

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    graph = _check(tmp_path, build_mask, mask)
    assert [op.name for op in graph.compute_ops()] == ["cast", "reshape", "index_select"]


def test_constant_boolean_mask_and_none_axes(tmp_path):
    keep = torch.tensor([True, False, True, True, False])
    # torch.export leaves the mask's count symbolic (u0) even for a constant: mcir counts it at trace time
    graph = _check(tmp_path, lambda x: x[:, keep], X)
    assert graph.outputs[0].type.shape == (3, 3, 4)
    _check(tmp_path, lambda x: x[None, :, torch.tensor([[0, 1], [3, 2]])], X, tracers=("export",))


def test_boolean_mask_from_static_shapes_feeds_later_layers(tmp_path):
    # the mask is computed from shapes only (folded at trace time); the layers after the selection see the
    # count in their shapes (reshape with -1, a reduction over the selected axis, a linear)
    class EveryOtherToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            even = torch.arange(x.shape[1]) % 2 == 0
            picked = x[:, even]
            return self.fc(picked.reshape(x.shape[0], -1, 4)).sum(1) + picked.shape[1]

    torch.manual_seed(0)
    model = EveryOtherToken().eval()
    graph = mcir.trace(model, X)
    (native,) = check_native(graph, tmp_path, X.numpy())
    np.testing.assert_allclose(native, model(X).detach().numpy(), rtol=0, atol=1e-5)


class Positives(nn.Module):
    def forward(self, x):
        return x[x > 0]


def test_boolean_mask_from_run_time_values_fails_with_the_op_line_and_the_way_out():
    # x[x > 0]: how many elements survive depends on the input's values: no static shape exists
    with pytest.raises(McirError, match=r"aten.index.Tensor .*test_indexing.py:\d+: `return x\[x > 0\]`.*torch.where"):
        mcir.trace(Positives(), X)
    with pytest.raises(McirError, match=r"test_indexing.py:\d+: `return x\[x > 0\]`.*boolean mask computed at run"):
        mcir.trace(Positives(), X, tracer="fx")


def test_masked_fill_and_where_with_run_time_boolean_masks(tmp_path):
    # shape-preserving masking is what a static graph can do with a run-time mask: exact natively
    mask = torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(3)) > 0.5
    _check(tmp_path, lambda x, m: x.masked_fill(m, -1.5) + torch.where(m, x, 2 * x), X, mask)
    _check(tmp_path, lambda x, m: x.masked_fill(~m[:, :, :1], -1e4).softmax(-1), X, mask)  # broadcast mask


def test_runtime_index_tensors_on_adjacent_axes(tmp_path):
    rows = torch.tensor([[0, 2], [1, -1]])
    cols = torch.tensor([3, 0])
    _check(tmp_path, lambda x, r, c: x[r, c], X, rows, cols)
    _check(tmp_path, lambda x, c: x[:, c], X, torch.tensor([4, -5, 0]))


def test_runtime_index_tensors_on_separate_axes_fail_clearly():
    model = Fn(lambda x, i: x[i, :, i])
    with pytest.raises(McirError, match="non-adjacent axes"):
        mcir.trace(model, (X, torch.tensor([0, 1])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.int32, torch.bool])
def test_cumsum_along_an_inner_axis(tmp_path, dtype):
    x = (torch.randn(2, 7, 3) * 4).to(dtype)
    graph = _check(tmp_path, lambda v: torch.cumsum(v, 1), x)
    assert "cumsum" in [op.name for op in graph.compute_ops()]


def test_roberta_position_ids_from_padding(tmp_path):
    # RoBERTa: positions count non-padding tokens, padding keeps the padding index
    def positions(ids):
        mask = ids.ne(1).int()
        return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + 1

    _check(tmp_path, positions, torch.tensor([[5, 7, 9, 1, 1], [4, 1, 6, 8, 2]]))


def test_repeat_tiles_like_torch(tmp_path):
    _check(tmp_path, lambda x: x.repeat(2, 1, 3), X)
    _check(tmp_path, lambda x: x.repeat(2, 1, 1, 2), X)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=4, out_channels=6, kernel_size=3),
        dict(in_channels=4, out_channels=8, kernel_size=3, padding=2, dilation=2, stride=2),
        dict(in_channels=4, out_channels=8, kernel_size=5, padding="same", groups=2),
        dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4, bias=False),  # depthwise
    ],
)
def test_conv1d_grouped_depthwise_dilated(tmp_path, kwargs):
    torch.manual_seed(0)
    conv = nn.Conv1d(**kwargs).eval()
    x = torch.randn(2, 4, 11)
    for tracer in ("export", "fx"):
        graph = mcir.trace(conv, x, tracer=tracer)
        assert "conv2d" in [op.name for op in graph.compute_ops()]
        (native,) = check_native(graph, tmp_path, x.numpy())
        ref = conv(x).detach().numpy()
        assert np.abs(native - ref).max() <= 1e-5 * np.abs(ref).max()


def test_embedding_with_padding_idx_is_a_plain_lookup(tmp_path):
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4, padding_idx=0).eval()
    ids = torch.tensor([[0, 3, 9, 0]])
    graph = mcir.trace(emb, ids)
    (native,) = check_native(graph, tmp_path, ids.numpy())
    np.testing.assert_array_equal(native, emb(ids).detach().numpy())
    assert not native[0, 0].any()  # the padding row is zeros in the table
