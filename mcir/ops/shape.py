"""Data-movement ops: reshape, permute, slicing, broadcasting, concatenation, padding.

The frontend maps torch's many view ops onto these few: view, flatten, unflatten,
squeeze and unsqueeze become ``reshape``; transpose becomes ``permute``; contiguous
and clone disappear (values have no memory layout in the IR).

References return ``np.asarray(y, order="C")``: ``np.ascontiguousarray`` would turn a
rank-0 result into shape [1].
"""

from __future__ import annotations

import math

import numpy as np

from mcir.errors import McirError
from mcir.ops.registry import Attr, defop, norm_axis, numel
from mcir.ops.traits import MOVEMENT, PADDING, SHAPE_ATTR, UNARY, VIEW
from mcir.types import TensorType


def _reshape_infer(types: list[TensorType], shape) -> TensorType:
    x = types[0]
    if any(d < 0 for d in shape):
        raise McirError(f"reshape target {list(shape)} must be fully static (no -1); the frontend resolves -1")
    if numel(tuple(shape)) != x.numel:
        raise McirError(f"cannot reshape {x} ({x.numel} elements) to {list(shape)} ({numel(tuple(shape))} elements)")
    return TensorType(tuple(shape), x.dtype)


@defop(
    "reshape",
    attrs={"shape": Attr("ints", doc="the new static shape")},
    infer=_reshape_infer,
    traits={MOVEMENT, UNARY, VIEW, SHAPE_ATTR},
)
def reshape(x, shape):
    """y = x with a new shape, same elements in row-major order"""
    return np.reshape(x, shape)


def _permute_infer(types: list[TensorType], dims) -> TensorType:
    x = types[0]
    in_range = all(-x.rank <= d < x.rank for d in dims)
    if len(dims) != x.rank or not in_range or sorted(d % x.rank for d in dims) != list(range(x.rank)):
        raise McirError(f"permute dims {list(dims)} are not a permutation of the {x.rank} axes of {x}")
    return TensorType(tuple(x.shape[d] for d in dims), x.dtype)


@defop(
    "permute",
    attrs={"dims": Attr("ints", doc="y axis i is x axis dims[i]")},
    infer=_permute_infer,
    traits={MOVEMENT, UNARY},
)
def permute(x, dims):
    """y = x with its axes reordered: y.shape[i] = x.shape[dims[i]]"""
    return np.asarray(np.transpose(x, dims), order="C")


def _slice_infer(types: list[TensorType], axis, start, end, step) -> TensorType:
    x = types[0]
    if x.rank == 0:
        raise McirError(f"cannot slice the rank-0 tensor {x}")
    ax = norm_axis(axis, x.rank)
    if step < 1:
        raise McirError(f"slice step must be >= 1, got {step}")
    n = len(range(*slice(start, end, step).indices(x.shape[ax])))
    return TensorType(x.shape[:ax] + (n,) + x.shape[ax + 1 :], x.dtype)


@defop(
    "slice",
    attrs={"axis": Attr("int"), "start": Attr("int", 0), "end": Attr("int", 2**63 - 1), "step": Attr("int", 1)},
    infer=_slice_infer,
    traits={MOVEMENT, UNARY},
)
def slice_(x, axis, start=0, end=2**63 - 1, step=1):
    """y = x[..., start:end:step, ...] along axis (Python slice semantics, clamped)"""
    idx = [slice(None)] * np.ndim(x)
    idx[axis] = slice(start, end, step)
    return np.asarray(np.asarray(x)[tuple(idx)], order="C")


def _select_infer(types: list[TensorType], axis, index) -> TensorType:
    x = types[0]
    if x.rank == 0:
        raise McirError(f"cannot select from the rank-0 tensor {x}")
    ax = norm_axis(axis, x.rank)
    if not -x.shape[ax] <= index < x.shape[ax]:
        raise McirError(f"select index {index} out of range for axis {axis} of size {x.shape[ax]}")
    return TensorType(x.shape[:ax] + x.shape[ax + 1 :], x.dtype)


@defop(
    "select",
    attrs={"axis": Attr("int"), "index": Attr("int")},
    infer=_select_infer,
    traits={MOVEMENT, UNARY},
)
def select(x, axis, index):
    """y = x[..., index, ...] along axis; the axis disappears"""
    return np.asarray(np.take(x, index, axis=axis), order="C")


def _expand_infer(types: list[TensorType], shape) -> TensorType:
    x = types[0]
    shape = tuple(shape)
    if len(shape) < x.rank:
        raise McirError(f"cannot expand {x} to the lower rank {list(shape)}")
    for d_in, d_out in zip(x.shape[::-1], shape[::-1]):
        if d_in != d_out and d_in != 1:
            raise McirError(f"cannot expand {x} to {list(shape)}: only size-1 axes broadcast")
    return TensorType(shape, x.dtype)


@defop(
    "expand",
    attrs={"shape": Attr("ints", doc="the broadcast shape")},
    infer=_expand_infer,
    traits={MOVEMENT, UNARY, SHAPE_ATTR},
)
def expand(x, shape):
    """y = x broadcast to shape (size-1 axes repeat)"""
    return np.asarray(np.broadcast_to(x, shape), order="C")


def _concat_infer(types: list[TensorType], axis) -> TensorType:
    first = types[0]
    if first.rank == 0:
        raise McirError(f"cannot concatenate rank-0 tensors like {first}; reshape them to [1] first")
    ax = norm_axis(axis, first.rank)
    for t in types[1:]:
        if (
            t.rank != first.rank
            or t.dtype != first.dtype
            or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != ax)
        ):
            raise McirError(f"concat operands {first} and {t} differ outside axis {axis}")
    total = sum(t.shape[ax] for t in types)
    return TensorType(first.shape[:ax] + (total,) + first.shape[ax + 1 :], first.dtype)


@defop(
    "concat",
    operands="inputs*",
    attrs={"axis": Attr("int", 0)},
    infer=_concat_infer,
    traits={MOVEMENT},
)
def concat(*inputs, axis=0):
    """y = the inputs joined along axis"""
    return np.concatenate(inputs, axis=axis)


def _pad_infer(types: list[TensorType], pads, value) -> TensorType:
    x = types[0]
    if len(pads) != 2 * x.rank:
        raise McirError(f"pad needs {2 * x.rank} values (before, after per axis), got {list(pads)}")
    shape = tuple(d + pads[2 * i] + pads[2 * i + 1] for i, d in enumerate(x.shape))
    if any(d < 0 for d in shape):
        raise McirError(f"pads {list(pads)} cut {x} below zero size")
    if x.dtype.is_integer:  # like torch: the fill value must be representable (numpy raises otherwise)
        info = np.iinfo(x.dtype.np)
        if not (math.isfinite(value) and info.min <= value <= info.max):
            raise McirError(f"pad value {value} does not fit the integer dtype {x.dtype} of {x}")
    return TensorType(shape, x.dtype)


@defop(
    "pad",
    attrs={
        "pads": Attr("ints", doc="(before, after) for each axis, negative crops"),
        "value": Attr("float", 0.0, "fill value"),
    },
    infer=_pad_infer,
    traits={PADDING, UNARY},
)
def pad(x, pads, value=0.0):
    """y = x with constant padding (before, after) on every axis"""
    x = np.asarray(x)
    if x.ndim == 0:  # no axis to pad (np.pad rejects 0-d arrays)
        return x.copy()
    grow = [(max(pads[2 * i], 0), max(pads[2 * i + 1], 0)) for i in range(x.ndim)]
    y = np.pad(x, grow, constant_values=value)
    crop = tuple(slice(max(-pads[2 * i], 0), y.shape[i] - max(-pads[2 * i + 1], 0)) for i in range(x.ndim))
    return np.asarray(y[crop], order="C")


# -- indexing with index tensors ------------------------------------------------------------


def _index_dtype(t: TensorType, what: str) -> None:
    if not t.dtype.is_integer:
        raise McirError(f"{what} indices must be integers, got {t}")


def _index_select_infer(types: list[TensorType], axis) -> TensorType:
    x, idx = types
    _index_dtype(idx, "index_select")
    if x.rank == 0:
        raise McirError(f"cannot index the rank-0 tensor {x}")
    ax = norm_axis(axis, x.rank)
    if x.shape[ax] == 0 and idx.numel:
        raise McirError(f"index_select from the empty axis {axis} of {x}")
    return TensorType(x.shape[:ax] + idx.shape + x.shape[ax + 1 :], x.dtype)


def _check_range(idx: np.ndarray, size: int, what: str) -> np.ndarray:
    """The indices as int64; McirError unless 0 <= i < size (torch.gather / index_select reject negatives too)."""
    idx = np.asarray(idx, np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise McirError(f"{what} index out of range [0, {size}): min {idx.min()}, max {idx.max()}")
    return idx


@defop(
    "index_select",
    operands="x, index",
    attrs={"axis": Attr("int", doc="the axis the indices pick from")},
    infer=_index_select_infer,
    traits={MOVEMENT},
)
def index_select(x, index, axis):
    """y = x with axis replaced by index's axes: y[a.., i.., b..] = x[a.., index[i..], b..]; 0 <= index < n"""
    x = np.asarray(x)
    ax = axis % x.ndim
    return np.asarray(np.take(x, _check_range(index, x.shape[ax], "index_select"), axis=ax), order="C")


def _gather_infer(types: list[TensorType], axis) -> TensorType:
    x, idx = types
    _index_dtype(idx, "gather")
    if idx.rank != x.rank:
        raise McirError(f"gather index {idx} must have the rank of {x}")
    ax = norm_axis(axis, max(x.rank, 1))
    for d in range(x.rank):
        if d != ax and idx.shape[d] > x.shape[d]:
            raise McirError(f"gather index {idx} is larger than {x} along axis {d}")
    return TensorType(idx.shape, x.dtype)


@defop(
    "gather",
    operands="x, index",
    attrs={"axis": Attr("int", doc="the axis index picks along")},
    infer=_gather_infer,
    traits={MOVEMENT},
)
def gather(x, index, axis):
    """y[i, j, k] = x[index[i, j, k], j, k] for axis 0 (torch.gather): y has index's shape; 0 <= index < n"""
    x = np.asarray(x)
    if x.ndim == 0:
        return x.copy()
    ax = axis % x.ndim
    idx = _check_range(index, x.shape[ax], "gather")
    # index may be smaller than x on the other axes: take the leading block of x there
    block = tuple(slice(0, n) if d != ax else slice(None) for d, n in enumerate(idx.shape))
    return np.asarray(np.take_along_axis(x[block], idx, axis=ax), order="C")
