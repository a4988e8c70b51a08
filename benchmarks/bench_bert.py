"""Text models at batch 1: HF BERTs with the BERT-tiny and BERT-base shapes and an LSTM classifier (issue #11).

    python benchmarks/bench_bert.py                     # all three models, batch 1
    python benchmarks/bench_bert.py --models bert-base --markdown
    python benchmarks/bench_bert.py --models lstm --markdown

Models (random weights, built from configs; nothing is downloaded):

* ``bert-tiny``: ``transformers.BertModel`` with 2 layers x hidden 128, 2 heads, FFN 512, called
  as users do, ``model(input_ids=..., attention_mask=...)`` on 128 tokens whose last 28 are padding;
  the output is the last hidden state;
* ``bert-base``: the same with BERT-base's encoder, 12 layers x hidden 768, 12 heads, FFN 3072
  (85 M encoder parameters), and a 512-token vocabulary so that the embedding table (23 M
  parameters at BERT's 30522) does not dominate the compile; the same 128 tokens, 28 padded;
* ``lstm``: embedding (vocab 5000, dim 128) -> ``nn.LSTM`` 2 layers x 256 hidden, batch_first
  -> linear on the last step's features (4 classes), 50 tokens.

Contenders, single-threaded, interleaved in one process (see timing.py):

* ``mcir fp32``; ``mcir f16``: the ``half`` pass (f16 weights, f32 compute); ``mcir int8``:
  ``fold,quant8,half`` calibrated on 4 inputs (int8 linear layers and LSTM ``W_hh``; the
  embedding tables, which int8 leaves float, in f16);
* ``torch fp32``: eager; ``torch dyn``: ``quantize_dynamic`` of ``nn.Linear`` (and ``nn.LSTM``);
* ``ORT fp32``, ``ORT dyn``: the ``torch.onnx.export`` of the model in ONNX Runtime, the latter
  after ``onnxruntime.quantization.quantize_dynamic`` (int8 weights);
* ``ORT qdq``: ``onnxruntime.quantization.quantize_static`` in the QDQ format, int8 weights per
  channel, u8 activations calibrated (min/max) on the same 4 inputs as ``mcir int8``.

Latencies are medians over rounds; "x" columns are medians of per-round ratios against
``mcir int8`` (> 1: mcir int8 is faster). SQNR compares each int8 output with torch fp32.
"""

from __future__ import annotations

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
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

import mcir  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402

warnings.filterwarnings("ignore")  # torch.ao deprecation notices, export chatter

TIMED = ("torch fp32", "torch dyn", "ORT fp32", "ORT dyn", "ORT qdq", "mcir fp32", "mcir f16", "mcir int8")
INT8_PEERS = ("torch dyn", "ORT dyn", "ORT qdq")
#: int8 layers; what stays float (embedding tables) stored in f16
INT8_PIPELINE = "fold,quant8,half"


#: (vocab, layers, hidden, heads, FFN) of the BERT shapes
BERT_SHAPES = {"bert-tiny": (30522, 2, 128, 2, 512), "bert-base": (512, 12, 768, 12, 3072)}


class BertLastHidden(torch.nn.Module):
    def __init__(self, shape: str = "bert-tiny") -> None:
        super().__init__()
        import transformers

        vocab, layers, hidden, heads, ffn = BERT_SHAPES[shape]
        config = transformers.BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
        )
        self.bert = transformers.BertModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class LstmClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(5000, 128)
        self.lstm = torch.nn.LSTM(128, 256, num_layers=2, batch_first=True)
        self.fc = torch.nn.Linear(256, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(self.emb(ids))
        return self.fc(y[:, -1])


def inputs(name: str, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    if name in BERT_SHAPES:
        lo, hi = (1000, 30000) if name == "bert-tiny" else (1, BERT_SHAPES[name][0])
        ids = torch.randint(lo, hi, (1, 128), generator=gen)
        mask = torch.ones(1, 128, dtype=torch.long)
        mask[:, 100:] = 0
        return ids, mask
    return (torch.randint(1, 5000, (1, 50), generator=gen),)


MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "bert-tiny": BertLastHidden,
    "bert-base": lambda: BertLastHidden("bert-base"),
    "lstm": LstmClassifier,
}


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(((np.asarray(got, np.float64) - ref) ** 2).sum())
    return 10 * np.log10(float((np.asarray(ref, np.float64) ** 2).sum()) / max(noise, 1e-30))


def _session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class _Calibration(CalibrationDataReader):
    """The calibration inputs of ``mcir int8``, fed to ORT's static quantiser."""

    def __init__(self, names: list[str], batches: list[tuple[np.ndarray, ...]]) -> None:
        self.feeds = iter([dict(zip(names, batch)) for batch in batches])

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


def ort_models(
    model: torch.nn.Module, xs: tuple[torch.Tensor, ...], tmp: Path, calib: list[tuple[np.ndarray, ...]]
) -> tuple[dict[str, Callable], list[str]]:
    """The ORT contenders, and notes on any that could not be built (the table then says n/a)."""
    names = [f"in{i}" for i in range(len(xs))]
    buf = io.BytesIO()
    torch.onnx.export(model, xs, buf, dynamo=False, input_names=names, output_names=["y"])
    (tmp / "f32.onnx").write_bytes(buf.getvalue())
    quantize_dynamic(str(tmp / "f32.onnx"), str(tmp / "dyn.onnx"), weight_type=QuantType.QInt8)
    files, notes = [("ORT fp32", "f32.onnx"), ("ORT dyn", "dyn.onnx")], []
    try:
        quantize_static(
            str(tmp / "f32.onnx"),
            str(tmp / "qdq.onnx"),
            _Calibration(names, calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        files.append(("ORT qdq", "qdq.onnx"))
    except Exception as e:  # report, do not hide
        notes.append(f"ORT static QDQ failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    feeds = {n: x.numpy() for n, x in zip(names, xs)}
    out = {}
    for key, file in files:
        sess = _session(str(tmp / file))
        out[key] = lambda s=sess: s.run(None, feeds)[0]
    return out, notes


def bench(name: str, batch: int, build: Path, rounds: int) -> dict:
    if batch != 1:
        raise SystemExit("bench_bert measures batch 1 only")
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    xs = inputs(name, 0)
    arrays = [x.numpy() for x in xs]
    t0 = time.perf_counter()
    graph = mcir.trace(model, xs, name=name.replace("-", "_"))
    calib = [tuple(x.numpy() for x in inputs(name, s)) for s in (1, 2, 3, 4)]
    q = mcir.run_passes(graph, INT8_PIPELINE, calibration=calib)
    t1 = time.perf_counter()
    lib8 = compile_graph(q, build / f"{name}_int8")
    times_s = (t1 - t0, time.perf_counter() - t1)  # trace + quant8 (calibration), compile of the int8 graph
    lib32 = compile_graph(graph, build / f"{name}_fp32")
    lib16 = compile_graph(mcir.run_passes(graph, "half"), build / f"{name}_f16")
    y8, y16, y32 = (np.empty(lib.outputs[0].shape, lib.outputs[0].dtype) for lib in (lib8, lib16, lib32))
    run8, run16, run32 = lib8.bind(arrays, [y8]), lib16.bind(arrays, [y16]), lib32.bind(arrays, [y32])

    notes: list[str] = []
    dyn_types = {torch.nn.Linear, torch.nn.LSTM} if name == "lstm" else {torch.nn.Linear}
    qdyn = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), dyn_types, dtype=torch.qint8)
    fns: dict[str, Callable] = {"torch fp32": lambda: model(*xs), "torch dyn": lambda: qdyn(*xs)}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ort_fns, ort_notes = ort_models(model, xs, Path(tmp), calib)
            fns |= ort_fns
            notes += [f"{name}: {n}" for n in ort_notes]
        except Exception as e:  # report, do not hide: the table says n/a and why
            notes.append(f"{name}: ONNX export/ORT failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
        fns["mcir fp32"], fns["mcir f16"], fns["mcir int8"] = run32, run16, run8
        with torch.inference_mode():
            ref = model(*xs).numpy()
            run8()
            run16()
            run32()
            sqnr = {"mcir int8": sqnr_db(ref, y8), "mcir fp32": sqnr_db(ref, y32)}
            f16_err = float(np.abs(y16 - ref).max() / np.abs(ref).max())
            for key in INT8_PEERS:
                if key in fns:
                    out = fns[key]()
                    sqnr[key] = sqnr_db(ref, out.numpy() if isinstance(out, torch.Tensor) else out)
            samples = interleaved({k: fns[k] for k in TIMED if k in fns}, rounds=rounds)
    mine = samples["mcir int8"]
    ratios = {k: paired_ratio(samples[k], mine) for k in samples if k != "mcir int8"}
    peers = [samples[k] for k in INT8_PEERS if k in samples]
    ratios["best int8 peer"] = paired_ratio([min(r) for r in zip(*peers)], mine)
    fp32_peers = [samples[k] for k in ("torch fp32", "ORT fp32") if k in samples]
    ratios["fp32: best peer / mcir"] = paired_ratio([min(r) for r in zip(*fp32_peers)], samples["mcir fp32"])
    return {
        "model": name,
        "times": {k: median(v) for k, v in samples.items()},
        "ratios": ratios,
        "sqnr": sqnr,
        "build_s": times_s,
        "weights": (lib8.weight_bytes, lib32.weight_bytes),
        "f16": (lib16.weight_bytes, f16_err),
        "notes": notes,
    }


def table(rows: list[dict], markdown: bool) -> str:
    head = ["model", *TIMED, "int8: best peer / mcir", "fp32: best peer / mcir", "SQNR mcir int8"]
    head += [
        "SQNR torch dyn",
        "SQNR ORT dyn",
        "SQNR ORT qdq",
        "weights int8/f16/fp32",
        "f16 max rel err",
        "trace+quant8 / compile",
    ]
    body = []
    for r in rows:
        t, q, s = r["times"], r["ratios"], r["sqnr"]
        cells = [r["model"], *[fmt_time(t[k]) if k in t else "n/a" for k in TIMED]]
        cells += [f"{q['best int8 peer']:.2f}x", f"{q['fp32: best peer / mcir']:.2f}x"]
        cells += [f"{s[k]:.1f} dB" if k in s else "n/a" for k in ("mcir int8", "torch dyn", "ORT dyn", "ORT qdq")]
        w8, w32 = r["weights"]
        w16, err16 = r["f16"]
        cells += [
            f"{w8 / 1e6:.2f}/{w16 / 1e6:.2f}/{w32 / 1e6:.2f} MB",
            f"{err16:.1e}",
            "{:.1f} s / {:.1f} s".format(*r["build_s"]),
        ]
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
    sys.argv += [] if "--batches" in sys.argv else ["--batches", "1"]
    suite_main(__doc__, bench, table, list(MODELS))


if __name__ == "__main__":
    main()
