"""Build the two models the C example links: ``mlp`` (64 -> 32 -> 10) and ``classify``
(softmax + argmax), plus an input and the interpreter's expected outputs.

    python examples/c/make_models.py build/c-example

and ``wide`` (a 32 x 256 -> 700 linear + relu), which ``threads.c`` runs with a pthreads hook.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import mcir
from mcir.codegen import compile as compile_graph
from mcir.ir import Graph
from mcir.types import tensor


def graphs(seed: int = 0) -> tuple[Graph, Graph]:
    rng = np.random.default_rng(seed)
    g = Graph("mlp")
    x = g.add_input("x", tensor([1, 64]))
    w1 = g.const("fc1.weight", (rng.standard_normal((32, 64)) / 8).astype(np.float32))
    b1 = g.const("fc1.bias", (rng.standard_normal(32) / 10).astype(np.float32))
    w2 = g.const("fc2.weight", (rng.standard_normal((10, 32)) / 6).astype(np.float32))
    h = g.add("relu", [g.add("linear", [x, w1, b1])])
    g.set_outputs([g.add("linear", [h, w2], result="logits")])
    c = Graph("classify")
    logits = c.add_input("logits", tensor([1, 10]))
    c.set_outputs([c.add("softmax", [logits], result="probs"), c.add("argmax", [logits], {"axis": 1}, result="label")])
    return g, c


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    mlp, classify = graphs()
    compile_graph(mlp, out / "mlp")  # -> mlp.o, mlp.so, mlp.h with symbols mcir_mlp_*
    compile_graph(classify, out / "classify")
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    # threads.c: a batch-32 layer large enough to be split across threads
    wide = Graph("wide")
    xw = wide.add_input("x", tensor([32, 256]))
    ww = wide.const("w", (np.random.default_rng(2).standard_normal((700, 256)) / 16).astype(np.float32))
    wide.set_outputs([wide.add("relu", [wide.add("linear", [xw, ww])])])
    compile_graph(wide, out / "wide")
    (logits,) = mcir.interpret(mlp, x)
    probs, label = mcir.interpret(classify, logits)
    x.tofile(out / "input.bin")
    probs.astype(np.float32).tofile(out / "expected_probs.bin")
    label.astype(np.int64).tofile(out / "expected_label.bin")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "build/c-example"))
