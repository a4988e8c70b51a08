"""Handlers for neural-network aten ops: linear algebra, convolution, normalisation, softmax,
pooling, embedding, attention and reductions."""

from __future__ import annotations

from typing import Any

import torch

from mcir import dtypes
from mcir.errors import UnsupportedError
from mcir.frontend.aten_elementwise import arith
from mcir.frontend.convert import Converter, Folded, Param
from mcir.frontend.torch_ops import (
    ATEN,
    Args,
    Handler,
    aten,
    cast,
    ints,
    norm_dim,
    on,
    reshape_to,
    short_name,
    tensor_as,
    with_extras,
)
from mcir.ir import Value

# -- linear algebra, convolution, normalisation -------------------------------------------------


@on(aten.linear)
def linear(cx, a):
    x = cx.tensor(a(0, "self"))
    operands = [x, cx.tensor(a(1, "weight"))]
    bias = a(2, "bias", None)
    if bias is not None:
        operands.append(cx.tensor(bias))
    return cx.emit("linear", operands)


@on(aten.matmul, aten.mm, aten.bmm)
def matmul(cx, a):
    return cx.emit("matmul", [cx.tensor(a(0, "self")), cx.tensor(a(1, "other"))])


@on(aten.addmm)
def addmm(cx, a):
    # addmm(c, a, b, beta, alpha) = beta * c + alpha * (a @ b)
    c, m1, m2 = cx.tensor(a(0, "self")), cx.tensor(a(1, "mat1")), cx.tensor(a(2, "mat2"))
    beta, alpha = a(3, "beta", 1), a(4, "alpha", 1)
    prod = cx.emit("matmul", [m1, m2])
    if alpha != 1:
        prod = cx.emit("mul", [prod, cx.scalar(alpha, prod.type.dtype)])
    if beta != 1:
        c = cx.emit("mul", [c, cx.scalar(beta, c.type.dtype)])
    return cx.emit("add", [c, prod])


def conv_padding(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Torch's conv padding (ints, or 'same'/'valid') as (symmetric conv padding, extra pad-op pads)."""
    if padding == "valid":
        return [0, 0], []
    if padding == "same":
        before = [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
        after = [d * (k - 1) - b for k, d, b in zip(kernel, dilation, before)]
        if before == after:
            return before, []
        # uneven 'same' padding: pad explicitly, then convolve without padding
        return [0, 0], [0, 0, 0, 0, before[0], after[0], before[1], after[1]]
    return list(ints(padding)), []


@on(aten.conv2d)
def conv2d(cx, a):
    x, w = cx.tensor(a(0, "self")), cx.tensor(a(1, "weight"))
    bias = a(2, "bias", None)
    if x.type.rank != 4:
        raise UnsupportedError(f"only 2-D convolution on [N, C, H, W] inputs is supported, got {x.type}")
    stride, dilation = ints(a(3, "stride", 1)), ints(a(5, "dilation", 1))
    padding, extra = conv_padding(a(4, "padding", 0), tuple(w.type.shape[2:]), dilation)
    if extra:
        x = cx.emit("pad", [x], {"pads": extra})
    operands = [x, w] + ([cx.tensor(bias)] if bias is not None else [])
    return cx.emit(
        "conv2d",
        operands,
        {"stride": list(stride), "padding": padding, "dilation": list(dilation), "groups": int(a(6, "groups", 1))},
    )


@on(aten.convolution)
def convolution(cx, a):
    # convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups)
    if a(6, "transposed"):
        raise UnsupportedError("transposed convolution is not supported")
    if len(a(3, "stride")) != 2:
        raise UnsupportedError("only 2-D convolution is supported")
    return conv2d(
        cx,
        Args(
            [
                a(0, "input"),
                a(1, "weight"),
                a(2, "bias"),
                a(3, "stride"),
                a(4, "padding"),
                a(5, "dilation"),
                a(8, "groups"),
            ]
        ),
    )


def ones_like_channel(cx: Converter, value: float, channels: int, name: str) -> Value:
    import numpy as np

    return cx.graph.const(cx.graph.fresh_name(name), np.full((channels,), value, np.float32))


def emit_batch_norm(cx: Converter, x: Any, weight: Any, bias: Any, mean: Any, var: Any, eps: float) -> Value:
    x = cx.tensor(x)
    if mean is None or var is None:
        raise UnsupportedError(
            "batch norm without running statistics (track_running_stats=False) normalises "
            "with batch statistics, which is not inference; set track_running_stats=True"
        )
    c = x.type.shape[1]
    operands = [
        x,
        cx.tensor(weight) if weight is not None else ones_like_channel(cx, 1.0, c, "bn_weight"),
        cx.tensor(bias) if bias is not None else ones_like_channel(cx, 0.0, c, "bn_bias"),
        cx.tensor(mean),
        cx.tensor(var),
    ]
    return cx.emit("batch_norm", operands, {"eps": float(eps)})


@on(aten.batch_norm)
def batch_norm(cx, a):
    # batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
    if a(5, "training", False) and a(3, "running_mean", None) is None:
        return emit_batch_norm(cx, a(0, "input"), None, None, None, None, 0.0)
    return emit_batch_norm(
        cx,
        a(0, "input"),
        a(1, "weight", None),
        a(2, "bias", None),
        a(3, "running_mean", None),
        a(4, "running_var", None),
        a(7, "eps", 1e-5),
    )


@on(aten._native_batch_norm_legit_no_training)
def native_batch_norm(cx, a):
    # (x, weight, bias, running_mean, running_var, momentum, eps) -> (y, save_mean, save_invstd)
    y = emit_batch_norm(
        cx, a(0, "input"), a(1, "weight"), a(2, "bias"), a(3, "running_mean"), a(4, "running_var"), a(6, "eps", 1e-5)
    )
    return with_extras(cx, y, 3)


@on(aten.layer_norm, aten.native_layer_norm)
def layer_norm(cx, a):
    x = cx.tensor(a(0, "input"))
    shape = ints(a(1, "normalized_shape"), 1)
    weight, bias = a(2, "weight", None), a(3, "bias", None)
    operands = [x]
    if weight is not None or bias is not None:
        operands.append(cx.tensor(weight) if weight is not None else ones_like_channel(cx, 1.0, shape[-1], "ln_weight"))
        if len(shape) != 1 and weight is None:
            raise UnsupportedError("layer_norm over several dimensions with a bias but no weight is not supported")
    if bias is not None:
        operands.append(cx.tensor(bias))
    y = cx.emit("layer_norm", operands, {"dims": len(shape), "eps": float(a(4, "eps", 1e-5))})
    return with_extras(cx, y, 3)


def _softmax(op: str) -> Handler:
    def handler(cx, a):
        x = tensor_as(cx, a(0, "self"), cx.out_dtype())
        return cx.emit(op, [x], {"axis": norm_dim(a(1, "dim"), x.type.rank)})

    return handler


ATEN[aten.softmax] = ATEN[aten._softmax] = _softmax("softmax")
ATEN[aten.log_softmax] = ATEN[aten._log_softmax] = _softmax("log_softmax")


# -- pooling ---------------------------------------------------------------------------------


def _pool_args(a: Args) -> dict[str, Any]:
    kernel = ints(a(1, "kernel_size"))
    stride = a(2, "stride", None)
    stride = kernel if stride is None or stride == [] or stride == () else ints(stride)
    return {"kernel": list(kernel), "stride": list(stride), "padding": list(ints(a(3, "padding", 0)))}


@on(aten.max_pool2d, aten.max_pool2d_with_indices)
def max_pool2d(cx, a):
    x = cx.tensor(a(0, "self"))
    attrs = _pool_args(a) | {"dilation": list(ints(a(4, "dilation", 1))), "ceil_mode": bool(a(5, "ceil_mode", False))}
    return with_extras(cx, cx.emit("max_pool2d", [x], attrs), 2)


@on(aten.avg_pool2d)
def avg_pool2d(cx, a):
    x = cx.tensor(a(0, "self"))
    attrs = _pool_args(a) | {
        "ceil_mode": bool(a(4, "ceil_mode", False)),
        "count_include_pad": bool(a(5, "count_include_pad", True)),
        "divisor": a(6, "divisor_override", None),
    }
    return cx.emit("avg_pool2d", [x], attrs)


@on(aten.adaptive_avg_pool2d, aten._adaptive_avg_pool2d)
def adaptive_avg_pool2d(cx, a):
    x = cx.tensor(a(0, "self"))
    return cx.emit("adaptive_avg_pool2d", [x], {"output_size": list(cx.out_shape()[2:])})


@on(aten.adaptive_max_pool2d)
def adaptive_max_pool2d(cx, a):
    x = cx.tensor(a(0, "self"))
    if cx.out_shape(0)[2:] != (1, 1):
        raise UnsupportedError("adaptive max pooling is supported only to a 1x1 output (global max pooling)")
    return with_extras(cx, cx.emit("amax", [x], {"axes": [2, 3], "keepdim": True}), 2)


# -- embedding, attention, reductions -----------------------------------------------------------


@on(aten.embedding)
def embedding(cx, a):
    # aten.embedding(weight, indices, ...): mcir's operand order is (indices, weight)
    weight, indices = cx.tensor(a(0, "weight")), cx.tensor(a(1, "indices"))
    return cx.emit("embedding", [indices, weight])


@on(aten.scaled_dot_product_attention)
def attention(cx, a):
    q, k, v = (cx.tensor(a(i, n)) for i, n in enumerate(("query", "key", "value")))
    mask = a(3, "attn_mask", None)
    if a(4, "dropout_p", 0.0):
        raise UnsupportedError(
            "scaled_dot_product_attention with dropout_p > 0 is random even in eval mode; "
            "pass dropout_p=0.0 when not training"
        )
    if a(7, "enable_gqa", False):
        raise UnsupportedError("scaled_dot_product_attention with enable_gqa=True is not supported")
    operands = [q, k, v]
    if mask is not None:
        m = cx.tensor(mask)
        operands.append(m if m.type.dtype == dtypes.boolean else cast(cx, m, q.type.dtype))
    return cx.emit(
        "scaled_dot_product_attention",
        operands,
        {"is_causal": bool(a(5, "is_causal", False)), "scale": a(6, "scale", None)},
    )


def _dims(d: Any) -> list[int]:
    if d is None:
        return []
    return [d] if isinstance(d, int) else list(d)


def _reduce(op: str) -> Handler:
    def handler(cx, a):
        x = tensor_as(cx, a(0, "self"), cx.out_dtype())
        dim = a(1, "dim", None)
        if isinstance(dim, torch.dtype):  # mean.default(x, dtype)
            dim = None
        return cx.emit(op, [x], {"axes": _dims(dim), "keepdim": bool(a(2, "keepdim", False))})

    return handler


ATEN[aten.mean] = _reduce("mean")
ATEN[aten.sum] = _reduce("sum")
ATEN[aten.amax] = _reduce("amax")


@on(aten.amin)
def amin(cx, a):
    # min x = -max(-x)
    x = cx.tensor(a(0, "self"))
    attrs = {"axes": _dims(a(1, "dim", None)), "keepdim": bool(a(2, "keepdim", False))}
    return cx.emit("neg", [cx.emit("amax", [cx.emit("neg", [x])], attrs)])


def _arg_extreme(cx: Converter, x: Value, dim: Any, keepdim: bool, smallest: bool) -> Value:
    if smallest:
        x = cx.emit("neg", [x])  # the first minimum of x is the first maximum of -x
    if dim is None:
        y = cx.emit("argmax", [reshape_to(cx, x, (x.type.numel,))], {"axis": 0})
        return reshape_to(cx, y, (1,) * x.type.rank if keepdim else ())
    return cx.emit("argmax", [x], {"axis": norm_dim(dim, x.type.rank), "keepdim": bool(keepdim)})


@on(aten.argmax, aten.argmin)
def argmax(cx, a):
    smallest = short_name(cx.node) == "argmin"
    return _arg_extreme(cx, cx.tensor(a(0, "self")), a(1, "dim", None), a(2, "keepdim", False), smallest)


def _max_min(smallest: bool) -> Handler:
    def handler(cx, a):
        x = cx.tensor(a(0, "self"))
        other = a(1, "dim", None)
        if isinstance(other, Value | Param | Folded):  # torch.max(a, b) is maximum
            return arith("minimum" if smallest else "maximum")(cx, Args([x, other]))
        if other is None:  # max of all elements
            return amin(cx, Args([x])) if smallest else cx.emit("amax", [x])
        keepdim = bool(a(2, "keepdim", False))
        attrs = {"axes": [other], "keepdim": keepdim}
        values = (
            cx.emit("neg", [cx.emit("amax", [cx.emit("neg", [x])], attrs)]) if smallest else cx.emit("amax", [x], attrs)
        )
        return (values, _arg_extreme(cx, x, other, keepdim, smallest))

    return handler


ATEN[aten.max] = _max_min(False)
ATEN[aten.min] = _max_min(True)
