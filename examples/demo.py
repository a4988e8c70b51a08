"""The demo behind `make demo`: the bundled digits MLP from PyTorch to a native library.

1. train the model (a few seconds, scikit-learn's bundled digits, no downloads) and save
   it as a state dict, unless it is already there;
2. load it the safe way (state dict + factory) and trace it into mcir's IR;
3. run the IR with the reference interpreter and compare with torch;
4. compress it (`fold,quant8`) with calibration data, compile float and INT8 graphs to
   native libraries, run them, and print the compile report and the accuracies.
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
from mcir.frontend.model_file import load_model  # noqa: E402

WEIGHTS = ROOT / "examples" / "digits" / "digits_mlp.pt"
FACTORY = "examples/digits/model.py:make_model"
BUILD = ROOT / "build" / "demo"


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
    model, _ = load_model(WEIGHTS, model_def=FACTORY, inputs=(f"x={len(x_test)}x64:f32",))
    graph = mcir.trace(model, (torch.from_numpy(x_test),), name="digits")
    print(graph)

    section("3. reference interpreter vs torch")
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    (ir_logits,) = mcir.interpret(graph, x_test)
    rel = np.abs(ir_logits - torch_logits).max() / np.abs(torch_logits).max()
    acc_torch = float(np.mean(torch_logits.argmax(1) == y_test))
    acc_ir = float(np.mean(ir_logits.argmax(1) == y_test))
    print(f"max relative difference {rel:.2e}; accuracy torch {acc_torch:.2%}, interpreter {acc_ir:.2%}")

    section("4. compress: fold,quant8 (calibrated on training images)")
    calibration = [(x_train[i : i + len(x_test)],) for i in range(0, len(x_train) - len(x_test) + 1, len(x_test))]
    q8 = mcir.run_passes(graph, "fold,quant8", calibration=calibration, sample_inputs=[(x_test,)])
    print(q8.meta["report"].table())
    (q_logits,) = mcir.interpret(q8, x_test)
    print(f"int8 accuracy (interpreter) {np.mean(q_logits.argmax(1) == y_test):.2%}")
    compile_and_run(graph, q8, x_test, y_test)
    return 0


def compile_and_run(graph: mcir.Graph, q8: mcir.Graph, x_test: np.ndarray, y_test: np.ndarray) -> None:
    """Compile the float and INT8 graphs, run them natively and report (needs the native backend)."""
    try:
        from mcir.compile_driver import compile_report
    except ImportError:
        print("(the native backend is not available in this build)")
        return
    section("5. native libraries")
    for g, name in ((graph, "digits_f32"), (q8, "digits_int8")):
        print(f"-- {name} (pipeline: {g.meta.get('pipeline') or 'none'})")
        try:
            lib, report = compile_report(g, BUILD / name, samples=[(x_test,)], original=graph, compare=False)
        except mcir.McirError as e:  # e.g. a kernel this build does not have yet: say so, go on
            print(f"cannot compile {name}: {e}\n")
            continue
        print(report)
        (logits,) = lib(x_test)
        print(f"native accuracy {np.mean(logits.argmax(1) == y_test):.2%}\n")


if __name__ == "__main__":
    sys.exit(main())
