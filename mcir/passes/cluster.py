"""cluster: k-means weight sharing (Deep Compression), ``w ≈ c[i]`` with 2^B shared centroids.

The weights of each layer (``scope=layer``) or of each output channel (``scope=channel``)
are clustered in one dimension into 2^B centroids by Lloyd's algorithm; every weight is
replaced by the index of its nearest centroid. Before::

    %fc1.weight = const : f32[256,64]
    %fc1 = linear(%x, %fc1.weight, %fc1.bias) : f32[1,256]

After ``cluster(bits=4)``::

    %fc1.weight = const : f32[256,64] #codebook<bits=4, scope="layer">   # 4-bit indices + 16 f32
    %fc1 = linear(%x, %fc1.weight, %fc1.bias) : f32[1,256]

Initialisation (``init``): ``linear`` spaces the centroids evenly between min and max (the
choice Deep Compression found best: large weights keep a centroid), ``density`` puts them at
the quantiles of the weights, ``kmeans++`` draws them D²-weighted from a seeded sample.
Weights that are exactly zero (a pruned layer) keep a centroid pinned at 0, so they stay 0.

A pruned layer (``#csr``, or f32 with exact zeros; ``scope=layer``, float activations) also
gets Deep Compression's storage as a candidate: only its non-zeros are clustered and stored as
``#sparse_codebook`` (B-bit codes at relative G-bit gaps, ``mcir/encodings/sparse_codebook.py``).
The candidate the library stores in the fewest bytes wins (``smallest``)::

    %fc2.weight = const : f32[128,256] #csr<nnz=3277>                        # 27,136 bytes embedded
    %fc2.weight = const : f32[128,256] #sparse_codebook<bits=5, gap_bits=5, nnz=3277, entries=3562>  # 4,584

``activations=dynamic`` (bits <= 4, scope=layer) rounds the centroids to an int8 grid
``s·q`` and quantises the layer's input per sample at run time (``u8 #dynamic``, as
``quantize(activations=dynamic)``): the kernel looks the 16 int8 centroids up with one
``vpermb`` per 64 weights and multiplies with ``vpdpbusd`` (``kernels/dynamic_i8.py``).

One-dimensional k-means on sorted values is cheap: the clusters are contiguous runs, so an
iteration is a ``searchsorted`` of the k-1 midpoints and differences of a cumulative sum,
O(k log n) after one sort (a 4096 x 4096 layer clusters in about a second). Rows are
clustered together (``scope=channel``) by giving each sorted row its own range of keys.

A layer keeps its f32 weights (with a warning) when no native kernel runs the codebook
weight (convolutions) or the codebook would embed more bytes than the dense weight
(``mcir.stats.try_kernel``). Preserves: approximate (max |Δ| and SQNR are reported).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from mcir import dtypes
from mcir.analysis.layers import check_skip, select_layers
from mcir.encodings import Codebook, Csr, Dynamic, to_sparse_codebook
from mcir.encodings.codebook import pack_indices
from mcir.errors import McirError
from mcir.ir import Graph
from mcir.pass_base import Pass, PassContext, option
from mcir.passes.compressed_weight import dynamic_input, store_weight
from mcir.patterns import constant_array
from mcir.rewriter import Rewriter
from mcir.stats import try_kernel
from mcir.types import TensorType

INITS = ("linear", "density", "kmeans++")
#: values drawn per row for kmeans++ (its D² sampling is O(k · sample) per row)
PLUS_SAMPLE = 4096


@dataclass(frozen=True)
class Cluster(Pass):
    """k-means weight sharing: 2^bits f32 centroids per layer or per output channel, B-bit indices."""

    name: ClassVar[str] = "cluster"
    preserves: ClassVar[str] = "approximate: max |delta| and SQNR vs the float model are reported"
    bits: int = option(4, "index bits: 2^bits centroids (1..8)")
    init: Literal["linear", "density", "kmeans++"] = option("linear", "centroid initialisation")
    scope: Literal["layer", "channel"] = option("layer", "one codebook per layer or per output channel")
    iters: int = option(30, "maximum Lloyd iterations")
    seed: int = option(0, "seed of kmeans++ sampling")
    skip: str = option("none", "layers kept in float: none, first, last, ends or a regex")
    activations: Literal["float", "dynamic"] = option(
        "float", "dynamic: centroids on an int8 grid, u8 inputs quantised per sample, vpermb + VNNI kernel"
    )

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise McirError(f"cluster: bits={self.bits!r} must be an integer in 1..8")
        if self.init not in INITS:
            raise McirError(f"cluster: init={self.init!r} is not one of {', '.join(INITS)}")
        if self.scope not in ("layer", "channel"):
            raise McirError(f"cluster: scope={self.scope!r} must be layer or channel")
        if self.iters < 1:
            raise McirError(f"cluster: iters={self.iters} must be at least 1")
        check_skip(self.skip)
        if self.activations not in ("float", "dynamic"):
            raise McirError(f"cluster: activations={self.activations!r} must be float or dynamic")
        if self.activations == "dynamic" and (self.bits > 4 or self.scope != "layer"):
            raise McirError("cluster: activations=dynamic needs one table of <= 16 centroids: bits<=4, scope=layer")

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        rw = Rewriter(graph)
        inputs: dict[int, Any] = {}  # float input -> its dynamic u8 version
        done: dict[int, tuple[TensorType, Any]] = {}  # a weight shared by several layers is clustered once
        sparse: dict[int, tuple[TensorType, Any] | None] = {}  # the #sparse_codebook candidate of a pruned weight
        for op in select_layers(graph, self.skip, accept=(Csr,)):
            w = op.operands[1]
            if id(w) not in done:
                dense = constant_array(w)
                done[id(w)] = cluster_weight(
                    dense, self.bits, self.scope, self.init, self.iters, self.seed, self.activations == "dynamic"
                )
                pruned = self.activations == "float" and self.scope == "layer" and bool((dense == 0).any())
                sparse[id(w)] = (
                    cluster_sparse_weight(dense, self.bits, self.init, self.iters, self.seed) if pruned else None
                )
            if self.activations == "float":
                store_weight(rw, op, *smallest(op, [done[id(w)], sparse[id(w)]]), ctx, "cluster")
                continue
            x = op.operands[0]
            if op.name != "linear" or x.type.encoding is not None or not x.type.dtype.is_float:
                ctx.warn(
                    f"cluster: %{op.result.name} stays {w.type}: activations=dynamic applies to float linear inputs"
                )
                continue
            xt = TensorType(x.type.shape, dtypes.u8, Dynamic(axis=0))
            if store_weight(rw, op, *done[id(w)], ctx, "cluster", inputs={0: (xt, None)}):
                rw.set_operand(op, 0, dynamic_input(rw, graph, x, inputs))


def cluster_weight(
    w: np.ndarray,
    bits: int,
    scope: str = "layer",
    init: str = "linear",
    iters: int = 30,
    seed: int = 0,
    int8: bool = False,
) -> tuple[TensorType, dict[str, np.ndarray]]:
    """The ``#codebook`` type and components of weight ``w`` clustered into 2^bits centroids
    (per layer or per row); ``int8``: centroids rounded to an int8 grid (``int8_grid``)."""
    a = np.asarray(w, np.float32)
    n = a.shape[0]
    rows = a.reshape(1, -1) if scope == "layer" else a.reshape(n, -1)
    centroids, idx = kmeans(rows, 2**bits, init, iters, seed)
    if int8:
        centroids = int8_grid(centroids)
    t = TensorType(a.shape, dtypes.f32, Codebook(bits=bits, scope=scope))
    return t, {"indices": pack_indices(idx.reshape(n, -1), bits), "centroids": centroids}


def cluster_sparse_weight(
    w: np.ndarray, bits: int, init: str = "linear", iters: int = 30, seed: int = 0
) -> tuple[TensorType, dict[str, np.ndarray]] | None:
    """Deep Compression's storage of a pruned weight: its non-zeros clustered into 2^bits centroids
    (no centroid is spent on the zeros), stored as ``#sparse_codebook`` with relative gaps of the
    width that needs the fewest bytes. None when the weight has no non-zero."""
    a = np.asarray(w, np.float32)
    flat = a.reshape(-1)
    pos = np.flatnonzero(flat)
    if not pos.size:
        return None
    k = min(2**bits, pos.size)  # Lloyd needs at least as many values as centroids
    centroids, idx = kmeans(flat[pos].reshape(1, -1), k, init, iters, seed)
    table = np.zeros(2**bits, np.float32)
    table[:k] = centroids[0]
    return to_sparse_codebook(a.shape, pos, idx.reshape(-1), table)


def smallest(op: Any, candidates: list[tuple[TensorType, Any] | None]) -> tuple[TensorType, Any]:
    """The candidate storage of ``op``'s weight that a native kernel runs with the fewest embedded
    bytes (``mcir.stats.try_kernel``); the first one when no kernel runs any (``store_weight`` warns)."""
    options = [c for c in candidates if c is not None]
    fits = []
    for t, stored in options:
        trial = try_kernel(op, {1: (t, stored)})
        if trial.ok:
            fits.append((trial.operand_bytes.get(1, 0), len(fits), (t, stored)))
    return min(fits)[2] if fits else options[0]


def int8_grid(centroids: np.ndarray) -> np.ndarray:
    """Centroids rounded to ``s·q`` with q integer, |q| <= 127, s = max|c| / 127 per table (f32)."""
    amax = np.abs(centroids).max(axis=1, keepdims=True).astype(np.float32)
    s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    return (s * np.rint(centroids / s)).astype(np.float32)


# -- one-dimensional k-means ---------------------------------------------------------------------------


def kmeans(
    rows: np.ndarray, k: int, init: str = "linear", iters: int = 30, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster each row of ``rows`` [R, n] into ``k`` centroids.

    Returns (centroids f32[R, k] ascending, indices u8/u16[R, n] of each value's nearest
    centroid). A row with exact zeros keeps one centroid pinned at 0.0.
    """
    r, n = rows.shape
    s = np.sort(rows.astype(np.float64), axis=1)
    keep_zero = (rows == 0).any(axis=1)
    c = _init(s, k, init, seed)
    c = _pin_zero(c, keep_zero)
    keys, lo, span = _row_keys(s)
    csum = np.concatenate([np.zeros((r, 1)), np.cumsum(s, axis=1)], axis=1)
    for _ in range(iters):
        bounds = _boundaries(c, keys, lo, span, n)  # [R, k+1] positions in the sorted rows
        counts = np.diff(bounds, axis=1)
        sums = np.take_along_axis(csum, bounds[:, 1:], 1) - np.take_along_axis(csum, bounds[:, :-1], 1)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)  # an empty cluster keeps its centroid
        new = _pin_zero(np.sort(new, axis=1), keep_zero)
        if np.array_equal(new, c):
            break
        c = new
    cf = c.astype(np.float32)
    mid = ((cf[:, 1:].astype(np.float64) + cf[:, :-1]) / 2).astype(np.float32)
    idx = np.empty((r, n), np.uint8 if k <= 256 else np.uint16)
    for i in range(r):  # nearest centroid of every value (one row at a time: no float64 copy of the layer)
        idx[i] = np.searchsorted(mid[i], rows[i].astype(np.float32, copy=False), side="right")
    return cf, idx


def _row_keys(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Sorted rows mapped to disjoint increasing key ranges: row i occupies [i·span, (i+1)·span)."""
    r = s.shape[0]
    lo = s[:, :1]
    if r == 1:
        return (s - lo).ravel(), lo, 1.0
    span = float((s[:, -1:] - lo).max()) * 2 + 1.0
    return ((s - lo) + np.arange(r)[:, None] * span).ravel(), lo, span


def _boundaries(c: np.ndarray, keys: np.ndarray, lo: np.ndarray, span: float, n: int) -> np.ndarray:
    r, k = c.shape
    mid = (c[:, 1:] + c[:, :-1]) / 2
    rix = np.arange(r)[:, None]
    b = np.searchsorted(keys, ((mid - lo) + rix * span).ravel(), side="right").reshape(r, k - 1) - rix * n
    return np.concatenate([np.zeros((r, 1), np.int64), np.clip(b, 0, n), np.full((r, 1), n, np.int64)], axis=1)


def _pin_zero(c: np.ndarray, keep_zero: np.ndarray) -> np.ndarray:
    if not keep_zero.any():
        return c
    c = c.copy()
    nearest = np.abs(c).argmin(axis=1)
    rows = np.nonzero(keep_zero)[0]
    c[rows, nearest[rows]] = 0.0
    return np.sort(c, axis=1)


def _init(s: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    """Initial centroids [R, k] ascending from the sorted rows ``s``."""
    r, n = s.shape
    if init == "linear":
        return np.linspace(s[:, 0], s[:, -1], k, axis=1)
    if init == "density":
        pos = np.minimum(((np.arange(k) + 0.5) / k * n).astype(np.int64), n - 1)
        return s[:, pos]
    rng = np.random.default_rng(seed)
    m = min(n, PLUS_SAMPLE)
    sample = np.take_along_axis(s, np.sort(rng.integers(0, n, (r, m)), axis=1), 1) if m < n else s
    rix = np.arange(r)
    c = np.empty((r, k))
    c[:, 0] = sample[rix, rng.integers(0, m, r)]
    d2 = (sample - c[:, :1]) ** 2
    for j in range(1, k):  # D² sampling: a value far from every chosen centroid is likely next
        total = d2.sum(axis=1)
        u = rng.random(r) * total
        pick = np.minimum((np.cumsum(d2, axis=1) < u[:, None]).sum(axis=1), m - 1)
        pick = np.where(total > 0, pick, rng.integers(0, m, r))
        c[:, j] = sample[rix, pick]
        d2 = np.minimum(d2, (sample - c[:, j : j + 1]) ** 2)
    return np.sort(c, axis=1)
