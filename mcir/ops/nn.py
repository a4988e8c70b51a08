"""Neural-network ops: linear, matmul, convolution, normalisation, pooling, attention,
embedding and reductions.

The references compute in float64 and return float32: they are the oracle against
which torch and the native kernels are compared.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mcir import dtypes
from mcir.errors import McirError
from mcir.ops.registry import Attr, broadcast_shapes, defop, norm_axis, numel
from mcir.ops.traits import (
    ATTENTION,
    CONTRACTION,
    LOOKUP,
    NORMALIZATION,
    POOLING,
    REDUCTION,
    SCAN,
    UNARY,
    WEIGHTED,
    WeightLayout,
)
from mcir.types import TensorType

F32 = dtypes.f32


def _out32(y: np.ndarray) -> np.ndarray:
    return np.asarray(y, dtype=np.float32)


def _need_float(t: TensorType, what: str) -> None:
    if not t.dtype.is_float:
        raise McirError(f"{what} must be floating point, got {t}")


# -- linear algebra ----------------------------------------------------------------


def _linear_infer(types: list[TensorType]) -> TensorType:
    x, w = types[0], types[1]
    _need_float(x, "input")
    if w.rank != 2:
        raise McirError(f"weight must be 2-D [out_features, in_features], got {w}")
    if x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise McirError(f"input {x} has {x.shape[-1] if x.rank else 0} features but weight {w} expects {w.shape[1]}")
    if len(types) == 3 and types[2].shape != (w.shape[0],):
        raise McirError(f"bias must be [{w.shape[0]}], got {types[2]}")
    return TensorType(x.shape[:-1] + (w.shape[0],), x.dtype)


@defop(
    "linear",
    operands="x, weight, bias?",
    infer=_linear_infer,
    macs=lambda t, r: numel(r.shape) * t[1].shape[1],
    traits={CONTRACTION, WEIGHTED},
    weight=WeightLayout(operand=1, out_axis=0, in_axis=1),
)
def linear(x, weight, bias=None):
    """y = x @ weight^T + bias; x [..., K], weight [N, K], bias [N] -> y [..., N]"""
    y = np.asarray(x, np.float64) @ np.asarray(weight, np.float64).T
    if bias is not None:
        y = y + bias
    return _out32(y)


def _matmul_infer(types: list[TensorType]) -> TensorType:
    a, b = types
    _need_float(a, "matmul operand a")
    if a.rank < 1 or b.rank < 1:
        raise McirError("matmul operands must have rank >= 1")
    if a.dtype != b.dtype:
        raise McirError(f"matmul operand dtypes differ: {a.dtype} and {b.dtype}")
    ka = a.shape[-1]
    kb = b.shape[-2] if b.rank >= 2 else b.shape[0]
    if ka != kb:
        raise McirError(f"matmul inner dimensions differ: {a} @ {b}")
    a_batch, b_batch = a.shape[:-2], b.shape[:-2]
    batch = broadcast_shapes(a_batch, b_batch) if (a_batch or b_batch) else ()
    rows = (a.shape[-2],) if a.rank >= 2 else ()
    cols = (b.shape[-1],) if b.rank >= 2 else ()
    return TensorType(batch + rows + cols, a.dtype)


@defop(
    "matmul",
    operands="a, b",
    infer=_matmul_infer,
    macs=lambda t, r: numel(r.shape) * t[0].shape[-1],
    traits={CONTRACTION},
)
def matmul(a, b):
    """y = a @ b with batch broadcasting (numpy/torch matmul semantics)"""
    return _out32(np.matmul(np.asarray(a, np.float64), np.asarray(b, np.float64)))


# -- convolution -------------------------------------------------------------------


def _pair(v: tuple[int, ...], name: str) -> tuple[int, int]:
    if len(v) != 2:
        raise McirError(f"{name} must have 2 values (height, width), got {list(v)}")
    return int(v[0]), int(v[1])


def conv_out(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool = False) -> int:
    """Output length of a 1-D sliding window (torch's formula, ceil_mode included)."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # last window must start inside the input
        out -= 1
    return out


_CONV_ATTRS = {
    "stride": Attr("ints", (1, 1), "step (h, w)"),
    "padding": Attr("ints", (0, 0), "zero padding on each side (h, w)"),
    "dilation": Attr("ints", (1, 1), "kernel dilation (h, w)"),
    "groups": Attr("int", 1, "channel groups; groups == in_channels is depthwise"),
}


def _conv_infer(types: list[TensorType], stride, padding, dilation, groups) -> TensorType:
    x, w = types[0], types[1]
    _need_float(x, "input")
    if x.rank != 4:
        raise McirError(f"conv2d input must be 4-D [N, C, H, W], got {x}")
    if w.rank != 4:
        raise McirError(f"conv2d weight must be 4-D [out, in/groups, kh, kw], got {w}")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise McirError(f"invalid stride {list(stride)} / padding {list(padding)} / dilation {list(dilation)}")
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if groups < 1 or c % groups or o % groups:
        raise McirError(f"groups={groups} must divide in_channels {c} and out_channels {o}")
    if cg != c // groups:
        raise McirError(f"weight {w} expects {cg * groups} input channels (groups={groups}), input {x} has {c}")
    if len(types) == 3 and types[2].shape != (o,):
        raise McirError(f"bias must be [{o}], got {types[2]}")
    oh, ow = conv_out(h, kh, sh, ph, dh), conv_out(wd, kw, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise McirError(f"kernel {kh}x{kw} (dilation {dh}x{dw}) is larger than the padded input {h}x{wd}")
    return TensorType((n, o, oh, ow), x.dtype)


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, oh: int, ow: int) -> np.ndarray:
    """[N, C, OH, OW, kh, kw] view of the (already padded) input."""
    win = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return win[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw, ::dh, ::dw]


@defop(
    "conv2d",
    operands="x, weight, bias?",
    attrs=_CONV_ATTRS,
    infer=_conv_infer,
    macs=lambda t, r, **a: numel(r.shape) * numel(t[1].shape[1:]),
    traits={CONTRACTION, WEIGHTED},
    weight=WeightLayout(operand=1, out_axis=0, in_axis=1, spatial=True),
)
def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """2-D cross-correlation (torch.nn.Conv2d): x [N, C, H, W], weight [O, C/groups, kh, kw]"""
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)
    _, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = conv_out(h, kh, sh, ph, dh), conv_out(wd, kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = _windows(xp, kh, kw, sh, sw, dh, dw, oh, ow)
    og = o // groups
    outs = []
    for g in range(groups):
        wg = w[g * og : (g + 1) * og]
        xg = win[:, g * cg : (g + 1) * cg]
        outs.append(np.einsum("ncxyij,ocij->noxy", xg, wg, optimize=True))
    y = np.concatenate(outs, axis=1)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return _out32(y)


# -- normalisation -------------------------------------------------------------------


def _bn_infer(types: list[TensorType], eps) -> TensorType:
    x = types[0]
    _need_float(x, "input")
    if x.rank < 2:
        raise McirError(f"batch_norm input must be [N, C, ...], got {x}")
    for name, t in zip(("weight", "bias", "mean", "var"), types[1:]):
        if t.shape != (x.shape[1],):
            raise McirError(f"batch_norm {name} must be [{x.shape[1]}], got {t}")
    return x


@defop(
    "batch_norm",
    operands="x, weight, bias, mean, var",
    attrs={"eps": Attr("float", 1e-5, finite=True)},
    infer=_bn_infer,
    traits={NORMALIZATION},
)
def batch_norm(x, weight, bias, mean, var, eps=1e-5):
    """inference batch norm over axis 1: y = (x - mean) / sqrt(var + eps) * weight + bias"""
    shape = (1, -1) + (1,) * (np.ndim(x) - 2)
    inv = np.asarray(weight, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    y = (np.asarray(x, np.float64) - np.reshape(mean, shape)) * inv.reshape(shape) + np.reshape(bias, shape)
    return _out32(y)


def _ln_infer(types: list[TensorType], dims, eps) -> TensorType:
    x = types[0]
    _need_float(x, "input")
    if not 1 <= dims <= x.rank:
        raise McirError(f"layer_norm dims={dims} must be between 1 and the input rank {x.rank}")
    norm_shape = x.shape[x.rank - dims :]
    for t in types[1:]:
        if t.shape != norm_shape:
            raise McirError(f"layer_norm weight/bias must be {list(norm_shape)}, got {t}")
    return x


@defop(
    "layer_norm",
    operands="x, weight?, bias?",
    attrs={"dims": Attr("int", 1, "number of trailing dimensions normalised"), "eps": Attr("float", 1e-5, finite=True)},
    infer=_ln_infer,
    traits={NORMALIZATION},
)
def layer_norm(x, weight=None, bias=None, dims=1, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last `dims` dimensions"""
    xf = np.asarray(x, np.float64)
    axes = tuple(range(xf.ndim - dims, xf.ndim))
    mu = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (xf - mu) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return _out32(y)


def _axis_infer(types: list[TensorType], axis) -> TensorType:
    _need_float(types[0], "input")
    norm_axis(axis, types[0].rank)
    return types[0]


@defop("softmax", attrs={"axis": Attr("int", -1)}, infer=_axis_infer, traits={NORMALIZATION, UNARY})
def softmax(x, axis=-1):
    """y = exp(x - max) / sum(exp(x - max)) along axis"""
    xf = np.asarray(x, np.float64)
    if xf.size == 0:  # a zero-length axis (or none to reduce): nothing to normalise
        return _out32(xf)
    e = np.exp(xf - xf.max(axis=axis, keepdims=True))
    return _out32(e / e.sum(axis=axis, keepdims=True))


@defop("log_softmax", attrs={"axis": Attr("int", -1)}, infer=_axis_infer, traits={NORMALIZATION, UNARY})
def log_softmax(x, axis=-1):
    """y = x - max - log(sum(exp(x - max))) along axis"""
    xf = np.asarray(x, np.float64)
    if xf.size == 0:
        return _out32(xf)
    z = xf - xf.max(axis=axis, keepdims=True)
    return _out32(z - np.log(np.exp(z).sum(axis=axis, keepdims=True)))


# -- pooling -------------------------------------------------------------------------

_POOL_ATTRS = {
    "kernel": Attr("ints", doc="window (h, w)"),
    "stride": Attr("ints", doc="step (h, w)"),
    "padding": Attr("ints", (0, 0), "implicit padding on each side (h, w)"),
    "dilation": Attr("ints", (1, 1), "window dilation (h, w)"),
    "ceil_mode": Attr("bool", False, "round the output size up"),
}


def _pool_infer(types: list[TensorType], kernel, stride, padding, dilation, ceil_mode, **_: Any) -> TensorType:
    x = types[0]
    _need_float(x, "input")
    if x.rank != 4:
        raise McirError(f"pooling input must be 4-D [N, C, H, W], got {x}")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        _pair(v, n) for v, n in ((kernel, "kernel"), (stride, "stride"), (padding, "padding"), (dilation, "dilation"))
    )
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise McirError(f"invalid pooling window kernel={list(kernel)} stride={list(stride)} padding={list(padding)}")
    if ph > kh // 2 or pw > kw // 2:
        raise McirError(f"padding {list(padding)} must be at most half the kernel {list(kernel)}")
    oh = conv_out(x.shape[2], kh, sh, ph, dh, ceil_mode)
    ow = conv_out(x.shape[3], kw, sw, pw, dw, ceil_mode)
    if oh < 1 or ow < 1:
        raise McirError(f"pooling window {kh}x{kw} is larger than the input {x}")
    return TensorType(x.shape[:2] + (oh, ow), x.dtype)


def _pool_pad(x: np.ndarray, k, s, p, d, ceil_mode, fill: float) -> tuple[np.ndarray, int, int]:
    _, _, h, w = x.shape
    oh = conv_out(h, k[0], s[0], p[0], d[0], ceil_mode)
    ow = conv_out(w, k[1], s[1], p[1], d[1], ceil_mode)
    need_h = (oh - 1) * s[0] + d[0] * (k[0] - 1) + 1
    need_w = (ow - 1) * s[1] + d[1] * (k[1] - 1) + 1
    extra_h = max(0, need_h - (h + 2 * p[0]))
    extra_w = max(0, need_w - (w + 2 * p[1]))
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0] + extra_h), (p[1], p[1] + extra_w)), constant_values=fill)
    return xp, oh, ow


@defop("max_pool2d", attrs=_POOL_ATTRS, infer=_pool_infer, traits={POOLING, UNARY})
def max_pool2d(x, kernel, stride, padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    """y = max over each (dilated) window; padding counts as -inf"""
    xp, oh, ow = _pool_pad(np.asarray(x), kernel, stride, padding, dilation, ceil_mode, -np.inf)
    win = _windows(xp, kernel[0], kernel[1], stride[0], stride[1], dilation[0], dilation[1], oh, ow)
    return np.asarray(win.max(axis=(-2, -1)), dtype=np.asarray(x).dtype)


_AVG_ATTRS = dict(_POOL_ATTRS)
del _AVG_ATTRS["dilation"]
_AVG_ATTRS["count_include_pad"] = Attr("bool", True, "divide by the window size including padding")
_AVG_ATTRS["divisor"] = Attr("int?", None, "fixed divisor (torch's divisor_override)")


def _avg_infer(types: list[TensorType], kernel, stride, padding, ceil_mode, count_include_pad, divisor) -> TensorType:
    if divisor is not None and divisor <= 0:
        raise McirError(f"divisor must be positive, got {divisor}")
    return _pool_infer(types, kernel, stride, padding, (1, 1), ceil_mode)


@defop("avg_pool2d", attrs=_AVG_ATTRS, infer=_avg_infer, traits={POOLING, UNARY})
def avg_pool2d(x, kernel, stride, padding=(0, 0), ceil_mode=False, count_include_pad=True, divisor=None):
    """y = mean over each window (torch.nn.AvgPool2d semantics incl. ceil_mode and count_include_pad)"""
    xf = np.asarray(x, np.float64)
    _, _, h, w = xf.shape
    xp, oh, ow = _pool_pad(xf, kernel, stride, padding, (1, 1), ceil_mode, 0.0)
    win = _windows(xp, kernel[0], kernel[1], stride[0], stride[1], 1, 1, oh, ow)
    total = win.sum(axis=(-2, -1))
    if divisor is not None:
        return _out32(total / divisor)
    # count the window elements that lie in the input (or in its explicit padding)
    ones = np.zeros((1, 1) + xp.shape[2:])
    if count_include_pad:
        ones[:, :, : h + 2 * padding[0], : w + 2 * padding[1]] = 1
    else:
        ones[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w] = 1
    cnt = _windows(ones, kernel[0], kernel[1], stride[0], stride[1], 1, 1, oh, ow).sum(axis=(-2, -1))
    return _out32(total / cnt)


def _adaptive_infer(types: list[TensorType], output_size) -> TensorType:
    x = types[0]
    _need_float(x, "input")
    if x.rank != 4:
        raise McirError(f"adaptive_avg_pool2d input must be 4-D [N, C, H, W], got {x}")
    oh, ow = _pair(output_size, "output_size")
    if oh < 1 or ow < 1:
        raise McirError(f"output_size must be positive, got {list(output_size)}")
    return TensorType(x.shape[:2] + (oh, ow), x.dtype)


def adaptive_bounds(size: int, out: int) -> list[tuple[int, int]]:
    """torch's adaptive pooling windows: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


@defop(
    "adaptive_avg_pool2d",
    attrs={"output_size": Attr("ints", doc="(h, w) of the output")},
    infer=_adaptive_infer,
    traits={POOLING, UNARY},
)
def adaptive_avg_pool2d(x, output_size):
    """y[i, j] = mean of the adaptive window (i, j) (torch.nn.AdaptiveAvgPool2d)"""
    xf = np.asarray(x, np.float64)
    rows = adaptive_bounds(xf.shape[2], output_size[0])
    cols = adaptive_bounds(xf.shape[3], output_size[1])
    y = np.empty(xf.shape[:2] + tuple(output_size))
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            y[:, :, i, j] = xf[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return _out32(y)


# -- embedding and attention -----------------------------------------------------------


def _embedding_infer(types: list[TensorType]) -> TensorType:
    idx, w = types
    if not idx.dtype.is_integer:
        raise McirError(f"embedding indices must be integers, got {idx}")
    if w.rank != 2:
        raise McirError(f"embedding table must be 2-D [num, dim], got {w}")
    # a 16-bit float table is storage (the half pass): its rows are computed with as f32
    dtype = F32 if w.dtype in (dtypes.f16, dtypes.bf16) else w.dtype
    return TensorType(idx.shape + (w.shape[1],), dtype)


@defop(
    "embedding",
    operands="indices, weight",
    infer=_embedding_infer,
    traits={LOOKUP, WEIGHTED},
    # rows are looked up by index; the embedding features (columns) are the output channels
    weight=WeightLayout(operand=1, out_axis=1, in_axis=None),
)
def embedding(indices, weight):
    """y[..., :] = weight[indices[...], :]; an index out of range is an error; f16/bf16 tables give f32 rows"""
    idx = np.asarray(indices)
    if idx.size and (idx.min() < 0 or idx.max() >= weight.shape[0]):
        raise McirError(f"embedding index out of range [0, {weight.shape[0]}): min {idx.min()}, max {idx.max()}")
    rows = np.asarray(weight)[idx]
    return rows.astype(np.float32) if rows.dtype in (dtypes.f16.np, dtypes.bf16.np) else rows


def _sdpa_infer(types: list[TensorType], is_causal, scale, u8_probs) -> TensorType:
    q, k, v = types[:3]
    for t, n in ((q, "query"), (k, "key"), (v, "value")):
        _need_float(t, n)
        if t.rank < 2:
            raise McirError(f"{n} must have rank >= 2, got {t}")
    if q.shape[-1] != k.shape[-1]:
        raise McirError(f"query {q} and key {k} have different head sizes")
    if k.shape[-2] != v.shape[-2]:
        raise McirError(f"key {k} and value {v} have different sequence lengths")
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if len(types) == 4:
        m = types[3]
        scores = batch + (q.shape[-2], k.shape[-2])
        if broadcast_shapes(m.shape, scores) != scores:
            raise McirError(f"attention mask {m} does not broadcast to the scores {list(scores)}")
        if m.dtype != dtypes.boolean and not m.dtype.is_float:
            raise McirError(f"attention mask must be bool or float, got {m}")
        if is_causal:
            raise McirError("give either a mask or is_causal=true, not both")
    return TensorType(batch + (q.shape[-2], v.shape[-1]), q.dtype)


@defop(
    "scaled_dot_product_attention",
    operands="q, k, v, mask?",
    attrs={
        "is_causal": Attr("bool", False, "mask out future positions"),
        "scale": Attr("float?", None, "score scale, none for 1/sqrt(head size)", finite=True),
        "u8_probs": Attr(
            "bool", False, "round the softmax probabilities to u8 (p ≈ k/255) before @ v, as the int8 kernel does"
        ),
    },
    infer=_sdpa_infer,
    macs=lambda t, r, **a: numel(r.shape[:-1]) * t[1].shape[-2] * (t[0].shape[-1] + r.shape[-1]),
    traits={CONTRACTION, ATTENTION},
)
def scaled_dot_product_attention(q, k, v, mask=None, is_causal=False, scale=None, u8_probs=False):
    """y = softmax(q @ k^T * scale + mask) @ v; a bool mask keeps positions where true; a fully masked row gives 0;
    with u8_probs, y = (rint(255 p) / 255) @ v: the probabilities on the u8 grid of the int8 kernel"""
    qf, kf, vf = (np.asarray(a, np.float64) for a in (q, k, v))
    s = (1.0 / math.sqrt(qf.shape[-1])) if scale is None else scale
    scores = np.matmul(qf, np.swapaxes(kf, -1, -2)) * s
    if is_causal:
        L, S = scores.shape[-2:]
        scores = np.where(np.tril(np.ones((L, S), bool)), scores, -np.inf)
    if mask is not None:
        m = np.asarray(mask)
        scores = np.where(m, scores, -np.inf) if m.dtype == np.bool_ else scores + m
    if scores.shape[-1] == 0:  # no keys: every row attends to nothing, zeros as for a fully masked row
        return _out32(np.zeros(scores.shape[:-1] + vf.shape[-1:]))
    mx = scores.max(axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.exp(scores - mx)
    with np.errstate(invalid="ignore"):
        p = e / e.sum(axis=-1, keepdims=True)
    # a fully masked row attends to nothing: zeros, as torch gives (its _safe_softmax), not 0/0 = nan
    p = np.where(np.all(scores == -np.inf, axis=-1, keepdims=True), 0.0, p)
    if u8_probs:
        p = np.rint(p * 255.0) / 255.0
    return _out32(np.matmul(p, vf))


# -- reductions ---------------------------------------------------------------------


def reduced_axes(x: TensorType, axes) -> list[int]:
    """The non-negative axes a reduction over ``axes`` (empty: all) removes; McirError on repeats."""
    norm = [norm_axis(a, x.rank) for a in axes]
    for i, a in enumerate(norm):
        if a in norm[:i]:
            raise McirError(f"axis {a} is reduced twice (axes {list(axes)} of {x})")
    if x.rank == 0:
        return []  # torch lets a scalar be reduced over axis 0 or -1: there is nothing to remove
    return sorted(norm) if axes else list(range(x.rank))


def _reduce_infer(types: list[TensorType], axes, keepdim) -> TensorType:
    x = types[0]
    norm = reduced_axes(x, axes)
    shape = (
        tuple(1 if i in norm else d for i, d in enumerate(x.shape))
        if keepdim
        else tuple(d for i, d in enumerate(x.shape) if i not in norm)
    )
    return TensorType(shape, x.dtype)


_REDUCE_ATTRS = {"axes": Attr("ints", (), "axes to reduce, empty for all"), "keepdim": Attr("bool", False)}


def _axes(x: np.ndarray, axes) -> tuple[int, ...] | None:
    # a rank-0 tensor accepts axis 0 or -1 (like torch), numpy only axis=None
    return tuple(axes) if axes and np.ndim(x) > 0 else None


def _mean_infer(types: list[TensorType], axes, keepdim) -> TensorType:
    _need_float(types[0], "mean input")  # like torch: the mean of integers has no integer type
    return _reduce_infer(types, axes, keepdim)


def _nonempty(x: TensorType, axes: list[int], what: str) -> None:
    for a in axes:
        if x.shape[a] == 0:
            raise McirError(f"{what} over the zero-size axis {a} of {x} is undefined")


def _amax_infer(types: list[TensorType], axes, keepdim) -> TensorType:
    _nonempty(types[0], reduced_axes(types[0], axes), "amax")
    return _reduce_infer(types, axes, keepdim)


@defop("mean", attrs=_REDUCE_ATTRS, infer=_mean_infer, traits={REDUCTION, UNARY})
def mean(x, axes=(), keepdim=False):
    """y = mean of x over axes"""
    return np.asarray(np.mean(np.asarray(x, np.float64), axis=_axes(x, axes), keepdims=keepdim), np.asarray(x).dtype)


@defop("sum", attrs=_REDUCE_ATTRS, infer=_reduce_infer, traits={REDUCTION, UNARY})
def sum_(x, axes=(), keepdim=False):
    """y = sum of x over axes"""
    x = np.asarray(x)
    acc = np.float64 if x.dtype.kind == "f" else x.dtype
    return np.asarray(np.sum(x, axis=_axes(x, axes), keepdims=keepdim, dtype=acc), x.dtype)


@defop("amax", attrs=_REDUCE_ATTRS, infer=_amax_infer, traits={REDUCTION, UNARY})
def amax(x, axes=(), keepdim=False):
    """y = max of x over axes"""
    return np.max(x, axis=_axes(x, axes), keepdims=keepdim)


def _cumsum_infer(types: list[TensorType], axis) -> TensorType:
    x = types[0]
    if x.dtype == dtypes.boolean:
        raise McirError(f"cumsum of bool {x}: cast it to an integer type first")
    norm_axis(axis, x.rank)
    return x


@defop("cumsum", attrs={"axis": Attr("int", doc="the axis to scan")}, infer=_cumsum_infer, traits={SCAN})
def cumsum(x, axis):
    """y[..., i, ...] = sum of x[..., :i+1, ...] along axis (floats summed in float64, integers exactly)"""
    x = np.asarray(x)
    if x.ndim == 0:
        return x.copy()
    acc = np.float64 if x.dtype.kind == "f" else x.dtype
    return np.asarray(np.cumsum(x, axis=axis, dtype=acc), x.dtype)


def _argmax_infer(types: list[TensorType], axis, keepdim) -> TensorType:
    _nonempty(types[0], reduced_axes(types[0], (axis,)), "argmax")
    return TensorType(_reduce_infer(types, (axis,), keepdim).shape, dtypes.i64)


@defop(
    "argmax",
    attrs={"axis": Attr("int", -1), "keepdim": Attr("bool", False)},
    infer=_argmax_infer,
    traits={REDUCTION, UNARY},
)
def argmax(x, axis=-1, keepdim=False):
    """y = index of the first maximum along axis (i64)"""
    return np.argmax(x, axis=axis, keepdims=keepdim).astype(np.int64)
