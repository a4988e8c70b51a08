"""Fuzzing as a specification: a mutated real graph is either refused with a McirError or runs.

The seeds (``harness.py``) are an MLP and a conv net through every compressing pass, so every
encoding's parameters and component arrays are mutated. Hypothesis draws the mutation; the suite
runs a bounded number of cases (each test below is well under a few seconds except the compiling
one, marked slow); ``benchmarks/fuzz.py --n 20000`` runs the same cases longer (docs/benchmarks.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import HOSTILE_VALUES, mutate_component, mutate_line, mutate_text, run_case, seeds

seed_index = st.integers(0, 10**6).map(lambda i: seeds()[i % len(seeds())])


@settings(max_examples=300)
@given(seed=seed_index, pick=st.integers(0, 1 << 16), value=st.sampled_from(HOSTILE_VALUES))
def test_hostile_literals_in_the_text_are_refused_or_run(seed, pick, value) -> None:
    # parse -> verify -> interpret raise nothing but McirError (run_case lets anything else through)
    event(run_case(mutate_text(seed, pick, value)))


@settings(max_examples=60)
@given(seed=seed_index, pick=st.integers(0, 1 << 16), duplicate=st.booleans())
def test_deleted_or_duplicated_lines_are_refused_or_run(seed, pick, duplicate) -> None:
    event(run_case(mutate_line(seed, pick, duplicate)))


@settings(max_examples=300)
@given(
    seed=seed_index,
    pick=st.integers(0, 1 << 16),
    element=st.integers(0, 1 << 30),
    which=st.integers(0, 7),
)
def test_extreme_component_values_are_refused_or_run(seed, pick, element, which) -> None:
    # indices, row pointers, padding words and scales set to a dtype's extremes: the loader's checks
    # (Encoding.check_stored) refuse what a kernel would read out of bounds with
    event(run_case(mutate_component(seed, pick, element, which)))


@settings(max_examples=12)
@given(seed=seed_index, pick=st.integers(0, 1 << 16), element=st.integers(0, 1 << 30), which=st.integers(0, 7))
def test_mutated_graphs_that_verify_compile_and_run_or_are_refused(seed, pick, element, which) -> None:
    # the contract is "only McirError"; a native result that differs from the interpreter is an event,
    # not a failure: partial sums beyond the f32 range depend on the summation order (docs/ir.md, "Edge
    # values"; docs/benchmarks.md counts these)
    case = mutate_component(seed, pick, element, which)
    with tempfile.TemporaryDirectory() as tmp:
        event(run_case(case, Path(tmp)))
