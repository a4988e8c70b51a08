"""Dependency groups for structured pruning: which channels must be removed together.

A pure analysis (it never edits the graph). Removing output channel ``c`` of a conv
forces removing the matching BatchNorm parameters, input channel ``c`` of every
consumer, channel ``c`` of whatever is added to it in a residual, the matching columns
after a flatten, and so on. This module finds those couplings.

**Atoms and labels.** Every *seed* (a prunable producer) gives its weight's output axis
fresh *atoms*, one per channel: rows of a linear/conv weight, columns of an embedding
table, or, for attention heads, the block of ``head_dim`` rows of each head in q, k and v
of the (packed) input projection. A *labelling* of an axis of a value maps each position
along it to an atom (``-1``: not prunable). Walking the ops in program order, each op's
rule passes labellings from operands to its result (and to the constants it reads) and
*ties* positions that must go together::

    %c = conv2d(%x, %w)          %w axis 0 = atoms 0..15 (seed)  ->  %c axis 1 = atoms 0..15
    %bn = batch_norm(%c, %g, ...) %g, %beta, %mean, %var axis 0 get the same labels
    %s = add(%bn, %r)             %r axis 1 holds atoms 16..31: tie atom i with atom 16+i
    %f = reshape(%s) {[2, 512]}   axis 1: position p -> atom p // 32 (a block per channel)
    %y = linear(%f, %fc.w)        %fc.w axis 1 gets those labels: its columns go with them

A ``reshape`` keeps a channel axis when the channel of every element depends on exactly
one output axis (computed on the index grid: flatten, head split/merge, packed q/k/v all
qualify); otherwise the channels are "split" and their group is left alone.

**Groups.** Tied atoms form one *channel* (the union-find classes, connected components in
networkx); the channels of seeds that share any channel form one *group* (all its members
are pruned together with one ranking). A group that touches something that cannot lose
channels (a graph output, a normalisation or softmax over the channel axis, a reshape that
splits channels, a grouped convolution, an op without a rule) is *blocked*, with reasons.

Removing a set of channels then means: along every labelled axis of every value, drop the
positions whose atom belongs to a removed channel (``Dependencies.keep_masks``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import networkx as nx
import numpy as np

from mcir.errors import McirError
from mcir.ir import Graph, Op, Value
from mcir.ops import registry
from mcir.ops.traits import CONVERSION, ELEMENTWISE, MOVEMENT, UNARY, VIEW, WEIGHTED, WeightLayout

Port = tuple[Value, int]  # (value, axis)


def _passes_through(name: str) -> bool:
    """Ops that carry data without looking at it (one operand moved, viewed or re-encoded): walked back
    from attention's q/k/v to their projection."""
    traits = registry.get(name).traits
    return {MOVEMENT, UNARY} <= traits or VIEW in traits or CONVERSION in traits


@dataclass(frozen=True)
class Seed:
    """A prunable producer: its weight constant and the axis whose positions carry its atoms."""

    op: Op
    weight: Value
    axis: int
    atoms: tuple[int, ...]  # the atom ids this seed created
    labels: np.ndarray = field(compare=False)  # atom of each position along ``axis``

    @property
    def name(self) -> str:
        """The layer's name for reports: module path, else the weight's name."""
        return self.op.loc.module or self.weight.name


@dataclass
class Group:
    """Channels pruned together: their seeds, the coupled values, and why it is blocked if it is."""

    index: int
    channels: list[frozenset[int]]  # each a set of atom ids (one channel of every seed sharing it)
    seeds: list[Seed]
    blocked: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return ", ".join(dict.fromkeys(s.name for s in self.seeds))


@dataclass
class Dependencies:
    """The result of ``dependency_groups``: groups and the labelling of every coupled axis."""

    groups: list[Group]
    labels: dict[int, tuple[Value, dict[int, np.ndarray]]]  # id(value) -> (value, axis -> atom labels)
    atom_channel: np.ndarray  # atom id -> index of its channel in ``channels``
    channels: list[frozenset[int]]

    def members(self, group: Group) -> list[Port]:
        """Every (value, axis) whose positions include channels of ``group``."""
        atoms = np.array(sorted(a for ch in group.channels for a in ch))
        out = []
        for value, axes in self.labels.values():
            out += [(value, ax) for ax, lab in axes.items() if np.isin(lab, atoms).any()]
        return out

    def keep_masks(self, removed: set[int]) -> dict[int, tuple[Value, dict[int, np.ndarray]]]:
        """Positions kept along each labelled axis when the channels with indices ``removed`` go."""
        gone = np.zeros(len(self.channels) + 1, bool)  # last entry: unlabelled positions (-1)
        gone[list(removed)] = True
        lookup = np.append(self.atom_channel, len(self.channels))
        out = {}
        for key, (value, axes) in self.labels.items():
            masks = {ax: ~gone[lookup[lab]] for ax, lab in axes.items()}
            masks = {ax: m for ax, m in masks.items() if not m.all()}
            if masks:
                out[key] = (value, masks)
        return out


Granularity = Literal["channel", "filter", "neuron", "head"]


def find_seeds(
    graph: Graph, granularity: Granularity, selected: set[int] | None = None
) -> list[tuple[Op, Value, int, np.ndarray]]:
    """The producers whose output channels ``granularity`` prunes, as (op, weight, axis, local labels).

    ``filter``: conv2d output channels (groups=1); ``neuron``: linear output features and
    embedding columns; ``channel``: both; ``head``: attention heads of the q/k/v projections
    feeding ``scaled_dot_product_attention``. ``selected`` (op ids) restricts the producers.
    Raises McirError when the graph has no layer of that kind at all.
    """
    if granularity == "head":
        seeds = _head_seeds(graph)
    else:
        seeds = []
        present = False
        for op in graph.compute_ops():
            layout = _seed_layout(op.name, granularity)
            if layout is None:
                continue
            w = op.operands[layout.operand]
            if not (w.is_constant and w.producer.data is not None):
                continue
            present = True
            if op.name == "conv2d" and op.attrs["groups"] != 1:
                continue  # grouped/depthwise convs pass channels through (see _rule_conv2d)
            seeds.append((op, w, layout.out_axis, np.arange(w.type.shape[layout.out_axis])))
        if not present:
            kinds = sorted(n for n in registry.ops_with(WEIGHTED) if _seed_layout(n, granularity) is not None)
            what = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
            hint = {"filter": "neuron", "neuron": "filter", "channel": "weight"}[granularity]
            raise McirError(
                f"granularity={granularity}: the graph has no {what} layer with constant weights "
                f"to prune (try granularity={hint})"
            )
    if selected is not None:
        seeds = [s for s in seeds if id(s[0]) in selected]
    return seeds


def _seed_layout(name: str, granularity: Granularity) -> WeightLayout | None:
    """The weight layout of op ``name`` when ``granularity`` prunes its output channels, else None.

    ``filter`` takes weighted layers with kernel windows (convolutions), ``neuron`` the others
    (linear, embedding), ``channel`` both.
    """
    layout = registry.get(name).weight
    if layout is None or (granularity == "filter" and not layout.spatial):
        return None
    if granularity == "neuron" and layout.spatial:
        return None
    return layout


def _source_projection(v: Value) -> tuple[Op | None, str]:
    """Walk back from an attention operand through data movement to the linear producing it."""
    while v.producer is not None:
        op = v.producer
        if op.name == "linear":
            return op, ""
        if _passes_through(op.name) or (
            op.name == "mul" and any(o.is_constant and o.type.numel == 1 for o in op.operands)
        ):
            v = next(o for o in op.operands if not o.is_constant)
            continue
        return None, f"%{v.name} comes from '{op.name}', not from a linear projection"
    return None, f"%{v.name} is a graph input"


def _head_seeds(graph: Graph) -> list[tuple[Op, Value, int, np.ndarray]]:
    """Seeds for attention heads: rows of each q/k/v projection labelled by head.

    A projection feeding ``s`` of the roles q, k, v (3 for a packed ``in_proj``) has
    ``s * heads * head_dim`` output rows ordered [role][head][dim], so row ``p`` belongs to
    head ``(p // head_dim) % heads``; q, k and v heads are tied at the attention op.
    """
    attention = [op for op in graph.compute_ops() if op.name == "scaled_dot_product_attention"]
    if not attention:
        raise McirError(
            "granularity=head: no attention heads found (the graph has no scaled_dot_product_attention op); "
            "use granularity=channel, filter or neuron"
        )
    roles: dict[int, tuple[Op, list[Op]]] = {}
    for att in attention:
        q = att.operands[0]
        if q.type.rank < 4:
            raise McirError(
                f"granularity=head: {att.where()} has query {q.type} without a separate heads axis "
                "[batch, heads, seq, dim]"
            )
        for v in att.operands[:3]:
            proj, why = _source_projection(v)
            if proj is None:
                raise McirError(f"granularity=head: cannot find the projection of {att.where()}: {why}")
            roles.setdefault(id(proj), (proj, []))[1].append(att)
    seeds = []
    for proj, atts in roles.values():
        w = proj.operands[1]
        heads, dim = atts[0].operands[0].type.shape[-3], atts[0].operands[0].type.shape[-1]
        rows = w.type.shape[0]
        if rows != len(atts) * heads * dim:
            raise McirError(
                f"granularity=head: projection {proj.where()} has {rows} outputs, expected "
                f"{len(atts)} x {heads} heads x {dim} = {len(atts) * heads * dim}"
            )
        if not (w.is_constant and w.producer.data is not None):
            continue
        seeds.append((proj, w, 0, (np.arange(rows) // dim) % heads))
    return seeds


def dependency_groups(graph: Graph, seeds: list[tuple[Op, Value, int, np.ndarray]]) -> Dependencies:
    """Couple the channels of ``seeds`` (from ``find_seeds``) across the graph into groups."""
    made: list[Seed] = []
    next_atom = 0
    for op, w, axis, local in seeds:
        n = int(local.max()) + 1 if local.size else 0
        made.append(Seed(op, w, axis, tuple(range(next_atom, next_atom + n)), local + next_atom))
        next_atom += n
    walk = None
    const_labels: dict[int, tuple[Value, dict[int, np.ndarray]]] = {}
    for _ in range(len(graph.ops) + 2):  # constants labelled late are seen by earlier users next time
        walk = _Walk(graph, made, const_labels)
        walk.run()
        known = {k: set(axes) for k, (_, axes) in const_labels.items()}
        now = {k: set(axes) for k, (v, axes) in walk.labels.items() if v.is_constant}
        if now == known:
            break
        const_labels = {k: (v, dict(axes)) for k, (v, axes) in walk.labels.items() if v.is_constant}
    assert walk is not None
    return walk.groups(next_atom)


class _Walk:
    """One pass over the ops in program order, applying each op's coupling rule."""

    def __init__(self, graph: Graph, seeds: list[Seed], const_labels: dict[int, tuple[Value, dict[int, np.ndarray]]]):
        self.graph = graph
        self.seeds = seeds
        self.labels: dict[int, tuple[Value, dict[int, np.ndarray]]] = {
            k: (v, dict(axes)) for k, (v, axes) in const_labels.items()
        }
        self.ties: list[tuple[int, int]] = []
        self.blocks: list[tuple[np.ndarray, str]] = []
        self.handled: set[tuple[int, int]] = set()
        for s in seeds:
            self.link(None, (s.weight, s.axis), s.labels)

    # -- labellings -----------------------------------------------------------------------
    def get(self, port: Port) -> np.ndarray | None:
        value, axis = port
        entry = self.labels.get(id(value))
        return None if entry is None else entry[1].get(axis)

    def axes(self, value: Value) -> dict[int, np.ndarray]:
        entry = self.labels.get(id(value))
        return {} if entry is None else entry[1]

    def _set(self, port: Port, labels: np.ndarray) -> None:
        value, axis = port
        self.labels.setdefault(id(value), (value, {}))[1][axis] = labels

    def block(self, labels: np.ndarray, reason: str) -> None:
        self.blocks.append((labels, reason))

    def couple(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        """Tie atoms at equal positions; an atom facing an unprunable position is blocked."""
        both = (a >= 0) & (b >= 0)
        self.ties += [(int(x), int(y)) for x, y in zip(a[both], b[both]) if x != y]
        lone = (a >= 0) != (b >= 0)
        if lone.any():
            self.block(np.where(lone, np.maximum(a, b), -1), reason)

    def link(self, op: Op | None, port: Port, labels: np.ndarray) -> None:
        """Give ``port`` the labelling ``labels`` (tie with what it has; block what cannot follow)."""
        value, _axis = port
        have = self.get(port)
        where = f"{op.where()}" if op is not None else f"%{value.name}"
        if have is not None:
            self.couple(have, labels, f"{where} couples them with positions of %{value.name} that cannot be pruned")
            return
        if op is not None and value is op.result:
            self._set(port, labels)
        elif value.is_constant:
            if value.producer.data is None or value.type.encoding is not None:
                what = "has no data" if value.producer.data is None else f"is already compressed ({value.type})"
                self.block(labels, f"{where} reads constant %{value.name}, which {what}")
                return
            self._set(port, labels)
        else:
            self.block(labels, f"{where} couples them with %{value.name}, which no prunable layer produces")

    def tie(self, op: Op, ports: list[Port]) -> None:
        """Positions along all ``ports`` are the same channels."""
        for p in ports:
            self.handled.add((id(p[0]), p[1]))
        labelled = [self.get(p) for p in ports]
        first = next((lab for lab in labelled if lab is not None), None)
        if first is None:
            return
        for p in ports:
            self.link(op, p, first)

    def stop(self, op: Op, port: Port, reason: str) -> None:
        """``port`` cannot lose positions: block whatever channels it carries."""
        self.handled.add((id(port[0]), port[1]))
        lab = self.get(port)
        if lab is not None:
            self.block(lab, f"{op.where()}: {reason}")

    def flow(self, op: Op, src: Port, dst_axis: int, labels: np.ndarray) -> None:
        """The result's axis ``dst_axis`` carries ``labels`` derived from ``src``."""
        self.handled.add((id(src[0]), src[1]))
        self.link(op, (op.result, dst_axis), labels)

    # -- the walk ---------------------------------------------------------------------------
    def run(self) -> None:
        for op in self.graph.compute_ops():
            if not any(self.axes(v) for v in op.operands):
                continue
            self.handled = set()
            rule = _RULES.get(op.name)
            if rule is None and ELEMENTWISE in registry.get(op.name).traits:
                rule = _rule_elementwise
            if rule is None:
                for v in op.operands:
                    for lab in self.axes(v).values():
                        self.block(lab, f"{op.where()}: structured pruning has no rule for '{op.name}'")
                continue
            rule(self, op)
            for i, v in enumerate(op.operands):  # a labelled axis the rule did not mention cannot be kept
                for ax, lab in self.axes(v).items():
                    if (id(v), ax) not in self.handled:
                        self.block(lab, f"{op.where()}: operand {i} (%{v.name}) axis {ax} is not a channel axis here")
        for v in self.graph.outputs:
            for lab in self.axes(v).values():
                self.block(lab, f"%{v.name} is a graph output (its shape is part of the interface)")

    def groups(self, n_atoms: int) -> Dependencies:
        ties = nx.Graph()
        ties.add_nodes_from(range(n_atoms))
        ties.add_edges_from(self.ties)
        channels = [frozenset(c) for c in nx.connected_components(ties)]
        channels.sort(key=min)
        atom_channel = np.empty(n_atoms, np.int64)
        for i, ch in enumerate(channels):
            atom_channel[list(ch)] = i
        # a group: channels linked by ties or by belonging to one seed
        links = nx.Graph()
        links.add_nodes_from(range(len(channels)))
        for s in self.seeds:
            chans = sorted({int(atom_channel[a]) for a in s.atoms})
            links.add_edges_from(itertools.pairwise(chans))
        groups = []
        group_of = np.empty(len(channels), np.int64)
        for comp in sorted(nx.connected_components(links), key=min):
            g = Group(len(groups), [channels[i] for i in sorted(comp)], [])
            group_of[list(comp)] = g.index
            groups.append(g)
        for s in self.seeds:
            if s.atoms:
                groups[group_of[atom_channel[s.atoms[0]]]].seeds.append(s)
        for labels, reason in self.blocks:
            for gi in sorted({int(group_of[atom_channel[a]]) for a in labels[labels >= 0]}):
                if reason not in groups[gi].blocked:
                    groups[gi].blocked.append(reason)
        return Dependencies(groups, self.labels, atom_channel, channels)


# -- rules: which positions of operands and result are the same channels --------------------


def _right(rank_from: int, axis: int, rank_to: int) -> int:
    """Broadcasting aligns axes from the right."""
    return axis + rank_to - rank_from


def _rule_elementwise(w: _Walk, op: Op) -> None:
    r = op.result
    rank = r.type.rank
    for ra in range(rank):
        ports = [(r, ra)]
        for v in op.operands:
            ia = _right(rank, ra, v.type.rank)
            if ia < 0:
                continue
            if v.type.shape[ia] == r.type.shape[ra]:
                ports.append((v, ia))
            else:  # a size-1 axis broadcast over the channels: it has no channels of its own
                w.stop(op, (v, ia), "broadcast along the channel axis")
        w.tie(op, ports)


def _rule_linear(w: _Walk, op: Op) -> None:
    x, wt = op.operands[:2]
    r = op.result
    last = r.type.rank - 1
    w.tie(op, [(x, x.type.rank - 1), (wt, 1)])
    w.tie(op, [(wt, 0), (r, last)] + ([(op.operands[2], 0)] if len(op.operands) == 3 else []))
    for a in range(x.type.rank - 1):
        w.tie(op, [(x, a), (r, a)])


def _rule_conv2d(w: _Walk, op: Op) -> None:
    x, wt = op.operands[:2]
    bias = [(op.operands[2], 0)] if len(op.operands) == 3 else []
    r = op.result
    groups = op.attrs["groups"]
    c_in, c_out = x.type.shape[1], r.type.shape[1]
    w.tie(op, [(x, 0), (r, 0)])
    for a in (2, 3):
        w.stop(op, (x, a), "convolution window axis")
        w.stop(op, (wt, a), "kernel axis")
        w.stop(op, (r, a), "convolution window axis")
    if groups == 1:
        w.tie(op, [(x, 1), (wt, 1)])
        w.tie(op, [(wt, 0), (r, 1)] + bias)
    elif groups == c_in and wt.type.shape[1] == 1:
        # depthwise: output channel o reads input channel o // k (k = channel multiplier)
        k = c_out // c_in
        lab = w.get((x, 1))
        w.handled.add((id(wt), 1))
        if lab is not None:
            w.flow(op, (x, 1), 1, np.repeat(lab, k))
            w.tie(op, [(r, 1), (wt, 0)] + bias)
        else:
            for p in [(wt, 0)] + bias:
                w.stop(op, p, "depthwise convolution whose input channels are not prunable")
    else:
        for p in [(x, 1), (wt, 0), (wt, 1)] + bias:
            w.stop(op, p, f"grouped convolution (groups={groups}) is not pruned")


def _rule_batch_norm(w: _Walk, op: Op) -> None:
    x, *params = op.operands
    r = op.result
    w.tie(op, [(x, 1), (r, 1)] + [(p, 0) for p in params])
    for a in range(x.type.rank):
        if a != 1:
            w.tie(op, [(x, a), (r, a)])


def _rule_layer_norm(w: _Walk, op: Op) -> None:
    x = op.operands[0]
    r = op.result
    dims = op.attrs["dims"]
    for a in range(x.type.rank):
        if a >= x.type.rank - dims:
            w.stop(op, (x, a), "layer_norm normalises over this axis (its statistics would change)")
        else:
            w.tie(op, [(x, a), (r, a)])
    for p in op.operands[1:]:
        for a in range(p.type.rank):
            w.stop(op, (p, a), "layer_norm parameter")


def _rule_softmax(w: _Walk, op: Op) -> None:
    x = op.operands[0]
    axis = op.attrs["axis"] % x.type.rank
    for a in range(x.type.rank):
        if a == axis:
            w.stop(op, (x, a), f"{op.name} normalises over this axis")
        else:
            w.tie(op, [(x, a), (op.result, a)])


def _rule_reduce(w: _Walk, op: Op) -> None:
    x = op.operands[0]
    rank = x.type.rank
    if op.name == "argmax":
        axes, keep = {op.attrs["axis"] % rank}, op.attrs["keepdim"]
    else:
        axes, keep = {a % rank for a in op.attrs["axes"]} or set(range(rank)), op.attrs["keepdim"]
    out = 0
    for a in range(rank):
        if a in axes:
            w.stop(op, (x, a), f"{op.name} reduces over this axis")
            out += 1 if keep else 0
        else:
            w.tie(op, [(x, a), (op.result, out)])
            out += 1


def _rule_pool(w: _Walk, op: Op) -> None:
    x = op.operands[0]
    w.tie(op, [(x, 0), (op.result, 0)])
    w.tie(op, [(x, 1), (op.result, 1)])
    for a in (2, 3):
        w.stop(op, (x, a), "pooling window axis")


def _rule_embedding(w: _Walk, op: Op) -> None:
    idx, table = op.operands
    r = op.result
    w.tie(op, [(table, 1), (r, r.type.rank - 1)])
    w.stop(op, (table, 0), "embedding rows are looked up by index")
    for a in range(idx.type.rank):
        w.tie(op, [(idx, a), (r, a)])


def _rule_attention(w: _Walk, op: Op) -> None:
    q, k, v = op.operands[:3]
    r = op.result
    rank = r.type.rank
    for ra in range(rank - 2):  # batch axes, the heads among them: q, k, v and the result share them
        ports = [(r, ra)]
        for t in op.operands:
            ia = _right(rank, ra, t.type.rank)
            if ia >= 0 and t.type.shape[ia] == r.type.shape[ra]:
                ports.append((t, ia))
            elif ia >= 0:
                w.stop(op, (t, ia), "broadcast along the heads axis")
        w.tie(op, ports)
    for t, name in ((q, "query"), (k, "key"), (v, "value")):
        w.stop(op, (t, t.type.rank - 1), f"{name} head size (prune whole heads: granularity=head)")
        w.stop(op, (t, t.type.rank - 2), f"{name} sequence axis")
    if len(op.operands) == 4:
        m = op.operands[3]
        for a in range(max(0, m.type.rank - 2), m.type.rank):
            w.stop(op, (m, a), "attention mask")


def _rule_matmul(w: _Walk, op: Op) -> None:
    a, b = op.operands
    r = op.result
    ra, rb, rr = a.type.rank, b.type.rank, r.type.rank
    w.tie(op, [(a, ra - 1), (b, rb - 2 if rb >= 2 else 0)])  # the contraction: removed from both sides
    if ra >= 2:
        w.tie(op, [(a, ra - 2), (r, rr - (2 if rb >= 2 else 1))])
    if rb >= 2:
        w.tie(op, [(b, rb - 1), (r, rr - 1)])
    batch = rr - (ra >= 2) - (rb >= 2)
    for x_ in range(batch):
        ports = [(r, x_)]
        for t, rt in ((a, ra), (b, rb)):
            ia = _right(batch, x_, rt - 2) if rt >= 2 else -1
            if ia >= 0 and t.type.shape[ia] == r.type.shape[x_]:
                ports.append((t, ia))
            elif ia >= 0:
                w.stop(op, (t, ia), "broadcast along a batch axis")
        w.tie(op, ports)


def reshape_labels(
    in_shape: tuple[int, ...], axis: int, labels: np.ndarray, out_shape: tuple[int, ...]
) -> tuple[int, np.ndarray] | None:
    """Where a labelled axis lands after a reshape: (output axis, its labels), or None if the
    channels end up spread over several output axes (the shrunk tensor would not be a box)."""
    shape = [1] * len(in_shape)
    shape[axis] = -1
    grid = np.broadcast_to(labels.reshape(shape), in_shape).reshape(out_shape)
    for b in range(len(out_shape)):
        index = tuple(slice(None) if i == b else 0 for i in range(len(out_shape)))
        line = grid[index]
        view = [1] * len(out_shape)
        view[b] = -1
        if out_shape[b] > 1 and np.array_equal(grid, np.broadcast_to(line.reshape(view), out_shape)):
            return b, np.ascontiguousarray(line)
    return None


def _rule_reshape(w: _Walk, op: Op) -> None:
    x = op.operands[0]
    landed: dict[int, int] = {}
    for a, lab in w.axes(x).items():
        found = reshape_labels(x.type.shape, a, lab, op.result.type.shape)
        if found is None:
            w.stop(op, (x, a), f"reshape to {list(op.result.type.shape)} splits the channels over several axes")
        elif found[0] in landed:
            w.stop(op, (x, a), "reshape merges two channel axes into one")
        else:
            landed[found[0]] = a
            w.flow(op, (x, a), found[0], found[1])


def _rule_permute(w: _Walk, op: Op) -> None:
    x = op.operands[0]
    for i, d in enumerate(op.attrs["dims"]):
        w.tie(op, [(x, d % x.type.rank), (op.result, i)])


def _rule_expand(w: _Walk, op: Op) -> None:
    x = op.operands[0]
    r = op.result
    for a in range(x.type.rank):
        ra = _right(x.type.rank, a, r.type.rank)
        if x.type.shape[a] == r.type.shape[ra]:
            w.tie(op, [(x, a), (r, ra)])
        else:
            w.stop(op, (x, a), "expand broadcasts along this axis")


def _rule_slice_select(w: _Walk, op: Op) -> None:
    x = op.operands[0]
    axis = op.attrs["axis"] % x.type.rank
    out = 0
    for a in range(x.type.rank):
        if a == axis:
            w.stop(op, (x, a), f"{op.name} along the channel axis")
            if op.name == "slice":
                out += 1
        else:
            w.tie(op, [(x, a), (op.result, out)])
            out += 1


def _rule_concat(w: _Walk, op: Op) -> None:
    r = op.result
    axis = op.attrs["axis"] % r.type.rank
    for a in range(r.type.rank):
        if a != axis:
            w.tie(op, [(r, a)] + [(v, a) for v in op.operands])
    parts = [w.get((v, axis)) for v in op.operands]
    for v in op.operands:
        w.handled.add((id(v), axis))
    if any(p is not None for p in parts):  # channels keep their offsets in the joined axis
        joined = np.concatenate(
            [p if p is not None else np.full(v.type.shape[axis], -1) for p, v in zip(parts, op.operands)]
        )
        w.link(op, (r, axis), joined)


def _rule_pad(w: _Walk, op: Op) -> None:
    x = op.operands[0]
    pads = op.attrs["pads"]
    for a in range(x.type.rank):
        if pads[2 * a] == pads[2 * a + 1] == 0:
            w.tie(op, [(x, a), (op.result, a)])
        else:
            w.stop(op, (x, a), "pad along the channel axis")


_RULES = {
    "linear": _rule_linear,
    "conv2d": _rule_conv2d,
    "batch_norm": _rule_batch_norm,
    "layer_norm": _rule_layer_norm,
    "softmax": _rule_softmax,
    "log_softmax": _rule_softmax,
    "mean": _rule_reduce,
    "sum": _rule_reduce,
    "amax": _rule_reduce,
    "argmax": _rule_reduce,
    "max_pool2d": _rule_pool,
    "avg_pool2d": _rule_pool,
    "adaptive_avg_pool2d": _rule_pool,
    "embedding": _rule_embedding,
    "scaled_dot_product_attention": _rule_attention,
    "matmul": _rule_matmul,
    "reshape": _rule_reshape,
    "permute": _rule_permute,
    "expand": _rule_expand,
    "slice": _rule_slice_select,
    "select": _rule_slice_select,
    "concat": _rule_concat,
    "pad": _rule_pad,
}
