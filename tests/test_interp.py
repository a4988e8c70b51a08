"""The reference interpreter says where it failed: when an op's reference raises, the error names
the op, its result, its module path and source line, and its operand types."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import mcir
from mcir.ir import Graph, Location
from mcir.ops import registry
from mcir.types import tensor


def _embedding_graph() -> Graph:
    g = Graph("lookup")
    ids = g.add_input("ids", tensor([1, 3], "i64"))
    table = g.const("emb.weight", np.zeros((4, 2), np.float32))
    out = g.add("embedding", [ids, table], loc=Location("encoder.embed", "model.py:12"))
    g.set_outputs([out])
    return g


def test_a_failing_reference_names_the_op_its_location_and_operand_types():
    with pytest.raises(mcir.McirError) as info:
        mcir.interpret(_embedding_graph(), np.array([[0, 1, 9]]))
    text = str(info.value)
    assert "embedding index out of range [0, 4)" in text  # what the reference said
    assert "op 'embedding' (%embedding) at module encoder.embed, model.py:12" in text
    assert "(%ids: i64[1,3], %emb.weight: f32[4,2])" in text


def test_a_bug_in_a_reference_keeps_its_exception_and_gains_a_note(monkeypatch):
    def broken(x):
        raise ZeroDivisionError("boom")

    relu = registry.get("relu")
    monkeypatch.setitem(registry._REGISTRY, "relu", dataclasses.replace(relu, reference=broken))
    g = Graph("g")
    x = g.add_input("x", tensor([2]))
    g.set_outputs([g.add("relu", [x])])
    with pytest.raises(ZeroDivisionError, match="boom") as info:  # a bug stays a bug (traceback, exit 1)
        mcir.interpret(g, np.ones(2, np.float32))
    assert any("op 'relu' (%relu) on (%x: f32[2])" in note for note in getattr(info.value, "__notes__", []))


def test_an_error_that_already_names_the_op_is_not_repeated():
    g = _embedding_graph()
    next(iter(g.constants())).data = None
    with pytest.raises(mcir.McirError, match="has no data") as info:
        mcir.interpret(g, np.array([[0, 1, 2]]))
    assert "while running" not in str(info.value)
