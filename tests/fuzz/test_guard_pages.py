"""Every kernel the registry lists stays inside its buffers (issue #17: "tested with guard pages for
each op x encoding the registry lists").

``registry_cases.py`` builds the smallest valid graph for every alternative of every registry entry
(340 cases over all 112 entries); ``guard_pages.py`` compiles them in few libraries and runs them with
each input and output ending exactly at a PROT_NONE page, then starting right after one (inputs
read-only), and compares with the interpreter. It runs in a subprocess: a SIGSEGV fails the test,
and the cases of the crashed group are then run one by one to name the kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.registry_cases import SKIPPED, cases, missing

ROOT = Path(__file__).resolve().parents[2]
#: cases a clean compile-time refusal (McirError) is expected for, with the reason (none today)
REFUSED_OK: dict[str, str] = {}


def run_guarded(indices: list[int]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "tests.fuzz.guard_pages", *map(str, indices)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


def check_group(indices: list[int]) -> None:
    r = run_guarded(indices)
    if r.returncode < 0:  # killed by a signal: find the kernels, one case per process
        crashed = [cases()[i].key for i in indices if run_guarded([i]).returncode < 0]
        pytest.fail(f"signal {-r.returncode} running guarded buffers; crashing cases: {crashed}\n{r.stderr[-2000:]}")
    lines = [ln for ln in r.stdout.splitlines() if ln and ln != "ok"]
    refused = [ln for ln in lines if ln.startswith("REFUSED") and not any(k in ln for k in REFUSED_OK)]
    wrong = [ln for ln in lines if not ln.startswith("REFUSED")]
    assert r.returncode in (0, 1), r.stderr[-3000:]
    assert not wrong, "\n".join(wrong)
    assert not refused, "\n".join(refused)


def test_every_registry_entry_has_a_case_or_a_reviewed_skip() -> None:
    assert missing() == sorted(SKIPPED)
    assert len(cases()) >= 300


def test_a_byte_past_a_guarded_buffer_is_a_crash_not_a_silent_write() -> None:
    # the harness itself: one byte written after (or before) a guarded array kills the process
    for where in ("nbytes", "-1"):
        code = (
            "import ctypes, numpy as np; from tests.fuzz.guard_pages import guarded\n"
            "for at_end in (True, False):\n"
            "    a, _ = guarded((3, 5), np.float32, at_end)\n"
            "    a[...] = 1; assert (a == 1).all()\n"
            f"a, _ = guarded((3, 5), np.float32, {where == 'nbytes'})\n"
            f"ctypes.memset(a.ctypes.data + ({'a.nbytes' if where == 'nbytes' else '-1'}), 0, 1)"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
        assert r.returncode == -11, (where, r.returncode, r.stderr[-500:])


# the audit's worst finding: float kernels chosen for quantised values (u8 relu, clamp, neg, where,
# mean, adaptive_avg_pool2d, embedding...): their quantised cases in the fast suite
AUDIT_OPS = {"relu", "clamp", "neg", "abs", "sigmoid", "silu", "minimum", "where", "mean", "adaptive_avg_pool2d"}
AUDIT = [i for i, c in enumerate(cases()) if c.op in AUDIT_OPS and any("#" in s for s in (*c.operands, c.result))]


def test_kernels_on_quantised_values_stay_inside_guarded_buffers() -> None:
    check_group(AUDIT)


GROUPS = 4


@pytest.mark.slow  # 340 cases in 4 libraries: ~35 s
@pytest.mark.parametrize("group", range(GROUPS))
def test_every_registry_case_stays_inside_guarded_buffers(group: int) -> None:
    check_group(list(range(group, len(cases()), GROUPS)))
