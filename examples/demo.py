"""The demo behind `make demo`: the bundled digits MLP from PyTorch to native libraries.

1. train the model (a few seconds, scikit-learn's bundled digits, no downloads) and save
   it as a state dict, unless it is already there;
2. load it the safe way (state dict + factory) and trace it into mcir's IR;
3. run the IR with the reference interpreter and compare with torch;
4. compress it with several pipelines, compile each to a native library, and measure
   size, latency and accuracy of every library in the same run;
5. print the full compile report of the INT8 library.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mcir  # noqa: E402
from examples.digits.model import load_data, train  # noqa: E402
from mcir.compile_driver import compile_report, time_call  # noqa: E402
from mcir.frontend.model_file import load_model  # noqa: E402
from mcir.report import format_table, human_bytes, human_seconds  # noqa: E402

WEIGHTS = ROOT / "examples" / "digits" / "digits_mlp.pt"
FACTORY = "examples/digits/model.py:make_model"
BUILD = ROOT / "build" / "demo"
PIPELINES = ["", "fold,quant8", "prune(sparsity=0.5),quant8", "binarize", "binarize(activations=binary)"]


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def main() -> int:
    x_train, _, x_test, y_test = load_data()
    section("1. model")
    if not WEIGHTS.exists():
        t0 = time.perf_counter()
        model, acc = train()
        torch.save(model.state_dict(), WEIGHTS)
        print(
            f"trained the digits MLP in {time.perf_counter() - t0:.1f} s (test accuracy {acc:.2%}), "
            f"saved {WEIGHTS.relative_to(ROOT)}"
        )
    else:
        print(f"using {WEIGHTS.relative_to(ROOT)}")

    section("2. trace (state dict + factory: nothing is unpickled but tensors)")
    model, _ = load_model(WEIGHTS, model_def=FACTORY, inputs=("x=1x64:f32",))
    graph = mcir.trace(model, (torch.zeros(1, 64),), name="digits")
    print(graph)

    section("3. reference interpreter vs torch (450 test images)")
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    ir_logits = np.concatenate([mcir.interpret(graph, x_test[i : i + 1])[0] for i in range(len(x_test))])
    rel = np.abs(ir_logits - torch_logits).max() / np.abs(torch_logits).max()
    print(
        f"max relative difference {rel:.2e}; accuracy torch {np.mean(torch_logits.argmax(1) == y_test):.2%}, "
        f"interpreter {np.mean(ir_logits.argmax(1) == y_test):.2%}"
    )

    section("4. compress and compile (batch 1, one native call per image)")
    calibration = [(x_train[i : i + 1],) for i in range(0, 512, 4)]
    rows, int8 = [], None
    for pipeline in PIPELINES:
        g = mcir.run_passes(graph, pipeline, calibration=calibration) if pipeline else graph
        name = "digits_" + ("fp32" if not pipeline else pipeline.split("(")[0].split(",")[-1])
        if "activations=binary" in pipeline:
            name += "_xnor"
        try:
            lib = mcir.compile(g, BUILD / name)
        except mcir.McirError as e:  # a kernel this build lacks: say so and go on
            rows.append([pipeline or "(none: fp32)", "-", "-", "-", f"not compiled: {str(e)[:60]}..."])
            continue
        logits = np.concatenate([lib(x_test[i : i + 1])[0] for i in range(len(x_test))])
        out = [np.empty((1, 10), np.float32)]
        t = np.median(time_call(lib.bind([x_test[:1]], out), runs=300))
        rows.append(
            [
                pipeline or "(none: fp32)",
                human_bytes(lib.file_size),
                human_bytes(lib.weight_bytes),
                human_seconds(t),
                f"{np.mean(logits.argmax(1) == y_test):.2%}",
            ]
        )
        if pipeline == "fold,quant8":
            int8 = g
    with torch.inference_mode():
        xt = torch.from_numpy(x_test[:1])
        t_torch = np.median(time_call(lambda: model(xt), runs=300))
    rows.append(
        ["torch eager (fp32)", "-", "-", human_seconds(t_torch), f"{np.mean(torch_logits.argmax(1) == y_test):.2%}"]
    )
    print(format_table(["pipeline", "library", "weights", "latency", "accuracy"], rows, align="lrrrr"))

    if int8 is not None:
        section("5. the compile report of fold,quant8 (what `mcir compile` prints)")
        print(int8.meta["report"].table())
        print()
        _, report = compile_report(
            int8,
            BUILD / "digits_int8",
            samples=[(x_test[i : i + 1],) for i in range(8)],
            original=graph,
            torch_model=model,
        )
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
