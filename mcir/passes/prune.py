"""prune: magnitude pruning whose savings show up in the graph (bytes and MACs, measured).

Unstructured (``granularity=weight``) and N:M (``pattern=2:4``) pruning zero the smallest
weights, then store the layer in a sparse encoding when the cost rule
(``mcir.analysis.sparse_cost.prefer_sparse``) says it pays; otherwise the zeros stay dense and
the report says that they save nothing. Before / after ``prune(sparsity=0.8)``::

    %fc1.weight = const : f32[256,64]
    %fc1 = linear(%x, %fc1.weight, %fc1.bias) : f32[1,256]

    %fc1.weight = const : f32[256,64] #csr<nnz=3277>          # 64 KiB -> 26 KiB
    %fc1 = linear(%x, %fc1.weight, %fc1.bias) : f32[1,256]

with ``w' = w if |w| > τ else 0``, τ the magnitude below which the requested fraction of
the layer's weights lies (``scope=layer``) or of all pruned layers' weights (``scope=global``),
or given directly (``threshold=τ``). With ``pattern=N:M`` the N largest |w| of every M
consecutive weights of a row are kept.

``granularity=layer`` removes whole residual blocks / transformer layers
(``mcir.passes.prune_layers``); ``steps=N`` prunes gradually (``mcir.train.gradual``).

Structured pruning (``granularity=channel|filter|neuron|head``) removes whole channels,
physically: weights, biases, BatchNorm parameters and the shapes of every value in between
shrink, so the graph stays valid and runs with fewer parameters and MACs.
``prune(granularity=filter)`` on a conv -> BN -> ReLU -> conv chain::

    %c1 = conv2d(%x, %w1) : f32[1,32,8,8]            %c1 = conv2d(%x, %w1) : f32[1,16,8,8]
    %bn = batch_norm(%c1, %g, %b, %m, %v) : ...  ->  %bn = batch_norm(%c1, %g, %b, %m, %v) : f32[1,16,8,8]
    %c2 = conv2d(%r, %w2) : f32[1,64,8,8]            %c2 = conv2d(%r, %w2) : f32[1,64,8,8]   (%w2: [64,16,3,3])

A channel's importance is the l1 (or l2) norm of its producer weights, summed over its
dependency group (``mcir.analysis.dependency``: channels tied by residual adds, concat,
depthwise convs, flatten, attention heads of q/k/v and the output projection); the
``sparsity`` fraction of least important channels of each group is removed (at least one
channel is always kept). Groups that touch something which cannot lose channels (a graph
output, layer_norm over the channels, ...) are left alone and the report says why.

Preserves: approximate. The pass writes a per-layer table (``graph.meta["prune"]``) of
sparsity, parameters, bytes and MACs before/after; ``run_passes(..., sample_inputs=...)``
adds the max |Δ| against the unpruned model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from mcir import dtypes
from mcir.analysis.dependency import Dependencies, Group, dependency_groups, find_seeds
from mcir.analysis.layers import LAYERS, check_skip, is_skipped, weighted_layers
from mcir.analysis.sparse_cost import MAX_DENSITY, prefer_sparse
from mcir.encodings import to_csr, to_nm
from mcir.errors import McirError
from mcir.ir import Graph, Op, Value
from mcir.ops import registry
from mcir.ops.traits import SHAPE_ATTR
from mcir.pass_base import Pass, PassContext, option
from mcir.patterns import constant_array
from mcir.pipeline import NM
from mcir.report import format_table, human_bytes, human_count
from mcir.rewriter import Rewriter
from mcir.stats import stored_fraction, try_kernel
from mcir.types import TensorType

#: layers whose weights unstructured pruning zeroes (operand 1 is the weight)


@dataclass(frozen=True)
class Prune(Pass):
    """Magnitude pruning: sparse #csr/#nm weights when they pay, or physically smaller channels/heads."""

    name: ClassVar[str] = "prune"
    preserves: ClassVar[str] = "approximate: max |delta| vs the unpruned model is reported (with sample inputs)"
    sparsity: float = option(0.5, "fraction of weights (or of channels/heads per group) removed, in [0, 1)")
    threshold: float | None = option(
        None, "τ: prune |w| <= τ (or channels whose importance <= τ); replaces sparsity when given"
    )
    scope: Literal["layer", "global"] = option(
        "layer", "rank weights/channels within each layer (group), or across all of them"
    )
    granularity: Literal["weight", "channel", "filter", "neuron", "head", "layer"] = option(
        "weight",
        "weight: single weights; filter: conv output channels; neuron: linear outputs; channel: both; "
        "head: attention heads; layer: whole residual blocks / transformer layers",
    )
    pattern: NM | None = option(None, "N:M: keep the N largest of every M consecutive weights of a row (e.g. 2:4)")
    importance: Literal["l1", "l2"] = option("l1", "channel importance: l1 or l2 norm of its producer weights")
    skip: str = option("last", "layers left alone: last (the final classifier), none, first, ends or a regex")
    storage: Literal["auto", "sparse", "dense"] = option(
        "auto", "weight: #csr/#nm when prefer_sparse says it pays (auto), always (sparse), or keep zeros (dense)"
    )
    round_to: int = option(1, "structured: keep a multiple of this many channels per group (vector widths)")
    max_layer_sparsity: float = option(0.95, "scope=global: no layer or group loses more than this fraction")
    steps: int = option(
        1, "prune gradually in N steps (Zhu & Gupta's cubic schedule), fine-tuning between steps on data="
    )
    step_epochs: int = option(2, "steps > 1 with data=: epochs of fine-tuning after each step but the last")

    def __post_init__(self) -> None:
        if not (0.0 <= self.sparsity < 1.0):
            raise McirError(
                f"sparsity={self.sparsity} must be in [0, 1): it is the fraction removed (1 would remove everything)"
            )
        if self.threshold is not None:
            if not (self.threshold >= 0.0 and math.isfinite(self.threshold)):
                raise McirError(f"threshold={self.threshold} must be a finite number >= 0")
            if self.sparsity != 0.5:
                raise McirError("give either sparsity or threshold, not both (threshold replaces sparsity)")
        if self.pattern is not None:
            n, m = self.pattern.n, self.pattern.m
            if not (0 < n < m <= 256):
                raise McirError(f"pattern={n}:{m}: need 0 < N < M <= 256 (N weights kept out of every M)")
            if self.granularity != "weight":
                raise McirError(f"pattern={n}:{m} applies to granularity=weight, not granularity={self.granularity}")
            if self.threshold is not None or self.sparsity != 0.5:
                raise McirError(f"pattern={n}:{m} fixes the sparsity at {(m - n) / m:g}; drop sparsity/threshold")
        check_skip(self.skip)
        if self.round_to < 1:
            raise McirError(f"round_to={self.round_to} must be at least 1")
        if not (0.0 < self.max_layer_sparsity <= 1.0):
            raise McirError(f"max_layer_sparsity={self.max_layer_sparsity} must be in (0, 1]")
        if self.steps < 1 or self.step_epochs < 1:
            raise McirError(f"steps={self.steps} and step_epochs={self.step_epochs} must be at least 1")
        if self.steps > 1 and (self.threshold is not None or self.pattern is not None):
            raise McirError("steps=N prunes towards a sparsity; it does not combine with threshold or pattern")
        if self.granularity != "weight" and self.storage != "auto":
            raise McirError(f"storage={self.storage} applies to granularity=weight (structured pruning shrinks shapes)")

    # -- layer selection --------------------------------------------------------------------
    def skipped(self, op: Op, layers: list[Op]) -> bool:
        """Whether ``op`` is left alone by ``skip``."""
        return is_skipped(op, self.skip, layers)

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        if self.steps > 1:
            from dataclasses import replace

            from mcir.train.gradual import prune_gradually

            def step(sparsity: float, last: bool) -> None:
                # zeros stay dense until the last step: the next step ranks them with the other weights
                storage = self.storage if last or self.granularity != "weight" else "dense"
                replace(self, sparsity=sparsity, steps=1, storage=storage).apply(graph, ctx)

            prune_gradually(graph, ctx, step, self.sparsity, self.steps, self.step_epochs, self.granularity != "weight")
            return
        before, total_before = _stats(graph), _totals(graph)
        groups: list[str] = []
        if self.granularity == "weight":
            notes = _Unstructured(self, graph, ctx.data.get("target", "native")).run()
        elif self.granularity == "layer":
            from mcir.passes.prune_layers import prune_layers
            from mcir.passes.quantize import check_batches
            from mcir.sample_inputs import random_batches

            samples = check_batches(graph, ctx.get("calibration") or random_batches(graph, 4))[:16]
            notes = prune_layers(graph, self.sparsity, self.skip, samples)
        else:
            plan = plan_structured(graph, self)
            shrink(graph, plan.deps, plan.removed)
            notes = plan.notes
            what = "heads" if self.granularity == "head" else "channels"
            groups = [
                f"{plan.deps.groups[gi].name}: {removed} of {total} {what} removed"
                for gi, (removed, total) in plan.per_group.items()
            ]
        report = PruneReport(str(self), _rows(before, _stats(graph)), notes, total_before, _totals(graph), groups)
        graph.meta["prune"] = [*graph.meta.get("prune", []), report]
        for note in notes:
            ctx.warn(f"prune: {note}")


def _layer_name(op: Op) -> str:
    return op.loc.module or op.result.name


# -- unstructured and N:M ------------------------------------------------------------------------


class _Unstructured:
    """Zero weights by magnitude, then store them sparse where it pays."""

    def __init__(self, opts: Prune, graph: Graph, target: str = "native") -> None:
        self.opts = opts
        self.graph = graph
        self.rw = Rewriter(graph)
        self.target = target

    def run(self) -> list[str]:
        layers = weighted_layers(self.graph)
        chosen = [op for op in layers if not self.opts.skipped(op, layers)]
        if not layers:
            raise McirError("granularity=weight: the graph has no linear or conv2d layer with constant float weights")
        notes = []
        if not chosen:
            return [f"no layer to prune (skip={self.opts.skip} leaves all {len(layers)} alone)"]
        # one decision per weight constant, even when several layers share it
        weights: dict[int, tuple[Value, list[Op]]] = {}
        for op in chosen:
            weights.setdefault(id(op.operands[1]), (op.operands[1], []))[1].append(op)
        arrays = {k: constant_array(w).astype(np.float64) for k, (w, _) in weights.items()}
        if self.opts.pattern is not None:
            masks = {k: self._nm_mask(arrays[k], ops[0]) for k, (_, ops) in weights.items()}
            unfit = [k for k, mask in masks.items() if mask is None]
            if unfit:
                pat = self.opts.pattern
                notes.append(
                    f"left alone by pattern={pat.n}:{pat.m} (rows not a multiple of {pat.m}): "
                    + ", ".join(
                        f"{_layer_name(weights[k][1][0])} (rows of {arrays[k].size // arrays[k].shape[0]})"
                        for k in unfit
                    )
                )
                for k in unfit:
                    del weights[k], masks[k]
        elif self.opts.threshold is not None:
            # compare in the weight's own precision: threshold=0.1 must prune a stored f32 0.1
            masks = {
                k: np.abs(a) > float(np.asarray(self.opts.threshold, weights[k][0].type.dtype.np))
                for k, a in arrays.items()
            }
        elif self.opts.scope == "global":
            masks = _global_masks(arrays, self.opts.sparsity, self.opts.max_layer_sparsity)
        else:
            masks = {k: _layer_mask(a, self.opts.sparsity) for k, a in arrays.items()}
        dense_kept, shared = [], []
        for k, (w, ops) in weights.items():
            pruned = np.where(masks[k], arrays[k], 0.0).astype(w.type.dtype.np)
            t, data, why = self._storage(pruned, w, ops)
            if why and self.opts.storage == "auto" and len(w.users) != len(ops):
                # a layer left alone keeps the original: a pruned dense copy would only add bytes
                shared.append(_layer_name(ops[0]))
                continue
            if why:
                dense_kept.append(f"{_layer_name(ops[0])} ({why})")
            self._set_weight(w, ops, t, data)
        if shared:
            notes.append(
                "left alone (the weight is shared with a skipped layer, and a pruned dense copy would add "
                "bytes): " + ", ".join(shared)
            )
        if dense_kept:
            notes.append(
                "kept dense with zeros (fewer non-zeros, but no fewer bytes or MACs with a dense kernel): "
                + "; ".join(dense_kept)
            )
        return notes

    def _nm_mask(self, a: np.ndarray, op: Op) -> np.ndarray | None:
        """Keep the n largest of every m weights of a row; None when rows do not split into groups of m."""
        n, m = self.opts.pattern.n, self.opts.pattern.m
        rows, k = a.shape[0], a.size // a.shape[0]
        if k % m:
            return None
        groups = np.abs(a).reshape(rows, k // m, m)
        order = np.argsort(-groups, axis=2, kind="stable")[:, :, :n]
        mask = np.zeros(groups.shape, bool)
        np.put_along_axis(mask, order, True, axis=2)
        return mask.reshape(a.shape) & (a != 0)

    def _storage(self, pruned: np.ndarray, w: Value, ops: list[Op]) -> tuple[TensorType, object, str]:
        """(type, stored data, reason it stays dense or '').

        With ``storage=auto`` a sparse encoding is chosen only when the cost rule says it pays,
        every layer using the weight has a native kernel for it, and the bytes those kernels
        embed (their compile-time layouts, ``mcir.stats.try_kernel``) are fewer than dense.
        """
        rows, cols = pruned.shape[0], pruned.size // pruned.shape[0]
        nnz = int(np.count_nonzero(pruned))
        dense = (TensorType(pruned.shape, w.type.dtype), pruned)
        if w.type.dtype != dtypes.f32:
            return (*dense, f"{w.type.dtype} weights have no sparse encoding")
        pat = self.opts.pattern
        kind = "csr" if pat is None else "nm"
        n, m = (pat.n, pat.m) if pat is not None else (2, 4)
        if self.opts.storage == "dense":
            return (*dense, "")
        if self.opts.storage == "auto" and not prefer_sparse(kind, rows, cols, nnz, dtypes.f32, n, m):
            density = nnz / max(1, rows * cols) if kind == "csr" else n / m
            limit = MAX_DENSITY[(kind, "f32")]
            return (*dense, f"density {density:.2f}; #{kind} f32 pays at <= {limit:.2f} and fewer bytes")
        t, data = to_csr(pruned) if kind == "csr" else to_nm(pruned, n, m)
        if self.opts.storage == "auto":
            target = self.target
            # layers sharing the weight share a layout when their forms agree: count each layout once
            sparse_layouts: dict[str, int] = {}
            dense_layouts: dict[str, int] = {}
            for op in ops:
                trial = try_kernel(op, {1: (t, data)}, target)
                if not trial.ok:
                    return (*dense, f"no native kernel for {op.name} with a {t.dtype} #{kind} weight of this form")
                before = try_kernel(op, {1: dense}, target)
                sparse_layouts[trial.layouts.get(1, "")] = trial.operand_bytes.get(1, 0)
                dense_layouts[before.layouts.get(1, "")] = before.operand_bytes.get(1, 0)
            sparse_bytes, dense_bytes = sum(sparse_layouts.values()), sum(dense_layouts.values())
            if sparse_bytes >= dense_bytes:
                return (*dense, f"#{kind} would embed {sparse_bytes} B, dense {dense_bytes} B")
        return t, data, ""

    def _set_weight(self, w: Value, ops: list[Op], t: TensorType, data) -> None:
        if len(w.users) == len(ops):
            self.rw.set_data(w.producer, data, t)
            return
        # shared with a layer left alone: the pruned layers get their own copy
        copy = self.rw.const(f"{w.name}.pruned", data, t)
        for op in ops:
            self.rw.set_operand(op, 1, copy)


def _layer_mask(a: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep all but the round(sparsity * size) smallest magnitudes (ties: the earlier goes first)."""
    k = round(sparsity * a.size)
    mask = np.ones(a.size, bool)
    mask[np.argsort(np.abs(a).reshape(-1), kind="stable")[:k]] = False
    return mask.reshape(a.shape) & (a != 0)


def _global_masks(arrays: dict[int, np.ndarray], sparsity: float, cap: float) -> dict[int, np.ndarray]:
    """One magnitude ranking over every layer; no layer loses more than ``cap`` of its weights."""
    keys = list(arrays)
    mags = [np.abs(arrays[k]).reshape(-1) for k in keys]
    total = sum(m.size for m in mags)
    k_total = round(sparsity * total)
    # a weight is eligible if it is among the cap * size smallest of its own layer
    eligible_vals, eligible_ids = [], []
    for li, m in enumerate(mags):
        order = np.argsort(m, kind="stable")[: math.floor(cap * m.size)]
        eligible_vals.append(m[order])
        eligible_ids.append(np.stack([np.full(order.size, li), order], axis=1))
    vals = np.concatenate(eligible_vals) if eligible_vals else np.zeros(0)
    ids = np.concatenate(eligible_ids) if eligible_ids else np.zeros((0, 2), np.int64)
    chosen = ids[np.argsort(vals, kind="stable")[:k_total]]
    out = {}
    for li, k in enumerate(keys):
        mask = np.ones(mags[li].size, bool)
        mask[chosen[chosen[:, 0] == li, 1]] = False
        out[k] = mask.reshape(arrays[k].shape) & (arrays[k] != 0)
    return out


# -- structured -------------------------------------------------------------------------------------


@dataclass
class StructuredPlan:
    """Which channels of which dependency groups a structured prune removes, and why others stay."""

    deps: Dependencies
    removed: set[int]  # channel indices into deps.channels
    notes: list[str] = field(default_factory=list)
    per_group: dict[int, tuple[int, int]] = field(default_factory=dict)  # group index -> (removed, total)


def channel_importance(group: Group, norm: str) -> np.ndarray:
    """Importance of each channel of ``group``: l1/l2 norm of its producer weights, summed over the group."""
    atom_score: dict[int, float] = {}
    for s in group.seeds:
        w = constant_array(s.weight).astype(np.float64)
        moved = np.moveaxis(w, s.axis, 0).reshape(w.shape[s.axis], -1)
        for a in s.atoms:
            block = moved[s.labels == a]
            score = np.abs(block).sum() if norm == "l1" else math.sqrt(float((block * block).sum()))
            atom_score[a] = atom_score.get(a, 0.0) + float(score)
    return np.array([sum(atom_score.get(a, 0.0) for a in ch) for ch in group.channels])


def plan_structured(graph: Graph, opts: Prune) -> StructuredPlan:
    """Analyse dependencies and choose the channels to remove (the graph is not changed)."""
    layers = weighted_layers(graph)
    seeds = find_seeds(graph, opts.granularity)
    deps = dependency_groups(graph, seeds)
    plan = StructuredPlan(deps, set())
    what = "heads" if opts.granularity == "head" else "channels"
    for g in deps.groups:
        for s in g.seeds:
            if opts.skipped(s.op, layers):
                g.blocked.append(f"layer '{s.name}' is skipped (skip={opts.skip})")
        if len(g.channels) < 2 and not g.blocked:
            g.blocked.append(f"it has a single {what[:-1]}")
    live = [g for g in deps.groups if not g.blocked]
    channel_index = {ch: i for i, ch in enumerate(deps.channels)}
    scores = {g.index: channel_importance(g, opts.importance) for g in live}
    removals = _choose(live, scores, opts)
    for g in live:
        chosen = removals.get(g.index, [])
        plan.removed |= {channel_index[g.channels[i]] for i in chosen}
        plan.per_group[g.index] = (len(chosen), len(g.channels))
    for g in deps.groups:
        if g.blocked:
            plan.notes.append(f"left alone {g.name} ({len(g.channels)} {what}): {g.blocked[0]}")
    if not live:
        plan.notes.append(f"granularity={opts.granularity}: no group of {what} can be pruned")
    return plan


def _choose(groups: list[Group], scores: dict[int, np.ndarray], opts: Prune) -> dict[int, list[int]]:
    """Per group, the indices of the channels to remove (least important first)."""

    def keep_count(n: int, remove: int) -> int:
        kept = max(1, n - remove)
        return min(n, -(-kept // opts.round_to) * opts.round_to)

    out: dict[int, list[int]] = {}
    if opts.threshold is not None or opts.scope == "layer":
        for g in groups:
            s = scores[g.index]
            order = np.argsort(s, kind="stable")
            if opts.threshold is not None:
                remove = int((s <= opts.threshold).sum())
            else:
                remove = round(opts.sparsity * len(s))
            out[g.index] = sorted(order[: len(s) - keep_count(len(s), remove)].tolist())
        return out
    # global: rank channels by importance relative to their group's mean (norms differ in scale per layer)
    entries = []
    for g in groups:
        s = scores[g.index]
        rel = s / s.mean() if s.mean() > 0 else np.zeros_like(s)
        cap = min(len(s) - 1, math.floor(opts.max_layer_sparsity * len(s)))
        for i in np.argsort(rel, kind="stable")[:cap]:
            entries.append((float(rel[i]), g.index, int(i)))
    entries.sort()
    total = sum(len(scores[g.index]) for g in groups)
    counts: dict[int, list[int]] = {}
    for _, gi, i in entries[: round(opts.sparsity * total)]:
        counts.setdefault(gi, []).append(i)
    for g in groups:
        s = scores[g.index]
        picked = len(counts.get(g.index, []))
        order = np.argsort(s / s.mean() if s.mean() > 0 else np.zeros_like(s), kind="stable")
        out[g.index] = sorted(order[: len(s) - keep_count(len(s), picked)].tolist())
    return out


def shrink(graph: Graph, deps: Dependencies, removed: set[int]) -> None:
    """Remove the channels ``removed`` from every coupled value: constants lose rows/columns,
    computed values and reshape/expand attributes get their new shapes, depthwise convs their
    new group count."""
    if not removed:
        return
    rw = Rewriter(graph)
    masks = deps.keep_masks(removed)
    depthwise = [
        op
        for op in graph.compute_ops()
        if op.name == "conv2d" and op.attrs["groups"] > 1 and op.attrs["groups"] == op.operands[0].type.shape[1]
    ]
    for value, axes in masks.values():
        shape = [int(axes[a].sum()) if a in axes else d for a, d in enumerate(value.type.shape)]
        if value.is_constant:
            data = constant_array(value)
            for a, keep in axes.items():
                data = np.compress(keep, data, axis=a)
            rw.set_data(value.producer, np.ascontiguousarray(data), TensorType(tuple(shape), value.type.dtype))
        else:
            rw.set_type(value, value.type.with_shape(tuple(shape)))
    for op in graph.compute_ops():
        if registry.has_trait(op.name, SHAPE_ATTR) and tuple(op.attrs["shape"]) != op.result.type.shape:
            rw.set_attrs(op, shape=list(op.result.type.shape))
    for op in depthwise:
        if op.attrs["groups"] != op.operands[0].type.shape[1]:
            rw.set_attrs(op, groups=op.operands[0].type.shape[1])


# -- the report -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerStats:
    """One layer's size and cost: parameters, storage bytes, MACs (counting only stored non-zeros
    for sparse encodings) and non-zero weights."""

    name: str
    kind: str
    params: int
    bytes: int
    macs: int
    weights: int  # elements of the layer's matrices/kernels (rank >= 2 constants)
    nonzero: int
    storage: str


@dataclass(frozen=True)
class PruneRow:
    """Before/after of one layer."""

    before: LayerStats
    after: LayerStats

    @property
    def sparsity(self) -> float | None:
        """Fraction of the original weights now gone or zero."""
        if not self.before.weights:
            return None
        return 1.0 - self.after.nonzero / self.before.weights


@dataclass
class PruneReport:
    """What one prune pass did, per layer, plus notes on what it left alone and why."""

    pipeline: str
    rows: list[PruneRow]
    notes: list[str]
    total_before: tuple[int, int, int]  # params, bytes, MACs
    total_after: tuple[int, int, int]
    groups: list[str] = field(default_factory=list)  # structured: "<group>: k of n channels removed"

    def table(self) -> str:
        """An aligned per-layer table: sparsity, storage, params, bytes and MACs before -> after."""

        def arrow(a: int, b: int, fmt) -> str:
            return fmt(a) if a == b else f"{fmt(a)} -> {fmt(b)}"

        head = ["layer", "op", "sparsity", "storage", "params", "bytes", "MACs"]
        body = []
        for r in self.rows:
            b, a = r.before, r.after
            sp = "-" if r.sparsity is None else f"{100 * r.sparsity:.1f}%"
            body.append(
                [
                    b.name,
                    b.kind,
                    sp,
                    a.storage,
                    arrow(b.params, a.params, human_count),
                    arrow(b.bytes, a.bytes, human_bytes),
                    arrow(b.macs, a.macs, human_count),
                ]
            )
        (p0, b0, m0), (p1, b1, m1) = self.total_before, self.total_after
        body.append(
            [
                "(graph)",
                "",
                "",
                "",
                arrow(p0, p1, human_count),
                arrow(b0, b1, human_bytes),
                arrow(m0, m1, human_count),
            ]
        )
        text = f"{self.pipeline}\n" + format_table(head, body, align="llrlrrr")
        if self.groups:
            text += "\n" + "\n".join(f"group {g}" for g in self.groups)
        if self.notes:
            text += "\n" + "\n".join(f"note: {n}" for n in self.notes)
        return text


def _storage_name(t: TensorType) -> str:
    return f"{t.dtype} {t.encoding}" if t.encoding is not None else f"{t.dtype} dense"


def _stored(t: TensorType) -> int:
    """Elements a tensor stores (sparse weights: only their values), as GraphStats counts parameters."""
    return round(t.numel * stored_fraction(t))


def _effective_macs(op: Op) -> int:
    from mcir.ops import registry

    macs = registry.get(op.name).count_macs([v.type for v in op.operands], op.result.type, op.attrs)
    if op.name in LAYERS and macs:  # a sparse kernel multiplies only the stored non-zeros
        macs = round(macs * stored_fraction(op.operands[1].type))
    return macs


def _stats(graph: Graph) -> dict[int, tuple[Op, LayerStats]]:
    out = {}
    for op in graph.compute_ops():
        consts = [v for v in dict.fromkeys(op.operands) if v.is_constant]
        macs = _effective_macs(op)
        if not consts and not macs:
            continue
        mats = [v for v in consts if v.type.rank >= 2]
        nonzero = 0
        for v in mats:
            nonzero += int(np.count_nonzero(constant_array(v))) if v.producer.data is not None else v.type.numel
        storage = _storage_name(op.operands[1].type) if op.name in LAYERS else "-"
        out[id(op)] = (
            op,
            LayerStats(
                _layer_name(op),
                op.name,
                sum(_stored(v.type) for v in consts),
                sum(v.type.nbytes for v in consts),
                macs,
                sum(v.type.numel for v in mats),
                nonzero,
                storage,
            ),
        )
    return out


def _rows(before: dict[int, tuple[Op, LayerStats]], after: dict[int, tuple[Op, LayerStats]]) -> list[PruneRow]:
    rows = []
    for key, (_op, b) in before.items():
        if key not in after:
            continue
        a = after[key][1]
        if (a.params, a.bytes, a.macs, a.nonzero) != (b.params, b.bytes, b.macs, b.nonzero):
            rows.append(PruneRow(b, a))
    return rows


def _totals(graph: Graph) -> tuple[int, int, int]:
    """(parameters, weight bytes, effective MACs) of the whole graph."""
    consts = [op.result.type for op in graph.constants()]
    macs = sum(_effective_macs(op) for op in graph.compute_ops())
    return sum(_stored(t) for t in consts), sum(t.nbytes for t in consts), macs
