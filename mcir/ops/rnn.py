"""Recurrent ops: the recurrence of an LSTM or GRU layer over a static sequence.

A torch ``nn.LSTM`` / ``nn.GRU`` layer splits into two parts that have different costs:

* the input projection ``gx = x @ W_ih^T + b_ih`` for every time step at once, which the
  frontend emits as one ``linear`` on ``[T, B, I]`` (a GEMM; quant8 and the other weight
  passes treat it like any layer), and
* the recurrence, which depends on the previous step's state, so it must run step by step:
  that is the op here. Per step it multiplies the state by ``W_hh`` (packed once) and applies
  the gates. ``quant8`` makes ``W_hh`` int8 per row and sets ``int8_state``: the state then
  enters the product on a fixed u8 grid (|h| < 1 always, so no calibration is needed).

Layout is time-major (``[T, B, ...]``); the frontend permutes ``batch_first`` inputs and
stacks directions and layers. Gate order is torch's: LSTM ``i, f, g, o``; GRU ``r, z, n``::

    %gx = linear(%x, %rnn.weight_ih_l0, %rnn.bias_ih_l0) : f32[50,1,1024]
    %y = lstm(%gx, %h0, %c0, %rnn.weight_hh_l0, %rnn.bias_hh_l0) : f32[50,1,256]

An LSTM with a projection (torch's ``proj_size = P``, "LSTMP") takes a sixth operand ``w_hr``
``[P, H]``: each step's ``o * tanh(c)`` is projected to ``h = (o * tanh(c)) W_hr^T``, so the
hidden state, the output and ``W_hh`` (``[4H, P]``) are P wide while the cell state stays H wide::

    %y = lstm(%gx, %h0, %c0, %rnn.weight_hh_l0, %rnn.bias_hh_l0, %rnn.weight_hr_l0) : f32[50,1,64]
"""

from __future__ import annotations

import numpy as np

from mcir.errors import McirError
from mcir.ops.registry import Attr, defop
from mcir.ops.traits import CONTRACTION, RECURRENT
from mcir.types import TensorType


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _rnn_infer(types: list[TensorType], gates: int, what: str) -> TensorType:
    gx, h0 = types[0], types[1]
    w, b = types[-2], types[-1]
    for t in types:
        if not t.dtype.is_float:
            raise McirError(f"{what} operands must be floating point, got {t}")
    if gx.rank != 3:
        raise McirError(f"{what} input gates must be [T, B, {gates}*H], got {gx}")
    if h0.rank != 2 or h0.shape[0] != gx.shape[1]:
        raise McirError(f"{what} initial state must be [B={gx.shape[1]}, H], got {h0}")
    hidden = h0.shape[1]
    if gx.shape[2] != gates * hidden:
        raise McirError(f"{what} input gates {gx} must have {gates} x H = {gates * hidden} features")
    for state in types[2:-2]:  # the LSTM's cell state
        if state.shape != h0.shape:
            raise McirError(f"{what} cell state must be {list(h0.shape)} like the hidden state, got {state}")
    if w.shape != (gates * hidden, hidden):
        raise McirError(f"{what} recurrent weight must be [{gates * hidden}, {hidden}], got {w}")
    if b.shape != (gates * hidden,):
        raise McirError(f"{what} recurrent bias must be [{gates * hidden}], got {b}")
    return TensorType((gx.shape[0], gx.shape[1], hidden), gx.dtype)


def _rnn_macs(types: list[TensorType], result: TensorType, **_) -> int:
    steps, batch, hidden = result.shape
    return steps * batch * types[-2].shape[0] * hidden


def _lstm_infer(types: list[TensorType], cell: bool) -> TensorType:
    gx, h0, c0, w, b = types[:5]
    proj = types[5] if len(types) == 6 else None
    for t in types:
        if not t.dtype.is_float:
            raise McirError(f"lstm operands must be floating point, got {t}")
    if gx.rank != 3:
        raise McirError(f"lstm input gates must be [T, B, 4*H], got {gx}")
    if c0.rank != 2 or c0.shape[0] != gx.shape[1]:
        raise McirError(f"lstm cell state must be [B={gx.shape[1]}, H], got {c0}")
    hidden = c0.shape[1]
    if gx.shape[2] != 4 * hidden:
        raise McirError(f"lstm input gates {gx} must have 4 x H = {4 * hidden} features (H from the cell state)")
    width = hidden
    if proj is not None:
        if proj.rank != 2 or proj.shape[1] != hidden:
            raise McirError(f"lstm projection weight must be [P, H={hidden}], got {proj}")
        width = proj.shape[0]
    if h0.shape != (gx.shape[1], width):
        raise McirError(f"lstm initial hidden state must be [B={gx.shape[1]}, {width}], got {h0}")
    if w.shape != (4 * hidden, width):
        raise McirError(f"lstm recurrent weight must be [{4 * hidden}, {width}], got {w}")
    if b.shape != (4 * hidden,):
        raise McirError(f"lstm recurrent bias must be [{4 * hidden}], got {b}")
    return TensorType((gx.shape[0], gx.shape[1], hidden if cell else width), gx.dtype)


def _lstm_macs(types: list[TensorType], result: TensorType, **_) -> int:
    steps, batch = result.shape[:2]
    gates, width = types[3].shape  # W_hh [4H, P]
    proj = types[5].shape[0] * types[5].shape[1] if len(types) == 6 else 0
    return steps * batch * (gates * width + proj)


def _steps(count: int, reverse: bool) -> range:
    return range(count - 1, -1, -1) if reverse else range(count)


#: the grid of the hidden state fed to an int8 W_hh: u8 with zero point 128, h in (-1, 1) by construction
STATE_SCALE = 1.0 / 127.0


def _state_for_weights(h: np.ndarray, int8_state: bool) -> np.ndarray:
    """The hidden state as it multiplies W_hh: itself, or rounded to the u8 grid of STATE_SCALE."""
    if not int8_state:
        return h
    return np.clip(np.rint(h / STATE_SCALE), -128, 127) * STATE_SCALE


_INT8_STATE = Attr(
    "bool",
    False,
    "h is rounded to multiples of 1/127 (u8, zero point 128) before it multiplies W_hh, as the int8 kernels feed it",
)


@defop(
    "lstm",
    operands="gx, h0, c0, w_hh, b_hh, w_hr?",
    attrs={
        "reverse": Attr("bool", False, "run from the last step to the first (a bidirectional layer's backward half)"),
        "cell": Attr("bool", False, "give the cell states c_t instead of the hidden states h_t"),
        "int8_state": _INT8_STATE,
    },
    infer=lambda t, reverse, cell, int8_state: _lstm_infer(t, cell),
    traits={CONTRACTION, RECURRENT},
    macs=_lstm_macs,
)
def lstm(gx, h0, c0, w_hh, b_hh, w_hr=None, reverse=False, cell=False, int8_state=False):
    """g = gx[t] + h W_hh^T + b_hh = [i f g o]; c = s(f) c + s(i) tanh(g); h = s(o) tanh(c) (W_hr^T);
    y[t] = h (or c)"""
    gx, w, b = (np.asarray(a, np.float64) for a in (gx, w_hh, b_hh))
    h, c = np.asarray(h0, np.float64), np.asarray(c0, np.float64)
    wr = None if w_hr is None else np.asarray(w_hr, np.float64)
    hidden = c.shape[1]
    y = np.empty(gx.shape[:2] + ((hidden if cell else h.shape[1]),), np.float64)
    for t in _steps(gx.shape[0], reverse):
        g = gx[t] + _state_for_weights(h, int8_state) @ w.T + b
        i, f, gg, o = (g[:, k * hidden : (k + 1) * hidden] for k in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(gg)
        h = _sigmoid(o) * np.tanh(c)
        if wr is not None:
            h = h @ wr.T
        y[t] = c if cell else h
    return y.astype(np.float32)


@defop(
    "gru",
    operands="gx, h0, w_hh, b_hh",
    attrs={"reverse": Attr("bool", False, "run from the last step to the first"), "int8_state": _INT8_STATE},
    infer=lambda t, reverse, int8_state: _rnn_infer(t, 3, "gru"),
    traits={CONTRACTION, RECURRENT},
    macs=_rnn_macs,
)
def gru(gx, h0, w_hh, b_hh, reverse=False, int8_state=False):
    """gh = h W_hh^T + b_hh; r = s(gx_r + gh_r); z = s(gx_z + gh_z); n = tanh(gx_n + r gh_n); h = (1-z) n + z h"""
    gx, w, b = (np.asarray(a, np.float64) for a in (gx, w_hh, b_hh))
    h = np.asarray(h0, np.float64)
    hidden = h.shape[1]
    y = np.empty(gx.shape[:2] + (hidden,), np.float64)
    for t in _steps(gx.shape[0], reverse):
        gh = _state_for_weights(h, int8_state) @ w.T + b
        xr, xz, xn = (gx[t][:, k * hidden : (k + 1) * hidden] for k in range(3))
        hr, hz, hn = (gh[:, k * hidden : (k + 1) * hidden] for k in range(3))
        r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        h = (1.0 - z) * n + z * h
        y[t] = h
    return y.astype(np.float32)
