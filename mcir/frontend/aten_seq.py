"""Handlers for sequence models: ``nn.LSTM`` / ``nn.GRU`` (``aten.lstm.input``, ``aten.gru.input``)
and 1-D pooling.

An RNN layer becomes, per direction, one ``linear`` for the input projection of all steps (a
GEMM that quant8 and the other weight passes see as an ordinary layer) and one ``lstm`` /
``gru`` op for the recurrence; directions are concatenated on the feature axis, layers chained.
An LSTM with ``proj_size`` passes its ``W_hr`` to the ``lstm`` op (its sixth operand).
``h_n`` is read from the outputs (the last step forward, the first step backward); ``c_n`` of an
LSTM needs the cell states, so an ``lstm {cell=true}`` op is emitted only when the model uses it.
1-D pooling is 2-D pooling over a height-1 image, like ``conv1d``.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx

from mcir.errors import UnsupportedError
from mcir.frontend.convert import Converter, Folded, Param, Unavailable
from mcir.frontend.torch_ops import ATEN, Args, aten, ints, on, reshape_to, with_extras

_GATES = {"lstm": 4, "gru": 3}


def _used(node: fx.Node, path: tuple[int, ...]) -> bool:
    """Whether the part ``path`` of the node's (nested tuple) result is used: ``y, (h, c) = lstm(x)`` -> (1, 1).

    A user that takes the whole tuple (returns it, passes it on) counts as using every part."""
    if not path:
        return bool(node.users)
    for user in node.users:
        if not (user.op == "call_function" and user.target is operator.getitem):
            return True
        if user.args[1] == path[0] and _used(user, path[1:]):
            return True
    return False


def _state(cx: Converter, states: Any, index: int, batch: int, hidden: int, unbatched: bool):
    """Initial state ``index`` (layer * directions + direction) as ``[B, H]``."""
    if isinstance(states, Param | Folded):
        t = states.tensor[index]
        return Folded(t.reshape(batch, hidden), f"{getattr(states, 'name', 'state')}_{index}")
    v = cx.tensor(states)
    v = cx.emit("select", [v], {"axis": 0, "index": index})
    return reshape_to(cx, v, (batch, hidden)) if unbatched else v


def emit_rnn(
    cx: Converter,
    kind: str,
    x: Any,
    hx: list[Any],
    params: list[Any],
    has_biases: bool,
    layers: int,
    bidirectional: bool,
    batch_first: bool,
    want_cell: bool,
) -> tuple[Any, ...]:
    """The IR of a torch LSTM/GRU call: (output, h_n[, c_n])."""
    x = cx.tensor(x)
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    # torch's flat weights per layer and direction: w_ih, w_hh, [b_ih, b_hh], [w_hr (LSTM proj_size > 0)]
    proj = kind == "lstm" and len(params) == layers * dirs * (per + 1)
    if proj:
        per += 1
    if len(params) != layers * dirs * per:
        raise UnsupportedError(
            f"{kind.upper()} with {len(params)} weight tensors for {layers} layer(s) x {dirs} direction(s), "
            f"{'with' if has_biases else 'without'} biases: expected {layers * dirs * per}"
        )
    unbatched = x.type.rank == 2
    if unbatched:
        x = reshape_to(cx, x, (x.type.shape[0], 1, x.type.shape[1]))
    elif batch_first:
        x = cx.emit("permute", [x], {"dims": [1, 0, 2]})
    steps, batch, _ = x.type.shape
    gates = _GATES[kind]
    hidden = _shape(params[1])[0] // gates  # W_hh is [G*H, P]
    width = _shape(params[1])[1]  # the hidden state: H, or P with a projection
    h_last, c_last = [], []
    inp = x
    for layer in range(layers):
        outs = []
        for d in range(dirs):
            w_ih, w_hh, *rest = params[(layer * dirs + d) * per : (layer * dirs + d + 1) * per]
            w_hr = [cx.tensor(rest.pop())] if proj else []
            b_ih, b_hh = rest if rest else (None, Folded(torch.zeros(gates * hidden), "rnn_bias_hh"))
            gx = cx.emit("linear", [inp, cx.tensor(w_ih)] + ([cx.tensor(b_ih)] if b_ih is not None else []))
            index = layer * dirs + d
            h0 = cx.tensor(_state(cx, hx[0], index, batch, width, unbatched))
            rec = [cx.tensor(w_hh), cx.tensor(b_hh), *w_hr]
            at = steps - 1 if d == 0 else 0  # the last step each direction takes
            if kind == "lstm":
                c0 = cx.tensor(_state(cx, hx[1], index, batch, hidden, unbatched))
                y = cx.emit("lstm", [gx, h0, c0, *rec], {"reverse": d == 1})
                if want_cell:
                    c = cx.emit("lstm", [gx, h0, c0, *rec], {"reverse": d == 1, "cell": True})
                    c_last.append(cx.emit("select", [c], {"axis": 0, "index": at}))
            else:
                y = cx.emit("gru", [gx, h0, *rec], {"reverse": d == 1})
            outs.append(y)
            h_last.append(cx.emit("select", [y], {"axis": 0, "index": at}))
        inp = outs[0] if dirs == 1 else cx.emit("concat", outs, {"axis": 2})
    out = inp
    if unbatched:
        out = reshape_to(cx, out, (steps, out.type.shape[2]))
    elif batch_first:
        out = cx.emit("permute", [out], {"dims": [1, 0, 2]})

    def stacked(parts: list[Any], size: int) -> Any:
        shape = (len(parts), size) if unbatched else (len(parts), batch, size)
        parts = [reshape_to(cx, p, (1, *shape[1:])) for p in parts]
        return parts[0] if len(parts) == 1 else cx.emit("concat", parts, {"axis": 0})

    h_n = stacked(h_last, width)
    if kind == "gru":
        return out, h_n
    c_n = (
        stacked(c_last, hidden) if want_cell else Unavailable("the final cell state c_n of an LSTM that was not traced")
    )
    return out, h_n, c_n


def _shape(p: Any) -> tuple[int, ...]:
    return tuple(p.tensor.shape) if isinstance(p, Param | Folded) else p.type.shape


def _rnn_handler(kind: str):
    def handler(cx, a):
        # aten.lstm.input(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        hx = a(1, "hx")
        hx = list(hx) if isinstance(hx, list | tuple) else [hx]
        want_cell = kind == "lstm" and _used(cx.node, (2,))
        return emit_rnn(
            cx, kind, a(0, "input"), hx, list(a(2, "params")), a(3, "has_biases"), a(4, "num_layers"),
            a(7, "bidirectional"), a(8, "batch_first"), want_cell,
        )  # fmt: skip

    return handler


ATEN[aten.lstm] = _rnn_handler("lstm")
ATEN[aten.gru] = _rnn_handler("gru")


def module_rnn(cx: Converter, mod: torch.nn.Module, path: str, a: Args) -> Any:
    """``nn.LSTM`` / ``nn.GRU`` under symbolic tracing: ``y, (h, c) = lstm(x[, (h0, c0)])``."""
    kind = "lstm" if isinstance(mod, torch.nn.LSTM) else "gru"
    x = cx.tensor(a(0, "input"))
    dirs = 2 if mod.bidirectional else 1
    hx = a(1, "hx", None)
    if hx is None:
        batch = () if x.type.rank == 2 else (x.type.shape[0 if mod.batch_first else 1],)
        zeros = Folded(torch.zeros(mod.num_layers * dirs, *batch, mod.hidden_size), "zeros")
        proj = getattr(mod, "proj_size", 0)  # LSTMP: h is P wide, c stays H wide
        h_zeros = Folded(torch.zeros(mod.num_layers * dirs, *batch, proj), "zeros_h") if proj else zeros
        hx = [h_zeros, zeros] if kind == "lstm" else [zeros]
    elif kind == "gru":
        hx = [hx]
    else:
        hx = list(hx)
    params = [cx.param(f"{path}.{name}", getattr(mod, name)) for name in mod._flat_weights_names]
    want_cell = kind == "lstm" and _used(cx.node, (1, 1))
    out = emit_rnn(cx, kind, x, hx, params, mod.bias, mod.num_layers, mod.bidirectional, mod.batch_first, want_cell)
    return (out[0], out[1:]) if kind == "lstm" else out


# -- 1-D pooling as 2-D pooling over a height-1 image -----------------------------------------------


def _as_2d(cx: Converter, x: Any):
    x = cx.tensor(x)
    if x.type.rank not in (2, 3):
        raise UnsupportedError(f"1-D pooling needs a [N, C, L] or [C, L] input, got {x.type}")
    n, c, length = x.type.shape if x.type.rank == 3 else (1, *x.type.shape)
    return reshape_to(cx, x, (n, c, 1, length))


def _pool1d(cx, a, op: str, extra: dict[str, Any]) -> Any:
    x4 = _as_2d(cx, a(0, "self"))
    kernel = ints(a(1, "kernel_size"), 1)[0]
    stride = a(2, "stride", None)
    stride = kernel if stride in (None, [], ()) else ints(stride, 1)[0]
    attrs = {"kernel": [1, kernel], "stride": [1, stride], "padding": [0, ints(a(3, "padding", 0), 1)[0]]} | extra
    y = cx.emit(op, [x4], attrs)
    return reshape_to(cx, y, cx.out_shape(0) if isinstance(cx.node.meta.get("val"), tuple | list) else cx.out_shape())


@on(aten.max_pool1d, aten.max_pool1d_with_indices)
def max_pool1d(cx, a):
    extra = {"dilation": [1, ints(a(4, "dilation", 1), 1)[0]], "ceil_mode": bool(a(5, "ceil_mode", False))}
    return with_extras(cx, _pool1d(cx, a, "max_pool2d", extra), 2)


@on(aten.avg_pool1d)
def avg_pool1d(cx, a):
    extra = {"ceil_mode": bool(a(4, "ceil_mode", False)), "count_include_pad": bool(a(5, "count_include_pad", True))}
    return _pool1d(cx, a, "avg_pool2d", extra)


@on(aten.adaptive_avg_pool1d)
def adaptive_avg_pool1d(cx, a):
    x4 = _as_2d(cx, a(0, "self"))
    size = ints(a(1, "output_size"), 1)[0]
    return reshape_to(cx, cx.emit("adaptive_avg_pool2d", [x4], {"output_size": [1, size]}), cx.out_shape())


@on(aten.adaptive_max_pool1d)
def adaptive_max_pool1d(cx, a):
    """Adaptive max pooling to S outputs of a length L that S divides: windows of L/S, as ``max_pool2d``
    over a height-1 image (global max pooling is S = 1), so it runs on u8 values after quant8 too."""
    x = cx.tensor(a(0, "self"))
    size, length = ints(a(1, "output_size"), 1)[0], x.type.shape[-1]
    if size <= 0 or length % size:
        raise UnsupportedError(
            f"adaptive max pooling of length {length} to {size} outputs: windows of different lengths are not "
            "supported; use an output size that divides the length (1: global max pooling)"
        )
    k = length // size
    attrs = {"kernel": [1, k], "stride": [1, k], "padding": [0, 0], "dilation": [1, 1], "ceil_mode": False}
    y = cx.emit("max_pool2d", [_as_2d(cx, x)], attrs)
    return with_extras(cx, reshape_to(cx, y, cx.out_shape(0)), 2)
