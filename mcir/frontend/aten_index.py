"""Handlers for indexing with tensors and the ops real text models need around it:
``gather``, ``index_select``, advanced indexing (``aten.index.Tensor``, ``x[idx]``), ``cumsum``,
``repeat`` and 1-D convolution.

Advanced indexing becomes one ``index_select`` on the flattened tensor. When every index
tensor is known at trace time (the attention-mask builders of ``transformers`` index with
``arange`` grids; a boolean mask that is a constant), the flat positions are computed here
by indexing an ``arange`` stand-in with torch itself, so torch's rules (broadcasting, ``None``,
boolean masks, where the indexed axes land) hold by construction. A boolean mask's count is
data-dependent for torch.export (an unbacked size ``u0``) even when the mask is a constant; the
count computed here binds that size (``Converter.sizes``) for every later shape that mentions it. Index tensors computed
at run time are combined into flat positions with integer ops; they must index adjacent axes.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mcir import dtypes
from mcir.errors import UnsupportedError
from mcir.frontend.aten_nn import conv2d
from mcir.frontend.convert import Converter, Folded, Param
from mcir.frontend.torch_ops import ATEN, Args, aten, cast, norm_dim, on, reshape_to, tensor_as
from mcir.ir import Value


def _known(x: Any) -> bool:
    """Whether ``x`` is known at trace time (no graph input flows into it)."""
    return x is None or isinstance(x, Param | Folded | bool | int | float)


def _as_torch(x: Any) -> Any:
    return x.tensor if isinstance(x, Param | Folded) else x


@on(aten.index_select)
def index_select(cx, a):
    x = cx.tensor(a(0, "self"))
    axis = norm_dim(a(1, "dim"), x.type.rank)
    idx = cx.tensor(a(2, "index"))
    return cx.emit("index_select", [x, idx], {"axis": axis})


@on(aten.gather)
def gather(cx, a):
    x = cx.tensor(a(0, "self"))
    axis = norm_dim(a(1, "dim"), x.type.rank)
    return cx.emit("gather", [x, cx.tensor(a(2, "index"))], {"axis": axis})


@on(aten.index)
def index(cx, a):
    return emit_advanced_index(cx, cx.tensor(a(0, "self")), list(a(1, "indices")))


def emit_advanced_index(cx: Converter, x: Value, indices: list[Any]) -> Value:
    """``x[indices]`` for ``aten.index.Tensor``: ``indices[d]`` indexes axis ``d`` (None keeps it whole)."""
    if all(_known(i) for i in indices):
        # run torch's own indexing on the positions 0..n-1: the result is the flat position of every element
        positions = torch.arange(x.type.numel, dtype=torch.int64).reshape(x.type.shape)
        flat = torch.ops.aten.index.Tensor(positions, [_as_torch(i) for i in indices])
        flat_x = reshape_to(cx, x, (x.type.numel,))
        return cx.emit("index_select", [flat_x, cx.tensor(Folded(flat, "index"))], {"axis": 0})
    out = cx.out_shape()  # fails for a boolean mask computed at run time: its count is data-dependent
    axes = [d for d, i in enumerate(indices) if i is not None]
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise UnsupportedError(
            "advanced indexing with run-time index tensors on non-adjacent axes (torch moves the indexed "
            "axes to the front) is not supported; index adjacent axes or permute first"
        )
    first, last = axes[0], axes[-1] + 1
    shape = x.type.shape
    flat: Value | None = None
    for d in axes:
        if cx.tensor(indices[d]).type.dtype == dtypes.boolean:
            raise UnsupportedError(
                "a boolean mask computed at run time gives a data-dependent shape (how many elements it selects "
                "depends on the input's values). Keep the shape: torch.where(mask, x, 0) or x.masked_fill(~mask, 0); "
                "or index with a mask that is a constant or is computed from shapes only"
            )
        idx = tensor_as(cx, indices[d], dtypes.i64)
        # torch counts negative indices from the end: wrap them per axis before combining
        size = cx.scalar(shape[d], dtypes.i64)
        negative = cx.emit("lt", [idx, cx.scalar(0, dtypes.i64)])
        idx = cx.emit("where", [negative, cx.emit("add", [idx, size]), idx])
        stride = math.prod(shape[d + 1 : last])
        term = idx if stride == 1 else cx.emit("mul", [idx, cx.scalar(stride, dtypes.i64)])
        flat = term if flat is None else cx.emit("add", [flat, term])
    bshape = out[first : len(out) - (len(shape) - last)]
    if flat.type.shape != bshape:
        flat = cx.emit("expand", [flat], {"shape": list(bshape)})
    grouped = reshape_to(cx, x, (*shape[:first], math.prod(shape[first:last]), *shape[last:]))
    return reshape_to(cx, cx.emit("index_select", [grouped, flat], {"axis": first}), out)


@on(aten.sym_size)
def sym_size(cx, a):
    """``x.shape[d]`` that torch.export kept symbolic (after a boolean mask): mcir's shapes are static."""
    x = a(0, "self")
    shape = x.type.shape if isinstance(x, Value) else tuple(_as_torch(x).shape)
    return int(shape[norm_dim(a(1, "dim"), len(shape))])


@on(aten.cumsum)
def cumsum(cx, a):
    x = cx.tensor(a(0, "self"))
    x = cast(cx, x, cx.out_dtype())  # torch sums bool and small integers in int64
    return cx.emit("cumsum", [x], {"axis": norm_dim(a(1, "dim"), x.type.rank)})


@on(aten.repeat)
def repeat(cx, a):
    # x.repeat(r0, r1): tile = reshape to interleave size-1 axes, broadcast them to r, merge
    x = cx.tensor(a(0, "self"))
    first = a(1, "repeats")
    reps = [int(r) for r in (first if isinstance(first, list | tuple | torch.Size) else a.args[1:])]  # x.repeat(2, 3)
    shape = (1,) * (len(reps) - x.type.rank) + x.type.shape
    spread = [d for s in shape for d in (1, s)]
    wide = [d for r, s in zip(reps, shape) for d in (r, s)]
    y = reshape_to(cx, x, tuple(spread))
    if tuple(wide) != tuple(spread):
        y = cx.emit("expand", [y], {"shape": wide})
    return reshape_to(cx, y, cx.out_shape())


# -- 1-D convolution --------------------------------------------------------------------------


def _weight_2d(cx: Converter, w: Any) -> Any:
    """A conv1d weight [O, C/g, K] as the conv2d weight [O, C/g, 1, K] (same name, one copy)."""
    if isinstance(w, Value):
        return reshape_to(cx, w, (w.type.shape[0], w.type.shape[1], 1, w.type.shape[2]))
    cache = cx.__dict__.setdefault("_conv1d_weights", {})
    if id(w) not in cache:
        t = w.tensor.unsqueeze(2)
        cache[id(w)] = Param(w.path, t) if isinstance(w, Param) else Folded(t, w.name)
    return cache[id(w)]


@on(aten.conv1d)
def conv1d(cx, a):
    """conv1d as conv2d over a height-1 image: [N, C, L] -> [N, C, 1, L], so the grouped,
    depthwise and int8 convolution kernels serve 1-D models too."""
    x = cx.tensor(a(0, "self"))
    if x.type.rank not in (2, 3):
        raise UnsupportedError(f"conv1d needs a [N, C, L] or [C, L] input, got {x.type}")
    batched = x.type.shape if x.type.rank == 3 else (1, *x.type.shape)
    x4 = reshape_to(cx, x, (batched[0], batched[1], 1, batched[2]))
    padding = a(4, "padding", 0)
    if not isinstance(padding, str):
        padding = [0, _one(padding)]
    y = conv2d(
        cx,
        Args(
            [
                x4,
                _weight_2d(cx, a(1, "weight")),
                a(2, "bias", None),
                [1, _one(a(3, "stride", 1))],
                padding,
                [1, _one(a(5, "dilation", 1))],
                a(6, "groups", 1),
            ]
        ),
    )
    return reshape_to(cx, y, cx.out_shape())


def _one(v: Any) -> int:
    """A 1-D conv parameter given as an int or a one-element list."""
    return int(v) if isinstance(v, int) else int(v[0])


_convolution_2d = ATEN[aten.convolution]


@on(aten.convolution)
def convolution(cx, a):
    """``aten.convolution`` (what ``F.conv1d`` becomes in some traces): 1-D here, the rest as before."""
    if not a(6, "transposed", False) and len(a(3, "stride")) == 1:
        return conv1d(cx, Args([a(i, n) for i, n in _CONV1D_ARGS]))
    return _convolution_2d(cx, a)


_CONV1D_ARGS = [(0, "input"), (1, "weight"), (2, "bias"), (3, "stride"), (4, "padding"), (5, "dilation"), (8, "groups")]
