"""Golden IR-in / IR-out tests for passes (``tests/golden/<pass>/*.mcir``).

Each file holds a ``// pipeline: ...`` line, the input graph, a ``// ----- expected -----``
marker and the expected output graph. The test runs the pipeline and compares the
printed result byte for byte; both graphs must also round-trip through the parser, and
when every constant has data (printed inline, or for larger ones in a sibling ``.npz`` of the
same name) the output must compute the same values as the input:
within 1e-6 relative to the largest output for exact passes, or within the file's
``// tolerance: T`` line for approximate ones (max |Δ| <= T · max(1, max |y|) on three
standard-normal inputs; each file's comment says where its error comes from).

To (re)write the expected sections after an intended change: ``MCIR_UPDATE_GOLDEN=1 pytest tests/test_golden.py``,
then read the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import mcir
from mcir.sample_inputs import random_batches

GOLDEN = Path(__file__).parent / "golden"
MARKER = "// ----- expected -----\n"
FILES = sorted(GOLDEN.glob("*/*.mcir"))


def _split(path: Path) -> tuple[str, str, str | None]:
    text = path.read_text()
    m = re.search(r"^// pipeline: (.*)$", text, re.M)
    assert m, f"{path}: missing '// pipeline: ...' line"
    before, sep, after = text.partition(MARKER)
    return m.group(1).strip(), before, (after if sep else None)


def _weight_formula(section: str) -> tuple[str, float] | None:
    """``// weights: binary`` or ``// weights: ternary(delta=D)``: the formula every encoded weight follows."""
    m = re.search(r"^// weights: (binary|ternary)(?:\(delta=(\S+)\))?$", section, re.M)
    return (m.group(1), float(m.group(2) or 0.7)) if m else None


def _apply_formula(kind: str, delta: float, w: np.ndarray) -> np.ndarray:
    """Per output row n: binary α_n·sign(w), α_n = mean|w_n| (sign(0) = +1); ternary α_n·sign(w)·[|w| > Δ_n],
    Δ_n = delta·mean|w_n|, α_n = mean of the kept |w|."""
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    mag = np.abs(rows)
    if kind == "binary":
        out = np.where(rows >= 0, 1.0, -1.0) * mag.mean(axis=1, keepdims=True)
    else:
        keep = mag > delta * mag.mean(axis=1, keepdims=True)
        alpha = (mag * keep).sum(axis=1, keepdims=True) / np.maximum(keep.sum(axis=1, keepdims=True), 1)
        out = np.sign(rows) * keep * alpha
    return out.reshape(w.shape)


def _check_weights(source: mcir.Graph, graph: mcir.Graph, kind: str, delta: float) -> mcir.Graph:
    """Every ``#kind`` constant of ``graph`` decodes to the formula applied to the same-named input weight;
    returns the input graph with those weights replaced by the formula (what ``graph`` must compute)."""
    originals = {op.result.name: op for op in source.constants()}
    encoded = [op for op in graph.constants() if getattr(op.result.type.encoding, "name", None) == kind]
    assert encoded, f"the pipeline encoded no weight as #{kind}"
    for op in encoded:
        t = op.result.type
        want = _apply_formula(kind, delta, np.asarray(originals[op.result.name].data))
        np.testing.assert_allclose(t.encoding.decode(t, op.data), want, rtol=1e-6, atol=1e-7)
        replaced = want.astype(np.float32)
        replaced.setflags(write=False)
        originals[op.result.name].data = replaced
    return source


def _with_sidecar_data(graph: mcir.Graph, path: Path) -> mcir.Graph:
    """Constants too large to print inline (more than 16 elements) take their data from ``<file>.npz``
    beside the golden file, by constant name, so layers big enough for a pass to act on can be tested."""
    sidecar = path.with_suffix(".npz")
    if sidecar.exists():
        arrays = np.load(sidecar)
        for op in graph.constants():
            if op.data is None and op.result.name in arrays.files:
                data = np.asarray(arrays[op.result.name], dtype=np.float32)
                data.setflags(write=False)
                op.data = data
    return graph


def _tolerance(section: str) -> float:
    m = re.search(r"^// tolerance: (\S+)$", section, re.M)
    return float(m.group(1)) if m else 1e-6


def _code(section: str) -> str:
    return "".join(line + "\n" for line in section.splitlines() if line.strip() and not line.lstrip().startswith("//"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden(path: Path):
    pipeline, before, expected = _split(path)
    source = _with_sidecar_data(mcir.parse(before, source=str(path)), path)
    assert str(source) == _code(before), "the input section is not in canonical printed form"
    graph = mcir.run_passes(source, pipeline, verify_each=True)
    result = str(graph)
    if os.environ.get("MCIR_UPDATE_GOLDEN"):
        path.write_text(before.rstrip("\n") + "\n" + MARKER + result)
        expected = result
    assert expected is not None, f"{path} has no expected section; run with MCIR_UPDATE_GOLDEN=1"
    assert result == expected
    assert str(mcir.parse(expected)) == expected

    formula = _weight_formula(before)
    if formula is not None:
        # compare with the input graph whose weights follow the formula: the rest of the graph must be exact
        source = _check_weights(_with_sidecar_data(mcir.parse(before, source=str(path)), path), graph, *formula)
    if all(op.data is not None for op in source.constants()):
        tolerance = _tolerance(before)
        for xs in random_batches(source, 3):
            # the result graph itself: encoded constants (#csr, #nm, ...) are not printed with their data
            for a, b in zip(mcir.interpret(source, *xs), mcir.interpret(graph, *xs)):
                a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
                scale = max(1.0, float(np.abs(a64).max()) if a64.size else 1.0)
                assert np.abs(a64 - b64).max() <= tolerance * scale


def test_every_fold_rule_has_a_golden_file():
    """Each rule of the fold pass is exercised by at least one golden file."""
    from mcir.passes.fold import NOOPS

    texts = "".join(p.read_text() for p in (GOLDEN / "fold").glob("*.mcir"))
    for rule in NOOPS:
        root = sorted(rule.roots)[0]
        assert f"= {root}(" in texts, f"no golden file exercises {rule}"
