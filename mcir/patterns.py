"""Rewrite patterns, two tiers, and the greedy driver that applies them.

Tier 1, rules as data: a ``RuleSet`` of ``(pattern, rewrite)`` pairs, each with a
one-line comment saying what it does::

    X = Pat.var("x")
    NOOPS = RuleSet("noops", [
        # dropout(x) -> x
        (Pat("dropout", X), lambda m, rw: m.x),
        # x * 1 -> x
        (Pat("mul", X, Pat.const(value=1.0), commutative=True, where=keeps_shape), lambda m, rw: m.x),
    ])

A pattern matches a value: ``Pat("mul", a, b)`` matches values produced by a ``mul``
whose operands match ``a`` and ``b``. ``Pat.var("x")`` matches anything and binds it
(a second occurrence of ``x`` must be the same value); ``Pat.const(...)`` matches
constants, optionally by value or predicate. The rewrite gets the ``Match`` (bound
values by name: ``m.x``) and the ``Rewriter``; it returns the value replacing the
matched root, or ``None`` to decline.

Tier 2, rules as code: subclass ``RewritePattern`` and implement
``match_and_rewrite(op, rewriter) -> bool``; guard first, return early.

``apply_rules(graph, rules)`` runs a rule set to a fixpoint with a worklist, removes
dead ops as it goes, and stops with an error naming the rule set and the last rules
applied when a cap on rewrites is hit (two rules undoing each other). Inside
``with track_rules() as stats:`` it also counts, per rule, how often it was tried and
applied and the time spent in it (what ``run_passes`` reports per pass).
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mcir.errors import McirError
from mcir.ir import Graph, Op, Value
from mcir.rewriter import Rewriter


class Match:
    """The values a pattern bound, by name; ``root`` is the matched op."""

    def __init__(self, root: Op) -> None:
        self.root = root
        self.values: dict[str, Value] = {}

    def __getattr__(self, name: str) -> Value:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(f"pattern bound no value '{name}'") from None

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def op(self, name: str) -> Op:
        """The op producing the value bound to ``name``."""
        producer = self.values[name].producer
        if producer is None:
            raise McirError(f"value '{name}' is a graph input, not produced by an op")
        return producer

    def array(self, name: str) -> np.ndarray:
        """Logical (decoded) data of the constant bound to ``name``."""
        return constant_array(self.values[name])


def constant_array(value: Value) -> np.ndarray:
    """Logical values of a constant with data; McirError otherwise."""
    op = value.producer
    if op is None or op.name != "const" or op.data is None:
        raise McirError(f"%{value.name} is not a constant with data")
    return value.type.decode(op.data)


class Pat:
    """A pattern over values (see the module docstring)."""

    def __init__(
        self,
        op: str | Iterable[str] | None = None,
        *operands: Pat,
        name: str | None = None,
        attrs: dict[str, Any] | None = None,
        where: Callable[[Match], bool] | None = None,
        single_use: bool = False,
        commutative: bool = False,
        any_operands: bool = False,
    ) -> None:
        self.ops = None if op is None else frozenset([op] if isinstance(op, str) else op)
        self.operands = operands
        self.name = name
        self.attrs = attrs or {}
        self.where = where
        self.single_use = single_use
        self.commutative = commutative
        self.any_operands = any_operands
        self.kind = "op"
        self.const_test: Callable[[np.ndarray], bool] | None = None

    @staticmethod
    def var(name: str) -> Pat:
        """Any value, bound to ``name``."""
        p = Pat(name=name)
        p.kind = "var"
        return p

    @staticmethod
    def const(
        name: str | None = None, value: float | None = None, where: Callable[[np.ndarray], bool] | None = None
    ) -> Pat:
        """A constant with data; ``value`` requires every element to equal it."""
        p = Pat(name=name)
        p.kind = "const"
        if value is not None:
            p.const_test = lambda a: bool(np.all(a == value))
            p._label = repr(value)
        elif where is not None:
            p.const_test = where
        return p

    @property
    def roots(self) -> frozenset[str] | None:
        """Op names this pattern can match at its root (None: any)."""
        if self.kind == "const":
            return frozenset({"const"})
        return self.ops if self.kind == "op" else None

    def match(self, value: Value, m: Match) -> bool:
        """Try to match ``value``, adding bindings to ``m``; bindings may be partial on failure."""
        if self.kind == "var":
            bound = m.values.get(self.name)
            if bound is not None:
                return bound is value
            m.values[self.name] = value
            return True
        op = value.producer
        if self.single_use and (len(value.uses) != 1 or any(v is value for v in _outputs(value))):
            return False
        if self.kind == "const":
            if op is None or op.name != "const" or op.data is None:
                return False
            if self.const_test is not None and not self.const_test(value.type.decode(op.data)):
                return False
            return self._bind(value, m)
        if op is None or op.name == "const" or (self.ops is not None and op.name not in self.ops):
            return False
        for key, want in self.attrs.items():
            have = op.attrs.get(key)
            if not (want(have) if callable(want) else have == want):
                return False
        if not self.any_operands:
            if len(op.operands) != len(self.operands):
                return False
            orders = [op.operands]
            if self.commutative and len(op.operands) == 2:
                orders.append(op.operands[::-1])
            for order in orders:
                saved = dict(m.values)
                if all(p.match(v, m) for p, v in zip(self.operands, order)):
                    break
                m.values = saved
            else:
                return False
        if not self._bind(value, m):
            return False
        return self.where is None or bool(self.where(m))

    def _bind(self, value: Value, m: Match) -> bool:
        if self.name is None:
            return True
        bound = m.values.get(self.name)
        if bound is not None and bound is not value:
            return False
        m.values[self.name] = value
        return True

    def __repr__(self) -> str:
        if self.kind == "var":
            return self.name or "_"
        if self.kind == "const":
            return getattr(self, "_label", None) or f"const {self.name or ''}".strip()
        head = "|".join(sorted(self.ops)) if self.ops else "*"
        args = "..." if self.any_operands else ", ".join(repr(p) for p in self.operands)
        return f"{head}({args})"


def _outputs(value: Value) -> list[Value]:
    op = value.producer
    graph = op.graph if op is not None else None
    return graph.outputs if graph is not None else []


class RewritePattern(abc.ABC):
    """A rule written as code. ``roots`` restricts the ops it is tried on (None: all)."""

    roots: ClassVar[frozenset[str] | None] = None
    name: str = ""

    @abc.abstractmethod
    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        """Rewrite at ``op`` if the rule applies; return whether the graph changed."""

    def __str__(self) -> str:
        return self.name or type(self).__name__


Rewrite = Callable[[Match, Rewriter], "Value | None"]


class PatternRule(RewritePattern):
    """A declarative ``(pattern, rewrite)`` rule."""

    def __init__(self, pattern: Pat, rewrite: Rewrite, name: str | None = None) -> None:
        self.pattern = pattern
        self.rewrite = rewrite
        self.roots = pattern.roots  # type: ignore[misc]
        self.name = name or repr(pattern)

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        m = Match(op)
        if not self.pattern.match(op.result, m):
            return False
        new = self.rewrite(m, rewriter)
        if new is None:
            return False
        if new is not op.result:
            rewriter.replace_op(op, new)
        return True


class RuleSet:
    """A named, ordered collection of rules; ``a + b`` concatenates."""

    def __init__(self, name: str, rules: Iterable[RewritePattern | tuple[Pat, Rewrite]] = ()) -> None:
        self.name = name
        self.rules: list[RewritePattern] = [r if isinstance(r, RewritePattern) else PatternRule(*r) for r in rules]

    def __add__(self, other: RuleSet) -> RuleSet:
        return RuleSet(f"{self.name}+{other.name}", self.rules + other.rules)

    def __iter__(self):
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)


@dataclass
class RuleStat:
    """How one rule fared in the greedy driver: match attempts, rewrites, seconds spent in it."""

    tried: int = 0
    applied: int = 0
    seconds: float = 0.0


# the collector of the innermost active track_rules(), None when nobody is counting
_TRACKED: contextvars.ContextVar[dict[str, RuleStat] | None] = contextvars.ContextVar("mcir_rule_stats", default=None)


@contextlib.contextmanager
def track_rules() -> Iterator[dict[str, RuleStat]]:
    """Count rule attempts, rewrites and time in every ``apply_rules`` inside the block.

    Yields a dict filled as rules run, keyed ``"ruleset[i] rule"`` (``i``: the rule's
    position in its set, since two rules may print alike). Without it the driver does not time.
    """
    stats: dict[str, RuleStat] = {}
    token = _TRACKED.set(stats)
    try:
        yield stats
    finally:
        _TRACKED.reset(token)


def apply_rules(
    graph: Graph,
    rules: RuleSet | Iterable[RewritePattern],
    *,
    max_rewrites: int | None = None,
    dce: bool = True,
    rewriter: Rewriter | None = None,
) -> int:
    """Apply ``rules`` greedily until none matches; returns the number of rewrites.

    Ops are visited in program order; any op touched by a rewrite (inserted, modified,
    or a user of a replaced value) is visited again. With ``dce``, ops whose results
    became unused are erased on the way.
    """
    ruleset = rules if isinstance(rules, RuleSet) else RuleSet("rules", rules)
    tracked = _TRACKED.get()
    keys = {id(rule): f"{ruleset.name}[{i}] {rule}" for i, rule in enumerate(ruleset)}
    by_root: dict[str | None, list[RewritePattern]] = {}
    for rule in ruleset:
        for root in rule.roots if rule.roots is not None else [None]:
            by_root.setdefault(root, []).append(rule)
    wildcard = by_root.get(None, [])

    rw = rewriter or Rewriter(graph)
    queued: dict[int, Op] = {}
    work: deque[Op] = deque()

    def push(op: Op) -> None:
        if id(op) not in queued:
            queued[id(op)] = op
            work.append(op)

    def listener(event: str, op: Op) -> None:
        if event == "erase":
            # the operands lost a use: their producers may be dead now, and rules guarded by
            # single_use may match at their remaining users
            for v in op.operands:
                if v.producer is not None:
                    push(v.producer)
                for user in v.users:
                    push(user)
            return
        push(op)
        for user in op.result.users:
            push(user)

    for op in graph.ops:
        push(op)
    rw.listeners.append(listener)
    cap = max_rewrites if max_rewrites is not None else 20 * len(graph.ops) + 200
    count = 0
    history: deque[str] = deque(maxlen=6)
    try:
        while work:
            op = work.popleft()
            del queued[id(op)]
            if op.graph is not graph:
                continue
            if dce and not op.result.uses and not any(v is op.result for v in graph.outputs):
                rw.erase(op)
                continue
            for rule in by_root.get(op.name, []) + wildcard:
                if tracked is None:
                    hit = rule.match_and_rewrite(op, rw)
                else:
                    t0 = time.perf_counter()
                    hit = rule.match_and_rewrite(op, rw)
                    stat = tracked.setdefault(keys[id(rule)], RuleStat())
                    stat.tried += 1
                    stat.applied += bool(hit)
                    stat.seconds += time.perf_counter() - t0
                if hit:
                    count += 1
                    history.append(str(rule))
                    if count > cap:
                        raise McirError(
                            f"rule set '{ruleset.name}' did not reach a fixpoint after {cap} rewrites; "
                            f"last rules applied: {'; '.join(history)}. Two rules probably undo each other."
                        )
                    break
    finally:
        rw.listeners.remove(listener)
    return count
