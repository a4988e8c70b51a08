"""Conformance of mcir's ONNX import with the backend tests that ship in the ``onnx`` wheel.

Node tests: every case ``onnx.backend.test.case.node`` generates is imported and run
(interpreter by default, ``--native`` compiles each case that imports); the table counts
per op how many cases pass, give wrong results, are refused as unsupported, or fail
otherwise. Light models (``onnx/backend/test/data/light``: real CNN architectures with
constant weights): imported, compiled and compared with ONNX Runtime natively, on the
logits before the final softmax (the constant weights make the softmax itself uniform).

    python benchmarks/onnx_conformance.py                 # node tests, interpreter
    python benchmarks/onnx_conformance.py --native        # node tests, native libraries
    python benchmarks/onnx_conformance.py --light         # the light models
    python benchmarks/onnx_conformance.py --filter conv   # cases whose name contains "conv"
"""

from __future__ import annotations

import argparse
import collections
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def node_table(mode: str, pattern: str | None, verbose: bool) -> None:
    from mcir.frontend.onnx_backend import case_op, node_cases, run_case

    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for case in node_cases(pattern):
        outcome, detail = run_case(case, mode)
        counts[case_op(case)][outcome] += 1
        if verbose and outcome in ("fail", "error"):
            print(f"  {case.name}: {outcome}: {detail}", file=sys.stderr)
    total = collections.Counter()
    rows = []
    for op in sorted(counts):
        c = counts[op]
        total.update(c)
        if c["pass"] + c["fail"] + c["error"]:  # ops mcir imports (or tries to)
            rows.append(f"| {op} | {c['pass']} | {c['fail']} | {c['error']} | {c['unsupported']} |")
    unsupported_ops = sorted(op for op, c in counts.items() if not (c["pass"] + c["fail"] + c["error"]))
    print(
        f"node tests ({mode}): {total['pass']} pass, {total['fail']} wrong, {total['error']} error, "
        f"{total['unsupported']} unsupported, of {sum(total.values())} cases in {len(counts)} ops"
    )
    print("\n| op | pass | wrong | error | unsupported |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nops refused in every case ({len(unsupported_ops)}): {', '.join(unsupported_ops)}")


def light_table() -> None:
    import onnx
    import onnxruntime as ort

    import mcir

    folder = Path(onnx.__file__).parent / "backend/test/data/light"
    print(
        "| model | import s | compile s | ops | max abs diff vs ORT (logits) / max abs logit |\n|---|---|---|---|---|"
    )
    for path in sorted(folder.glob("*.onnx")):
        model = onnx.load(str(path))
        logits = _pre_softmax(model)
        t = time.perf_counter()
        g = mcir.from_onnx(model, name=path.stem)
        t_import = time.perf_counter() - t
        x = [np.random.default_rng(0).standard_normal(v.type.shape).astype(np.float32) for v in g.inputs]
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            lib = mcir.compile(g, f"{tmp}/{g.name}")
            t_compile = time.perf_counter() - t
            got = lib(*x)[-1]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feed = {i.name: a for i, a in zip(sess.get_inputs(), x)}
        want = sess.run([logits], feed)[0]
        rel = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))
        ops = sum(1 for _ in g.compute_ops())
        print(f"| {path.stem} | {t_import:.1f} | {t_compile:.1f} | {ops} | {rel:.1e} |", flush=True)


def _pre_softmax(model) -> str:
    """Make the input of the final Softmax a graph output too (appended last); return its name."""
    from onnx import helper

    last = model.graph.node[-1]
    if last.op_type != "Softmax":
        return model.graph.output[0].name
    name = last.input[0]
    model.graph.output.append(helper.make_tensor_value_info(name, 1, None))
    return name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--native", action="store_true", help="run node cases as compiled libraries")
    p.add_argument("--light", action="store_true", help="the light models instead of the node tests")
    p.add_argument("--filter", help="only node cases whose name contains this")
    p.add_argument("-v", "--verbose", action="store_true", help="list every wrong or failing case")
    args = p.parse_args()
    print(f"# {platform.processor() or platform.machine()}, onnx {__import__('onnx').__version__}")
    if args.light:
        light_table()
    else:
        node_table("native" if args.native else "interp", args.filter, args.verbose)


if __name__ == "__main__":
    main()
