"""INT8 latency of mcir-compiled libraries vs PyTorch and ONNX Runtime INT8 (issue #5).

    python benchmarks/bench_int8.py                      # all models, batch 1 and 32
    python benchmarks/bench_int8.py --models linear4096 mlp --batches 1 --markdown

Contenders, all single-threaded, interleaved in the same process (see timing.py):

* ``mcir int8``: ``quant8`` (u8 activations, int8 per-channel weights, calibrated) compiled
  to one native library; ``mcir fp32``: the same model compiled without quantisation;
* ``torch fp32``: eager PyTorch;
* ``torch dyn``: ``torch.ao.quantization.quantize_dynamic`` (int8 ``nn.Linear``);
* ``torch fx``: FX graph mode static int8 (``prepare_fx``/``convert_fx``, fbgemm, calibrated);
* ``ORT static``: ``onnxruntime.quantization.quantize_static``, QDQ, u8 activations, int8
  per-channel weights, calibrated (MinMax) on the same batches as mcir;
* ``ORT dyn``: ``onnxruntime.quantization.quantize_dynamic``.

Latencies are medians over rounds; ratios are medians of per-round ratios (``paired_ratio``),
> 1 meaning mcir int8 is faster; "best int8 peer" takes the fastest PyTorch/ORT int8 contender
of each round. SQNR columns compare int8 outputs with torch fp32 on the timed input.
"weights" are the constant bytes mcir put in each library (int8 data, per-channel tables);
".so" the file sizes (LLVM merges identical constants, e.g. the encoder's four layers, which
``nn.TransformerEncoder`` deep-copies from one layer).
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import fmt_time, interleaved, median, paired_ratio, single_thread, suite_main

single_thread()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from models import MODELS, example  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

import mcir  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402

warnings.filterwarnings("ignore")  # torch.ao deprecation notices, ORT quantizer chatter

PEERS = ("torch dyn", "torch fx", "ORT static", "ORT dyn")
TIMED = ("torch fp32", "mcir fp32", *PEERS, "mcir int8")


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(((np.asarray(got, np.float64) - ref) ** 2).sum())
    return 10 * np.log10(float((np.asarray(ref, np.float64) ** 2).sum()) / max(noise, 1e-30))


@contextlib.contextmanager
def no_mha_fastpath():
    """Quantised TransformerEncoderLayers cannot take PyTorch's fused fast path (it reads
    ``linear1.weight`` as a tensor); eager fp32 keeps it."""
    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)


def torch_dynamic(model: torch.nn.Module) -> Callable:
    q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)

    def run(x):
        with no_mha_fastpath():
            return q(x)

    return run


def torch_fx(model: torch.nn.Module, calib: list[torch.Tensor]) -> Callable:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "fbgemm"
    prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("fbgemm"), example_inputs=(calib[0],))
    with no_mha_fastpath():
        for c in calib:
            prepared(c)
    q = convert_fx(prepared)

    def run(x):
        with no_mha_fastpath():
            return q(x)

    return run


def _session(model_bytes: bytes | str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


class _Reader(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]) -> None:
        self.it = iter([{"x": b} for b in batches])

    def get_next(self):
        return next(self.it, None)


def ort_models(model: torch.nn.Module, x: torch.Tensor, calib: list[torch.Tensor], tmp: Path) -> dict[str, Callable]:
    """ORT fp32 export, then static QDQ and dynamic int8 sessions."""
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])
    f32, pre = tmp / "f32.onnx", tmp / "pre.onnx"
    f32.write_bytes(buf.getvalue())
    try:
        quant_pre_process(str(f32), str(pre))
    except Exception:  # symbolic shape inference fails on the encoder's reshapes
        quant_pre_process(str(f32), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(tmp / "static.onnx"),
        _Reader([c.numpy() for c in calib]),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    quantize_dynamic(str(pre), str(tmp / "dynamic.onnx"), weight_type=QuantType.QInt8)
    out = {}
    for key, file in (("ORT static", "static.onnx"), ("ORT dyn", "dynamic.onnx")):
        sess = _session(str(tmp / file))
        out[key] = lambda x, s=sess: s.run(None, {"x": x.numpy()})[0]
    return out


def bench(name: str, batch: int, build: Path, rounds: int) -> dict:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = example(name, batch)
    calib = [example(name, batch) for _ in range(4 if batch == 1 else 1)]
    xn = x.numpy()

    t0 = time.perf_counter()
    graph = mcir.trace(model, (x,), tracer="export", name=name)
    q = mcir.run_passes(graph, "quant8", calibration=[(c.numpy(),) for c in calib])
    lib8 = compile_graph(q, build / f"{name}_int8_b{batch}")
    compile_s = time.perf_counter() - t0
    lib32 = compile_graph(graph, build / f"{name}_fp32_b{batch}")
    y8 = np.empty(lib8.outputs[0].shape, lib8.outputs[0].dtype)
    y32 = np.empty(lib32.outputs[0].shape, lib32.outputs[0].dtype)
    run8, run32 = lib8.bind([xn], [y8]), lib32.bind([xn], [y32])

    fns: dict[str, Callable] = {"torch fp32": model, "mcir fp32": None, "mcir int8": None}
    notes = []
    for key, make in (("torch dyn", lambda: torch_dynamic(model)), ("torch fx", lambda: torch_fx(model, calib))):
        try:
            fns[key] = make()
        except Exception as e:  # report, do not hide: the table says n/a and why
            notes.append(f"{name}: {key} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fns |= ort_models(model, x, calib, Path(tmp))
        except Exception as e:
            notes.append(f"{name}: ORT quantization failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")

    with torch.inference_mode():
        ref = model(x).numpy()
        run8()
        sqnr = {"mcir int8": sqnr_db(ref, y8)}
        for key in PEERS:
            if fns.get(key) is not None:
                out = fns[key](x)
                sqnr[key] = sqnr_db(ref, out.numpy() if isinstance(out, torch.Tensor) else out)
        timed = {k: (lambda f=fns[k]: f(x)) for k in TIMED if fns.get(k) is not None}
        timed["mcir fp32"] = run32
        timed["mcir int8"] = run8
        samples = interleaved({k: timed[k] for k in TIMED if k in timed}, rounds=rounds)
    mine = samples["mcir int8"]
    ratios = {k: paired_ratio(samples[k], mine) for k in samples if k != "mcir int8"}
    peers = [samples[k] for k in PEERS if k in samples]
    if peers:  # per round, the fastest int8 peer of that round
        ratios["best int8 peer"] = paired_ratio([min(r) for r in zip(*peers)], mine)
    return {
        "model": name,
        "batch": batch,
        "times": {k: median(v) for k, v in samples.items()},
        "ratios": ratios,
        "sqnr": sqnr,
        "compile_s": compile_s,
        "bytes": (lib8.file_size, lib32.file_size),
        "weights": (lib8.weight_bytes, lib32.weight_bytes),
        "notes": notes,
    }


def table(rows: list[dict], markdown: bool) -> str:
    head = ["model", "batch", *TIMED, "vs best int8 peer", "vs torch dyn", "vs ORT static", "vs mcir fp32"]
    head += ["SQNR mcir", "SQNR ORT st", "weights int8/fp32", ".so int8/fp32", "quant8+compile"]
    body = []
    for r in rows:
        t, q = r["times"], r["ratios"]

        def ratio(key: str, q: dict = q) -> str:
            return f"{q[key]:.2f}x" if key in q else "n/a"

        cells = [r["model"], str(r["batch"])]
        cells += [fmt_time(t[k]) if k in t else "n/a" for k in TIMED]
        cells += [ratio("best int8 peer"), ratio("torch dyn"), ratio("ORT static"), ratio("mcir fp32")]
        s = r["sqnr"]
        cells += [f"{s['mcir int8']:.1f} dB", f"{s['ORT static']:.1f} dB" if "ORT static" in s else "n/a"]
        w8, w32 = r["weights"]
        cells.append(f"{w8 / 1e6:.2f}/{w32 / 1e6:.2f} MB ({w8 / w32:.2f})")
        cells.append(f"{r['bytes'][0] / 1e6:.2f}/{r['bytes'][1] / 1e6:.2f} MB")
        cells.append(f"{r['compile_s']:.1f} s")
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    if markdown:
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |"]
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |" for b in body]
    else:
        lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    notes = [n for r in rows for n in r["notes"]]
    return "\n".join(lines + ([""] + notes if notes else []))


def main() -> None:
    suite_main(__doc__, bench, table, list(MODELS))


if __name__ == "__main__":
    main()
