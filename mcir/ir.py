"""The graph IR: values, ops and graphs.

A ``Graph`` is one block of SSA values in topological order: graph inputs, then ops
(constants are ``const`` ops holding their data), then the returned outputs. There is
no control flow: models are static dataflow graphs.

Each ``Op`` produces exactly one ``Value``. A value knows its producer (``None`` for a
graph input) and its uses, so ``value.users`` is always current. Low-level edits
(``Graph.insert``, ``Graph.erase``, ``Op.set_operand``) keep the use lists right;
passes edit graphs through ``mcir.rewriter.Rewriter`` so drivers see every change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcir import dtypes
from mcir.errors import McirError
from mcir.ops import registry
from mcir.printer import print_graph
from mcir.types import TensorType

_NAME_RE = re.compile(r"^[A-Za-z0-9_.$\-]+$")


@dataclass(frozen=True)
class Location:
    """Where an op came from: the model's module path and the user's source line."""

    module: str = ""
    source: str = ""  # "file.py:LINE"

    def __str__(self) -> str:
        parts = [p for p in (self.module and f"module {self.module}", self.source) if p]
        return ", ".join(parts)


class Value:
    """An SSA value: a name, a type, its producing op (None for graph inputs) and its uses."""

    __slots__ = ("__weakref__", "name", "producer", "type", "uses")

    def __init__(self, name: str, type: TensorType, producer: Op | None = None) -> None:
        self.name = name
        self.type = type
        self.producer = producer
        self.uses: list[tuple[Op, int]] = []

    @property
    def users(self) -> list[Op]:
        """Ops using this value, each once, in order of first use."""
        seen: dict[int, Op] = {}
        for op, _ in self.uses:
            seen.setdefault(id(op), op)
        return list(seen.values())

    @property
    def is_constant(self) -> bool:
        return self.producer is not None and self.producer.name == "const"

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


def freeze_attr(value: Any) -> Any:
    """Attributes are immutable: lists become tuples, numpy scalars become Python scalars."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze_attr(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    raise McirError(
        f"attribute value {value!r} of type {type(value).__name__} is not int, float, bool, str, None or a list of them"
    )


class Op:
    """One operation: a registered op name, operands, frozen attributes, one result.

    ``meta`` is free space for analyses (like ``torch.fx.Node.meta``); ``loc`` points at
    the model source; ``data`` holds a ``const`` op's stored tensor.
    """

    __slots__ = ("__weakref__", "attrs", "data", "graph", "loc", "meta", "name", "operands", "result")

    def __init__(
        self,
        name: str,
        operands: list[Value] | tuple[Value, ...],
        attrs: Mapping[str, Any],
        result_name: str,
        result_type: TensorType,
        *,
        loc: Location | None = None,
        data: Any = None,
    ) -> None:
        self.name = name
        self.operands: tuple[Value, ...] = tuple(operands)
        self.attrs: dict[str, Any] = {k: freeze_attr(v) for k, v in attrs.items()}
        self.result = Value(result_name, result_type, self)
        self.meta: dict[str, Any] = {}
        self.loc = loc or Location()
        self.data = data
        self.graph: Graph | None = None

    def set_operand(self, index: int, value: Value) -> None:
        """Replace operand ``index`` by ``value``, keeping use lists right."""
        old = self.operands[index]
        old.uses.remove((self, index))
        ops = list(self.operands)
        ops[index] = value
        self.operands = tuple(ops)
        value.uses.append((self, index))

    def where(self) -> str:
        """A human description of this op for error messages."""
        text = f"op '{self.name}' (%{self.result.name})"
        if str(self.loc):
            text += f" at {self.loc}"
        return text

    def __repr__(self) -> str:
        args = ", ".join(f"%{v.name}" for v in self.operands)
        return f"%{self.result.name} = {self.name}({args}) : {self.result.type}"


class Graph:
    """One block of SSA values: inputs, ops in topological order, outputs."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.ops: list[Op] = []
        self.outputs: list[Value] = []
        self.meta: dict[str, Any] = {}
        self._names: dict[str, Value] = {}

    # -- names -------------------------------------------------------------------
    def fresh_name(self, base: str) -> str:
        """A value name not yet used in this graph, derived from ``base``."""
        base = re.sub(r"[^A-Za-z0-9_.$\-]", "_", base) or "v"
        if base not in self._names:
            return base
        stem = re.sub(r"_\d+$", "", base)
        i = 1
        while f"{stem}_{i}" in self._names:
            i += 1
        return f"{stem}_{i}"

    def value(self, name: str) -> Value:
        """The value called ``name`` (without the ``%``)."""
        try:
            return self._names[name]
        except KeyError:
            raise McirError(f"graph @{self.name} has no value %{name}") from None

    def has_value(self, name: str) -> bool:
        return name in self._names

    def _claim(self, value: Value) -> None:
        if not _NAME_RE.match(value.name):
            raise McirError(f"invalid value name %{value.name}: use letters, digits, '_', '.', '$', '-'")
        if value.name in self._names:
            raise McirError(f"value %{value.name} is defined twice in graph @{self.name}")
        self._names[value.name] = value

    def rename(self, value: Value, name: str) -> None:
        """Give ``value`` a new unique name."""
        if name == value.name:
            return
        if name in self._names:
            raise McirError(f"cannot rename %{value.name} to %{name}: the name is taken")
        del self._names[value.name]
        value.name = name
        self._claim(value)

    # -- building ----------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        """Append a graph input."""
        v = Value(name, type)
        self._claim(v)
        self.inputs.append(v)
        return v

    def insert(self, op: Op, index: int | None = None) -> Op:
        """Insert ``op`` at position ``index`` (default: the end) and register its uses."""
        if op.graph is not None:
            raise McirError(f"{op.where()} is already in a graph")
        self._claim(op.result)
        for i, v in enumerate(op.operands):
            v.uses.append((op, i))
        op.graph = self
        if index is None:
            self.ops.append(op)
        else:
            self.ops.insert(index, op)
        return op

    def erase(self, op: Op) -> None:
        """Remove ``op``; its result must have no uses and must not be an output."""
        if op.result.uses:
            users = ", ".join(f"%{u.result.name}" for u in op.result.users)
            raise McirError(f"cannot erase {op.where()}: its result is still used by {users}")
        if any(v is op.result for v in self.outputs):
            raise McirError(f"cannot erase {op.where()}: its result is a graph output")
        for i, v in enumerate(op.operands):
            v.uses.remove((op, i))
        self.ops.remove(op)
        del self._names[op.result.name]
        op.graph = None

    def index(self, op: Op) -> int:
        """Position of ``op`` in the op list."""
        for i, o in enumerate(self.ops):
            if o is op:
                return i
        raise McirError(f"{op.where()} is not in graph @{self.name}")

    def add(
        self,
        name: str,
        operands: list[Value] | tuple[Value, ...] = (),
        attrs: Mapping[str, Any] | None = None,
        *,
        result: str | None = None,
        type: TensorType | None = None,
        loc: Location | None = None,
        index: int | None = None,
    ) -> Value:
        """Create an op of registered kind ``name``, infer its type unless given, insert it.

        Returns the op's result value.
        """
        opdef = registry.get(name)
        attrs = opdef.complete_attrs(dict(attrs or {}), where=f"op '{name}'")
        if type is None:
            type = opdef.infer_type([v.type for v in operands], attrs, where=f"op '{name}'")
        op = Op(name, operands, attrs, self.fresh_name(result or name), type, loc=loc)
        self.insert(op, index)
        return op.result

    def const(
        self,
        name: str,
        data: Any,
        type: TensorType | None = None,
        *,
        index: int | None = None,
        loc: Location | None = None,
    ) -> Value:
        """Insert a ``const`` op holding ``data`` (a numpy array, or a dict of components)."""
        if type is None:
            if isinstance(data, dict):
                raise McirError("a constant given as components needs an explicit type")
            arr = np.asarray(data)
            type = TensorType(arr.shape, dtypes.from_numpy(arr.dtype))
        data = _freeze_data(data, type)
        op = Op("const", (), {}, self.fresh_name(name), type, loc=loc, data=data)
        if index is None:
            # constants go after the last constant, before the first compute op
            index = 0
            while index < len(self.ops) and self.ops[index].name == "const":
                index += 1
        self.insert(op, index)
        return op.result

    def set_outputs(self, values: list[Value]) -> None:
        self.outputs = list(values)

    # -- queries -----------------------------------------------------------------
    def constants(self) -> Iterator[Op]:
        return (op for op in self.ops if op.name == "const")

    def compute_ops(self) -> Iterator[Op]:
        return (op for op in self.ops if op.name != "const")

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        for op in self.ops:
            yield op.result

    def copy(self) -> Graph:
        """A structural copy; constant data arrays are shared (they are read-only)."""
        g = Graph(self.name)
        g.meta = dict(self.meta)
        mapping: dict[int, Value] = {}
        for v in self.inputs:
            mapping[id(v)] = g.add_input(v.name, v.type)
        for op in self.ops:
            new = Op(
                op.name,
                [mapping[id(v)] for v in op.operands],
                op.attrs,
                op.result.name,
                op.result.type,
                loc=op.loc,
                data=op.data,
            )
            new.meta = dict(op.meta)
            g.insert(new)
            mapping[id(op.result)] = new.result
        g.outputs = [mapping[id(v)] for v in self.outputs]
        return g

    def __str__(self) -> str:
        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.ops)} ops, {len(self.outputs)} outputs>"


def _freeze_data(data: Any, type: TensorType) -> Any:
    """Check stored constant data against its type and make it read-only."""
    if type.encoding is None or not type.encoding.needs_components:
        if isinstance(data, dict):
            data = data["data"]
        arr = np.asarray(data, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        if arr.shape != type.shape or arr.dtype != type.dtype.np:
            raise McirError(f"constant data {arr.dtype}{list(arr.shape)} does not match its type {type}")
        arr.flags.writeable = False
        return arr
    spec = type.encoding.components(type)
    if not isinstance(data, dict) or set(data) != set(spec):
        got = sorted(data) if isinstance(data, dict) else data.__class__.__name__
        raise McirError(f"constant of type {type} needs components {sorted(spec)}, got {got}")
    out = {}
    for key, (dt, shape) in spec.items():
        arr = np.asarray(data[key], order="C")
        if arr.shape != tuple(shape) or arr.dtype != dt.np:
            raise McirError(f"component '{key}' is {arr.dtype}{list(arr.shape)}, expected {dt}{list(shape)} for {type}")
        arr.flags.writeable = False
        out[key] = arr
    type.encoding.check_stored(type, out)  # indices, row pointers, padding bits, scales: what kernels rely on
    return out
