"""Training forms of stored constants: what a compressed weight looks like to the optimiser.

Each constant of a graph becomes one ``Form``: latent float parameters (initialised so that
the form's value equals the constant's decoded value) and a differentiable ``value()``:

==================  ======================================================================
stored type          training form (``value()``)
==================  ======================================================================
``f32``              ``w ⊙ m``: the parameter; a linear/conv weight with exact zeros keeps
                     them (mask ``m``: pruned weights stay pruned)
``#quant<axis=0>``   ``s ⊙ clamp(round(w / s), lo, hi) ⊙ m``: fake quantisation, round with a
                     straight-through estimator, learnable per-channel scales ``s`` (LSQ,
                     gradient of ``s`` scaled by ``1/sqrt(n · hi)``); i32 biases keep their scale
``#quant<scale=s>``  the same with one learnable scale (and the zero point of the type)
``#csr``/``#nm``     ``w ⊙ m`` with ``m`` the stored pattern (fake-quantised per row when i8)
``#binary``          ``α ⊙ sign(w)``, α = mean|w| per slice; sign has a clipped-identity STE
``#ternary``         ``α ⊙ sign(w) ⊙ m``, ``m`` the stored non-zero pattern, α = mean|w| over it
``#codebook``        ``c[i]``: the centroids ``c`` are the parameters, the indices ``i`` fixed
``#sparse_codebook`` ``c[i]`` at the stored non-zero positions (indices and pattern fixed)
==================  ======================================================================

The codebook forms are Deep Compression's centroid fine-tuning: a weight is a lookup
``w = c[i]``, so autograd gives each centroid the *sum* of the gradients of the weights that
share it, ``∂L/∂c_k = Σ_{i(w) = k} ∂L/∂w`` (the paper's rule), and the write-back changes only
the table.

``stored()`` is the inverse: the trained form written back as components of the same type
(``mcir.train.writeback``). Forms are plain objects; their tensors live in the ``GraphModule``.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import numpy as np
import torch

from mcir import dtypes
from mcir.encodings import NM, Binary, Codebook, Csr, Quant, SparseCodebook, Ternary
from mcir.encodings.bits import pack_bits, unpack_bits
from mcir.errors import McirError
from mcir.types import TensorType

#: a weight of one of these ops whose zero fraction reaches this is treated as pruned even when
#: integer-quantised (int8 rounding alone makes only a few percent of weights zero)
PRUNED_INT_ZEROS = 0.25


# -- straight-through estimators --------------------------------------------------------------


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (torch.round rounds half to even, like numpy's rint)."""
    return x + (torch.round(x) - x).detach()


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0 else -1 forward (the packed encodings' convention); backward the clipped
    identity: gradient 1 where |x| <= 1, 0 outside (BinaryConnect's hard-tanh estimator)."""
    hard = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    soft = torch.clamp(x, -1.0, 1.0)
    return soft + (hard - soft).detach()


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x forward, gradient multiplied by ``factor`` backward (LSQ's step-size gradient scale)."""
    return x * factor + (x - x * factor).detach()


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: float, lo: int, hi: int) -> torch.Tensor:
    """scale · (clamp(round(x / scale) + zp, lo, hi) − zp) with a straight-through round.

    Out-of-range inputs get no gradient (the clamp), in range the gradient is the identity;
    ``scale`` receives LSQ's gradient through the division and the multiplication.
    """
    q = torch.clamp(round_ste(x / scale) + zero_point, lo, hi)
    return (q - zero_point) * scale


def int_range(dtype: dtypes.DType) -> tuple[int, int]:
    info = np.iinfo(dtype.np)
    return int(info.min), int(info.max)


def weight_range(dtype: dtypes.DType) -> tuple[int, int]:
    """The range symmetric weights use: [-127, 127] for i8 (as the quantize pass), else the dtype's."""
    lo, hi = int_range(dtype)
    return (-hi, hi) if lo == -hi - 1 and dtype.bits <= 16 else (lo, hi)


def _slice_shape(t: TensorType, axis: int) -> list[int]:
    shape = [1] * t.rank
    shape[axis % t.rank] = t.shape[axis]
    return shape


# -- forms ------------------------------------------------------------------------------------


class Form(abc.ABC):
    """A constant's training form. ``tensors`` are registered on the module (parameters when
    ``trainable``); ``value()`` is the logical tensor the ops see; ``stored()`` writes back."""

    kind = "plain"

    def __init__(self, t: TensorType, stored: Any, dtype: torch.dtype) -> None:
        self.type = t
        self.dtype = dtype
        self.params: dict[str, torch.Tensor] = {}  # suffix ("" for the main tensor) -> tensor
        self.buffers: dict[str, torch.Tensor] = {}

    def bind(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> None:
        """Point the form at the module's registered tensors (same keys as created)."""
        self.params, self.buffers = params, buffers

    @abc.abstractmethod
    def value(self) -> torch.Tensor:
        """The logical tensor the ops see (a function of the registered tensors)."""

    @abc.abstractmethod
    def stored(self, context: dict[str, Any]) -> tuple[TensorType, Any]:
        """The type and stored components after training (write-back)."""

    def describe(self) -> str:
        return self.kind


class PlainForm(Form):
    """An unencoded constant: a parameter (float) or a buffer (integer, bool); optional zero mask."""

    def __init__(self, t: TensorType, stored: Any, dtype: torch.dtype, *, trainable: bool, mask: bool) -> None:
        super().__init__(t, stored, dtype)
        arr = np.asarray(stored)
        self.trainable = trainable and t.dtype.is_float
        if t.dtype.is_float:
            data = torch.tensor(arr.astype(np.float64), dtype=dtype if t.dtype == dtypes.f32 else _torch_dtype(t.dtype))
        else:
            data = torch.from_numpy(np.array(arr))
        (self.params if self.trainable else self.buffers)[""] = data
        self.masked = mask and t.dtype.is_float and bool((arr == 0).any())
        if self.masked:
            self.buffers["mask"] = torch.from_numpy(arr != 0).to(data.dtype)
        self.kind = "masked" if self.masked else "plain"

    def main(self) -> torch.Tensor:
        return self.params[""] if self.trainable else self.buffers[""]

    def value(self) -> torch.Tensor:
        w = self.main()
        return w * self.buffers["mask"] if self.masked else w

    def stored(self, context: dict[str, Any]) -> tuple[TensorType, Any]:
        v = self.value().detach().cpu()
        if v.dtype == torch.bfloat16:  # numpy has no bfloat16: through f32, which holds every bf16 exactly
            v = v.float()
        return self.type, v.numpy().astype(self.type.dtype.np)


class QuantForm(Form):
    """``#quant`` constants (per axis or per tensor): fake quantisation with learnable scales."""

    kind = "fake-quant"

    def __init__(
        self, t: TensorType, stored: Any, dtype: torch.dtype, *, learn_scale: bool, mask: bool, prune_mask: bool
    ) -> None:
        super().__init__(t, stored, dtype)
        enc: Quant = t.encoding
        self.enc = enc
        self.per_axis = enc.axis is not None
        decoded = t.decode(stored)
        self.params[""] = torch.tensor(decoded, dtype=dtype)
        scale = np.asarray(enc.scales(t, stored), np.float64)
        # i32 biases live in the accumulator's scale s_x·s_w: the write-back re-derives it from the layer
        self.learn_scale = learn_scale and t.dtype.bits <= 16
        (self.params if self.learn_scale else self.buffers)["scale"] = torch.tensor(scale, dtype=dtype)
        self.lo, self.hi = weight_range(t.dtype) if self.per_axis else int_range(t.dtype)
        per_scale = t.numel // max(1, int(np.size(scale)))
        self.grad_factor = 1.0 / math.sqrt(max(1, per_scale) * max(1, self.hi))
        data = stored["data"] if isinstance(stored, dict) else stored
        zeros = np.asarray(data) == enc.zero_point
        self.masked = bool(mask and prune_mask and zeros.size and zeros.mean() >= PRUNED_INT_ZEROS)
        if self.masked:
            self.buffers["mask"] = torch.from_numpy(~zeros).to(dtype)
            self.kind = "fake-quant, masked"

    def scale(self) -> torch.Tensor:
        s = self.params["scale"] if self.learn_scale else self.buffers["scale"]
        s = torch.clamp(s.abs(), min=1e-12)
        return grad_scale(s, self.grad_factor) if self.learn_scale else s

    def value(self) -> torch.Tensor:
        v = fake_quant(self.params[""], self.scale(), float(self.enc.zero_point), self.lo, self.hi)
        return v * self.buffers["mask"] if self.masked else v

    def integers(self, scale: torch.Tensor) -> np.ndarray:
        q = torch.clamp(torch.round(self.params[""].detach() / scale) + self.enc.zero_point, self.lo, self.hi)
        if self.masked:
            q = torch.where(self.buffers["mask"] > 0, q, torch.full_like(q, self.enc.zero_point))
        return q.cpu().numpy().astype(self.type.dtype.np)

    def stored(self, context: dict[str, Any]) -> tuple[TensorType, Any]:
        s = self.scale().detach()
        if "scale" in context:  # the write-back derived it (an i32 bias in the layer's accumulator scale)
            s = torch.tensor(np.asarray(context["scale"], np.float64), dtype=self.dtype).reshape(s.shape)
        s32 = s.cpu().numpy().astype(np.float32)
        s = torch.tensor(s32.astype(np.float64), dtype=self.dtype)  # the stored scale is f32: quantise with it
        q = self.integers(s)
        if self.per_axis:
            return self.type, {"data": q, "scale": s32.reshape(-1)}
        t = TensorType(
            self.type.shape, self.type.dtype, Quant(scale=float(s32.reshape(())), zero_point=self.enc.zero_point)
        )
        return t, q


class SparseForm(Form):
    """``#csr`` / ``#nm`` constants: a dense latent weight times the stored pattern (per-row
    symmetric fake quantisation with learnable scales when the values are i8)."""

    def __init__(self, t: TensorType, stored: Any, dtype: torch.dtype, *, learn_scale: bool) -> None:
        super().__init__(t, stored, dtype)
        self.kind = f"{t.encoding.name} mask" + (", fake-quant" if t.dtype == dtypes.i8 else "")
        rows = t.shape[0]
        k = t.numel // max(rows, 1)
        pattern = np.zeros((rows, k), bool)
        if isinstance(t.encoding, Csr):
            rowptr = np.asarray(stored["rowptr"])
            pattern[np.repeat(np.arange(rows), np.diff(rowptr)), np.asarray(stored["indices"])] = True
        else:
            enc: NM = t.encoding
            index = np.asarray(stored["index"]).astype(np.int64).reshape(rows, k // enc.m, enc.n)
            groups = np.zeros((rows, k // enc.m, enc.m), bool)
            np.put_along_axis(groups, index, True, axis=2)
            pattern = groups.reshape(rows, k)
        self.pattern = pattern  # the positions written back, in the encoding's order
        self.params[""] = torch.tensor(t.decode(stored), dtype=dtype)
        self.buffers["mask"] = torch.from_numpy(pattern.reshape(t.shape)).to(dtype)
        self.quantized = t.dtype == dtypes.i8
        if self.quantized:
            self.learn_scale = learn_scale
            scale = torch.tensor(np.asarray(stored["scale"], np.float64), dtype=dtype).reshape(_slice_shape(t, 0))
            (self.params if learn_scale else self.buffers)["scale"] = scale
            self.grad_factor = 1.0 / math.sqrt(max(1, k) * 127)

    def scale(self) -> torch.Tensor:
        s = self.params["scale"] if self.learn_scale else self.buffers["scale"]
        s = torch.clamp(s.abs(), min=1e-12)
        return grad_scale(s, self.grad_factor) if self.learn_scale else s

    def value(self) -> torch.Tensor:
        w = self.params[""]
        if self.quantized:
            w = fake_quant(w, self.scale(), 0.0, -127, 127)
        return w * self.buffers["mask"]

    def stored(self, context: dict[str, Any]) -> tuple[TensorType, Any]:
        t = self.type
        rows = t.shape[0]
        w = self.params[""].detach()
        parts: dict[str, np.ndarray] = {}
        if self.quantized:
            s32 = self.scale().detach().cpu().numpy().astype(np.float32)
            s = torch.tensor(s32.astype(np.float64), dtype=self.dtype)
            w = torch.clamp(torch.round(w / s), -127, 127)
            parts["scale"] = s32.reshape(-1)
        dense = w.cpu().numpy().reshape(rows, -1)
        if isinstance(t.encoding, Csr):
            r, c = np.nonzero(self.pattern)  # row-major: the CSR order, same indices and rowptr as before
            parts["values"] = dense[r, c].astype(t.dtype.np)
            parts["indices"] = c.astype(np.int32)
            parts["rowptr"] = np.concatenate([[0], np.cumsum(self.pattern.sum(axis=1))]).astype(np.int32)
        else:
            enc: NM = t.encoding
            k = dense.shape[1]
            index = np.nonzero(self.pattern.reshape(rows, k // enc.m, enc.m))
            positions = index[2].reshape(rows, k // enc.m, enc.n)
            groups = dense.reshape(rows, k // enc.m, enc.m)
            parts["values"] = np.take_along_axis(groups, positions, axis=2).reshape(rows, -1).astype(t.dtype.np)
            parts["index"] = positions.reshape(rows, -1).astype(np.uint8)
        return t, {key: parts[key] for key in t.encoding.components(t)}


class BinaryForm(Form):
    """``#binary`` weights: α·sign(w), α = mean|w| of each slice along axis 0 (XNOR-Net)."""

    kind = "α·sign(w), STE"

    def __init__(self, t: TensorType, stored: Any, dtype: torch.dtype) -> None:
        super().__init__(t, stored, dtype)
        self.params[""] = torch.tensor(t.decode(stored), dtype=dtype)

    def value(self) -> torch.Tensor:
        return binary_value(self.params[""])

    def stored(self, context: dict[str, Any]) -> tuple[TensorType, Any]:
        return self.type, Binary().encode(self.type, self.params[""].detach().cpu().numpy())


def binary_value(w: torch.Tensor) -> torch.Tensor:
    """α·sign(w) per slice along axis 0, α = mean|w| (also the binary *activation* form, β per sample)."""
    flat = w.reshape(w.shape[0], -1)
    alpha = flat.abs().mean(dim=1, keepdim=True)
    return (alpha * sign_ste(flat)).reshape(w.shape)


class TernaryForm(Form):
    """``#ternary`` weights: α·sign(w) on the stored non-zero pattern, α = mean|w| over it.

    The pattern stays fixed (like a pruning mask) so that the ternarize pass's threshold need
    not be known; the signs and α train.
    """

    kind = "α·sign(w)·mask, STE"

    def __init__(self, t: TensorType, stored: Any, dtype: torch.dtype) -> None:
        super().__init__(t, stored, dtype)
        _, k = Ternary.slices(t)
        self.params[""] = torch.tensor(t.decode(stored), dtype=dtype)
        self.buffers["mask"] = torch.from_numpy(unpack_bits(stored["nonzero"], k).reshape(t.shape)).to(dtype)

    def value(self) -> torch.Tensor:
        w, m = self.params[""], self.buffers["mask"]
        flat, mflat = w.reshape(w.shape[0], -1), m.reshape(m.shape[0], -1)
        alpha = (flat.abs() * mflat).sum(dim=1, keepdim=True) / mflat.sum(dim=1, keepdim=True).clamp(min=1)
        return (alpha * sign_ste(flat) * mflat).reshape(w.shape)

    def stored(self, context: dict[str, Any]) -> tuple[TensorType, Any]:
        n, k = Ternary.slices(self.type)
        w = self.params[""].detach().cpu().numpy().astype(np.float64).reshape(n, k)
        keep = self.buffers["mask"].cpu().numpy().reshape(n, k) > 0
        counts = keep.sum(axis=1)
        alpha = np.where(counts > 0, (np.abs(w) * keep).sum(axis=1) / np.maximum(counts, 1), 0.0)
        return self.type, {
            "nonzero": pack_bits(keep),
            "sign": pack_bits(keep & (w < 0)),
            "alpha": alpha.astype(np.float32),
        }


class CodebookForm(Form):
    """``#codebook`` weights: ``c[i]`` with trainable centroids ``c`` [T, 2^B] and fixed indices."""

    kind = "c[i], trained centroids"

    def __init__(self, t: TensorType, stored: Any, dtype: torch.dtype) -> None:
        super().__init__(t, stored, dtype)
        enc: Codebook = t.encoding
        self.layer = enc.scope == "layer"
        self.indices = stored["indices"]  # written back unchanged
        table = np.asarray(stored["centroids"], np.float32)
        # cluster(activations=dynamic) puts the table on an int8 grid s·q, which its kernel requires: keep it there
        self.grid = on_int8_grid(table)
        self.kind += ", on an int8 grid" if self.grid else ""
        self.params["centroids"] = torch.tensor(table.astype(np.float64), dtype=dtype)
        self.buffers["index"] = torch.from_numpy(enc.indices(t, stored).astype(np.int64))  # [N, K]

    def table(self) -> torch.Tensor:
        c = self.params["centroids"]
        if not self.grid:
            return c
        s = torch.clamp(c.detach().abs().amax(dim=1, keepdim=True), min=1e-12) / 127
        return fake_quant(c, s, 0.0, -127, 127)

    def value(self) -> torch.Tensor:
        c, idx = self.table(), self.buffers["index"]
        w = c[0][idx] if self.layer else torch.gather(c, 1, idx)  # backward: scatter-add into the table
        return w.reshape(self.type.shape)

    def stored(self, context: dict[str, Any]) -> tuple[TensorType, Any]:
        c = self.params["centroids"].detach().cpu().numpy().astype(np.float32)
        if self.grid:
            from mcir.passes.cluster import int8_grid  # the pass's own rounding (passes import train lazily too)

            c = int8_grid(c)
        return self.type, {"indices": self.indices, "centroids": c}


def on_int8_grid(table: np.ndarray) -> bool:
    """Whether every row of centroids is ``s·q`` with q integer in [-127, 127], s = max|c| / 127."""
    amax = np.abs(table).max(axis=1, keepdims=True).astype(np.float32)
    s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    return bool(table.shape[1] <= 16 and np.array_equal((s * np.rint(table / s)).astype(np.float32), table))


class SparseCodebookForm(Form):
    """``#sparse_codebook`` weights: ``c[code]`` at the stored positions, zeros elsewhere; the
    table ``c`` trains, the codes, gaps and so the sparsity pattern stay as stored."""

    kind = "c[code] on the pattern, trained centroids"

    def __init__(self, t: TensorType, stored: Any, dtype: torch.dtype) -> None:
        super().__init__(t, stored, dtype)
        enc: SparseCodebook = t.encoding
        self.streams = {"codes": stored["codes"], "gaps": stored["gaps"]}
        positions, codes = enc.positions(stored)
        self.params["centroids"] = torch.tensor(np.asarray(stored["centroids"], np.float64), dtype=dtype)
        self.buffers["positions"] = torch.from_numpy(positions)
        self.buffers["codes"] = torch.from_numpy(codes)

    def value(self) -> torch.Tensor:
        c = self.params["centroids"]
        flat = torch.zeros(self.type.numel, dtype=c.dtype, device=c.device)
        flat = flat.index_put((self.buffers["positions"],), c[self.buffers["codes"]])
        return flat.reshape(self.type.shape)

    def stored(self, context: dict[str, Any]) -> tuple[TensorType, Any]:
        c = self.params["centroids"].detach().cpu().numpy().astype(np.float32)
        return self.type, {**self.streams, "centroids": c}


def make_form(
    t: TensorType, stored: Any, dtype: torch.dtype, *, is_weight: bool, trainable: bool, learn_scales: bool, where: str
) -> Form:
    """The training form of a constant of type ``t``; McirError for an encoding without one."""
    enc = t.encoding
    if enc is None:
        return PlainForm(t, stored, dtype, trainable=trainable, mask=is_weight)
    if isinstance(enc, Quant):
        return QuantForm(t, stored, dtype, learn_scale=learn_scales, mask=True, prune_mask=is_weight)
    if isinstance(enc, Csr | NM):
        return SparseForm(t, stored, dtype, learn_scale=learn_scales)
    if isinstance(enc, Binary):
        return BinaryForm(t, stored, dtype)
    if isinstance(enc, Ternary):
        return TernaryForm(t, stored, dtype)
    if isinstance(enc, Codebook):
        return CodebookForm(t, stored, dtype)
    if isinstance(enc, SparseCodebook):
        return SparseCodebookForm(t, stored, dtype)
    raise McirError(
        f"{where}: the encoding #{enc.name} has no training form in mcir.train; "
        "train before the pass that introduces it, or add a Form for it in mcir/train/forms.py"
    )


def _torch_dtype(dt: dtypes.DType) -> torch.dtype:
    return {
        "f32": torch.float32,
        "f16": torch.float16,
        "bf16": torch.bfloat16,
        "i64": torch.int64,
        "i32": torch.int32,
        "i16": torch.int16,
        "i8": torch.int8,
        "u8": torch.uint8,
        "bool": torch.bool,
    }[dt.name]


torch_dtype = _torch_dtype
