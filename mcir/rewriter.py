"""The Rewriter: every IR mutation a pass makes goes through it.

Drivers (the greedy pattern driver, instrumentation) register listeners and see each
insertion, erasure and modification, so a worklist can revisit exactly the ops a
change affects. The methods keep SSA use lists and graph outputs right::

    rw = Rewriter(graph)
    y = rw.insert_before(op, "mul", [x, scale])       # new op, type inferred
    rw.replace_op(op, y)                              # uses of op's result -> y; op erased
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

from mcir.errors import McirError
from mcir.ir import Graph, Location, Op, Value, _freeze_data
from mcir.ops import registry
from mcir.types import TensorType

Listener = Callable[[str, Op], None]  # (event, op): event is "insert", "erase" or "modify"


class Rewriter:
    """Edits one graph and tells its listeners what changed."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.listeners: list[Listener] = []
        self.changes = 0
        self._fresh: weakref.WeakSet[Value] = weakref.WeakSet()  # created here, not yet a replacement

    def _notify(self, event: str, op: Op) -> None:
        self.changes += 1
        for listener in self.listeners:
            listener(event, op)

    # -- creating ops ------------------------------------------------------------------
    def insert_at(
        self,
        index: int,
        name: str,
        operands: list[Value] | tuple[Value, ...] = (),
        attrs: Mapping[str, Any] | None = None,
        *,
        type: TensorType | None = None,
        result: str | None = None,
        loc: Location | None = None,
    ) -> Value:
        """Create an op of kind ``name`` at position ``index``; its type is inferred unless given."""
        value = self.graph.add(name, operands, attrs, result=result, type=type, loc=loc, index=index)
        self._fresh.add(value)
        self._notify("insert", value.producer)
        return value

    def insert_before(
        self,
        anchor: Op,
        name: str,
        operands: list[Value] | tuple[Value, ...] = (),
        attrs: Mapping[str, Any] | None = None,
        *,
        type: TensorType | None = None,
        result: str | None = None,
        loc: Location | None = None,
    ) -> Value:
        """Create an op just before ``anchor`` (inheriting its location unless ``loc`` is given)."""
        return self.insert_at(
            self.graph.index(anchor), name, operands, attrs, type=type, result=result, loc=loc or anchor.loc
        )

    def insert_after(
        self,
        anchor: Op,
        name: str,
        operands: list[Value] | tuple[Value, ...] = (),
        attrs: Mapping[str, Any] | None = None,
        *,
        type: TensorType | None = None,
        result: str | None = None,
        loc: Location | None = None,
    ) -> Value:
        """Create an op just after ``anchor``."""
        return self.insert_at(
            self.graph.index(anchor) + 1, name, operands, attrs, type=type, result=result, loc=loc or anchor.loc
        )

    def const(self, name: str, data: Any, type: TensorType | None = None, *, loc: Location | None = None) -> Value:
        """Insert a constant (among the graph's constants, before every compute op)."""
        value = self.graph.const(name, data, type, loc=loc)
        self._fresh.add(value)
        self._notify("insert", value.producer)
        return value

    # -- changing uses -----------------------------------------------------------------
    def set_operand(self, op: Op, index: int, value: Value) -> None:
        """Make operand ``index`` of ``op`` be ``value`` (types must keep the op valid)."""
        op.set_operand(index, value)
        self._notify("modify", op)

    def replace_uses(self, old: Value, new: Value) -> None:
        """Every use of ``old`` (including graph outputs) becomes a use of ``new``."""
        if old is new:
            return
        if old.type.logical != new.type.logical:
            raise McirError(
                f"cannot replace %{old.name}: {old.type} by %{new.name}: {new.type}: their logical types differ"
            )
        for op, index in list(old.uses):
            op.set_operand(index, new)
            self._notify("modify", op)
        self.graph.outputs = [new if v is old else v for v in self.graph.outputs]

    def replace_op(self, op: Op, new: Value, *, keep_name: bool = True) -> None:
        """Replace ``op``'s result by ``new`` everywhere, then erase ``op``.

        With ``keep_name`` a replacement this rewriter just created takes over the old
        result's name, so dumps stay readable (``%fc1`` stays ``%fc1`` after folding);
        an existing value keeps its own name.
        """
        old_name = op.result.name
        self.replace_uses(op.result, new)
        self.erase(op)
        if keep_name and new in self._fresh and not self.graph.has_value(old_name):
            self.graph.rename(new, old_name)
        self._fresh.discard(new)

    def erase(self, op: Op) -> None:
        """Remove ``op``, whose result must be unused."""
        self.graph.erase(op)
        self._notify("erase", op)

    def set_type(self, value: Value, type: TensorType) -> None:
        """Change a value's declared type (e.g. a weight becoming int8); the producer is modified."""
        value.type = type
        if value.producer is not None:
            self._notify("modify", value.producer)

    def set_data(self, op: Op, data: Any, type: TensorType | None = None) -> None:
        """Give a const op new data (and optionally a new type), checked against the type."""
        if op.name != "const":
            raise McirError(f"set_data needs a const op, got {op.where()}")
        t = type or op.result.type
        op.data = _freeze_data(data, t)
        op.result.type = t
        self._notify("modify", op)

    def set_attrs(self, op: Op, **attrs: Any) -> None:
        """Change attributes of ``op`` (validated against its declaration)."""
        merged = dict(op.attrs)
        merged.update(attrs)
        op.attrs = registry.get(op.name).complete_attrs(merged, op.where())
        self._notify("modify", op)


def dead_code_elimination(graph: Graph, rewriter: Rewriter | None = None) -> int:
    """Erase every op whose result is unused and not an output; returns how many were erased."""
    rw = rewriter or Rewriter(graph)
    outputs = {id(v) for v in graph.outputs}
    erased = 0
    for op in reversed(list(graph.ops)):
        if not op.result.uses and id(op.result) not in outputs:
            rw.erase(op)
            erased += 1
    return erased
