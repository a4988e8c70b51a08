"""Golden IR-in / IR-out tests for passes (``tests/golden/<pass>/*.mcir``).

Each file holds a ``// pipeline: ...`` line, the input graph, a ``// ----- expected -----``
marker and the expected output graph. The test runs the pipeline and compares the
printed result byte for byte; both graphs must also round-trip through the parser, and
when every constant has data the output must compute the same values as the input
(within 1e-6 relative to the largest output: the passes tested here are exact).

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
from mcir.passes.quantize import random_batches

GOLDEN = Path(__file__).parent / "golden"
MARKER = "// ----- expected -----\n"
FILES = sorted(GOLDEN.glob("*/*.mcir"))


def _split(path: Path) -> tuple[str, str, str | None]:
    text = path.read_text()
    m = re.search(r"^// pipeline: (.*)$", text, re.M)
    assert m, f"{path}: missing '// pipeline: ...' line"
    before, sep, after = text.partition(MARKER)
    return m.group(1).strip(), before, (after if sep else None)


def _code(section: str) -> str:
    return "".join(line + "\n" for line in section.splitlines() if line.strip() and not line.lstrip().startswith("//"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden(path: Path):
    pipeline, before, expected = _split(path)
    source = mcir.parse(before, source=str(path))
    assert str(source) == _code(before), "the input section is not in canonical printed form"
    graph = mcir.run_passes(source, pipeline, verify_each=True)
    result = str(graph)
    if os.environ.get("MCIR_UPDATE_GOLDEN"):
        path.write_text(before.rstrip("\n") + "\n" + MARKER + result)
        expected = result
    assert expected is not None, f"{path} has no expected section; run with MCIR_UPDATE_GOLDEN=1"
    assert result == expected
    assert str(mcir.parse(expected)) == expected

    if all(op.data is not None for op in source.constants()):
        for xs in random_batches(source, 3):
            # the result graph itself: encoded constants (#csr, #nm, ...) are not printed with their data
            for a, b in zip(mcir.interpret(source, *xs), mcir.interpret(graph, *xs)):
                a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
                scale = max(1.0, float(np.abs(a64).max()) if a64.size else 1.0)
                assert np.abs(a64 - b64).max() <= 1e-6 * scale


def test_every_fold_rule_has_a_golden_file():
    """Each rule of the fold pass is exercised by at least one golden file."""
    from mcir.passes.fold import NOOPS

    texts = "".join(p.read_text() for p in (GOLDEN / "fold").glob("*.mcir"))
    for rule in NOOPS:
        root = sorted(rule.roots)[0]
        assert f"= {root}(" in texts, f"no golden file exercises {rule}"
