"""share: constants that are equal (or equal within a tolerance) become one constant.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcir.errors import McirError
from mcir.ir import Graph, Op
from mcir.pass_base import Pass, PassContext, option
from mcir.passes.fold import constant_digest
from mcir.patterns import constant_array
from mcir.rewriter import Rewriter, dead_code_elimination


@dataclass(frozen=True)
class Share(Pass):
    """One copy of constants that are equal (within a tolerance): fewer bytes in the library."""

    name: ClassVar[str] = "share"
    preserves: ClassVar[str] = "exact with tolerance=0; else each element moves by <= tolerance * max|w|"
    tolerance: float = option(0.0, "relative max difference under which two constants are merged")
    average: bool = option(False, "replace a merged group by its mean instead of its first member")
    min_elements: int = option(64, "ignore constants smaller than this (scalars, small biases)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < 1.0:
            raise McirError(f"tolerance={self.tolerance} must be in [0, 1)")
        if self.min_elements < 1:
            raise McirError(f"min_elements={self.min_elements} must be >= 1")

    def apply(self, graph: Graph, ctx: PassContext) -> None:
        rw = Rewriter(graph)
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
