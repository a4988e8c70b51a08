r"""share: constants that are equal (or equal within a tolerance) become one constant.

Tied or repeated layers (ALBERT-style sharing, a reused block, copies made by tracing) end
up as separate constants with the same data; one copy is enough, and the library then holds
it once. Before::

    %enc.0.w = const : f32[256,256]
    %enc.1.w = const : f32[256,256]          # the same values
    %a = linear(%x, %enc.0.w) : f32[1,256]
    %b = linear(%a, %enc.1.w) : f32[1,256]

After::

    %enc.0.w = const : f32[256,256]
    %a = linear(%x, %enc.0.w) : f32[1,256]
    %b = linear(%a, %enc.0.w) : f32[1,256]

Two constants of the same type are merged when ``max|a - b| <= tolerance · max(|a|, |b|)``;
the first one (in program order) is kept, or with ``average=true`` the group's mean replaces
it. Preserves: exact with ``tolerance=0`` (the default); otherwise every merged element moves
by at most ``tolerance · max|w|`` of its group.

Cross-layer sharing (ALBERT): ``share(layers=auto)`` finds blocks that are structurally identical
— the layers of an encoder, repeated residual blocks — and ties them to one set of weights, so
the library holds one copy. A block is a module path ``FAMILY.N`` (``encoder.layers.0``,
``encoder.layers.1``, ...): its constants are the ones named ``FAMILY.N.*`` and its ops the ones
whose location is inside ``FAMILY.N``. Blocks of one family are identical when they have the same
constant names and types after the prefix and the same op sequence (op names, attributes, result
types, and where each operand comes from). Before / after on a 2-layer encoder::

    %encoder.layers.0.linear1.weight = const : f32[64,32]
    %encoder.layers.1.linear1.weight = const : f32[64,32]
    %encoder.layers.1.linear1 = linear(%encoder.layers.0.norm1, %encoder.layers.1.linear1.weight, ...)

    %encoder.layers.0.linear1.weight = const : f32[64,32]
    %encoder.layers.1.linear1 = linear(%encoder.layers.0.norm1, %encoder.layers.0.linear1.weight, ...)

``w_l = w_keep`` for every layer ``l`` of a group, where ``keep=first`` takes the lowest index,
``keep=INDEX`` the named block, and ``keep=mean`` ``w = (1/L) Σ_l w_l``. ``layers=REGEX`` names
the blocks instead: its first group is the block index (``layers='encoder\.layers\.(\d+)'``).
``embeddings=true`` ties an output projection (a ``linear`` weight of the embedding table's type)
to the embedding table (one parameter; the library still embeds the table twice, raw for the
lookup and packed for the GEMM, so this saves parameters and training state, not library bytes,
until a GEMM kernel reads the raw layout). Preserves: approximate (the tied model computes what its tied weights
say; recover with ``finetune``/``distill``, where a tied constant is one parameter).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcir.errors import McirError
from mcir.ir import Graph, Op, Value
from mcir.pass_base import Pass, PassContext, option
from mcir.passes.fold import constant_digest
from mcir.patterns import constant_array
from mcir.rewriter import Rewriter, dead_code_elimination


@dataclass(frozen=True)
class Share(Pass):
    """One copy of constants that are equal (within a tolerance), or of identical blocks' weights (layers=)."""

    name: ClassVar[str] = "share"
    preserves: ClassVar[str] = (
        "exact with tolerance=0; else each element moves by <= tolerance * max|w|; "
        "layers=/embeddings=: approximate (the tied weights' model)"
    )
    tolerance: float = option(0.0, "relative max difference under which two constants are merged")
    average: bool = option(False, "replace a merged group by its mean instead of its first member")
    min_elements: int = option(64, "ignore constants smaller than this (scalars, small biases)")
    layers: str = option("", "tie identical blocks: auto (any FAMILY.N path) or a regex whose group 1 is N; '' = off")
    keep: str = option("first", "weights a tied group keeps: first, mean, or a block index")
    embeddings: bool = option(False, "tie an output projection to the embedding table of the same type")

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < 1.0:
            raise McirError(f"tolerance={self.tolerance} must be in [0, 1)")
        if self.min_elements < 1:
            raise McirError(f"min_elements={self.min_elements} must be >= 1")
        if self.keep not in ("first", "mean") and not self.keep.isdigit():
            raise McirError(f"keep={self.keep!r} must be first, mean or a block index such as 0")
        if self.layers not in ("", "auto"):
            try:
                pattern = re.compile(self.layers)
            except re.error as e:
                raise McirError(f"layers={self.layers!r} is not a regular expression: {e}") from e
            if pattern.groups < 1:
                raise McirError(
                    f"layers={self.layers!r} has no group: put the block index in one, e.g. 'encoder\\.layers\\.(\\d+)'"
                )

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        rw = Rewriter(graph)
        if self.layers:
            self._tie_layers(graph, rw, ctx)
        if self.embeddings:
            self._tie_embeddings(graph, rw, ctx)
        by_type: dict[str, list[Op]] = {}
        for op in graph.constants():
            t = op.result.type
            if op.data is not None and t.numel >= self.min_elements:
                by_type.setdefault(str(t), []).append(op)
        merged = 0
        for ops in by_type.values():
            for group in self._groups(ops):
                keep, rest = group[0], group[1:]
                if self.average and self.tolerance > 0 and keep.result.type.encoding is None:
                    mean = np.mean([constant_array(o.result) for o in group], axis=0, dtype=np.float64)
                    rw.set_data(keep, mean.astype(keep.result.type.dtype.np))
                for other in rest:
                    rw.replace_uses(other.result, keep.result)
                    merged += 1
        dead_code_elimination(graph, rw)
        if merged:
            ctx.warn(f"share: {merged} constant(s) now share storage with an equal one")

    def _groups(self, ops: list[Op]) -> list[list[Op]]:
        if self.tolerance == 0.0 or ops[0].result.type.encoding is not None:
            exact: dict[str, list[Op]] = {}
            for op in ops:
                exact.setdefault(constant_digest(op), []).append(op)
            return [g for g in exact.values() if len(g) > 1]
        arrays = [constant_array(op.result).astype(np.float64) for op in ops]
        scale = [float(np.abs(a).max()) for a in arrays]
        groups: list[list[int]] = []
        for i, a in enumerate(arrays):
            for g in groups:
                j = g[0]
                if np.abs(a - arrays[j]).max() <= self.tolerance * max(scale[i], scale[j]):
                    g.append(i)
                    break
            else:
                groups.append([i])
        return [[ops[i] for i in g] for g in groups if len(g) > 1]

    # -- cross-layer sharing ------------------------------------------------------------------

    def _blocks(self, graph: Graph) -> dict[str, dict[str, str]]:
        """Candidate block families: family -> {index: block prefix}, from the constants' names."""
        families: dict[str, dict[str, str]] = {}
        pattern = None if self.layers == "auto" else re.compile(self.layers)
        for op in graph.constants():
            name = op.result.name
            if pattern is None:
                parts = name.split(".")
                for i in range(1, len(parts) - 1):
                    if parts[i].isdigit():
                        families.setdefault(".".join(parts[:i]), {})[parts[i]] = ".".join(parts[: i + 1])
            else:
                m = pattern.search(name)
                if m and m.group(1) is not None and m.end(1) < len(name) and name[m.end(1)] == ".":
                    family = name[: m.start(1)].rstrip(".")
                    families.setdefault(family, {})[m.group(1)] = name[: m.end(1)]
        return families

    def _signature(self, graph: Graph, prefix: str) -> tuple[dict[str, Op], tuple]:
        """A block's constants (by name after the prefix) and a structural key that identical blocks share."""
        consts = {
            op.result.name[len(prefix) + 1 :]: op for op in graph.constants() if op.result.name.startswith(prefix + ".")
        }
        inside = [
            op
            for op in graph.ops
            if op.name != "const" and (op.loc.module == prefix or op.loc.module.startswith(prefix + "."))
        ]
        position = {id(op.result): i for i, op in enumerate(inside)}
        local = {id(op.result): key for key, op in consts.items()}

        def source(v: Value) -> tuple:
            # where an operand comes from, in terms that do not name the block's index
            if id(v) in local:
                return ("const", local[id(v)])
            if id(v) in position:
                return ("op", position[id(v)])
            return ("outside", str(v.type))

        ops_key = tuple(
            (op.name, tuple(sorted(op.attrs.items())), str(op.result.type), tuple(source(v) for v in op.operands))
            for op in inside
        )
        consts_key = tuple(sorted((k, str(op.result.type)) for k, op in consts.items()))
        return consts, (consts_key, ops_key)

    def _tie_layers(self, graph: Graph, rw: Rewriter, ctx: PassContext) -> None:
        families = self._blocks(graph)
        tied: set[int] = set()  # constants already tied by an outer family
        report: list[str] = []
        # outer families first: whole encoder layers before the blocks nested in them
        for family in sorted(families, key=lambda f: (f.count("."), f)):
            groups: dict[tuple, list[tuple[str, dict[str, Op]]]] = {}
            for index in sorted(families[family], key=int):
                consts, key = self._signature(graph, families[family][index])
                if consts and key[1] and not any(id(op) in tied for op in consts.values()):
                    groups.setdefault(key, []).append((index, consts))
            for members in groups.values():
                if len(members) < 2:
                    continue
                keeper = self._keeper(family, members)
                for name, keep_op in keeper[1].items():
                    if self.keep == "mean":
                        self._average(rw, keep_op, [consts[name] for _, consts in members])
                    for _, consts in members:
                        tied.add(id(consts[name]))
                        if consts[name] is not keep_op:
                            rw.replace_uses(consts[name].result, keep_op.result)
                indices = ",".join(i for i, _ in members)
                report.append(f"{family}.{{{indices}}} -> {family}.{keeper[0]}")
        if self.layers != "auto" and not report:
            raise McirError(
                f"share: layers={self.layers!r} matched no group of identical blocks; "
                "check the constants' names (mcir show MODEL) or use layers=auto"
            )
        dead_code_elimination(graph, rw)
        if report:
            ctx.warn("share: tied " + "; ".join(report))
        else:
            ctx.warn("share: layers=auto found no structurally identical blocks")

    def _keeper(self, family: str, members: list[tuple[str, dict[str, Op]]]) -> tuple[str, dict[str, Op]]:
        if self.keep.isdigit():
            for member in members:
                if int(member[0]) == int(self.keep):
                    return member
            raise McirError(
                f"share: keep={self.keep} is not one of the identical blocks of {family} "
                f"({', '.join(i for i, _ in members)}); pick one of them or keep=first"
            )
        return members[0]

    def _average(self, rw: Rewriter, keep_op: Op, ops: list[Op]) -> None:
        t = keep_op.result.type
        if t.encoding is not None or not t.dtype.is_float:
            raise McirError(
                f"share(keep=mean): {keep_op.where()} is {t}, not a plain float constant; "
                "share before compressing, or use keep=first"
            )
        mean = np.mean([constant_array(o.result) for o in ops], axis=0, dtype=np.float64)
        rw.set_data(keep_op, mean.astype(t.dtype.np))

    def _tie_embeddings(self, graph: Graph, rw: Rewriter, ctx: PassContext) -> None:
        tied = []
        for emb in [op for op in graph.ops if op.name == "embedding"]:
            table = emb.operands[1]
            if not table.is_constant or table.type.encoding is not None:
                continue
            for op in list(graph.ops):
                if op.name != "linear" or op.operands[1] is table:
                    continue
                w = op.operands[1]
                if w.is_constant and str(w.type) == str(table.type):
                    rw.set_operand(op, 1, table)
                    tied.append(f"{w.name} -> {table.name}")
        dead_code_elimination(graph, rw)
        ctx.warn("share: tied " + ", ".join(tied) if tied else "share: embeddings=true found no output projection")
