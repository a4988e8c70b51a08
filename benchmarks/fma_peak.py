"""The fp32 FMA peak of one core, measured: 24 independent chains of 16-lane FMAs, JIT-compiled.

    python benchmarks/fma_peak.py

``bench_batch.py`` states efficiency against the nominal clock of /proc/cpuinfo; under turbo the
core runs faster, so this measured figure is the honest denominator for "% of peak". Prints
GFLOP/s (CPU time of the calling thread, best of 20 runs) and the implied clock at 2 FMA per cycle.
"""

from __future__ import annotations

import ctypes
import time

import llvmlite.binding as llvm

CHAINS = 24  # enough independent accumulators to cover 2 ports x 4-cycle latency several times over
LANES = 16


def fma_loop_ir() -> str:
    """``f(out, iters)``: CHAINS accumulators, each ``a = a * 1 + 0.5`` per iteration."""
    vt = f"<{LANES} x float>"
    one = "<" + ", ".join(["float 1.0"] * LANES) + ">"
    half = "<" + ", ".join(["float 0.5"] * LANES) + ">"
    lines = ["define void @f(ptr %out, i64 %iters) {", "entry:", "  br label %loop", "loop:"]
    lines.append("  %i = phi i64 [0, %entry], [%i1, %loop]")
    lines += [f"  %a{j} = phi {vt} [zeroinitializer, %entry], [%b{j}, %loop]" for j in range(CHAINS)]
    lines += [f"  %b{j} = call {vt} @llvm.fma.v{LANES}f32({vt} %a{j}, {vt} {one}, {vt} {half})" for j in range(CHAINS)]
    lines += ["  %i1 = add i64 %i, 1", "  %c = icmp ult i64 %i1, %iters", "  br i1 %c, label %loop, label %done"]
    lines.append("done:")
    total = "%b0"
    for j in range(1, CHAINS):  # keep every chain live
        lines.append(f"  %s{j} = fadd {vt} {total}, %b{j}")
        total = f"%s{j}"
    lines += [f"  store {vt} {total}, ptr %out, align 4", "  ret void", "}"]
    lines.append(f"declare {vt} @llvm.fma.v{LANES}f32({vt}, {vt}, {vt})")
    return "\n".join(lines)


def measure(iters: int = 5_000_000, runs: int = 20) -> float:
    """Best-of-``runs`` fp32 GFLOP/s of the loop on the calling thread."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    module = llvm.parse_assembly(fma_loop_ir())
    target = llvm.Target.from_default_triple()
    tm = target.create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3
    )
    engine = llvm.create_mcjit_compiler(module, tm)
    engine.finalize_object()
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(engine.get_function_address("f"))
    out = (ctypes.c_float * LANES)()
    best = float("inf")
    for _ in range(runs):
        t = time.thread_time()
        fn(ctypes.addressof(out), iters)
        best = min(best, time.thread_time() - t)
    return iters * CHAINS * LANES * 2 / best / 1e9


if __name__ == "__main__":
    gflops = measure()
    print(f"fp32 FMA peak, 1 core: {gflops:.1f} GFLOP/s (= {gflops / 64:.2f} GHz x 2 FMA x 16 lanes x 2 flop)")
