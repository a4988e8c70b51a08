"""The ``mcir`` command line.

::

    mcir dump model.pt --input x=1x784 [--passes fold] [--print-ir-after-all] [-o out/]
    mcir verify graph.mcir
    mcir run model.pt|out/|graph.mcir|lib.so --input x.npy
    mcir opt in.mcir|in/ --passes 'fold,my_passes.py:fuse_gelu' -o out/
    mcir compile model.pt --passes 'prune,quant8' [-o build/mlp]     # default: build/<model name>
    mcir compile model.pt2 --trust --target aarch64 --features +dotprod
    mcir export model.pt|model.onnx|out/ --passes 'fold,quant8' -o model_int8.onnx
    mcir bench build/mlp.so
    mcir analyze model.pt --data test.npz [--techniques int8,int4] [--json]   # per-layer sensitivity
    mcir passes | mcir ops

User errors (bad files, options, shapes) print one ``mcir: error: ...`` line and exit
with status 2; an unexpected internal error prints its traceback and exits with 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from mcir.errors import McirError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


# -- loading models -----------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser, input_specs: bool = True) -> None:
    p.add_argument("model", help="model file (.pt, .pth, .pt2, .onnx), saved mcir folder, or .mcir file")
    if input_specs:
        p.add_argument(
            "--input",
            "-i",
            action="append",
            default=[],
            metavar="NAME=SHAPE:DTYPE",
            help="example input spec for torch models, static shape for ONNX inputs, e.g. x=1x3x32x32:f32 (repeatable)",
        )
    else:
        p.add_argument(
            "--input",
            "-i",
            dest="input_files",
            action="append",
            default=[],
            metavar="FILE.npy",
            help="input array, one per model input in order (repeatable)",
        )
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="allow classes from this module when unpickling a full model (and import it)",
    )
    p.add_argument(
        "--model-def",
        metavar="MODULE:FACTORY",
        help="build the model with this factory, then load a state dict from MODEL",
    )
    p.add_argument(
        "--trust", action="store_true", help="allow loading files that can run code (.pt2 archives, arbitrary pickles)"
    )
    p.add_argument("--tracer", choices=("export", "fx"), default="export", help="torch tracer (default: export)")


def _is_mcir(path: Path) -> bool:
    from mcir.file_kind import MCIR_TEXT, file_kind

    if path.is_dir():
        return (path / "graph.mcir").exists()
    return path.suffix == ".mcir" or file_kind(path) == MCIR_TEXT


def load_graph(args: argparse.Namespace):
    """The graph named by a command's MODEL argument (a saved graph, or a traced torch model)."""
    return load_graph_and_model(args)[0]


def load_graph_and_model(args: argparse.Namespace):
    """(graph, torch module or None): the module too when MODEL is a torch file (for comparisons)."""
    import mcir

    path = Path(args.model)
    if not path.exists():
        raise McirError(f"{path}: no such file or folder")
    if path.is_dir() and not _is_mcir(path):
        raise McirError(f"{path}: a folder without graph.mcir; give a model file or a folder written by mcir.save")
    if _is_mcir(path):
        return mcir.load(path), None
    if _is_onnx(path):
        from mcir.frontend.onnx_import import shapes_from_specs

        return mcir.from_onnx(path, input_shapes=shapes_from_specs(getattr(args, "input", []))), None
    from mcir.frontend.model_file import load_model

    model, example = load_model(
        path, imports=tuple(args.imports), model_def=args.model_def, trust=args.trust, inputs=tuple(args.input)
    )
    name = _c_identifier(path.stem)
    return mcir.trace(model, example, tracer=args.tracer, name=name), model


def _is_onnx(path: Path) -> bool:
    """An ONNX model by content (whatever its name), or a ``.onnx`` file of no other recognisable kind."""
    from mcir.file_kind import ONNX, file_kind

    kind = file_kind(path)
    return kind == ONNX or (path.suffix.lower() == ".onnx" and kind.name == "binary")


def _c_identifier(text: str) -> str:
    import re

    ident = re.sub(r"\W", "_", text)
    return ident if ident and not ident[0].isdigit() else f"m_{ident}"


# -- pipelines ----------------------------------------------------------------------------


def _add_pipeline_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--passes",
        "-p",
        default="" if not required else None,
        required=required,
        metavar="PIPELINE",
        help="pass pipeline, e.g. 'fold,prune(sparsity=0.8),quant8' (quote it in shells)",
    )
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass (stderr)")
    p.add_argument(
        "--print-ir-after",
        action="append",
        default=[],
        metavar="PASS",
        help="print the IR after the named pass (repeatable)",
    )
    p.add_argument(
        "--no-verify-each", dest="verify_each", action="store_false", help="do not verify the graph after every pass"
    )
    p.add_argument("--calibration", metavar="FILE", help="calibration inputs (.npz) for quantisation passes")
    p.add_argument("--data", metavar="TRAIN.npz", help="training data (arrays x... and y) for finetune/distill/qat")
    p.add_argument("--eval", metavar="TEST.npz", help="evaluation data (x... and y): accuracy after every pass")


def load_calibration(path: str, graph) -> list[tuple[np.ndarray, ...]]:
    """Calibration batches from an ``.npz``: one array per graph input (by input name, or the only
    array for a one-input graph), whose first axis indexes samples shaped like the input."""
    from mcir.interp import check_input

    p = Path(path)
    try:
        data = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise McirError(f"calibration file {p} does not exist") from None
    except (ValueError, OSError) as e:
        raise McirError(f"calibration file {p} is not a readable .npz/.npy file ({e})") from None
    arrays = {"": data} if isinstance(data, np.ndarray) else {k: data[k] for k in data.files}
    names = [v.name for v in graph.inputs]
    if len(arrays) == 1 and len(names) == 1:
        columns = [next(iter(arrays.values()))]
    else:
        missing = [n for n in names if n not in arrays]
        if missing:
            raise McirError(f"calibration file {p} has arrays {sorted(arrays)}, but the graph inputs are {names}")
        columns = [arrays[n] for n in names]
    batches = []
    for v, col in zip(graph.inputs, columns):
        shape = v.type.shape
        if col.shape == shape:
            col = col[None]
        if col.shape[1:] != shape:
            raise McirError(
                f"calibration array for input %{v.name} has shape {list(col.shape)}; expected "
                f"[samples, {', '.join(map(str, shape))}]"
            )
    count = min(len(c) for c in columns)
    for i in range(count):
        batches.append(tuple(check_input(v, c[i]) for v, c in zip(graph.inputs, columns)))
    return batches


def _run_pipeline(graph, args: argparse.Namespace, sample_inputs=None):
    import mcir

    context: dict[str, Any] = {}
    if getattr(args, "calibration", None):
        context["calibration"] = load_calibration(args.calibration, graph)
    for key in ("data", "eval"):  # training / evaluation arrays for the passes that train (mcir.train)
        if getattr(args, key, None):
            context[key] = _dataset(getattr(args, key))
    if not args.passes:
        return graph
    return mcir.run_passes(
        graph,
        args.passes,
        verify_each=args.verify_each,
        print_ir_after_all=args.print_ir_after_all,
        print_ir_after=args.print_ir_after,
        sample_inputs=sample_inputs,
        out=sys.stderr,
        progress=False,
        **context,
    )


def _print_report(graph) -> None:
    report = graph.meta.get("report")
    if report is not None:
        print(report.table(), file=sys.stderr)
    for prune in graph.meta.get("prune", []):  # per-layer detail of each prune pass
        print(f"\n{prune.table()}", file=sys.stderr)


# -- commands -----------------------------------------------------------------------------


def cmd_dump(args: argparse.Namespace) -> int:
    import mcir

    graph = _run_pipeline(load_graph(args), args)
    if args.output:
        mcir.save(graph, args.output)
        print(f"wrote {args.output}/graph.mcir and weights.safetensors", file=sys.stderr)
    else:
        sys.stdout.write(str(graph))
    if args.passes:
        _print_report(graph)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import mcir

    graph = _run_pipeline(load_graph(args), args)
    mcir.to_onnx(graph, args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    if args.passes:
        _print_report(graph)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import mcir

    path = Path(args.file)
    if path.is_dir() or path.suffix != ".mcir":
        graph = mcir.load(path)
    else:
        graph = mcir.parse_file(path)  # verifies; constants may lack data here
    print(
        f"{path}: ok ({sum(1 for _ in graph.compute_ops())} ops, {len(graph.inputs)} inputs, "
        f"{len(graph.outputs)} outputs)"
    )
    return 0


def _read_inputs(specs: list[str], names: list[str]) -> list[np.ndarray]:
    if len(specs) != len(names):
        raise McirError(f"the model takes {len(names)} input(s) ({', '.join(names)}); give one --input FILE.npy each")
    out = []
    for spec in specs:
        path = spec.split("=", 1)[1] if "=" in spec and not Path(spec).exists() else spec
        try:
            out.append(np.load(path, allow_pickle=False))
        except FileNotFoundError:
            raise McirError(f"input file {path} does not exist") from None
        except (ValueError, OSError) as e:
            raise McirError(f"input file {path} is not a .npy array ({e})") from None
    return out


def _write_outputs(outputs: list[np.ndarray], path: str | None) -> None:
    if path:
        np.savez(path, *outputs)
        print(f"wrote {len(outputs)} output(s) to {path}", file=sys.stderr)
        return
    with np.printoptions(precision=6, suppress=True, threshold=64):
        for i, y in enumerate(outputs):
            print(f"output {i}: {y.dtype}{list(y.shape)}")
            print(y)


def cmd_run(args: argparse.Namespace) -> int:
    import mcir

    path = Path(args.model)
    if path.suffix in (".so", ".dylib", ".dll"):
        from mcir.runtime import Library

        lib = Library(path)
        xs = _read_inputs(args.input_files, [d.name for d in lib.inputs])
        _write_outputs(lib(*xs), args.output)
        return 0
    # a torch model is traced with the shapes of the given arrays
    arrays = [np.load(f, allow_pickle=False) for f in args.input_files if Path(f).exists()]
    args.input = [f"{'x'.join(map(str, a.shape))}:{_dtype_name(a)}" for a in arrays]
    graph = load_graph(args)
    xs = _read_inputs(args.input_files, [v.name for v in graph.inputs])
    _write_outputs([np.asarray(y) for y in mcir.interpret(graph, *xs)], args.output)
    return 0


def _dtype_name(a: np.ndarray) -> str:
    from mcir import dtypes

    return dtypes.from_numpy(a.dtype).name


def cmd_opt(args: argparse.Namespace) -> int:
    import mcir
    from mcir.atomic_write import write_atomic

    graph = _run_pipeline(mcir.load(args.input_path), args)
    out = Path(args.output)
    if out.suffix == ".mcir":
        if any(op.data is not None and not _inline(op) for op in graph.constants()):
            mcir.save(graph, out.with_suffix(""))
            print(f"wrote {out.with_suffix('')}/ (the graph has weights; a folder keeps them)", file=sys.stderr)
        else:
            write_atomic(out, str(graph))
    else:
        mcir.save(graph, out)
    _print_report(graph)
    return 0


def _inline(op) -> bool:
    from mcir.printer import is_inline

    return is_inline(op)


def cmd_passes(args: argparse.Namespace) -> int:
    from mcir.pass_manager import ALIASES, get_pass, options_of, pass_names
    from mcir.printer import format_attr

    for name in pass_names():
        try:
            cls, preset = get_pass(name)
        except McirError as e:
            print(f"{name}: cannot load ({e})")
            continue
        if name in ALIASES:
            opts = ",".join(f"{k}={format_attr(v)}" for k, v in preset.items())
            print(f"{name}\n    = {cls.name}({opts})\n")
            continue
        print(f"{name}  [{cls.preserves}]")
        print(f"    {cls.summary()}")
        for spec in options_of(cls):
            default = spec.default
            text = (
                format_attr(default)
                if isinstance(default, bool | int | float | str | tuple) or default is None
                else str(default)
            )
            print(f"    {spec.name:<16} {spec.type_name:<20} = {text:<10} {spec.doc}")
        print()
    return 0


def cmd_ops(args: argparse.Namespace) -> int:
    from mcir.ops import all_ops

    for name, d in sorted(all_ops().items()):
        operands = ", ".join(d.operands)
        attrs = ", ".join(f"{k}: {a.kind}" for k, a in d.attrs.items())
        print(f"{name}({operands})" + (f" {{{attrs}}}" if attrs else ""))
        if d.doc:
            print(f"    {d.doc.splitlines()[0]}")
    return 0


def cmd_kernels(args: argparse.Namespace) -> int:
    """``mcir kernels [--op NAME] [--target T]``: the native kernel registry as a table."""
    from mcir import ops
    from mcir.codegen.kernels import format_kernel_table, kernel_table
    from mcir.codegen.target import resolve

    if args.op is not None:
        ops.get(args.op)  # an unknown op name gets the registry's "did you mean" error
    rows = kernel_table(args.op, resolve(args.target))
    if not rows:
        print(f"no native kernel for op '{args.op}': graphs using it run with mcir.interpret only")
        return 0
    print(format_kernel_table(rows))
    return 0


def _add_kernels_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernels", help="list native kernels: op x operand/result types x target -> kernel")
    p.add_argument("--op", metavar="NAME", help="only the kernels of op NAME")
    p.add_argument("--target", default="native", help="whose code paths the target column shows (default: native)")
    p.set_defaults(fn=cmd_kernels)


def default_output(model: str | Path) -> Path:
    """Where ``mcir compile`` writes when no ``-o`` is given: ``build/<model name>`` in the current folder."""
    path = Path(model)
    stem = path.name if path.is_dir() else path.stem
    return Path("build") / _c_identifier(stem)


def _dataset(path: str | None) -> Any:
    """Training or evaluation arrays from an .npz (x... and y), or None."""
    if not path:
        return None
    from mcir.train.data import Dataset  # lazy: it imports torch

    return Dataset.from_npz(path)


def cmd_compile(args: argparse.Namespace) -> int:
    import torch

    from mcir.compile_driver import compile_model

    if args.compile_memory is not None:
        # the flag is the environment variable for this process: every compile below (the model and
        # its uncompressed baseline) reads the same limit
        from mcir.codegen.compile_memory import ENV, parse_size

        parse_size(args.compile_memory, "--compile-memory")  # a typo fails now, not after loading
        os.environ[ENV] = args.compile_memory
    graph, model = load_graph_and_model(args)
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()  # an exported program is called through its module
    output = Path(args.output) if args.output else default_output(args.model)
    calibration = load_calibration(args.calibration, graph) if args.calibration else None
    lib = compile_model(
        graph,
        output,
        passes=args.passes,
        calibration=calibration,
        verify_each=args.verify_each,
        print_ir_after_all=args.print_ir_after_all,
        print_ir_after=args.print_ir_after,
        target=args.target,
        triple=args.triple,
        cpu=args.cpu,
        features=args.features,
        name=args.name,
        compare=args.compare,
        profile=args.profile,
        torch_model=model if isinstance(model, torch.nn.Module) else None,
        data=_dataset(args.data),
        eval=_dataset(args.eval),
    )
    files = ", ".join(str(p) for p in _written_files(lib))
    note = "" if args.output else " (the default for this model; choose another place with -o PATH)"
    print(f"\nwrote {files}{note}")
    return 0


def _written_files(lib: Any) -> list[Path]:
    from mcir.runtime import Library

    if isinstance(lib, Library):
        stem = lib.path.with_suffix("")
        return [lib.path, stem.with_suffix(".h"), stem.with_suffix(".o")]
    return [p for p in (lib.library_path, lib.header_path, lib.object_path) if p is not None]


def analysis_batches(path: str, graph) -> tuple[list[tuple[np.ndarray, ...]], list[np.ndarray] | None]:
    """Input batches shaped like ``graph``'s inputs (and target batches when the file has ``y``) from an
    ``.npz`` with ``x`` (or ``x0``, ``x1``, ...) and optionally ``y``: samples split by the graph's batch size."""
    from mcir.interp import check_input

    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise McirError(f"data file {path} is not a readable .npz ({e})") from None
    xs = [arrays["x"]] if "x" in arrays else [arrays[f"x{i}"] for i in range(len(arrays)) if f"x{i}" in arrays]
    if len(xs) != len(graph.inputs):
        raise McirError(
            f"data file {path} has arrays {sorted(arrays)}; the graph has {len(graph.inputs)} input(s): give 'x' "
            "(one input) or x0, x1, ... and optionally the targets 'y'"
        )
    batch = graph.inputs[0].type.shape[0] if graph.inputs[0].type.shape else 1
    count = min(len(x) for x in xs) // batch
    if count == 0:
        raise McirError(f"data file {path} has fewer samples than the graph's batch of {batch}")
    inputs = [
        tuple(check_input(v, x[i * batch : (i + 1) * batch]) for v, x in zip(graph.inputs, xs)) for i in range(count)
    ]
    y = arrays.get("y")
    targets = None if y is None else [y[i * batch : (i + 1) * batch] for i in range(count)]
    return inputs, targets


def cmd_analyze(args: argparse.Namespace) -> int:
    import json

    from mcir.analysis.sensitivity import layer_sensitivity

    graph = load_graph(args)
    inputs, targets = analysis_batches(args.data, graph)
    if args.samples:
        inputs, targets = inputs[: args.samples], None if targets is None else targets[: args.samples]
    techniques = [t.strip() for t in args.techniques.split(",") if t.strip()] if args.techniques else None
    result = layer_sensitivity(graph, inputs, targets, techniques, train=_dataset(args.train))
    print(json.dumps(result.to_json(), indent=2) if args.json else result.table())
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import mcir

    graph = load_graph(args)
    result = mcir.search(
        graph,
        data=_dataset(args.data),
        eval=_dataset(args.eval),
        objective=args.objective,
        max_drop=args.max_drop,
        max_bytes=args.max_bytes,
        max_latency_us=args.max_latency_us,
        trials=args.trials,
        out=args.output,
        executor=args.executor,
        workers=args.workers,
        ray_address=args.ray_address,
        seed=args.seed,
        latency_runs=args.latency_runs,
        timing=args.timing,
        narrow=not args.no_narrow,
        seeds=not args.no_seeds,
        progress=args.progress,
    )
    base = result.baseline
    print(
        f"fp32: {base['weight_bytes']} B, {base['latency_us']:.2f} µs, {100 * base['accuracy']:.2f}% on {base['cpu']}"
    )
    print(f"latency: {base['latency_method']}")
    if result.best is None:
        print(f"no trial met the constraints; every trial is in {result.out / 'search.json'}")
        return 0
    m = result.best_metrics
    print(
        f"best: '{result.best}'\n  {m['weight_bytes']} B ({base['weight_bytes'] / m['weight_bytes']:.1f}x smaller), "
        f"{m['latency_us']:.2f} µs ({base['latency_us'] / m['latency_us']:.1f}x faster), {100 * m['accuracy']:.2f}% "
        f"({100 * (m['accuracy'] - base['accuracy']):+.2f} pt)"
    )
    print(f"wrote {result.library}, {result.out / 'search.json'}, {result.out / 'pareto.png'} (and .svg)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mcir.compile_driver import bench_library

    bench_library(args.library, runs=args.runs, warmup=args.warmup, per_op=args.per_op)
    return 0


# -- argument parsing -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    import mcir

    parser = argparse.ArgumentParser(prog="mcir", description="mcir: compress PyTorch models into native libraries")
    parser.add_argument("--version", action="version", version=f"mcir {mcir.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("dump", help="trace a model and print its IR (optionally after passes)")
    _add_model_args(p)
    _add_pipeline_args(p)
    p.add_argument("-o", "--output", metavar="DIR", help="save graph.mcir + weights.safetensors to DIR")
    p.set_defaults(fn=cmd_dump)

    p = sub.add_parser("export", help="write a model or graph (optionally after passes) as an ONNX file")
    _add_model_args(p)
    _add_pipeline_args(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("verify", help="parse and verify an IR file or saved folder")
    p.add_argument("file")
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("run", help="run a model, saved graph or compiled library on .npy inputs")
    _add_model_args(p, input_specs=False)
    p.set_defaults(fn=cmd_run)
    p.add_argument("-o", "--output", metavar="FILE.npz", help="write outputs to an .npz instead of printing")

    p = sub.add_parser("opt", help="run passes on an IR file or folder: IR in, IR out")
    p.add_argument("input_path", metavar="IN")
    _add_pipeline_args(p, required=True)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (or .mcir file)")
    p.set_defaults(fn=cmd_opt)

    p = sub.add_parser("compile", help="compile a model to a native library (.so, .o, .h) and print a report")
    _add_model_args(p)
    _add_pipeline_args(p)
    p.add_argument("-o", "--output", metavar="PATH", help="output path without suffix (default: build/<model name>)")
    p.add_argument(
        "--target",
        default="native",
        help="native (default), x86-64-v2/-v3/-v4 (x86-64 levels), or a machine to cross-compile for: "
        "aarch64, armv7, riscv64, x86-64 (cross targets get the .o and .h only)",
    )
    p.add_argument("--triple", help="cross-compile for any LLVM triple (e.g. aarch64-linux-musl): .o + .h only")
    p.add_argument("--cpu", help="LLVM CPU name to tune and select instructions for (e.g. cortex-a76, znver4)")
    p.add_argument(
        "--features",
        metavar="+F,-G",
        help="LLVM features to add or remove, comma-separated (e.g. +dotprod,+i8mm; write --features=-sve when the "
        "list starts with -)",
    )
    p.add_argument("--name", help="C symbol prefix (default: the output file's stem)")
    p.add_argument(
        "--compile-memory",
        metavar="SIZE",
        help="refuse graphs whose compilation is estimated to need more than SIZE (e.g. 32G, or none; default "
        "$MCIR_COMPILE_MEMORY or 16G)",
    )
    p.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="do not compile and time the uncompressed model for the report",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="count the cycles of every kernel call (x86-64), for `mcir bench --per-op`",
    )
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser(
        "analyze", help="per-layer sensitivity: accuracy or SQNR with one layer compressed, per technique"
    )
    _add_model_args(p)
    p.add_argument(
        "--data",
        "--eval",
        dest="data",
        required=True,
        metavar="DATA.npz",
        help="inputs 'x' (or x0, x1, ...) and, for accuracy, targets 'y'; without 'y' the SQNR is measured",
    )
    p.add_argument(
        "--techniques",
        help="comma-separated subset of prune50,prune90,int8,int4,int2,cluster4,binarize (and prune90ft with --train)",
    )
    p.add_argument(
        "--train",
        metavar="TRAIN.npz",
        help="training data: adds prune90ft (90 %% pruning of the layer, then finetune(epochs=10) of the graph)",
    )
    p.add_argument("--samples", type=int, default=0, help="use at most this many batches (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(fn=cmd_analyze)
    p = sub.add_parser("search", help="search compression pipelines, each compiled and measured natively (Optuna)")
    _add_model_args(p)
    p.add_argument("--data", metavar="TRAIN.npz", help="training data (x..., y): calibration, finetune and distill")
    p.add_argument("--eval", required=True, metavar="TEST.npz", help="evaluation data (x..., y): accuracy")
    p.add_argument(
        "--objective",
        default="size",
        help="size (library weight bytes), latency (µs per call), accuracy, or a comma list (multi-objective)",
    )
    p.add_argument("--max-drop", type=float, default=0.01, help="largest accuracy loss, a fraction (0.01 = 1 pt)")
    p.add_argument("--max-bytes", type=int, help="largest library weight bytes")
    p.add_argument("--max-latency-us", type=float, help="largest median latency per call, µs")
    p.add_argument("--trials", type=int, default=20, help="trials the study holds at the end (a rerun continues)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder: study.db, search.json, plot, library")
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="where trials run (default local)")
    p.add_argument("--workers", type=int, default=1, help="trials at once (processes or Ray CPUs; default 1)")
    p.add_argument("--ray-address", help="a running Ray cluster (auto, ray://HOST:10001); default: start one")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument(
        "--latency-runs", type=int, default=200, help="timed samples per latency: native repeats or Python calls"
    )
    p.add_argument(
        "--timing",
        choices=("auto", "native", "python"),
        default="auto",
        help="latency: the entry point in a native C loop (auto when a C compiler exists) or per call from Python",
    )
    p.add_argument("--no-narrow", action="store_true", help="every per-layer option (no sensitivity narrowing)")
    p.add_argument(
        "--no-seeds",
        action="store_true",
        help="start from the sampler's own draws only, not from the space's principled starting points "
        "(mildest, strongest bits, Deep Compression, neurons + int8; enqueued first in a new study)",
    )
    p.add_argument("--progress", choices=("auto", "bar", "lines"), default="auto", help="a bar or a line per trial")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("bench", help="time a compiled library (median latency with spread)")
    p.add_argument("library", metavar="LIB.so")
    p.add_argument("--runs", type=int, default=200, help="timed runs (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed warm-up runs (default 20)")
    p.add_argument(
        "--per-op",
        action="store_true",
        help="also time each kernel call (the library must be compiled with --profile)",
    )
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("passes", help="list passes with their options")
    p.set_defaults(fn=cmd_passes)

    p = sub.add_parser("ops", help="list IR ops")
    p.set_defaults(fn=cmd_ops)
    _add_kernels_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except McirError as e:
        print(f"mcir: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mcir: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:
        traceback.print_exc()
        print("mcir: internal error (a bug in mcir; please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
