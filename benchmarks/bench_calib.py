"""Time of ``fold,quant8`` (calibration included) and of compiling the int8 graph, on a
BERT-base-shaped encoder (issue #11, item 4).

    python benchmarks/bench_calib.py                 # 12 layers x 768, seq 128, 4 calibration inputs
    python benchmarks/bench_calib.py --layers 2      # quicker
    python benchmarks/bench_calib.py --profile 30    # cProfile of the quantize pass, top 30 rows

The model is ``transformers.BertModel`` (random weights, vocab 512 so that the encoder's
85 M parameters are nearly all of it), called as users call it with a padding mask. Prints
the trace, ``fold,quant8`` and compile times in seconds (bars: quant8 <= 10 s, compile <= 10 s), wall
clock and this process's CPU time: on a shared machine the wall clock counts the other processes'
turns too (a load of 5 on 2 cores more than doubled it), the CPU time does not.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import single_thread

single_thread()

import numpy as np  # noqa: E402
import torch  # noqa: E402

import mcir  # noqa: E402
from mcir.codegen import compile as compile_graph  # noqa: E402


def bert_base_shaped(layers: int = 12, hidden: int = 768, heads: int = 12, ffn: int = 3072) -> torch.nn.Module:
    """``BertModel`` with BERT-base's encoder shape and a small vocabulary; returns the last hidden state."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=512, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn
    )

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = transformers.BertModel(config)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    torch.manual_seed(0)
    return LastHidden().eval()


def bert_inputs(seed: int, seq: int = 128, pad: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a padding mask whose last ``pad`` tokens are masked."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 512, (1, seq), generator=gen)
    mask = torch.ones(1, seq, dtype=torch.long)
    mask[:, seq - pad :] = 0
    return ids, mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--samples", type=int, default=4, help="calibration inputs")
    ap.add_argument("--pipeline", default="fold,quant8")
    ap.add_argument("--profile", type=int, default=0, help="print the top N cProfile rows of the pipeline")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()

    model = bert_base_shaped(args.layers)
    params = sum(p.numel() for p in model.parameters())
    xs = bert_inputs(0)
    t = time.perf_counter()
    graph = mcir.trace(model, xs, name="bert_base")
    trace_s = time.perf_counter() - t
    calib = [tuple(x.numpy() for x in bert_inputs(s)) for s in range(1, args.samples + 1)]
    prof = cProfile.Profile() if args.profile else None
    t, cpu = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    q = mcir.run_passes(graph, args.pipeline, calibration=calib)
    if prof:
        prof.disable()
    quant_s, quant_cpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"model: BertModel {args.layers} layers x 768, seq 128, {params / 1e6:.1f} M params; {args.samples} inputs")
    print(f"trace            {trace_s:6.1f} s")
    print(f"{args.pipeline:<16} {quant_s:6.1f} s   CPU {quant_cpu:5.1f} s   (bar <= 10 s)")
    print(f"load average     {os.getloadavg()[0]:6.1f}     ({os.cpu_count()} CPUs)")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.profile)
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
    if not args.no_compile:
        with tempfile.TemporaryDirectory() as tmp:
            t, cpu = time.perf_counter(), time.process_time()
            lib = compile_graph(q, Path(tmp) / "bert_base_int8")
            compile_s, compile_cpu = time.perf_counter() - t, time.process_time() - cpu
            print(f"compile int8     {compile_s:6.1f} s   CPU {compile_cpu:5.1f} s   (bar <= 10 s)")
            y = np.empty(lib.outputs[0].shape, lib.outputs[0].dtype)
            lib.bind([x.numpy() for x in xs], [y])()
            with torch.inference_mode():
                ref = model(*xs).numpy()
            sqnr = 10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((y - ref.astype(np.float64)) ** 2).sum())
            print(f"SQNR int8 vs torch fp32: {sqnr:.1f} dB")


if __name__ == "__main__":
    main()
