"""Pipelines: parsing with positioned errors, typed options, instrumentation, the driver's cap."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pytest

import mcir
from mcir.pass_manager import BUILTIN, GraphStats, Pass, build_pipeline, option
from mcir.pipeline import NM, parse_pipeline

G = """\
graph @m(%x: f32[4,8]) -> (f32[4,16]) {
  %w = const : f32[16,8]
  %d = dropout(%x) : f32[4,8]
  %h = linear(%d, %w) : f32[4,16]
  %y = relu(%h) : f32[4,16]
  return %y
}
"""


@dataclass(frozen=True)
class Demo(Pass):
    """A pass with every kind of option, for testing the pipeline syntax."""

    name: ClassVar[str] = "demo"
    ratio: float = option(0.5, "a float")
    count: int = option(1, "an int")
    flag: bool = option(False, "a bool")
    mode: Literal["a", "b"] = option("a", "a choice")
    pattern: NM | None = option(None, "an N:M pair")
    skip: str = option("", "a regex")
    sizes: tuple[int, ...] = option((), "a list of ints")

    def apply(self, graph, ctx):
        ctx.data.setdefault("seen", []).append(self)


@pytest.fixture(autouse=True)
def demo_pass(monkeypatch):
    monkeypatch.setitem(BUILTIN, "demo", f"{__name__}:Demo")


def test_pipeline_options_are_typed():
    (p,) = build_pipeline("demo(ratio=1, count=3, flag=true, mode=b, pattern=2:4, skip='fc1|head', sizes=[1, 2])")
    assert p == Demo(ratio=1.0, count=3, flag=True, mode="b", pattern=NM(2, 4), skip="fc1|head", sizes=(1, 2))
    assert str(p) == "demo(ratio=1.0,count=3,flag=true,mode=b,pattern=2:4,skip='fc1|head',sizes=[1,2])"
    assert build_pipeline(str(p)) == [p]


@pytest.mark.parametrize(
    ("pipeline", "message", "caret_col"),
    [
        ("fold,fodl", "unknown pass 'fodl'; did you mean 'fold'?", 6),
        ("demo(rati=0.5)", "unknown option 'rati' for pass 'demo'; valid options: ratio, count, flag", 6),
        ("demo(count=0.5)", "option 'count' of pass 'demo' must be an integer (got 0.5)", 12),
        ("demo(flag=yes)", "option 'flag' of pass 'demo' must be true or false", 11),
        ("demo(mode=c)", "must be one of a, b", 11),
        ("demo(pattern=0.5)", "must be N:M, e.g. 2:4", 14),
        ("demo(ratio=0.5", "unbalanced parentheses", 5),
        ("demo(ratio=0.5))", "unbalanced ')'", 16),
        ("demo(ratio=0.5, ratio=1)", "option 'ratio' given twice", 17),
        ("fold,,demo", "unexpected ','", 6),
    ],
)
def test_pipeline_errors_point_into_the_string(pipeline, message, caret_col):
    with pytest.raises(mcir.ParseError) as info:
        build_pipeline(pipeline)
    text = str(info.value)
    assert message in text
    assert f"column {caret_col}:" in text
    line, marks = text.splitlines()[-2:]
    assert line == "  " + pipeline
    assert marks.index("^") == 2 + caret_col - 1  # the caret sits under the culprit


def test_empty_pipeline_is_allowed():
    assert parse_pipeline("") == [] and parse_pipeline("  ") == []


def test_run_passes_copies_reports_and_instruments():
    g = mcir.parse(G)
    g.value("w").producer.data = np.ones((16, 8), np.float32)
    out = io.StringIO()
    g2 = mcir.run_passes(g, "fold,demo", print_ir_after=["fold"], out=out)
    assert len(list(g.compute_ops())) == 3, "the input graph is not modified"
    assert [op.name for op in g2.compute_ops()] == ["linear", "relu"]
    assert out.getvalue().startswith("// ----- IR after fold -----\ngraph @m")
    report = g2.meta["report"]
    assert [r.name for r in report.rows] == ["(input)", "fold", "demo"]
    assert report.rows[1].stats == GraphStats(ops=2, params=128, weight_bytes=512, macs=4 * 16 * 8)
    table = report.table()
    assert "pass" in table.splitlines()[0] and "MACs" in table.splitlines()[0]
    assert g2.meta["pipeline"] == "fold,demo"
    with pytest.raises(mcir.McirError, match="--print-ir-after nope: no pass of that name"):
        mcir.run_passes(g, "fold", print_ir_after=["nope"])


def test_sample_inputs_measure_error_per_pass():
    g = mcir.parse(G)
    g.value("w").producer.data = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    g2 = mcir.run_passes(g, "fold", sample_inputs=[(x,)])
    row = g2.meta["report"].rows[-1]
    assert row.max_abs_err == 0.0 and row.sqnr_db == float("inf")


def test_verify_each_names_the_pass_that_broke_the_graph():
    @mcir.pass_
    def breaker(graph, ctx):
        graph.value("h").type = mcir.tensor([4, 15])

    g = mcir.parse(G)
    with pytest.raises(mcir.VerifyError, match="pass 'breaker' produced an invalid graph: .*declared f32\\[4,15\\]"):
        mcir.run_passes(g, [breaker])


def test_rules_that_undo_each_other_hit_the_cap_with_a_clear_error():
    X = mcir.Pat.var("x")
    ping = mcir.RuleSet(
        "ping-pong",
        [
            # relu(x) -> clamp(x, min=0)
            (mcir.Pat("relu", X), lambda m, rw: rw.insert_before(m.root, "clamp", [m.x], {"min": 0.0})),
            # clamp(x, min=0) -> relu(x)
            (
                mcir.Pat("clamp", X, attrs={"min": 0.0, "max": None}),
                lambda m, rw: rw.insert_before(m.root, "relu", [m.x]),
            ),
        ],
    )
    g = mcir.parse(G)
    with pytest.raises(mcir.McirError, match="rule set 'ping-pong' did not reach a fixpoint .*relu\\(x\\)"):
        mcir.apply_rules(g, ping, max_rewrites=50)


def test_entry_point_passes_are_found(monkeypatch):
    import importlib.metadata

    class FakeEP:
        name = "from_entry_point"

        def load(self):
            return mcir.RuleSet("from_entry_point", [])

    real = importlib.metadata.entry_points

    def fake(**kw):
        return [FakeEP()] if kw.get("group") == "mcir.passes" else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    g2 = mcir.run_passes(mcir.parse(G), "from_entry_point")
    assert g2.meta["pipeline"] == "from_entry_point"


def test_function_pass_options_come_from_keyword_parameters():
    @mcir.pass_(name="scale_note", preserves="exact")
    def scale_note(graph, ctx, *, factor: float = 2.0, label: str = "x"):
        ctx.data["got"] = (factor, label)

    cls = scale_note.__mcir_pass__
    p = cls(factor=3.0)
    assert str(p) == "scale_note(factor=3.0)"
    g = mcir.parse(G)
    ctx_seen = {}

    @mcir.pass_
    def grab(graph, ctx):
        ctx_seen.update(ctx.data)

    mcir.run_passes(g, [p, grab])
    assert ctx_seen["got"] == (3.0, "x")


def test_listing_built_in_passes_imports_none_of_them():
    code = (
        "import sys; from mcir.passes import get_all_passes, pass_names; "
        "assert get_all_passes()['prune'] == 'mcir.passes.prune:Prune'; assert 'quant8' in pass_names(); "
        "print(sorted(m for m in sys.modules if m.startswith('mcir.passes.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pass_manager_still_exports_what_user_passes_import():
    import mcir.pass_base
    import mcir.pass_manager
    import mcir.passes

    assert mcir.pass_manager.Pass is mcir.pass_base.Pass is mcir.Pass
    assert mcir.pass_manager.option is mcir.pass_base.option
    assert mcir.pass_manager.PassContext is mcir.pass_base.PassContext
    assert mcir.pass_manager.get_pass is mcir.passes.get_pass


def test_rule_counts_and_times_are_reported_per_pass():
    from mcir.ir import Graph
    from mcir.types import tensor

    g = Graph("g")
    x = g.add_input("x", tensor([2, 3]))
    y = g.add("mul", [x, g.const("one", np.ones((), np.float32))])
    g.set_outputs([g.add("relu", [g.add("dropout", [y], {"p": 0.1})])])
    report = mcir.run_passes(g, "fold").meta["report"]
    applied = {rule: st.applied for rule, st in report.rows[1].rules.items() if st.applied}
    assert sorted(applied.values()) == [1, 1]  # x * 1 -> x, dropout(x) -> x
    assert any("dropout" in rule for rule in applied) and any("mul" in rule for rule in applied)
    assert all(st.tried >= st.applied and st.seconds >= 0 for st in report.rows[1].rules.values())
    table = report.rule_table()
    assert "dropout" in table and "applied" in table.splitlines()[0]


def test_rules_are_only_timed_inside_track_rules():
    from mcir.patterns import Pat, RuleSet, apply_rules, track_rules

    rules = RuleSet("noops", [(Pat("dropout", Pat.var("x")), lambda m, rw: m.x)])
    g = mcir.parse("graph @g(%x: f32[2]) -> (f32[2]) {\n  %d = dropout(%x) : f32[2]\n  return %d\n}\n")
    with track_rules() as stats:
        assert apply_rules(g, rules) == 1
    assert [(k, s.applied) for k, s in stats.items()] == [("noops[0] dropout(x)", 1)]
    with track_rules() as outer:
        pass
    g2 = mcir.parse("graph @g(%x: f32[2]) -> (f32[2]) {\n  %d = dropout(%x) : f32[2]\n  return %d\n}\n")
    assert apply_rules(g2, rules) == 1 and outer == {}
