"""Handlers that express more torch ops with the IR's existing ones: group and instance norm,
reflect / replicate / circular padding, interpolation (nearest, linear, bilinear, bicubic,
trilinear) and transposed convolution (1-D and 2-D).

Where torch's index arithmetic is intricate (which source pixel ``nearest`` picks, the
weights of ``bilinear`` with or without ``align_corners``), the handler runs torch's own op at
trace time on a stand-in and reads the answer off: the source positions (an ``arange``), or
one interpolation matrix per spatial axis (an identity). Interpolation is separable along
axes, so an image becomes one ``linear`` per axis with a small constant matrix, never a
matrix over whole images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mcir.errors import UnsupportedError
from mcir.frontend.aten_nn import conv2d, emit_batch_norm
from mcir.frontend.convert import Converter, Folded, Param
from mcir.frontend.torch_ops import ATEN, Args, aten, on, reshape_to, with_extras
from mcir.ir import Value

# -- normalisation -------------------------------------------------------------------------------


def _channel_vector(cx: Converter, v: Any, rank: int) -> Any:
    """A per-channel parameter [C] shaped [C, 1, ...] to broadcast over [N, C, ...] (same name)."""
    if v is None:
        return None
    shape = (-1,) + (1,) * (rank - 2)
    if isinstance(v, Param):
        cache = cx.__dict__.setdefault("_channel_vectors", {})
        if id(v) not in cache:
            cache[id(v)] = Param(v.path, v.tensor.reshape(shape))
        return cx.tensor(cache[id(v)])
    if isinstance(v, Folded):
        return cx.tensor(Folded(v.tensor.reshape(shape), v.name))
    return reshape_to(cx, v, (v.type.shape[0],) + (1,) * (rank - 2))


def emit_group_norm(cx: Converter, x: Value, groups: int, weight: Any, bias: Any, eps: float) -> Value:
    """y = (x - mean_g) / sqrt(var_g + eps) * weight[c] + bias[c], statistics per sample and group:
    a layer_norm over each group's flattened channels and positions."""
    n, c = x.type.shape[:2]
    if c % groups:
        raise UnsupportedError(f"group_norm: {groups} groups do not divide {c} channels")
    grouped = reshape_to(cx, x, (n, groups, x.type.numel // (n * groups)))
    y = reshape_to(cx, cx.emit("layer_norm", [grouped], {"dims": 1, "eps": float(eps)}), x.type.shape)
    if weight is not None:
        y = cx.emit("mul", [y, _channel_vector(cx, weight, x.type.rank)])
    if bias is not None:
        y = cx.emit("add", [y, _channel_vector(cx, bias, x.type.rank)])
    return y


@on(aten.group_norm)
def group_norm(cx, a):
    x = cx.tensor(a(0, "input"))
    return emit_group_norm(cx, x, a(1, "num_groups"), a(2, "weight", None), a(3, "bias", None), a(4, "eps", 1e-5))


@on(aten.native_group_norm)
def native_group_norm(cx, a):
    # native_group_norm(input, weight, bias, N, C, HxW, group, eps) -> (y, mean, rstd)
    x = cx.tensor(a(0, "input"))
    return with_extras(cx, emit_group_norm(cx, x, a(6, "group"), a(1, "weight"), a(2, "bias"), a(7, "eps")), 3)


@on(aten.instance_norm)
def instance_norm(cx, a):
    # instance_norm(input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, cudnn)
    x = cx.tensor(a(0, "input"))
    if a(5, "use_input_stats"):
        return emit_group_norm(cx, x, x.type.shape[1], a(1, "weight"), a(2, "bias"), a(7, "eps"))
    return emit_batch_norm(cx, x, a(1, "weight"), a(2, "bias"), a(3, "running_mean"), a(4, "running_var"), a(7, "eps"))


# -- padding modes ---------------------------------------------------------------------------------

_NUMPY_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def emit_index_pad(cx: Converter, x: Value, torch_pads: list[int], mode: str) -> Value:
    """Reflect / replicate / circular padding: per padded axis one ``index_select`` whose constant
    positions are numpy's pad of an ``arange`` (its reflect, edge and wrap are torch's modes)."""
    if mode not in _NUMPY_MODES:
        raise UnsupportedError(f"padding mode '{mode}' is not supported (constant, reflect, replicate, circular)")
    for i in range(len(torch_pads) // 2):
        axis = x.type.rank - 1 - i
        before, after = torch_pads[2 * i], torch_pads[2 * i + 1]
        if before == after == 0:
            continue
        size = x.type.shape[axis]
        if mode == "reflect" and max(before, after) >= size:
            raise UnsupportedError(f"reflect padding {max(before, after)} must be smaller than the axis ({size})")
        positions = np.arange(size)
        grown = np.pad(positions, (max(before, 0), max(after, 0)), mode=_NUMPY_MODES[mode])
        grown = grown[max(-before, 0) : len(grown) - max(-after, 0)]  # negative pads crop
        index = cx.tensor(Folded(torch.from_numpy(grown.astype(np.int64)), f"{mode}_pad"))
        x = cx.emit("index_select", [x, index], {"axis": axis})
    return x


_constant_pad = ATEN[aten.pad]


@on(aten.pad)
def pad(cx, a):
    mode = a(2, "mode", "constant")
    if mode == "constant":
        return _constant_pad(cx, a)
    return emit_index_pad(cx, cx.tensor(a(0, "self")), list(a(1, "pad")), mode)


def _pad_handler(mode: str):
    return lambda cx, a: emit_index_pad(cx, cx.tensor(a(0, "self")), list(a(1, "padding")), mode)


for _packets, _mode in [
    ((aten.reflection_pad1d, aten.reflection_pad2d, aten.reflection_pad3d), "reflect"),
    ((aten.replication_pad1d, aten.replication_pad2d, aten.replication_pad3d), "replicate"),
    ((aten._pad_circular,), "circular"),
]:
    for _p in _packets:
        ATEN[_p] = _pad_handler(_mode)


# -- interpolation ---------------------------------------------------------------------------------


def _run_torch(cx: Converter, first: torch.Tensor, a: Args) -> torch.Tensor:
    """The current node's torch op with ``first`` in place of its input (the other arguments as traced)."""
    unwrap = lambda v: v.tensor if isinstance(v, Param | Folded) else v
    rest = [unwrap(v) for v in a.args[1:]]
    kwargs = {k: unwrap(v) for k, v in a.kwargs.items() if k not in ("input", "self")}
    with torch.no_grad():
        return cx.node.target(first, *rest, **kwargs)


def interpolate(cx, a):
    x = cx.tensor(a(0, "input"))
    mode = a(3, "mode", "nearest") if not isinstance(cx.node.target, torch._ops.OpOverload) else None  # F.interpolate
    name = str(cx.node.target)
    if mode == "area" or "antialias" in name or a.kwargs.get("antialias"):
        raise UnsupportedError("interpolate with mode='area' or antialias=True is not supported")
    nearest = "nearest" in name or mode in ("nearest", "nearest-exact")
    if nearest:
        # which source element each output element copies: torch's op on the element positions
        positions = torch.arange(x.type.numel, dtype=torch.float64).reshape(x.type.shape)
        flat = _run_torch(cx, positions, a).to(torch.int64)
        index = cx.tensor(Folded(flat, "nearest_index"))
        return cx.emit("index_select", [reshape_to(cx, x, (x.type.numel,)), index], {"axis": 0})
    out = cx.out_shape()
    y = x
    spatial = x.type.rank - 2
    for d in range(spatial):
        axis = 2 + d
        size_in, size_out = x.type.shape[axis], out[axis]
        # the interpolation matrix of this axis: torch's op on an identity along it, constant along the
        # others (so their interpolation leaves it alone), at the real sizes (so scale factors act alike)
        lead = (size_in, 1) + (1,) * d
        basis = torch.eye(size_in, dtype=torch.float64).reshape(lead + (size_in,) + (1,) * (spatial - d - 1))
        basis = basis.expand((size_in, 1) + x.type.shape[2:]).contiguous()
        result = _run_torch(cx, basis, a)
        picked = result[(slice(None), 0) + (0,) * d + (slice(None),) + (0,) * (spatial - d - 1)]
        matrix = picked.T.contiguous().float()  # [out, in]: a linear layer's weight
        if tuple(matrix.shape) != (size_out, size_in):
            raise UnsupportedError(f"interpolate: unexpected interpolation matrix {tuple(matrix.shape)} on axis {axis}")
        last = list(range(y.type.rank))
        last[axis], last[-1] = last[-1], last[axis]
        moved = y if axis == y.type.rank - 1 else cx.emit("permute", [y], {"dims": last})
        weight = cx.tensor(Folded(matrix, f"interp_axis{axis}"))
        z = cx.emit("linear", [moved, weight])
        y = z if axis == y.type.rank - 1 else cx.emit("permute", [z], {"dims": last})
    return y


for _p in (
    aten.upsample_nearest1d,
    aten.upsample_nearest2d,
    aten.upsample_nearest3d,
    aten._upsample_nearest_exact1d,
    aten._upsample_nearest_exact2d,
    aten.upsample_linear1d,
    aten.upsample_bilinear2d,
    aten.upsample_bicubic2d,
    aten.upsample_trilinear3d,
):
    ATEN[_p] = interpolate


# -- transposed convolution ----------------------------------------------------------------------


def _transposed_weight(cx: Converter, w: Any, groups: int) -> Any:
    """ConvTranspose weight [Cin, Cout/g, k...] as the equivalent convolution's [Cout, Cin/g, k...],
    flipped in space (a new constant under the module's weight name)."""
    if not isinstance(w, Param | Folded):
        raise UnsupportedError("transposed convolution with a weight computed at run time is not supported")
    t = w.tensor
    cin, cout_g, *k = t.shape
    t = t.reshape(groups, cin // groups, cout_g, *k).transpose(1, 2).reshape(groups * cout_g, cin // groups, *k)
    t = t.flip(list(range(2, t.dim())))
    if t.dim() == 3:  # 1-D: as the conv2d over a height-1 image
        t = t.unsqueeze(2)
    return Param(w.path, t.contiguous()) if isinstance(w, Param) else Folded(t.contiguous(), w.name)


def emit_conv_transpose(
    cx: Converter, x: Value, w: Any, bias: Any, stride, padding, output_padding, groups: int, dilation
) -> Value:
    """y = conv_transpose(x): zeros inserted between inputs (stride), the borders padded by
    d(k-1) - p (+ output_padding after), then a stride-1 convolution with the flipped weight."""
    one_d = x.type.rank == 3
    if one_d:
        x = reshape_to(cx, x, (x.type.shape[0], x.type.shape[1], 1, x.type.shape[2]))
    spatial = 2
    k = (1, *_shape(w)[2:]) if one_d else tuple(_shape(w)[2:])

    def pair(v: Any, fill: int) -> list[int]:
        v = [v] if isinstance(v, int) else list(v)
        v = v * (1 if one_d else 2) if len(v) == 1 and not one_d else v
        return [fill, *v] if one_d else v

    s, p, op, d = pair(stride, 1), pair(padding, 0), pair(output_padding, 0), pair(dilation, 1)
    n, c, h, wd = x.type.shape
    if s != [1, 1]:
        # interleave zeros: [N, C, H, 1, W, 1] padded to [N, C, H, s, W, s], then cut the trailing zeros
        spread = reshape_to(cx, x, (n, c, h, 1, wd, 1))
        spread = cx.emit("pad", [spread], {"pads": [0, 0, 0, 0, 0, 0, 0, s[0] - 1, 0, 0, 0, s[1] - 1]})
        x = reshape_to(cx, spread, (n, c, h * s[0], wd * s[1]))
        x = cx.emit("slice", [x], {"axis": 2, "start": 0, "end": (h - 1) * s[0] + 1}) if s[0] > 1 else x
        x = cx.emit("slice", [x], {"axis": 3, "start": 0, "end": (wd - 1) * s[1] + 1}) if s[1] > 1 else x
    pads = [0, 0, 0, 0]
    for i in range(spatial):
        edge = d[i] * (k[i] - 1) - p[i]
        pads += [edge, edge + op[i]]
    if any(pads):
        x = cx.emit("pad", [x], {"pads": pads})
    y = conv2d(cx, Args([x, _transposed_weight(cx, w, groups), bias, [1, 1], [0, 0], d, groups]))
    return reshape_to(cx, y, cx.out_shape())


def _shape(w: Any) -> tuple[int, ...]:
    return tuple(w.tensor.shape) if isinstance(w, Param | Folded) else w.type.shape


@on(aten.conv_transpose1d, aten.conv_transpose2d)
def conv_transpose(cx, a):
    # conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    x = cx.tensor(a(0, "input"))
    return emit_conv_transpose(
        cx, x, a(1, "weight"), a(2, "bias", None), a(3, "stride", 1), a(4, "padding", 0),
        a(5, "output_padding", 0), a(6, "groups", 1), a(7, "dilation", 1),
    )  # fmt: skip


_convolution = ATEN[aten.convolution]


@on(aten.convolution)
def convolution(cx, a):
    """``aten.convolution``: transposed 1-D/2-D here, the rest as before."""
    if not a(6, "transposed", False):
        return _convolution(cx, a)
    x = cx.tensor(a(0, "input"))
    return emit_conv_transpose(
        cx, x, a(1, "weight"), a(2, "bias"), a(3, "stride"), a(4, "padding"), a(7, "output_padding"),
        a(8, "groups"), a(5, "dilation"),
    )  # fmt: skip


# -- the same under symbolic tracing ----------------------------------------------------------------


def module_group_norm(cx: Converter, mod: torch.nn.Module, path: str, a: Args) -> Value:
    w, b = (
        cx.param(f"{path}.{n}", getattr(mod, n)) if getattr(mod, n) is not None else None for n in ("weight", "bias")
    )
    return emit_group_norm(cx, cx.tensor(a(0, "input")), mod.num_groups, w, b, mod.eps)


def module_instance_norm(cx: Converter, mod: torch.nn.Module, path: str, a: Args) -> Value:
    get = lambda n: cx.param(f"{path}.{n}", getattr(mod, n)) if getattr(mod, n, None) is not None else None
    x = cx.tensor(a(0, "input"))
    if mod.track_running_stats:
        return emit_batch_norm(cx, x, get("weight"), get("bias"), get("running_mean"), get("running_var"), mod.eps)
    return emit_group_norm(cx, x, x.type.shape[1], get("weight"), get("bias"), mod.eps)


def module_conv_transpose(cx: Converter, mod: torch.nn.Module, path: str, a: Args) -> Value:
    if a(1, "output_size", None) is not None:
        raise UnsupportedError("ConvTranspose called with output_size is not supported; give output_padding")
    w = cx.param(f"{path}.weight", mod.weight)
    b = cx.param(f"{path}.bias", mod.bias) if mod.bias is not None else None
    return emit_conv_transpose(
        cx, cx.tensor(a(0, "input")), w, b, mod.stride, mod.padding, mod.output_padding, mod.groups, mod.dilation
    )
