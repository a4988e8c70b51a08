"""Running a pipeline with instrumentation: verification after each pass, IR printing, timing,
size and cost per pass (``GraphStats``) and the measured error against the input graph.

``run_passes`` returns the transformed copy; its ``meta["report"]`` is a ``PipelineReport``
whose ``table()`` is the per-pass table ``mcir compile`` and ``mcir opt`` print.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from mcir.errors import McirError, VerifyError
from mcir.interp import interpret
from mcir.ir import Graph
from mcir.metrics import compare_outputs
from mcir.pass_base import Pass, PassContext
from mcir.passes import as_pass, build_pipeline
from mcir.patterns import RuleStat, track_rules
from mcir.report import format_table, human_bytes, human_count, human_seconds
from mcir.stats import GraphStats
from mcir.verifier import verify


@dataclass
class PassRecord:
    name: str
    seconds: float
    stats: GraphStats
    max_abs_err: float | None = None
    sqnr_db: float | None = None
    rules: dict[str, RuleStat] = field(default_factory=dict)  # rewrite rules the pass ran, by rule
    accuracy: float | None = None  # on eval= data, when given


@dataclass
class PipelineReport:
    """What a pipeline did: a row per pass, warnings, and the pipeline text."""

    pipeline: str
    rows: list[PassRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def table(self) -> str:
        """An aligned table: pass, time, ops, params, weight bytes, MACs (and error when measured)."""
        with_err = any(r.max_abs_err is not None for r in self.rows)
        with_int8 = any(r.stats.int8_macs for r in self.rows)
        with_bits = any(r.stats.bit_macs for r in self.rows)
        head = ["pass", "time", "ops", "params", "weights", "MACs"]
        with_sparse = any(r.stats.sparse_macs for r in self.rows)
        head += (["int8 MACs"] if with_int8 else []) + (["bit MACs"] if with_bits else [])
        head += ["sparse MACs"] if with_sparse else []
        head += ["max |Δ|", "SQNR"] if with_err else []
        with_acc = any(r.accuracy is not None for r in self.rows)
        head += ["accuracy"] if with_acc else []
        body = []
        for r in self.rows:
            row = [
                r.name,
                "-" if r.name == "(input)" else human_seconds(r.seconds),
                str(r.stats.ops),
                human_count(r.stats.params),
                human_bytes(r.stats.weight_bytes) + ("" if r.stats.exact else "*"),
                human_count(r.stats.macs),
            ]
            row += [human_count(r.stats.int8_macs)] if with_int8 else []
            row += [human_count(r.stats.bit_macs)] if with_bits else []
            row += [human_count(r.stats.sparse_macs)] if with_sparse else []
            if with_err:
                row += [
                    "-" if r.max_abs_err is None else f"{r.max_abs_err:.3g}",
                    "-" if r.sqnr_db is None else ("inf" if r.sqnr_db == float("inf") else f"{r.sqnr_db:.1f} dB"),
                ]
            row += ["-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"] if with_acc else []
            body.append(row)
        text = format_table(head, body, align="l" + "r" * (len(head) - 1))
        if not all(r.stats.exact for r in self.rows):
            text += "\n* storage bytes: that graph does not compile natively, so its library bytes are unknown"
        if self.warnings:
            text += "\n" + "\n".join(f"warning: {w}" for w in self.warnings)
        return text

    def rule_table(self) -> str:
        """Per pass and rewrite rule: attempts, rewrites and time (rules that never applied are left out)."""
        body = [
            [r.name, rule, str(st.tried), str(st.applied), human_seconds(st.seconds)]
            for r in self.rows
            for rule, st in sorted(r.rules.items(), key=lambda kv: -kv[1].seconds)
            if st.applied
        ]
        if not body:
            return "no rewrite rule applied"
        return format_table(["pass", "rule", "tried", "applied", "time"], body, align="llrrr")


def run_passes(
    graph: Graph,
    pipeline: str | list[Pass],
    *,
    verify_each: bool = True,
    print_ir_after_all: bool = False,
    print_ir_after: tuple[str, ...] | list[str] = (),
    sample_inputs: list[tuple[np.ndarray, ...]] | None = None,
    out: TextIO | None = None,
    progress: bool = False,
    **context: Any,
) -> Graph:
    """Run a pipeline on a copy of ``graph`` and return the result.

    ``context`` is visible to passes (``calibration=[(x,), ...]`` for quantisation,
    ``data=`` training data for ``finetune``/``distill``, see ``mcir.train.data``).
    With ``sample_inputs`` each pass's output error against the input graph is measured
    (max |Δ| and SQNR over the samples); with ``eval=`` data each pass's accuracy. The
    report is ``result.meta["report"]``. The graph before the first lossy pass is kept as
    ``ctx.data["original"]`` (the default teacher of ``distill``).
    """
    if isinstance(pipeline, str):
        passes = build_pipeline(pipeline)
    else:  # a list mixing Pass objects, pass classes, @pass_ functions, RuleSets and pipeline strings
        passes = [q for p in pipeline for q in (build_pipeline(p) if isinstance(p, str) else [as_pass(p)])]
    text = pipeline if isinstance(pipeline, str) else ",".join(str(p) for p in passes)
    known = {p.name for p in passes}
    for name in print_ir_after:
        if name not in known:
            raise McirError(f"--print-ir-after {name}: no pass of that name in the pipeline ({text})")
    for p in passes:  # a pass that trains stops the pipeline before anything runs when there is no data
        if getattr(p, "needs_data", False) and context.get("data") is None:
            raise McirError(
                f"pass '{p}' trains the model and needs data: pass data=... to run_passes or --data train.npz"
            )
    g = graph.copy()
    ctx = PassContext(data=dict(context))
    report = PipelineReport(text)
    refs = [interpret(graph, *x) for x in sample_inputs] if sample_inputs else None
    accuracy = _accuracy_meter(context.get("eval"))
    report.rows.append(
        PassRecord(
            "(input)", 0.0, GraphStats.of(g), 0.0 if refs else None, float("inf") if refs else None, {}, accuracy(g)
        )
    )
    stream = out or sys.stderr
    for i, p in enumerate(passes):
        if progress:
            print(f"[{i + 1}/{len(passes)}] {p}", file=sys.stderr, flush=True)
        if not p.preserves.startswith("exact") and "original" not in ctx.data:
            ctx.data["original"] = g.copy()  # the teacher of distill: the graph before the first lossy pass
        t0 = time.perf_counter()
        try:
            with track_rules() as rules:
                p.apply(g, ctx)
        except McirError as e:
            raise type(e)(f"pass '{p.name}': {e}") from None
        seconds = time.perf_counter() - t0
        if verify_each:
            try:
                verify(g)
            except VerifyError as e:
                raise VerifyError(f"pass '{p.name}' produced an invalid graph: {e}") from None
        err = sqnr = None
        if refs is not None:
            errs = [compare_outputs(r, interpret(g, *x)) for r, x in zip(refs, sample_inputs)]
            err = max(e for e, _ in errs)
            sqnr = min(s for _, s in errs)
        report.rows.append(PassRecord(str(p), seconds, GraphStats.of(g), err, sqnr, rules, accuracy(g)))
        if print_ir_after_all or p.name in print_ir_after:
            print(f"// ----- IR after {p} -----", file=stream)
            print(g, file=stream, end="")
    report.warnings = list(ctx.warnings)
    g.meta["report"] = report
    g.meta["pipeline"] = ",".join([graph.meta.get("pipeline", "")] + [str(p) for p in passes]).strip(",")
    return g


def _accuracy_meter(data: Any) -> Any:
    """graph -> accuracy on ``data`` (None without data), through ``mcir.train.evaluate``."""
    if data is None:
        return lambda g: None
    # lazy: mcir.train needs torch, which a pipeline without eval data never imports
    from mcir.train.data import Batches
    from mcir.train.run import evaluate

    batches = Batches(data, "eval")
    return lambda g: evaluate(g, batches)
