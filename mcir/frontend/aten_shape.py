"""Handlers for data-movement aten ops: reshapes and permutes, slicing and indexing, concatenation,
padding, and values computed at trace time (factories like ``zeros_like``).

Every reshape-like op (view, flatten, squeeze, ...) becomes ``reshape`` to the shape torch
recorded for its result, so ``-1`` and squeezed axes are already resolved.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from mcir.errors import UnsupportedError
from mcir.frontend.convert import Converter, Folded, Param, torch_dtype
from mcir.frontend.torch_ops import (
    Args,
    aten,
    evaluate,
    norm_dim,
    on,
    reshape_to,
    short_name,
    tensor_as,
)
from mcir.ir import Value


@on(aten.t, aten.transpose, aten.swapaxes, aten.permute, aten.numpy_T)
def permute(cx, a):
    x = cx.tensor(a(0, "self"))
    rank = x.type.rank
    name = short_name(cx.node)
    if name == "permute":
        dims = [norm_dim(d, rank) for d in _varargs(a, 1, "dims")]
    else:
        dims = list(range(rank))
        if name == "numpy_T":
            dims.reverse()
        elif rank >= 2:
            d0 = norm_dim(a(1, "dim0", 0), rank)
            d1 = norm_dim(a(2, "dim1", 1), rank)
            dims[d0], dims[d1] = dims[d1], dims[d0]
    if dims == list(range(rank)):
        return x
    return cx.emit("permute", [x], {"dims": dims})


def _varargs(a: Args, start: int, name: str) -> list[int]:
    """``x.view(2, 3)`` and ``x.view([2, 3])`` alike: the int arguments from ``start`` on."""
    first = a(start, name)
    if isinstance(first, list | tuple | torch.Size):
        return list(first)
    return list(a.args[start:])


# -- shapes and data movement ---------------------------------------------------------------------


@on(
    aten.view,
    aten.reshape,
    aten._unsafe_view,
    aten.flatten,
    aten.unflatten,
    aten.squeeze,
    aten.unsqueeze,
    aten.view_as,
    aten.reshape_as,
    aten._reshape_alias,
)
def reshape(cx, a):
    # torch resolved -1 and the squeezed axes: the recorded result shape is the static target
    return reshape_to(cx, cx.tensor(a(0, "self")), cx.out_shape())


@on(aten.expand, aten.expand_as, aten.broadcast_to, aten.expand_copy)
def expand(cx, a):
    x = cx.tensor(a(0, "self"))
    shape = cx.out_shape()
    return x if x.type.shape == shape else cx.emit("expand", [x], {"shape": list(shape)})


def emit_slice(cx: Converter, x: Value, axis: int, start: int | None, end: int | None, step: int = 1) -> Value:
    axis = norm_dim(axis, x.type.rank)
    size = x.type.shape[axis]
    s, e, st = slice(start, end, step).indices(size)
    e = max(e, s)
    if (s, e, st) == (0, size, 1):
        return x
    return cx.emit("slice", [x], {"axis": axis, "start": s, "end": e, "step": st})


@on(aten.slice)
def slice_(cx, a):
    x = cx.tensor(a(0, "self"))
    return emit_slice(cx, x, a(1, "dim", 0), a(2, "start", None), a(3, "end", None), a(4, "step", 1))


@on(aten.narrow)
def narrow(cx, a):
    x = cx.tensor(a(0, "self"))
    dim = norm_dim(a(1, "dim"), x.type.rank)
    start = a(2, "start") % x.type.shape[dim] if a(2, "start") < 0 else a(2, "start")
    return emit_slice(cx, x, dim, start, start + a(3, "length"))


@on(aten.select)
def select(cx, a):
    x = cx.tensor(a(0, "self"))
    axis = norm_dim(a(1, "dim"), x.type.rank)
    index = a(2, "index") % x.type.shape[axis]
    return cx.emit("select", [x], {"axis": axis, "index": index})


@on(aten.split, aten.split_with_sizes, aten.chunk, aten.tensor_split, aten.unsafe_split)
def split(cx, a):
    # the part sizes along the axis are what torch recorded for the results
    x = cx.tensor(a(0, "self"))
    axis = norm_dim(a(2, "dim", 0), x.type.rank)
    parts, start = [], 0
    for meta in cx.node.meta["val"]:
        size = int(meta.shape[axis])
        parts.append(emit_slice(cx, x, axis, start, start + size))
        start += size
    return tuple(parts)


@on(aten.unbind)
def unbind(cx, a):
    x = cx.tensor(a(0, "self"))
    axis = norm_dim(a(1, "dim", 0), x.type.rank)
    return tuple(cx.emit("select", [x], {"axis": axis, "index": i}) for i in range(x.type.shape[axis]))


@on(aten.cat, aten.concat, aten.concatenate)
def cat(cx, a):
    dt = cx.out_dtype()
    parts = [tensor_as(cx, t, dt) for t in a(0, "tensors")]
    parts = [p for p in parts if p.type.numel > 0 or p.type.rank > 1] or parts  # torch skips empty 1-D tensors
    if len(parts) == 1:
        return parts[0]
    return cx.emit("concat", parts, {"axis": norm_dim(a(1, "dim", 0), parts[0].type.rank)})


@on(aten.stack)
def stack(cx, a):
    dt = cx.out_dtype()
    out = cx.out_shape()
    axis = norm_dim(a(1, "dim", 0), len(out))
    parts = [tensor_as(cx, t, dt) for t in a(0, "tensors")]
    parts = [reshape_to(cx, p, (*p.type.shape[:axis], 1, *p.type.shape[axis:])) for p in parts]
    return parts[0] if len(parts) == 1 else cx.emit("concat", parts, {"axis": axis})


def emit_pad(cx: Converter, x: Value, torch_pads: list[int], value: float) -> Value:
    # torch lists (before, after) pairs from the last axis backwards; mcir from the first axis forwards
    pads = [0] * (2 * x.type.rank)
    for i in range(len(torch_pads) // 2):
        axis = x.type.rank - 1 - i
        pads[2 * axis], pads[2 * axis + 1] = torch_pads[2 * i], torch_pads[2 * i + 1]
    return cx.emit("pad", [x], {"pads": pads, "value": float(value)})


@on(aten.constant_pad_nd)
def constant_pad_nd(cx, a):
    return emit_pad(cx, cx.tensor(a(0, "self")), list(a(1, "pad")), a(2, "value", 0.0))


@on(aten.pad)
def pad(cx, a):
    mode = a(2, "mode", "constant")
    if mode != "constant":
        raise UnsupportedError(f"padding mode '{mode}' is not supported, only 'constant'")
    return emit_pad(cx, cx.tensor(a(0, "self")), list(a(1, "pad")), a(3, "value", None) or 0.0)


def getitem(cx, a):
    obj, index = a(0, "self"), a(1, "index")
    if isinstance(obj, tuple | list):
        return obj[index]
    return index_tensor(cx, cx.tensor(obj), index)


def index_tensor(cx: Converter, x: Value, index: Any) -> Value:
    """Basic indexing ``x[1, :, None, ..., ::2]`` as select, slice and reshape ops."""
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, Value | Param | Folded | list) for i in index):
        return _advanced(cx, x, index)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (x.type.rank - n_real) + index[at + 1 :]
    axis = 0
    for i in index:
        if i is None:
            continue
        if isinstance(i, int):
            x = cx.emit("select", [x], {"axis": axis, "index": i % x.type.shape[axis]})
        elif isinstance(i, slice):
            x = emit_slice(cx, x, axis, i.start, i.stop, i.step or 1)
            axis += 1
        else:
            raise UnsupportedError(f"index {i!r} is not supported")
    return reshape_to(cx, x, cx.out_shape())  # None inserts size-1 axes: torch recorded the final shape


def _advanced(cx: Converter, x: Value, index: tuple[Any, ...]) -> Value:
    """``x[idx]`` with index tensors (symbolic tracing): only tensors and full slices, one per leading axis."""
    from mcir.frontend.aten_index import emit_advanced_index

    per_axis = []
    for i in index:
        if isinstance(i, slice) and i == slice(None):
            per_axis.append(None)
        elif isinstance(i, Value | Param | Folded):
            per_axis.append(i)
        elif isinstance(i, list):
            per_axis.append(Folded(torch.tensor(i), "index"))
        else:
            raise UnsupportedError(f"advanced indexing mixed with {i!r} is not supported; index with tensors and ':'")
    return emit_advanced_index(cx, x, per_axis)


# -- values made at trace time ---------------------------------------------------------------------


@on(
    aten.zeros_like,
    aten.ones_like,
    aten.full_like,
    aten.empty_like,
    aten.new_zeros,
    aten.new_ones,
    aten.new_full,
    aten.new_empty,
)
def like_factory(cx, a):
    # the result depends only on the shape and dtype of the tensor argument: run the op on a zero stand-in
    def standin(x: Any) -> Any:
        if isinstance(x, Value):
            return torch.zeros(x.type.shape, dtype=torch_dtype(x.type.dtype))
        return x.tensor if isinstance(x, Param | Folded) else x

    return evaluate(cx, cx.node, fx.node.map_aggregate(a.args, standin), fx.node.map_aggregate(a.kwargs, standin))
