"""``mcir.to_torch(graph)``: the graph as a trainable ``torch.nn.Module``.

Every registered op maps to a torch function with the numpy reference's semantics
(``mcir/ops/*.py``); every constant becomes a parameter (float) or a buffer (integer, bool)
whose name is the constant's name, i.e. its module path (``fc1.weight``); each encoding
becomes its training form (``mcir.train.forms``): masks for pruned and sparse weights, fake
quantisation with straight-through rounding and learnable scales for ``#quant``, α·sign(w)
for binary and ternary weights. A constant used by several ops (``share``) is one parameter,
so its uses stay tied; low-rank layers are already two linears with their own factors.

Values whose *type* is encoded are fake-encoded where they are produced, exactly like the
interpreter encodes each op's result: u8 activations (``quantize`` or a fused int8 layer)
pass through ``s·(clamp(round(x/s)+z) − z)`` with a straight-through round, binary
activations through β·sign(x) with β = mean|x| per sample and a clipped-identity STE.
Activation scales stay as calibrated (they are in the types).

Batches: the graph is traced at batch 1. When every graph input has a leading dimension of 1,
``module(x)`` takes ``x`` of shape ``[B, *input_shape[1:]]`` for any B and runs the batch-1
graph once per sample with ``torch.func.vmap`` (so every op, reshapes with a literal 1
included, keeps its traced meaning; per-sample quantities such as β stay per sample); outputs
come back as ``[B, *output_shape[1:]]``. A graph with another leading dimension runs as traced,
without a batch axis. ``module.run(*inputs)`` always runs the graph unbatched.

Numerics: at construction the module's outputs equal the interpreter's within float32
rounding (``dtype=torch.float64`` computes in double precision, as the references do).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mcir import dtypes
from mcir.encodings import Binary, Quant, Round
from mcir.errors import McirError
from mcir.ir import Graph, Op
from mcir.train.forms import Form, binary_value, fake_quant, int_range, make_form, torch_dtype
from mcir.types import TensorType

#: ops whose operand 1 is a weight: exact zeros in it are pruned weights (kept at zero)
WEIGHT_OPS = {"linear", "conv2d"}
#: (op, operand index) of constants that stay fixed: BatchNorm statistics are not learned
FROZEN_OPERANDS = {("batch_norm", 3), ("batch_norm", 4)}


def _axes(x: torch.Tensor, axes: tuple[int, ...]) -> tuple[int, ...]:
    """Reduction axes: empty means all (a rank-0 tensor has none)."""
    if x.dim() == 0:
        return ()
    return tuple(a % x.dim() for a in axes) if axes else tuple(range(x.dim()))


def _reduce(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(x: torch.Tensor, axes: tuple[int, ...] = (), keepdim: bool = False) -> torch.Tensor:
        dims = _axes(x, axes)
        return fn(x, dim=dims, keepdim=keepdim) if dims else x.clone()

    return run


def _mean(x: torch.Tensor, dim: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return torch.mean(x, dim=dim, keepdim=keepdim)


def _sum(x: torch.Tensor, dim: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return torch.sum(x, dim=dim, keepdim=keepdim)


def _amax(x: torch.Tensor, dim: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return torch.amax(x, dim=dim, keepdim=keepdim)


def _slice(x: torch.Tensor, axis: int, start: int = 0, end: int = 2**63 - 1, step: int = 1) -> torch.Tensor:
    size = x.shape[axis]
    idx = [slice(None)] * x.dim()
    idx[axis] = slice(*slice(start, end, step).indices(size))
    return x[tuple(idx)]


def _pad(x: torch.Tensor, pads: tuple[int, ...], value: float = 0.0) -> torch.Tensor:
    if x.dim() == 0:
        return x.clone()
    torch_pads: list[int] = []
    for i in reversed(range(x.dim())):  # torch lists the last axis first
        torch_pads += [pads[2 * i], pads[2 * i + 1]]
    return F.pad(x, torch_pads, value=value)


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not a.dtype.is_floating_point:
        return torch.floor_divide(a, b)
    return a / b


def _batch_norm(x, weight, bias, mean, var, eps=1e-5):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    inv = weight / torch.sqrt(var + eps)
    return (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)


def _layer_norm(x, weight=None, bias=None, dims=1, eps=1e-5):
    return F.layer_norm(x, tuple(x.shape[x.dim() - dims :]), weight, bias, eps)


def _sdpa(q, k, v, mask=None, is_causal=False, scale=None, u8_probs=False):
    # written out (not F.scaled_dot_product_attention) to give a fully masked row 0, as the reference does
    s = (1.0 / math.sqrt(q.shape[-1])) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * s
    if is_causal:
        rows, cols = scores.shape[-2:]
        keep = torch.ones(rows, cols, dtype=torch.bool).tril()
        scores = scores.masked_fill(~keep, -math.inf)
    if mask is not None:
        scores = torch.where(mask, scores, -math.inf) if mask.dtype == torch.bool else scores + mask
    dead = torch.all(scores == -math.inf, dim=-1, keepdim=True)
    p = torch.softmax(torch.where(dead, torch.zeros_like(scores), scores), dim=-1)
    p = torch.where(dead, torch.zeros_like(p), p)
    if u8_probs:  # the reference's u8 grid, with a straight-through gradient (as fake quantisation elsewhere)
        p = p + (torch.round(p * 255.0) / 255.0 - p).detach()
    return torch.matmul(p, v)


def _embedding(indices, weight):
    return F.embedding(indices.long(), weight)


def _gelu(x, approximate="none"):
    # in double precision, as the reference: float32 loses the tanh form's cancellation near x = -4
    return F.gelu(x.double(), approximate=approximate).to(x.dtype)


def _clamp(x, min=None, max=None):
    return x.clone() if min is None and max is None else torch.clamp(x, min, max)


#: op name -> torch function taking the logical operands and the op's attributes
def _gather(x, index, axis):
    # index may be smaller than x on the other axes: the reference takes the leading block of x there
    block = tuple(slice(0, n) if d != axis % x.dim() else slice(None) for d, n in enumerate(index.shape))
    return torch.gather(x[block], axis, index.long())


def _index_select(x, index, axis):
    ax = axis % x.dim()
    picked = torch.index_select(x, ax, index.reshape(-1).long())
    return picked.reshape(x.shape[:ax] + index.shape + x.shape[ax + 1 :])


def _rnn_state(h, int8_state):
    """The hidden state as it meets W_hh: itself, or on the u8 grid 1/127 with a straight-through round."""
    if not int8_state:
        return h
    q = torch.clamp(torch.round(h * 127.0), -128, 127) / 127.0
    return h + (q - h).detach()


def _lstm(gx, h0, c0, w_hh, b_hh, w_hr=None, reverse=False, cell=False, int8_state=False):
    h, c, hidden, ys = h0, c0, c0.shape[-1], []
    steps = range(gx.shape[0] - 1, -1, -1) if reverse else range(gx.shape[0])
    for t in steps:
        g = gx[t] + _rnn_state(h, int8_state) @ w_hh.T + b_hh
        i, f, gg, o = (g[..., k * hidden : (k + 1) * hidden] for k in range(4))
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        h = torch.sigmoid(o) * torch.tanh(c)
        if w_hr is not None:  # LSTMP: the hidden state is projected
            h = h @ w_hr.T
        ys.append(c if cell else h)
    return torch.stack(ys[::-1] if reverse else ys)  # vmap-friendly: no in-place writes


def _gru(gx, h0, w_hh, b_hh, reverse=False, int8_state=False):
    h, hidden, ys = h0, h0.shape[-1], []
    steps = range(gx.shape[0] - 1, -1, -1) if reverse else range(gx.shape[0])
    for t in steps:
        gh = _rnn_state(h, int8_state) @ w_hh.T + b_hh
        xr, xz, xn = (gx[t][..., k * hidden : (k + 1) * hidden] for k in range(3))
        hr, hz, hn = (gh[..., k * hidden : (k + 1) * hidden] for k in range(3))
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1.0 - z) * n + z * h
        ys.append(h)
    return torch.stack(ys[::-1] if reverse else ys)


TORCH_OPS: dict[str, Callable[..., torch.Tensor]] = {
    # elementwise
    "relu": torch.relu,
    "clamp": _clamp,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "gelu": _gelu,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "erf": torch.erf,
    "neg": torch.neg,
    "abs": torch.abs,
    "pow": lambda x, exponent: torch.pow(x, exponent),
    "dropout": lambda x, p=0.5: x,  # inference semantics, like the reference
    "cast": lambda x, dtype: x.to(torch_dtype(dtypes.by_name(dtype))),
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "div": _div,
    "eq": torch.eq,
    "ne": torch.ne,
    "lt": torch.lt,
    "le": torch.le,
    "gt": torch.gt,
    "ge": torch.ge,
    "where": torch.where,
    "logical_not": torch.logical_not,
    "logical_and": torch.logical_and,
    "logical_or": torch.logical_or,
    # neural-network ops
    "linear": F.linear,
    "matmul": torch.matmul,
    "conv2d": lambda x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1: F.conv2d(
        x, w, b, stride, padding, dilation, groups
    ),
    "batch_norm": _batch_norm,
    "layer_norm": _layer_norm,
    "softmax": lambda x, axis=-1: torch.softmax(x, dim=axis),
    "log_softmax": lambda x, axis=-1: torch.log_softmax(x, dim=axis),
    "max_pool2d": lambda x, kernel, stride, padding=(0, 0), dilation=(1, 1), ceil_mode=False: F.max_pool2d(
        x, kernel, stride, padding, dilation, ceil_mode
    ),
    "avg_pool2d": lambda x, kernel, stride, padding=(0, 0), ceil_mode=False, count_include_pad=True, divisor=None: (
        F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    ),
    "adaptive_avg_pool2d": lambda x, output_size: F.adaptive_avg_pool2d(x, tuple(output_size)),
    "embedding": _embedding,
    "scaled_dot_product_attention": _sdpa,
    "mean": _reduce(_mean),
    "sum": _reduce(_sum),
    "amax": _reduce(_amax),
    "argmax": lambda x, axis=-1, keepdim=False: torch.argmax(x, dim=axis, keepdim=keepdim),
    # data movement
    "reshape": lambda x, shape: x.reshape(tuple(shape)),
    "permute": lambda x, dims: x.permute(tuple(dims)),
    "slice": _slice,
    "select": lambda x, axis, index: torch.select(x, axis, index),
    "expand": lambda x, shape: x.expand(tuple(shape)),
    "concat": lambda *xs, axis=0: torch.cat(xs, dim=axis),
    "gather": _gather,
    "index_select": _index_select,
    "cumsum": lambda x, axis: torch.cumsum(x, dim=axis) if x.dim() else x.clone(),
    "lstm": _lstm,
    "gru": _gru,
    "pad": _pad,
    # encodings change types only: identities on logical values (the result type's form applies)
    "quantize": lambda x: x,
    "dequantize": lambda x: x,
}


class GraphModule(nn.Module):
    """A graph as a torch module: ``module(x)`` runs a batch, ``module.run(x)`` the graph as traced.

    ``module.forms`` maps each constant's name to its training form; parameters and buffers are
    registered under the constant's module path (``module.get_parameter("fc1.weight")``).
    """

    def __init__(
        self,
        graph: Graph,
        *,
        dtype: torch.dtype = torch.float32,
        learn_scales: bool = True,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.graph = graph
        self.compute_dtype = dtype
        self.forms: dict[str, Form] = {}
        self.names: dict[str, str] = {}  # "<const>/<suffix>" -> registered tensor path
        for op in graph.ops:
            if op.name == "const":
                self._add_const(op, trainable=trainable, learn_scales=learn_scales)
            elif op.name not in TORCH_OPS:
                raise McirError(
                    f"{op.where()}: op '{op.name}' has no torch mapping in mcir.train.to_torch; "
                    "add it to TORCH_OPS to train this graph"
                )
        for v in graph.inputs:
            enc = v.type.encoding
            if enc is not None and not (isinstance(enc, Quant) and enc.axis is None):
                raise McirError(f"graph input %{v.name}: {v.type} cannot be fed to the torch module (decode it first)")
        self.batched = bool(graph.inputs) and all(v.type.rank >= 1 and v.type.shape[0] == 1 for v in graph.inputs)

    # -- parameters ---------------------------------------------------------------------------
    def _add_const(self, op: Op, *, trainable: bool, learn_scales: bool) -> None:
        if op.data is None:
            raise McirError(f"constant %{op.result.name} has no data: load the graph with its weights (mcir.load)")
        uses = op.result.uses
        is_weight = bool(uses) and all(u.name in WEIGHT_OPS and i == 1 for u, i in uses)
        frozen = bool(uses) and all((u.name, i) in FROZEN_OPERANDS for u, i in uses)
        form = make_form(
            op.result.type,
            op.data,
            self.compute_dtype,
            is_weight=is_weight,
            trainable=trainable and not frozen,
            learn_scales=learn_scales,
            where=op.where(),
        )
        params, buffers = {}, {}
        for suffix, tensor in form.params.items():
            params[suffix] = self._register(op.result.name, suffix, nn.Parameter(tensor, requires_grad=trainable))
        for suffix, tensor in form.buffers.items():
            buffers[suffix] = self._register(op.result.name, suffix, tensor)
        form.bind(params, buffers)
        self.forms[op.result.name] = form

    def _register(self, const: str, suffix: str, tensor: torch.Tensor) -> torch.Tensor:
        """Register under the constant's module path (``fc1.weight``, ``fc1.weight_scale``)."""
        path = const + (f"_{suffix}" if suffix else "")
        parts = path.split(".")
        if not all(parts):  # "a..b" or a leading/trailing dot: keep the name flat
            parts = [path.replace(".", "_")]
        owner: nn.Module = self
        for part in parts[:-1]:
            child = owner._modules.get(part)
            if child is None:
                if _taken(owner, part):
                    raise McirError(f"constant %{const}: '{part}' of its path '{path}' is already taken; rename it")
                child = nn.Module()
                owner.add_module(part, child)
            owner = child
        leaf = parts[-1]
        if _taken(owner, leaf) or leaf in owner._modules:
            raise McirError(f"constant %{const}: its path '{path}' clashes with another parameter; rename it")
        if isinstance(tensor, nn.Parameter):
            owner.register_parameter(leaf, tensor)
        else:
            owner.register_buffer(leaf, tensor)
        self.names[f"{const}/{suffix}"] = ".".join(parts)
        return tensor

    # -- running ------------------------------------------------------------------------------
    def run(self, *inputs: Any) -> list[torch.Tensor]:
        """The graph's outputs (logical values) for inputs of exactly the traced shapes."""
        g = self.graph
        if len(inputs) != len(g.inputs):
            raise McirError(f"graph @{g.name} takes {len(g.inputs)} input(s), got {len(inputs)}")
        env: dict[int, torch.Tensor] = {}
        for v, x in zip(g.inputs, inputs):
            env[id(v)] = self._input(v.type, x)
        for op in g.ops:
            if op.name == "const":
                env[id(op.result)] = self.forms[op.result.name].value()
                continue
            args = [env[id(v)] for v in op.operands]
            if op.result.type.logical.dtype == dtypes.f32 and op.name != "cast":
                # 16-bit weights of an f32 layer (half, bf16) widen exactly, as the kernels widen them
                args = [a.to(self.compute_dtype) if _is_16_bit(a) else a for a in args]
            try:
                out = TORCH_OPS[op.name](*args, **op.attrs)
            except McirError:
                raise
            except Exception as e:
                types = ", ".join(str(v.type) for v in op.operands)
                raise McirError(f"while running {op.where()} ({types}) in torch: {type(e).__name__}: {e}") from e
            env[id(op.result)] = self._result(op, out)
        return [env[id(v)] for v in g.outputs]

    def forward(self, *inputs: Any) -> Any:
        """Outputs for a batch: ``[B, *input_shape[1:]]`` per input when the graph is traced at batch 1."""
        if not self.batched:
            outs = self.run(*inputs)
        else:
            xs = [self._as_tensor(v.type, x) for v, x in zip(self.graph.inputs, inputs)]
            if len(xs) != len(self.graph.inputs):
                raise McirError(f"graph @{self.graph.name} takes {len(self.graph.inputs)} input(s), got {len(xs)}")
            for v, x in zip(self.graph.inputs, xs):
                if tuple(x.shape[1:]) != v.type.shape[1:]:
                    want = ["B", *v.type.shape[1:]]
                    raise McirError(f"input %{v.name}: a batch must have shape {want}, got {list(x.shape)}")

            def one(*sample: torch.Tensor) -> tuple[torch.Tensor, ...]:
                return tuple(self.run(*(s.unsqueeze(0) for s in sample)))

            outs = list(torch.func.vmap(one, randomness="error")(*xs))
            outs = [
                o.squeeze(1) if v.type.rank >= 1 and v.type.shape[0] == 1 else o
                for o, v in zip(outs, self.graph.outputs)
            ]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _as_tensor(self, t: TensorType, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            arr = np.asarray(x)
            if arr.dtype == dtypes.bf16.np:  # torch cannot read ml_dtypes' bfloat16 arrays directly
                x = torch.from_numpy(arr.astype(np.float32)).to(torch.bfloat16)
            else:
                x = torch.from_numpy(np.array(arr))
        if t.encoding is None and t.dtype.is_float and t.dtype == dtypes.f32:
            return x.to(self.compute_dtype)
        return x

    def _input(self, t: TensorType, x: Any) -> torch.Tensor:
        x = self._as_tensor(t, x)
        if t.encoding is not None:  # a quantised input holds stored integers: its logical values
            return (x.to(self.compute_dtype) - t.encoding.zero_point) * t.encoding.scale
        if t.dtype.is_float and t.dtype != dtypes.f32:
            return x.to(torch_dtype(t.dtype))
        return x

    def _result(self, op: Op, out: torch.Tensor) -> torch.Tensor:
        """Apply the result type: a cast for plain types, the training form of an encoded activation."""
        t = op.result.type
        enc = t.encoding
        if enc is None:
            want = self.compute_dtype if t.dtype == dtypes.f32 else torch_dtype(t.dtype)
            return out if out.dtype == want else out.to(want)
        out = out.to(self.compute_dtype)
        if isinstance(enc, Quant) and enc.axis is None:
            lo, hi = int_range(t.dtype)
            scale = torch.tensor(enc.scale, dtype=torch.float32).to(self.compute_dtype)
            return fake_quant(out, scale, float(enc.zero_point), lo, hi)
        if isinstance(enc, Binary):
            return binary_value(out)
        if isinstance(enc, Round):
            # rounded to bf16 forward (torch rounds to nearest even too), identity backward (straight through)
            return out + (out.to(torch.bfloat16).to(out.dtype) - out).detach()
        raise McirError(
            f"{op.where()}: a value of type {t} has no training form (only u8/i8 #quant, #binary and bf16 #round)"
        )

    def describe(self) -> str:
        """One line per constant: its name, type and training form."""
        lines = []
        for name, form in self.forms.items():
            lines.append(f"{name}: {form.type} -> {form.describe()}")
        return "\n".join(lines)


def _taken(module: nn.Module, name: str) -> bool:
    return name in module._parameters or name in module._buffers or hasattr(nn.Module, name)


def to_torch(
    graph: Graph, *, dtype: torch.dtype = torch.float32, learn_scales: bool = True, trainable: bool = True
) -> GraphModule:
    """The graph as a trainable ``torch.nn.Module`` (see the module docstring)."""
    from mcir.verifier import verify

    verify(graph)
    return GraphModule(graph, dtype=dtype, learn_scales=learn_scales, trainable=trainable)


def _is_16_bit(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16)
