"""Fuzz mcir with mutated real graphs and random torch models (issue #17):
``python benchmarks/fuzz.py --n 20000 --models 200``.

Each case is a seed graph of ``tests/fuzz/harness.py`` (an MLP and a conv net through quant8, CSR and
2:4 pruning, binarize, ternarize, cluster, int4) with one random mutation of its text, its lines or
one element of a stored component; it runs parse -> verify -> interpret, and every ``--compile-every``
th case also compiles and runs natively against the interpreter. Prints how far cases got and every
failure that is not a ``McirError`` (with its mutation, to replay); exits 1 if there was any.

``--models N`` also runs N random torch models (``tests/fuzz/random_models.py``, seeds ``--model-seed``
on) through trace, fold, quant8 and compile, differentially against torch and the interpreter; a
model's failure is a non-McirError exception or numbers outside ``random_models.TOL``.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz.harness import HOSTILE_VALUES, mutate_component, mutate_line, mutate_text, run_case, seeds
from tests.fuzz.random_models import check_model, random_model


def random_case(rng: random.Random):
    """One mutation of one seed, drawn like the hypothesis strategies of tests/fuzz/test_mutations.py."""
    seed = rng.choice(seeds())
    kind = rng.random()
    if kind < 0.5:
        return mutate_text(seed, rng.randrange(1 << 16), rng.choice(HOSTILE_VALUES))
    if kind < 0.6:
        return mutate_line(seed, rng.randrange(1 << 16), rng.random() < 0.5)
    return mutate_component(seed, rng.randrange(1 << 16), rng.randrange(1 << 30), rng.randrange(8))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="number of cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile-every", type=int, default=50, help="compile and run natively every Nth case (0: never)")
    ap.add_argument("--time-limit", type=float, default=0, help="stop after this many seconds (0: no limit)")
    ap.add_argument("--models", type=int, default=0, help="random torch models to run (0: none)")
    ap.add_argument("--model-seed", type=int, default=0, help="the first random model's seed")
    args = ap.parse_args()
    failed = run_mutations(args) if args.n else False
    if args.models:
        failed = run_models(args.models, args.model_seed) or failed
    return 1 if failed else 0


def run_models(count: int, first: int) -> bool:
    """Run ``count`` random models; print outcomes and failures; True if any model failed."""
    outcomes: collections.Counter[str] = collections.Counter()
    failures = []
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(first, first + count):
            try:
                outcome = check_model(seed, Path(tmp))
            except Exception as e:  # numbers outside the tolerance (Mismatch) or a bug
                outcome = f"FAILED {type(e).__name__}"
                failures.append((random_model(seed)[2], "".join(traceback.format_exception_only(e)).strip()))
            outcomes[outcome] += 1
    print(f"{count} random models in {time.time() - start:.0f} s (seeds {first}..{first + count - 1})")
    for what, n in outcomes.most_common():
        print(f"  {n:6d}  {what}")
    for describe, error in failures[:50]:
        print(f"FAIL {describe}\n     {error[:300]}")
    return bool(failures)


def run_mutations(args: argparse.Namespace) -> bool:
    """The mutated-text cases of ``--n``; True if any raised something other than a McirError."""
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    failures = []
    differs: list[str] = []
    start = time.time()
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            if args.time_limit and time.time() - start > args.time_limit:
                break
            case = random_case(rng)
            compile_dir = None
            if args.compile_every and i % args.compile_every == 0:
                compile_dir = Path(tmp) / str(i)
                compile_dir.mkdir()
            try:
                outcome = run_case(case, compile_dir)
                outcomes[outcome] += 1
                if "DIFFERS" in outcome:
                    differs.append(case.describe)
            except Exception as e:  # the fuzzer's job is to find these
                outcomes[f"FAILED {type(e).__name__}"] += 1
                failures.append((case.describe, "".join(traceback.format_exception_only(e)).strip()))
            done += 1
    elapsed = time.time() - start
    print(f"{done} cases in {elapsed:.0f} s ({len(seeds())} seeds, seed={args.seed})")
    for what, count in outcomes.most_common():
        print(f"  {count:6d}  {what}")
    for describe in differs[:20]:
        print(f"DIFFERS {describe}")
    for describe, error in failures[:50]:
        print(f"FAIL {describe}\n     {error[:300]}")
    return bool(failures)


if __name__ == "__main__":
    sys.exit(main())
