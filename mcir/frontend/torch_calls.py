"""Torch-level calls (what ``torch.fx.symbolic_trace`` records) mapped onto the aten handlers.

``symbolic_trace`` records ``call_function`` nodes for ``torch.*``, ``F.*`` and ``operator.*``
callables, ``call_method`` nodes for tensor methods (``x.view(...)``) and ``call_module``
nodes for leaf modules (``nn.Linear``). Most torch functions take their arguments in
the same order as their aten op, so they share its handler (``Args`` also accepts
``input=`` for ``self=``); the few that differ (``F.embedding``, ``F.batch_norm``) and
every module get a small adapter here. Sharing the handlers is what makes both
tracers produce the same IR.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from mcir.errors import UnsupportedError
from mcir.frontend import (  # noqa: F401 (importing them fills ATEN)
    aten_elementwise,
    aten_index,
    aten_nn,
    aten_seq,
    aten_shape,
    aten_spatial,
)
from mcir.frontend.convert import Converter, Param, target_name, torch_dtype
from mcir.frontend.torch_ops import ATEN, Args, Handler, aten
from mcir.ir import Value


def lookup(cx: Converter, node: fx.Node) -> Handler | None:
    """The handler for what ``node`` calls, or None when mcir does not support it.

    An in-place variant (``aten.masked_fill_``, ``x.add_(y)``) uses the handler of its
    functional op; ``mutates`` tells the converter to rebind the mutated tensor.
    """
    t = node.target
    if node.op == "call_function":
        if isinstance(t, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
            packet = t.overloadpacket if isinstance(t, torch._ops.OpOverload) else t
            name = _inplace_base(packet.__name__)
            return ATEN.get(getattr(aten, name, None)) if name else ATEN.get(packet)
        name = _inplace_base(getattr(t, "__name__", ""))
        if name and getattr(torch, name, None) in FUNCTIONS:  # torch.relu_
            return FUNCTIONS[getattr(torch, name)]
        try:
            return FUNCTIONS.get(t)
        except TypeError:  # an unhashable callable
            return None
    if node.op == "call_method":
        return METHODS.get(_inplace_base(str(t)) or str(t))
    if node.op == "call_module":
        mod = cx.source.root.get_submodule(str(t))
        adapter = MODULES.get(type(mod))
        if adapter is None:
            return None
        return lambda cx, a: adapter(cx, mod, str(t), a)
    return None


def mutates(cx: Converter, node: fx.Node) -> bool:
    """Whether ``node`` overwrites its first argument (``x.add_(y)``, ``F.relu(x, inplace=True)``)."""
    t = node.target
    if node.op == "call_module":
        return bool(getattr(cx.source.root.get_submodule(str(t)), "inplace", False))
    if node.kwargs.get("inplace", False):
        return True
    if isinstance(t, torch._ops.OpOverload):
        return _inplace_base(t.overloadpacket.__name__) is not None
    name = str(t) if node.op == "call_method" else getattr(t, "__name__", "")
    return _inplace_base(name) is not None


def _inplace_base(name: str) -> str | None:
    """``add`` for the in-place name ``add_``; None for other names (``__and__``, ``relu``)."""
    if name.endswith("_") and not name.endswith("__") and len(name) > 1:
        return name[:-1]
    return None


# -- functions ------------------------------------------------------------------------------

# torch functions whose arguments line up with their aten op's
# fmt: off
_SAME_AS_ATEN: list[tuple[Callable[..., Any], Any]] = [
    (torch.relu, aten.relu), (F.relu, aten.relu), (F.relu6, aten.relu6), (F.hardtanh, aten.hardtanh),
    (torch.sigmoid, aten.sigmoid), (F.sigmoid, aten.sigmoid), (torch.tanh, aten.tanh), (F.tanh, aten.tanh),
    (F.silu, aten.silu), (F.hardswish, aten.hardswish), (F.hardsigmoid, aten.hardsigmoid), (F.gelu, aten.gelu),
    (F.leaky_relu, aten.leaky_relu), (torch.exp, aten.exp), (torch.log, aten.log), (torch.sqrt, aten.sqrt),
    (torch.rsqrt, aten.rsqrt), (torch.erf, aten.erf), (torch.neg, aten.neg), (torch.abs, aten.abs),
    (torch.reciprocal, aten.reciprocal), (torch.square, aten.square), (torch.pow, aten.pow),
    (torch.clamp, aten.clamp), (torch.clip, aten.clamp), (torch.clamp_min, aten.clamp_min),
    (torch.clamp_max, aten.clamp_max),
    (torch.add, aten.add), (torch.sub, aten.sub), (torch.subtract, aten.sub), (torch.mul, aten.mul),
    (torch.multiply, aten.mul), (torch.div, aten.div), (torch.divide, aten.div), (torch.true_divide, aten.div),
    (torch.floor_divide, aten.floor_divide), (torch.rsub, aten.rsub), (torch.maximum, aten.maximum),
    (torch.minimum, aten.minimum), (torch.max, aten.max), (torch.min, aten.min),
    (torch.eq, aten.eq), (torch.ne, aten.ne), (torch.lt, aten.lt), (torch.le, aten.le), (torch.gt, aten.gt),
    (torch.ge, aten.ge), (torch.logical_not, aten.logical_not), (torch.logical_and, aten.logical_and),
    (torch.logical_or, aten.logical_or), (torch.where, aten.where), (torch.masked_fill, aten.masked_fill),
    (F.dropout, aten.dropout), (torch.dropout, aten.dropout),
    (F.linear, aten.linear), (torch.matmul, aten.matmul), (torch.mm, aten.mm), (torch.bmm, aten.bmm),
    (torch.addmm, aten.addmm), (F.conv2d, aten.conv2d), (torch.conv2d, aten.conv2d),
    (torch.batch_norm, aten.batch_norm), (F.layer_norm, aten.layer_norm), (torch.layer_norm, aten.layer_norm),
    (F.softmax, aten.softmax), (torch.softmax, aten.softmax), (F.log_softmax, aten.log_softmax),
    (torch.log_softmax, aten.log_softmax),
    (F.max_pool2d, aten.max_pool2d), (torch.max_pool2d, aten.max_pool2d), (F.avg_pool2d, aten.avg_pool2d),
    (F.adaptive_avg_pool2d, aten.adaptive_avg_pool2d), (F.adaptive_max_pool2d, aten.adaptive_max_pool2d),
    (torch.embedding, aten.embedding), (F.scaled_dot_product_attention, aten.scaled_dot_product_attention),
    (torch.mean, aten.mean), (torch.sum, aten.sum), (torch.amax, aten.amax), (torch.amin, aten.amin),
    (torch.argmax, aten.argmax), (torch.argmin, aten.argmin),
    (torch.flatten, aten.flatten), (torch.unflatten, aten.unflatten), (torch.reshape, aten.reshape),
    (torch.squeeze, aten.squeeze), (torch.unsqueeze, aten.unsqueeze), (torch.transpose, aten.transpose),
    (torch.swapaxes, aten.transpose), (torch.permute, aten.permute), (torch.t, aten.t),
    (torch.broadcast_to, aten.broadcast_to), (torch.narrow, aten.narrow), (torch.select, aten.select),
    (torch.split, aten.split), (torch.chunk, aten.chunk), (torch.tensor_split, aten.tensor_split),
    (torch.unbind, aten.unbind), (torch.cat, aten.cat), (torch.concat, aten.cat), (torch.concatenate, aten.cat),
    (torch.stack, aten.stack), (F.pad, aten.pad), (torch.constant_pad_nd, aten.constant_pad_nd),
    (torch.clone, aten.clone), (torch.detach, aten.detach),
    (torch.zeros_like, aten.zeros_like), (torch.ones_like, aten.ones_like), (torch.full_like, aten.full_like),
    (torch.empty_like, aten.empty_like),
    (operator.add, aten.add), (operator.sub, aten.sub), (operator.mul, aten.mul), (operator.truediv, aten.div),
    (operator.floordiv, aten.floor_divide), (operator.neg, aten.neg), (operator.abs, aten.abs),
    (operator.pow, aten.pow), (operator.matmul, aten.matmul), (operator.eq, aten.eq), (operator.ne, aten.ne),
    (operator.lt, aten.lt), (operator.le, aten.le), (operator.gt, aten.gt), (operator.ge, aten.ge),
    (operator.and_, aten.logical_and), (operator.or_, aten.logical_or), (operator.invert, aten.logical_not),
    (torch.gather, aten.gather), (torch.index_select, aten.index_select), (torch.cumsum, aten.cumsum),
    (F.conv1d, aten.conv1d), (torch.conv1d, aten.conv1d), (F.max_pool1d, aten.max_pool1d),
    (F.avg_pool1d, aten.avg_pool1d), (F.adaptive_avg_pool1d, aten.adaptive_avg_pool1d),
    (F.adaptive_max_pool1d, aten.adaptive_max_pool1d), (F.group_norm, aten.group_norm),
    (F.conv_transpose1d, aten.conv_transpose1d), (F.conv_transpose2d, aten.conv_transpose2d),
]
# fmt: on

FUNCTIONS: dict[Any, Handler] = {fn: ATEN[packet] for fn, packet in _SAME_AS_ATEN}


def on_function(*fns: Callable[..., Any]) -> Callable[[Handler], Handler]:
    def deco(handler: Handler) -> Handler:
        for fn in fns:
            FUNCTIONS[fn] = handler
        return handler

    return deco


FUNCTIONS[operator.getitem] = aten_shape.getitem


@on_function(F.embedding)
def f_embedding(cx, a):
    # F.embedding(input, weight, padding_idx, max_norm, ...): aten.embedding takes (weight, indices)
    if a(3, "max_norm", None) is not None:
        raise UnsupportedError("F.embedding with max_norm renormalises the table in place; not supported")
    return ATEN[aten.embedding](cx, Args([a(1, "weight"), a(0, "input")]))


@on_function(F.batch_norm)
def f_batch_norm(cx, a):
    # F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if a(5, "training", False):
        raise UnsupportedError("F.batch_norm(training=True) normalises with batch statistics; not inference")
    return aten_nn.emit_batch_norm(
        cx,
        a(0, "input"),
        a(3, "weight", None),
        a(4, "bias", None),
        a(1, "running_mean"),
        a(2, "running_var"),
        a(7, "eps", 1e-5),
    )


@on_function(builtins.getattr)
def f_getattr(cx, a):
    obj, name = a(0, "obj"), a(1, "name")
    if isinstance(obj, tuple) and name in ("values", "indices"):  # torch.max(x, dim).values
        return obj[0 if name == "values" else 1]
    if isinstance(obj, Value):
        if name == "shape":
            return torch.Size(obj.type.shape)
        if name == "dtype":
            return torch_dtype(obj.type.dtype)
        if name == "ndim":
            return obj.type.rank
        if name in ("T", "mT"):
            return ATEN[aten.permute](cx, Args([obj, _transposed_dims(obj.type.rank, name)]))
        if name == "device":
            return torch.device("cpu")
    raise UnsupportedError(f"attribute '{name}' of a {type(obj).__name__} is not supported")


def _transposed_dims(rank: int, name: str) -> list[int]:
    dims = list(range(rank))
    if name == "T":
        return dims[::-1]
    dims[-2], dims[-1] = dims[-1], dims[-2]
    return dims


# -- tensor methods ----------------------------------------------------------------------------

# fmt: off
_METHOD_PACKETS = {
    "relu": aten.relu, "sigmoid": aten.sigmoid, "tanh": aten.tanh, "exp": aten.exp, "log": aten.log,
    "sqrt": aten.sqrt, "rsqrt": aten.rsqrt, "erf": aten.erf, "neg": aten.neg, "abs": aten.abs,
    "reciprocal": aten.reciprocal, "square": aten.square, "pow": aten.pow, "clamp": aten.clamp, "clip": aten.clamp,
    "clamp_min": aten.clamp_min, "clamp_max": aten.clamp_max,
    "add": aten.add, "sub": aten.sub, "mul": aten.mul, "div": aten.div, "true_divide": aten.div,
    "floor_divide": aten.floor_divide, "maximum": aten.maximum, "minimum": aten.minimum, "max": aten.max,
    "min": aten.min, "eq": aten.eq, "ne": aten.ne, "lt": aten.lt, "le": aten.le, "gt": aten.gt, "ge": aten.ge,
    "logical_not": aten.logical_not, "logical_and": aten.logical_and, "logical_or": aten.logical_or,
    "masked_fill": aten.masked_fill, "where": aten.where, "matmul": aten.matmul, "mm": aten.mm, "bmm": aten.bmm,
    "softmax": aten.softmax, "log_softmax": aten.log_softmax, "mean": aten.mean, "sum": aten.sum,
    "amax": aten.amax, "amin": aten.amin, "argmax": aten.argmax, "argmin": aten.argmin,
    "view": aten.view, "reshape": aten.reshape, "flatten": aten.flatten, "unflatten": aten.unflatten,
    "squeeze": aten.squeeze, "unsqueeze": aten.unsqueeze, "view_as": aten.view_as, "reshape_as": aten.reshape_as,
    "expand": aten.expand, "expand_as": aten.expand_as, "permute": aten.permute, "transpose": aten.transpose,
    "t": aten.t, "narrow": aten.narrow, "select": aten.select, "split": aten.split, "chunk": aten.chunk,
    "unbind": aten.unbind, "contiguous": aten.contiguous, "clone": aten.clone, "detach": aten.detach,
    "to": aten.to, "type_as": aten.type_as, "float": aten.to, "half": aten.to, "bfloat16": aten.to,
    "long": aten.to, "int": aten.to, "short": aten.to, "char": aten.to, "byte": aten.to, "bool": aten.to,
    "type": aten.to, "new_zeros": aten.new_zeros, "new_ones": aten.new_ones, "new_full": aten.new_full,
    "new_empty": aten.new_empty, "gather": aten.gather, "index_select": aten.index_select, "cumsum": aten.cumsum,
    "repeat": aten.repeat,
}
# fmt: on

METHODS: dict[str, Handler] = {name: ATEN[packet] for name, packet in _METHOD_PACKETS.items()}


def on_method(*names: str) -> Callable[[Handler], Handler]:
    def deco(handler: Handler) -> Handler:
        for name in names:
            METHODS[name] = handler
        return handler

    return deco


@on_method("size")
def m_size(cx, a):
    shape = cx.tensor(a(0, "self")).type.shape
    dim = a(1, "dim", None)
    return torch.Size(shape) if dim is None else shape[dim]


@on_method("dim", "ndimension")
def m_dim(cx, a):
    return cx.tensor(a(0, "self")).type.rank


@on_method("numel", "nelement")
def m_numel(cx, a):
    return cx.tensor(a(0, "self")).type.numel


# -- modules -----------------------------------------------------------------------------------

ModuleAdapter = Callable[[Converter, Any, str, Args], Any]
MODULES: dict[type, ModuleAdapter] = {}


def on_module(*classes: type) -> Callable[[ModuleAdapter], ModuleAdapter]:
    def deco(adapter: ModuleAdapter) -> ModuleAdapter:
        for cls in classes:
            MODULES[cls] = adapter
        return adapter

    return deco


def param(cx: Converter, mod: nn.Module, path: str, attr: str) -> Param | None:
    """The module's tensor ``attr`` (``weight``) under its full path, or None when it has none."""
    tensor = getattr(mod, attr, None)
    if tensor is None:
        return None
    return cx.param(f"{path}.{attr}" if path else attr, tensor)


def _module_call(packet: Any, extra: Callable[[Any], list[Any]] = lambda m: []) -> ModuleAdapter:
    """An adapter calling the aten handler of ``packet`` with (input, *extra(module))."""
    return lambda cx, mod, path, a: ATEN[packet](cx, Args([a(0, "input"), *extra(mod)]))


for _cls, _packet in [
    (nn.ReLU, aten.relu),
    (nn.Sigmoid, aten.sigmoid),
    (nn.Tanh, aten.tanh),
    (nn.SiLU, aten.silu),
    (nn.Hardswish, aten.hardswish),
    (nn.Hardsigmoid, aten.hardsigmoid),
    (nn.ReLU6, aten.relu6),
]:
    MODULES[_cls] = _module_call(_packet)

MODULES[nn.GELU] = lambda cx, mod, path, a: ATEN[aten.gelu](cx, Args([a(0, "input")], {"approximate": mod.approximate}))
MODULES[nn.Hardtanh] = _module_call(aten.hardtanh, lambda m: [m.min_val, m.max_val])
MODULES[nn.LeakyReLU] = _module_call(aten.leaky_relu, lambda m: [m.negative_slope])
MODULES[nn.ELU] = _module_call(aten.elu, lambda m: [m.alpha])
MODULES[nn.Softmax] = _module_call(aten.softmax, lambda m: [m.dim])
MODULES[nn.LogSoftmax] = _module_call(aten.log_softmax, lambda m: [m.dim])
MODULES[nn.Flatten] = _module_call(aten.flatten)
MODULES[nn.Unflatten] = _module_call(aten.unflatten)
MODULES[nn.AdaptiveAvgPool2d] = _module_call(aten.adaptive_avg_pool2d, lambda m: [m.output_size])
MODULES[nn.MaxPool2d] = _module_call(
    aten.max_pool2d, lambda m: [m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices]
)
MODULES[nn.AvgPool2d] = _module_call(
    aten.avg_pool2d,
    lambda m: [m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override],
)
for _cls in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout):
    MODULES[_cls] = _module_call(aten.dropout, lambda m: [m.p])


@on_module(nn.Identity)
def m_identity(cx, mod, path, a):
    return a(0, "input")


@on_module(nn.AdaptiveMaxPool2d)
def m_adaptive_max_pool2d(cx, mod, path, a):
    return ATEN[aten.adaptive_max_pool2d](cx, Args([a(0, "input"), mod.output_size]))


@on_module(nn.Linear)
def m_linear(cx, mod, path, a):
    return ATEN[aten.linear](cx, Args([a(0, "input"), param(cx, mod, path, "weight"), param(cx, mod, path, "bias")]))


@on_module(nn.Conv2d)
def m_conv2d(cx, mod, path, a):
    if mod.padding_mode != "zeros":
        raise UnsupportedError(f"Conv2d padding_mode='{mod.padding_mode}' is not supported, only 'zeros'")
    return ATEN[aten.conv2d](
        cx,
        Args(
            [
                a(0, "input"),
                param(cx, mod, path, "weight"),
                param(cx, mod, path, "bias"),
                mod.stride,
                mod.padding,
                mod.dilation,
                mod.groups,
            ]
        ),
    )


MODULES[nn.LSTM] = MODULES[nn.GRU] = aten_seq.module_rnn
MODULES[nn.GroupNorm] = aten_spatial.module_group_norm
MODULES[nn.InstanceNorm1d] = MODULES[nn.InstanceNorm2d] = aten_spatial.module_instance_norm
MODULES[nn.ConvTranspose1d] = MODULES[nn.ConvTranspose2d] = aten_spatial.module_conv_transpose
FUNCTIONS[F.interpolate] = aten_spatial.interpolate
MODULES[nn.AdaptiveAvgPool1d] = _module_call(aten.adaptive_avg_pool1d, lambda m: [m.output_size])
MODULES[nn.AdaptiveMaxPool1d] = _module_call(aten.adaptive_max_pool1d, lambda m: [m.output_size])
MODULES[nn.MaxPool1d] = _module_call(
    aten.max_pool1d, lambda m: [m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices]
)
MODULES[nn.AvgPool1d] = _module_call(
    aten.avg_pool1d, lambda m: [m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad]
)


@on_module(nn.Conv1d)
def m_conv1d(cx, mod, path, a):
    if mod.padding_mode != "zeros":
        raise UnsupportedError(f"Conv1d padding_mode='{mod.padding_mode}' is not supported, only 'zeros'")
    weight, bias = param(cx, mod, path, "weight"), param(cx, mod, path, "bias")
    return ATEN[aten.conv1d](cx, Args([a(0, "input"), weight, bias, mod.stride, mod.padding, mod.dilation, mod.groups]))


@on_module(nn.BatchNorm1d, nn.BatchNorm2d)
def m_batch_norm(cx, mod, path, a):
    return aten_nn.emit_batch_norm(
        cx,
        a(0, "input"),
        param(cx, mod, path, "weight"),
        param(cx, mod, path, "bias"),
        param(cx, mod, path, "running_mean"),
        param(cx, mod, path, "running_var"),
        mod.eps,
    )


@on_module(nn.LayerNorm)
def m_layer_norm(cx, mod, path, a):
    return ATEN[aten.layer_norm](
        cx,
        Args(
            [
                a(0, "input"),
                list(mod.normalized_shape),
                param(cx, mod, path, "weight"),
                param(cx, mod, path, "bias"),
                mod.eps,
            ]
        ),
    )


@on_module(nn.Embedding)
def m_embedding(cx, mod, path, a):
    if mod.max_norm is not None:
        raise UnsupportedError("nn.Embedding with max_norm renormalises the table in place; not supported")
    return ATEN[aten.embedding](cx, Args([param(cx, mod, path, "weight"), a(0, "input")]))


def supported() -> dict[str, list[str]]:
    """What the frontend maps, by kind: aten ops, torch functions, tensor methods, nn modules."""

    def fn_name(fn: Any) -> str:
        node = fx.Graph().create_node("call_function", fn)
        return target_name(node, nn.Module())

    return {
        "aten": sorted(str(p) for p in ATEN if isinstance(p, torch._ops.OpOverloadPacket)),
        "functions": sorted({fn_name(f) for f in FUNCTIONS}),
        "methods": sorted(f"Tensor.{m}" for m in METHODS),
        "modules": sorted(f"torch.nn.{cls.__name__}" for cls in MODULES),
    }
