"""Random inputs for a graph, for calibration and error measurement when the user gives none."""

from __future__ import annotations

import numpy as np

from mcir.ir import Graph
from mcir.ops import registry
from mcir.ops.traits import LOOKUP


def _is_lookup(name: str) -> bool:
    return registry.has_trait(name, LOOKUP)


def random_batches(graph: Graph, count: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """Standard-normal float inputs, quantised integers over their range, indices in range for the
    embedding they index."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        batch = []
        for v in graph.inputs:
            t = v.type
            if t.dtype.is_float:
                batch.append(rng.standard_normal(t.shape).astype(t.dtype.np))
            elif t.encoding is not None:  # already-quantised integers: anywhere in their range
                info = np.iinfo(t.dtype.np)
                batch.append(rng.integers(info.min, int(info.max) + 1, t.shape).astype(t.dtype.np))
            else:  # indices: in range for the embedding they select from (0/1 when they feed none)
                tables = [u.operands[registry.get(u.name).weight.operand] for u in v.users if _is_lookup(u.name)]
                high = min((w.type.shape[0] for w in tables), default=2)
                batch.append(rng.integers(0, high, t.shape).astype(t.dtype.np))
        out.append(tuple(batch))
    return out
