"""Where every value lives at run time, and how big the workspace is.

Storage kinds: a graph input (the caller's pointer), a constant (an internal global),
a graph output (the caller's output buffer), or a slice of the workspace.

Views never copy: ``reshape`` and ``dropout`` give the same bytes as their operand;
a ``permute`` that only moves size-1 axes does too; a ``select`` or unit-step
``slice`` whose preceding axes all have size 1 is a contiguous block at a byte offset
(the q/k/v split of attention). Only a result stored like its operand (same dtype and
encoding) can be a view; otherwise the op needs a kernel. Values joined by views form one
*group* with one storage, each member at its offset. An output group holds its output's buffer, so the
last kernel writes straight into the caller's memory; a copy is only planned where an
output is also an input, a constant, another output, or a part of a bigger buffer.

Workspace buffers are placed by liveness: a group is live from the step that writes it
to the last step that reads any of its members, and groups whose live ranges do not
overlap share bytes. Placement is greedy, largest first, at the lowest 64-byte aligned
offset that fits beside the already placed buffers it overlaps in time (the classic
offset-assignment heuristic; near optimal for the chain-like graphs of models).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcir.ir import Graph, Op, Value
from mcir.ops import registry
from mcir.ops.traits import VIEW

ALIGN = 64


def align_up(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass
class Step:
    """One kernel call: ``op`` (with fused unary ops ``epilogue``, then a fused pooling op ``pool``)
    writes ``result``.

    ``op`` is None for a planned copy of ``source`` into an output.
    """

    op: Op | None
    result: Value
    epilogue: list[Op] = field(default_factory=list)
    pool: Op | None = None
    source: Value | None = None
    out_index: int = 0  # for a copy: which output it writes
    scratch_bytes: int = 0
    scratch_offset: int = 0

    @property
    def reads(self) -> list[Value]:
        if self.op is None:
            return [self.source]
        return list(self.op.operands)


@dataclass(frozen=True)
class Storage:
    """Where a group of values lives: kind is input / const / output / workspace."""

    kind: str
    index: int = 0  # input or output position, or byte offset into the workspace
    nbytes: int = 0


@dataclass
class MemoryPlan:
    storage: dict[int, Storage]  # id(value) -> its storage
    workspace_size: int
    steps: list[Step]

    def of(self, v: Value) -> Storage:
        """The storage of ``v``'s group (add ``view_offset(v)`` for ``v`` itself)."""
        return self.storage[id(v)]


def view_source(v: Value) -> tuple[Value, int] | None:
    """(operand, byte offset) when ``v`` is a view of its producer's operand, else None."""
    op = v.producer
    if op is None or not op.operands:
        return None
    x = op.operands[0]
    # a view shares bytes, so it needs the operand's storage type: dropout(u8 #quant) : f32 (verified:
    # both mean f32) would otherwise read 4 bytes per element from a 1-byte buffer
    if x.type.dtype != v.type.dtype or x.type.encoding != v.type.encoding:
        return None
    if registry.has_trait(op.name, VIEW):
        return x, 0
    if x.type.encoding is not None:
        return None
    shape = x.type.shape
    if op.name == "permute":
        moved = [d % len(shape) for d in op.attrs["dims"] if shape[d % len(shape)] != 1]
        return (x, 0) if moved == sorted(moved) else None
    if op.name in ("select", "slice"):
        axis = op.attrs["axis"] % len(shape)
        if any(d != 1 for d in shape[:axis]):
            return None
        if op.name == "select":
            start = op.attrs["index"] % shape[axis]
        else:
            start, stop, step = slice(op.attrs["start"], op.attrs["end"], op.attrs["step"]).indices(shape[axis])
            if step != 1 and len(range(start, stop, step)) > 1:
                return None
        inner = x.type.nbytes // max(shape[axis], 1)
        return x, start * inner
    return None


def view_root(v: Value) -> Value:
    """The value whose storage ``v`` shares through views."""
    while (src := view_source(v)) is not None:
        v = src[0]
    return v


def view_offset(v: Value) -> int:
    """Byte offset of ``v`` inside the storage of ``view_root(v)``."""
    offset = 0
    while (src := view_source(v)) is not None:
        v, off = src
        offset += off
    return offset


def plan(graph: Graph, steps: list[Step]) -> MemoryPlan:
    """Assign storage to every value the steps touch and lay out the workspace."""
    storage: dict[int, Storage] = {}
    members: dict[int, list[Value]] = {}
    for v in graph.values():
        members.setdefault(id(view_root(v)), []).append(v)

    def assign(root: Value, s: Storage) -> None:
        for m in members[id(root)]:
            storage[id(m)] = s

    for i, v in enumerate(graph.inputs):
        assign(v, Storage("input", i, v.type.nbytes))
    for op in graph.constants():
        assign(op.result, Storage("const", 0, op.result.type.nbytes))

    # outputs: claim the group's storage, or copy when it is taken or is an input/constant
    copies: list[Step] = []
    for j, v in enumerate(graph.outputs):
        root = view_root(v)
        whole = view_offset(v) == 0 and v.type.nbytes == root.type.nbytes
        if id(root) in storage or not whole:
            copies.append(Step(None, v, source=v, out_index=j))
            continue
        assign(root, Storage("output", j, v.type.nbytes))
    out_steps = [*steps, *copies]

    # workspace groups: live from their writing step to their last reader
    def_at: dict[int, int] = {}
    last: dict[int, int] = {}
    for s, step in enumerate(out_steps):
        if step.op is not None:
            def_at.setdefault(id(view_root(step.result)), s)
        for v in step.reads:
            last[id(view_root(v))] = s
    buffers: list[tuple[int, int, int, object]] = []  # (size, start, end, key)
    roots: dict[int, Value] = {}
    for step in out_steps:
        if step.op is None:
            continue
        root = view_root(step.result)
        if id(root) not in storage and id(root) not in roots:
            roots[id(root)] = root
            start = def_at[id(root)]
            buffers.append((align_up(root.type.nbytes), start, max(start, last.get(id(root), start)), root))
    for s, step in enumerate(out_steps):
        if step.scratch_bytes:
            buffers.append((align_up(step.scratch_bytes), s, s, step))

    placed: list[tuple[int, int, int, int]] = []  # (offset, size, start, end)
    offsets: dict[int, int] = {}
    for size, start, end, key in sorted(buffers, key=lambda b: (-b[0], b[1])):
        busy = sorted((o, o + sz) for o, sz, s0, e0 in placed if s0 <= end and start <= e0)
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, align_up(hi))
        placed.append((offset, size, start, end))
        offsets[id(key)] = offset
    total = max((o + sz for o, sz, _, _ in placed), default=0)

    for rid, root in roots.items():
        assign(root, Storage("workspace", offsets[rid], root.type.nbytes))
    for step in out_steps:
        if step.scratch_bytes:
            step.scratch_offset = offsets[id(step)]
    return MemoryPlan(storage, align_up(total), out_steps)
