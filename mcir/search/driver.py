"""The search loop: an Optuna study in ``OUT/study.db``, trials measured natively, results in ``OUT``.

The driver is the study's only writer. It asks Optuna for a trial, turns its choices into a
pipeline string (``space.suggest_pipeline``), hands the pipeline to an executor, and tells
Optuna the measured result. A trial's objective values and its COMPLETE/FAIL state are written
by one ``study.tell`` (one SQLite transaction), so a kill at any point leaves every trial
either recorded whole or still RUNNING; on the next start, RUNNING trials of an earlier run
are marked FAIL ("interrupted") and their choices queued again, and the search continues until
``trials`` trials are recorded.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcir.errors import McirError
from mcir.search.progress import Progress
from mcir.search.report import plot, write_json
from mcir.search.space import Space, seed_trials, suggest_pipeline
from mcir.search.trial import graph_files, run_trial

STUDY_NAME = "mcir-search"
OBJECTIVES = {"size": ("weight_bytes", "minimize"), "latency": ("latency_us", "minimize")}
OBJECTIVES["accuracy"] = ("accuracy", "maximize")
INTERRUPTED = "interrupted: the search stopped during this trial; its choices were queued again"


@dataclass
class SearchResult:
    """What ``mcir.search`` returns: the best pipeline (None when no trial met the constraints),
    its measurements, the fp32 baseline, every trial, and where the files are."""

    best: str | None
    best_metrics: dict[str, Any] | None
    baseline: dict[str, Any]
    trials: list[dict[str, Any]]
    out: Path
    library: Path | None


def _arrays(source: Any, what: str) -> tuple[np.ndarray, ...]:
    """Any form ``data=``/``eval=`` takes, as whole numpy arrays (x..., y): picklable for workers."""
    from mcir.train.data import Batches

    batches = Batches(source, what)
    parts = [tuple(t.numpy() for t in b) for b in batches.epoch(4096, seed=None)]
    if not parts:
        raise McirError(f"search: {what}= holds no samples")
    return tuple(np.concatenate(col) for col in zip(*parts))


def _calibration(data: tuple[np.ndarray, ...], graph: Any, count: int = 64) -> list[tuple[np.ndarray, ...]]:
    """The first ``count`` training samples, one batch of the graph's input shape each (quant8 calibrates on them)."""
    from mcir.interp import check_input

    xs = data[:-1]
    return [
        tuple(check_input(v, x[i : i + 1].reshape(v.type.shape)) for v, x in zip(graph.inputs, xs))
        for i in range(min(count, len(data[0])))
    ]


def _objectives(objective: str) -> list[str]:
    names = [o.strip() for o in objective.split(",") if o.strip()]
    unknown = [o for o in names if o not in OBJECTIVES]
    if not names or unknown:
        raise McirError(f"search: objective {objective!r}: expected size, latency, accuracy or a comma list of them")
    return names


def _constraints(m: dict[str, Any], base_acc: float, max_drop: float | None, max_bytes: int | None,
                 max_latency_us: float | None) -> list[float]:  # fmt: skip
    """Optuna's constraint values (<= 0 is met): accuracy drop, bytes, latency; each relative to its bound."""
    return [
        (base_acc - m["accuracy"]) - max_drop if max_drop is not None else -1.0,
        m["weight_bytes"] / max_bytes - 1.0 if max_bytes else -1.0,
        m["latency_us"] / max_latency_us - 1.0 if max_latency_us else -1.0,
    ]


def _study_space(study: Any, graph: Any, samples: tuple[np.ndarray, ...], max_drop: float | None, narrow: bool,
                 log: Any, train: bool = False) -> Space:  # fmt: skip
    """The study's space: made (and stored in the study) when it is new, read back when it is resumed,
    so that every trial of a study asks the same questions whatever the later run's options."""
    stored = study.user_attrs.get("space")
    if stored is not None:
        return Space.from_json(stored)
    if narrow:
        budget = max_drop if max_drop is not None else 0.01
        space, sensitivity = narrowed_space(graph, samples, budget, train=train)
        study.set_user_attr("sensitivity", sensitivity)
        print(f"space narrowed by per-layer sensitivity (budget {100 * budget:g} pt):\n{space.table()}", file=log)
    else:
        space = Space.unnarrowed(_layer_names(graph))
    study.set_user_attr("space", space.to_json())
    return space


def _requeue_interrupted(study: Any) -> int:
    """Mark RUNNING trials left by a killed run as FAIL and queue their choices again."""
    import optuna

    count = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "error", INTERRUPTED)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        if t.params:
            origin = t.user_attrs.get("origin")
            study.enqueue_trial(t.params, user_attrs={"origin": origin} if origin else None)
        count += 1
    return count


def _trial_rows(study: Any) -> list[dict[str, Any]]:
    """Every recorded trial as a search.json row."""
    import optuna

    rows = []
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    for t in study.get_trials(deepcopy=False, states=finished):  # not RUNNING or WAITING (queued again)
        if t.user_attrs.get("error") == INTERRUPTED:
            continue
        a = t.user_attrs
        rows.append(
            {
                "number": t.number,
                "pipeline": a.get("pipeline"),
                "origin": a.get("origin", "sampler"),
                "status": "ok" if t.state == optuna.trial.TrialState.COMPLETE else "fail",
                "weight_bytes": a.get("weight_bytes"),
                "latency_us": a.get("latency_us"),
                "accuracy": a.get("accuracy"),
                "feasible": bool(a.get("constraints")) and all(c <= 0 for c in a["constraints"]),
                "seconds": a.get("seconds"),
                "cpu": a.get("cpu"),
                "latency_method": a.get("latency_method"),
                "host": a.get("host"),
                "error": a.get("error"),
            }
        )
    return rows


def _best(rows: list[dict[str, Any]], objectives: list[str]) -> dict[str, Any] | None:
    """The feasible trial best on the first objective (ties: higher accuracy, then fewer bytes)."""
    key, direction = OBJECTIVES[objectives[0]]
    ok = [r for r in rows if r["status"] == "ok" and r["feasible"]]
    if not ok:
        return None
    sign = 1 if direction == "minimize" else -1
    return min(ok, key=lambda r: (sign * r[key], -r["accuracy"], r["weight_bytes"], r["number"]))


def narrowed_space(
    graph: Any, samples: tuple[np.ndarray, ...], budget: float, count: int = 256, train: bool = False
) -> tuple[Space, dict[str, Any]]:
    """The space narrowed by the per-layer sensitivity of ``graph`` on the first ``count`` samples (x..., y),
    and the analysis as data (for search.json).

    ``train``: ``samples`` are training data, so the compress-then-recover techniques (``prune90ft``) are
    measured too, fine-tuning on the samples after the first ``count`` (the measured ones are held out,
    so recovery is not judged on the data it trained on); with too few samples left they are not measured.
    """
    from mcir.analysis.sensitivity import layer_sensitivity
    from mcir.interp import check_input

    n = min(count, len(samples[0]))
    inputs = [
        tuple(check_input(v, x[i : i + 1].reshape(v.type.shape)) for v, x in zip(graph.inputs, samples[:-1]))
        for i in range(n)
    ]
    targets = [samples[-1][i : i + 1] for i in range(n)]
    rest = tuple(a[n:] for a in samples) if train and len(samples[0]) >= 2 * n else None
    # the passes' warnings (one per layer and technique) and fine-tuning's progress
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        sensitivity = layer_sensitivity(graph, inputs, targets, train=rest)
    return Space.from_sensitivity(sensitivity, budget), sensitivity.to_json()


def _layer_names(graph: Any) -> list[str]:
    from mcir.analysis.layers import layer_names, weighted_layers

    return list(dict.fromkeys(layer_names(op)[0] for op in weighted_layers(graph)))


def search(
    model_or_graph: Any,
    data: Any = None,
    eval: Any = None,  # the name every mcir API uses for evaluation data
    objective: str = "size",
    max_drop: float | None = 0.01,
    max_bytes: int | None = None,
    max_latency_us: float | None = None,
    trials: int = 20,
    out: str | Path = "search",
    executor: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    seed: int = 0,
    example_inputs: Any = None,
    latency_runs: int = 200,
    timing: str = "auto",
    narrow: bool = True,
    seeds: bool = True,
    progress: str = "auto",
    log: Any = None,
) -> SearchResult:
    """Search compression pipelines for ``model_or_graph`` (a Graph, or a torch module with
    ``example_inputs``); every candidate is compiled and measured natively.

    ``objective``: ``size`` (library weight bytes), ``latency`` (median µs per call) or
    ``accuracy`` (TPE), or a comma list such as ``"size,accuracy"`` (NSGA-II, multi-objective).
    Constraints: ``max_drop`` (fraction: 0.015 is 1.5 points of accuracy below the fp32 library),
    ``max_bytes``, ``max_latency_us``. ``trials`` is the number of recorded trials the study holds
    when the search ends: calling again with the same ``out`` continues the study. ``eval=`` is
    required (accuracy is measured on it); ``data=`` enables finetune/distill in the space.
    Writes ``out/study.db``, ``out/search.json``, ``out/pareto.{png,svg}`` and the best library
    ``out/<graph name>.so/.h/.o``.

    ``timing``: how latency is measured (``mcir.native_timer``): ``auto`` (the entry point in a native
    loop when a C compiler exists, else per call from Python), ``native`` or ``python``.
    ``narrow``: narrow the per-layer options by the sensitivity analysis (on ``data=``'s first 256
    samples, else ``eval=``'s; with ``data=`` pruning is also measured after fine-tuning on the rest)
    when the study is created; a resumed study keeps its space.
    ``seeds``: start a new study with the space's principled starting points (``space.seed_trials``:
    mildest, strongest bits, Deep Compression, neurons + int8) before the sampler's own trials.
    ``progress``: ``bar`` (tqdm if installed, else an in-place bar), ``lines`` (a line per trial) or
    ``auto`` (a bar on a terminal, lines otherwise).
    """
    import optuna

    from mcir.codegen import compile as compile_graph  # lazy: llvmlite
    from mcir.instrument import run_passes
    from mcir.ir import Graph
    from mcir.train.run import native_accuracy

    log = log or sys.stderr
    names = _objectives(objective)
    if eval is None:
        raise McirError("search: eval= (evaluation data x..., y) is required: every trial's accuracy is measured on it")
    graph = model_or_graph
    if not isinstance(graph, Graph):
        if example_inputs is None:
            raise McirError("search: a torch module needs example_inputs= (or trace it first with mcir.trace)")
        from mcir.frontend.torch_import import trace

        graph = trace(model_or_graph, example_inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = _arrays(data, "data") if data is not None else None
    test = _arrays(eval, "eval")
    calibration = _calibration(train if train is not None else test, graph)
    files = graph_files(graph)

    # the fp32 library: the reference for the accuracy drop and the "x smaller / x faster" figures
    base = run_trial(files, "", None, test, None, latency_runs, timing)
    if base["status"] != "ok":
        raise McirError(f"search: the uncompressed model does not compile and run: {base['error']}")
    print(
        f"fp32: {base['weight_bytes'] / 1024:.1f} KiB, {base['latency_us']:.1f} µs, {100 * base['accuracy']:.2f}% "
        f"on {base['cpu']} (latency: {base['latency_method']})",
        file=log,
        flush=True,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [OBJECTIVES[n][1] for n in names]
    # a resumed study gets a sampler seeded by how far it got, so it does not replay the first run's draws
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.db').resolve()}")
    probe = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True, directions=directions)
    if [d.name.lower() for d in probe.directions] != directions:
        raise McirError(
            f"search: {out / 'study.db'} holds a study with objectives {[d.name.lower() for d in probe.directions]}; "
            f"objective {objective!r} needs {directions}: use another -o folder"
        )
    new_study = not probe.trials
    space = _study_space(probe, graph, train if train is not None else test, max_drop, narrow, log, train is not None)
    if new_study and seeds:
        # principled starting points first (space.seed_trials); a resumed study has them already
        for name, params in seed_trials(space, train=train is not None):
            probe.enqueue_trial(params, user_attrs={"origin": f"seed: {name}"})
    requeued = _requeue_interrupted(probe)
    recorded = len(_trial_rows(probe))
    if len(names) == 1:
        # multivariate + group: TPE models the choices of one pipeline shape together (the space is
        # conditional: sparsity exists only when prune does), which Optuna recommends for such spaces
        with warnings.catch_warnings():  # chosen knowingly: Optuna marks `group` experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=seed + recorded, multivariate=True, group=True)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed + recorded)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler)
    if recorded:
        print(f"resuming: {recorded} trial(s) recorded, {requeued} interrupted one(s) queued again", file=log)

    pool = None
    if recorded < trials:
        from mcir.search.executor import make_executor

        pool = make_executor(executor, workers, ray_address)
    running: dict[Any, Any] = {}
    rows = _trial_rows(study)
    best = _best(rows, names)
    bar = Progress(trials, recorded, base, log, progress)
    try:
        while pool is not None and (recorded + len(running) < trials or running):
            while recorded + len(running) < trials and len(running) < workers:
                trial = study.ask()
                pipeline = suggest_pipeline(trial, space, train=train is not None)
                trial.set_user_attr("pipeline", pipeline)
                running[pool.submit(files, pipeline, train, test, calibration, latency_runs, timing)] = trial
            for handle, result in pool.wait(list(running)):
                trial = running.pop(handle)
                _record(study, trial, result, base, names, max_drop, max_bytes, max_latency_us)
                recorded += 1
                rows = _trial_rows(study)
                best = _best(rows, names)
                row = next(r for r in rows if r["number"] == trial.number)
                bar.update(row, best)
    finally:
        bar.close()
        if pool is not None:
            pool.close()

    library = None
    verified = None
    if best is not None:
        # the best pipeline compiled again from the original graph, as `mcir compile --passes` would
        context: dict[str, Any] = {"calibration": calibration}
        if train is not None:
            context["data"] = train
        with contextlib.redirect_stderr(io.StringIO()):  # training progress again: the trial's log has it
            lib = compile_graph(run_passes(graph, best["pipeline"], **context), out / graph.name)
        verified = {"weight_bytes": lib.weight_bytes, "accuracy": native_accuracy(lib, test)}
        library = Path(lib.path)
    # one array per graph input, by name, shaped [samples, *input shape]: what `mcir compile --calibration` reads
    np.savez(out / "calibration.npz", **{v.name: np.stack(col) for v, col in zip(graph.inputs, zip(*calibration))})
    summary = {
        "objective": names,
        "constraints": {"max_drop": max_drop, "max_bytes": max_bytes, "max_latency_us": max_latency_us},
        "baseline": {k: base[k] for k in ("weight_bytes", "latency_us", "latency_method", "accuracy", "cpu", "host")},
        "space": {"layers": space.to_json(), "sensitivity": probe.user_attrs.get("sensitivity")},
        "best": best["pipeline"] if best else None,
        "best_trial": best,
        "best_recompiled": verified,
        "library": str(library) if library else None,
        "compile_command": (
            f"mcir compile MODEL --passes '{best['pipeline']}' --data TRAIN.npz "
            f"--calibration {out / 'calibration.npz'} -o {out / graph.name}"
            if best
            else None
        ),
        "trials": rows,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(out / "search.json", summary)
    plot(out, rows, base, best)
    return SearchResult(best["pipeline"] if best else None, best, summary["baseline"], rows, out, library)


def _record(study: Any, trial: Any, result: dict[str, Any], base: dict[str, Any], names: list[str],
            max_drop: float | None, max_bytes: int | None, max_latency_us: float | None) -> None:  # fmt: skip
    """Tell the study one trial's result: attributes first, then values and state in one transaction."""
    import optuna

    for key in ("cpu", "host", "seconds", "error", "traceback", "latency_method"):
        if result.get(key) is not None:
            trial.set_user_attr(key, result[key])
    if result.get("status") != "ok":
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    for key in ("weight_bytes", "latency_us", "accuracy"):
        trial.set_user_attr(key, result[key])
    constraints = _constraints(result, base["accuracy"], max_drop, max_bytes, max_latency_us)
    trial.set_user_attr("constraints", constraints)
    for name, value in zip(("accuracy_drop", "bytes", "latency"), constraints):
        trial.set_constraint(name, value)  # Optuna's samplers prefer trials whose constraints are all <= 0
    study.tell(trial, [result[OBJECTIVES[n][0]] for n in names])
