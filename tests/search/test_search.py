"""mcir.search: tiny searches on the digits MLP (2-3 trials each), checking what the issue promises.

Every trial is compiled and measured natively; the study lives in OUT/study.db and survives a
restart; OUT/search.json lists every trial and ``best``, a pipeline string the pipeline parser
accepts as is; the best library is compiled again into OUT and measures what its trial measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna", reason="mcir search needs optuna: pip install 'mcir[search]'")

import mcir  # noqa: E402
import mcir.search.driver as driver  # noqa: E402
from mcir import native_timer  # noqa: E402
from mcir.cli import load_calibration  # noqa: E402
from mcir.errors import McirError  # noqa: E402
from mcir.passes import build_pipeline  # noqa: E402
from mcir.search.report import pareto_front  # noqa: E402
from mcir.search.space import Space, seed_trials, suggest_pipeline  # noqa: E402
from mcir.search.trial import graph_files, run_trial  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def task(digits):
    """The digits graph with its training data and 150 held-out samples (enough to tell 1.5 pt apart from 0)."""
    return {
        "graph": digits["graph"],
        "data": (digits["x_train"][:400], digits["y_train"][:400]),
        "eval": (digits["x_test"][:150], digits["y_test"][:150]),
    }


def _search(task, out: Path, trials: int, **kw):
    kw.setdefault("max_drop", 0.05)
    return mcir.search(
        task["graph"], data=task["data"], eval=task["eval"], trials=trials, out=out, latency_runs=20, **kw
    )


SPACE = Space.unnarrowed(["fc1", "fc2", "fc3"])


def test_every_point_of_the_space_is_a_pipeline_mcir_accepts():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(200):
        trial = study.ask()
        text = suggest_pipeline(trial, SPACE)
        assert build_pipeline(text), text  # parses and builds every pass with its options
        seen.add(trial.params["storage"])
        study.tell(trial, 0.0)
    assert seen == {"f32", "bits", "cluster", "binary"}


def test_without_training_data_the_space_has_no_finetune_or_distill():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    texts = []
    for _ in range(50):
        trial = study.ask()
        texts.append(suggest_pipeline(trial, SPACE, train=False))
        study.tell(trial, 0.0)
    assert not any("finetune" in t or "distill" in t for t in texts)


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(10, 0.9), (20, 0.95), (15, 0.85), (20, 0.90), (5, 0.5)]  # (cost, accuracy)
    assert sorted(pareto_front(points)) == [0, 1, 4]


def test_a_failing_pipeline_is_a_failed_result_with_its_error(task):
    result = run_trial(graph_files(task["graph"]), "prune(sparsity=2.0)", None, task["eval"], None, 10)
    assert result["status"] == "fail"
    assert "sparsity" in result["error"]


@pytest.mark.slow  # a worker process imports torch; minutes on a loaded 2-core machine
def test_search_records_every_trial_and_recompiles_the_best(task, tmp_path):
    out = tmp_path / "out"
    result = _search(task, out, trials=3, seed=3)
    summary = json.loads((out / "search.json").read_text())
    assert len(summary["trials"]) == 3
    seeds = seed_trials(Space.from_json(summary["space"]["layers"]))
    assert [t["origin"] for t in summary["trials"]] == [f"seed: {name}" for name, _ in seeds[:3]]
    for t in summary["trials"]:
        assert t["status"] == "ok", t["error"]
        assert t["weight_bytes"] > 0 and t["latency_us"] > 0 and 0 <= t["accuracy"] <= 1
        assert build_pipeline(t["pipeline"])
    base = summary["baseline"]
    assert base["weight_bytes"] == mcir.compile(task["graph"], tmp_path / "fp32").weight_bytes
    best = summary["best_trial"]
    assert best is not None and summary["best"] == result.best == best["pipeline"]
    feasible = [t for t in summary["trials"] if t["feasible"]]
    assert best["weight_bytes"] == min(t["weight_bytes"] for t in feasible)  # objective=size
    assert base["accuracy"] - best["accuracy"] <= 0.05
    # the best pipeline compiled again from the original graph: same bytes, same accuracy (training is seeded)
    assert summary["best_recompiled"] == {"weight_bytes": best["weight_bytes"], "accuracy": best["accuracy"]}
    assert result.library == out / f"{task['graph'].name}.so" and result.library.exists()
    for name in ("study.db", "pareto.png", "pareto.svg", "calibration.npz"):
        assert (out / name).stat().st_size > 0
    # the calibration file is what `mcir compile --calibration` reads: 64 samples shaped like the input
    batches = load_calibration(str(out / "calibration.npz"), task["graph"])
    assert len(batches) == 64 and batches[0][0].shape == (1, 64)
    np.testing.assert_array_equal(batches[5][0], task["data"][0][5:6])


def test_a_new_study_starts_from_the_seed_trials_and_records_their_origin(task, tmp_path):
    out = tmp_path / "out"
    result = _search(task, out, trials=1)
    summary = json.loads((out / "search.json").read_text())
    seeds = seed_trials(Space.from_json(summary["space"]["layers"]))
    (row,) = summary["trials"]
    assert row["origin"] == f"seed: {seeds[0][0]}" and row["status"] == "ok", row
    assert result.trials == summary["trials"]
    # the other seeds wait in the study, in order, for the next run (resuming asks them first)
    study = optuna.load_study(study_name=driver.STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    recorded = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.params for t in recorded] == [seeds[0][1]]
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["origin"] for t in waiting] == [f"seed: {name}" for name, _ in seeds[1:]]


@pytest.mark.slow  # a worker process imports torch; minutes on a loaded 2-core machine
def test_starting_again_continues_the_study_and_reruns_an_interrupted_trial(task, tmp_path):
    out = tmp_path / "out"
    # no seed trials: an interrupted trial is queued behind any still waiting, and this test asks for one more
    _search(task, out, trials=2, seed=5, seeds=False)
    first = json.loads((out / "search.json").read_text())["trials"]

    # a run killed during a trial leaves it RUNNING in the database, with its choices but no result
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.load_study(study_name=driver.STUDY_NAME, storage=storage)
    killed = study.ask()
    killed_pipeline = suggest_pipeline(killed, Space.from_json(study.user_attrs["space"]))
    killed.set_user_attr("pipeline", killed_pipeline)

    _search(task, out, trials=3, seed=5, seeds=False)
    trials = json.loads((out / "search.json").read_text())["trials"]
    assert trials[:2] == first  # recorded trials are kept as they were
    assert len(trials) == 3
    assert trials[2]["pipeline"] == killed_pipeline  # the interrupted choices ran again, whole this time
    states = {t.number: t.state for t in optuna.load_study(study_name=driver.STUDY_NAME, storage=storage).trials}
    assert states[killed.number] == optuna.trial.TrialState.FAIL


def test_a_failed_trial_is_recorded_with_its_error(task, tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "suggest_pipeline", lambda trial, space, train=True: "prune(sparsity=2.0)")
    result = _search(task, tmp_path / "out", trials=1)
    (row,) = result.trials
    assert row["status"] == "fail" and "sparsity" in row["error"]
    assert result.best is None


def test_constraints_and_objectives_are_checked(task, tmp_path):
    with pytest.raises(McirError, match="objective"):
        _search(task, tmp_path / "a", trials=1, objective="speed")
    with pytest.raises(McirError, match="eval="):
        mcir.search(task["graph"], data=task["data"], trials=1, out=tmp_path / "b")
    out = tmp_path / "c"
    out.mkdir()
    optuna.create_study(study_name=driver.STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}", direction="minimize")
    with pytest.raises(McirError, match="another -o folder"):
        _search(task, tmp_path / "c", trials=1, objective="size,accuracy")


@pytest.mark.slow  # a worker process imports torch; minutes on a loaded 2-core machine
def test_cli_search_writes_the_same_files(task, tmp_path):
    mcir.save(task["graph"], tmp_path / "model")
    np.savez(tmp_path / "train.npz", x=task["data"][0], y=task["data"][1])
    np.savez(tmp_path / "test.npz", x=task["eval"][0], y=task["eval"][1])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "mcir.cli", "search", str(tmp_path / "model"), "--data", str(tmp_path / "train.npz")]
    cmd += ["--eval", str(tmp_path / "test.npz"), "--objective", "latency", "--max-drop", "0.05", "--trials", "2"]
    cmd += ["--latency-runs", "20", "--progress", "lines", "-o", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "search.json").read_text())
    assert summary["objective"] == ["latency"] and len(summary["trials"]) == 2
    assert "[2/2]" in proc.stderr  # the progress line
    assert "space narrowed by per-layer sensitivity" in proc.stderr
    if native_timer.available():  # latency is the kernel's, timed in a native loop
        assert "native loop" in proc.stdout and summary["baseline"]["latency_method"].startswith("native loop")
    if summary["best"]:
        assert f"best: '{summary['best']}'" in proc.stdout


@pytest.mark.slow
def test_ray_executor_records_every_trial_in_the_same_study(task, tmp_path):
    pytest.importorskip("ray", reason="--executor ray needs Ray: pip install 'mcir[search]'")
    out = tmp_path / "out"
    _search(task, out, trials=2, seed=7)
    result = _search(task, out, trials=4, seed=7, executor="ray", workers=2)
    assert [t["number"] for t in result.trials] == [0, 1, 2, 3]
    assert all(t["status"] == "ok" and t["cpu"] for t in result.trials)
