"""The search space: narrowed by per-layer sensitivity, with per-layer options that are plain pipeline text.

A per-layer stage must touch exactly the layers it names (the others are in its ``skip``, or
absent from ``bits_for``), the narrowing must follow its stated tiers (robust: drop <= budget;
sensitive: <= 5x budget; fragile: beyond, left out), and a resumed study keeps its space.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

optuna = pytest.importorskip("optuna", reason="mcir search needs optuna: pip install 'mcir[search]'")

import mcir  # noqa: E402
from mcir.analysis.sensitivity import Cell, LayerRow, Sensitivity  # noqa: E402
from mcir.passes import build_pipeline  # noqa: E402
from mcir.search import driver  # noqa: E402
from mcir.search.progress import Progress  # noqa: E402
from mcir.search.space import (  # noqa: E402
    LayerOptions,
    Space,
    _bits_stage,
    seed_trials,
    skip_all_but,
    suggest_pipeline,
)

NAMES = ["fc1", "fc2", "fc3"]


def _weights(graph) -> dict[str, np.ndarray]:
    """Each layer's weight constant, as stored (encoded weights as their raw data)."""
    from mcir.analysis.layers import weighted_layers

    out = {}
    for op in graph.compute_ops():
        if op.name == "linear":
            out[op.loc.module] = (str(op.operands[1].type), op.operands[1].producer.data)
    assert out, weighted_layers(graph)
    return out


def _changed(before, after) -> set[str]:
    a, b = _weights(before), _weights(after)
    return {n for n in a if a[n][0] != b[n][0] or not np.array_equal(np.asarray(a[n][1]), np.asarray(b[n][1]))}


@pytest.mark.parametrize("chosen", [["fc1"], ["fc2"], ["fc1", "fc3"]])
def test_a_per_layer_prune_stage_touches_only_the_layers_it_names(digits, chosen):
    space = Space.unnarrowed(NAMES)
    text = f"prune(sparsity=0.8,storage=dense,skip={skip_all_but(space, chosen)})"
    after = mcir.run_passes(digits["graph"], text)
    assert _changed(digits["graph"], after) == set(chosen)


def test_bits_per_layer_give_each_layer_its_width(digits):
    (text,) = _bits_stage({"fc1": 4, "fc2": 8, "fc3": 16})
    assert text == r"quantize(bits=4,bits_for='^(?:fc2)(?!\S):8,^(?:fc3)(?!\S):16')"
    cal = [(digits["x_train"][i : i + 1],) for i in range(16)]
    after = mcir.run_passes(digits["graph"], text, calibration=cal)
    kinds = {op.loc.module: str(op.operands[1].type) for op in after.compute_ops() if op.operands[1:]}
    kinds = {k: v for k, v in kinds.items() if k in NAMES}
    assert "#int4" in kinds["fc1"] or "i4" in kinds["fc1"], kinds
    assert "i8" in kinds["fc2"] and "f32" in kinds["fc3"] and "#" not in kinds["fc3"], kinds


def test_all_float_bits_add_no_stage_and_one_width_needs_no_bits_for():
    assert _bits_stage({"fc1": 16, "fc2": 16}) == []
    assert _bits_stage({"fc1": 8, "fc2": 8, "fc3": 16}) == [r"quantize(bits=8,bits_for='^(?:fc3)(?!\S):16')"]
    assert _bits_stage({"fc1": 4, "fc2": 4}) == ["quantize(bits=4)"]


def test_narrowing_follows_the_tiers_robust_sensitive_fragile():
    budget = 0.01
    robust = dict.fromkeys(["prune50", "prune90", "int8", "int4", "int2", "cluster4", "binarize"], 0.0)
    o = LayerOptions.from_drops("a", robust, budget, last=False)
    assert (o.prune_max, o.neuron_max, o.bits, o.binary, o.cluster) == (
        0.95, 0.85, (16, 8, 4, 2), ("float", "binary", "ternary"), True
    )  # fmt: skip
    # 90 % pruning costs 3 pt (sensitive), int4 and int2 3 pt (sensitive), binarize 3 pt: milder options
    sensitive = {**robust, "prune90": 0.03, "int4": 0.03, "int2": 0.03, "binarize": 0.03}
    o = LayerOptions.from_drops("b", sensitive, budget, last=False)
    assert (o.prune_max, o.neuron_max, o.bits, o.binary) == (0.9, 0.6, (16, 8, 4), ("float", "ternary"))
    # 50 % pruning costs 10 pt, int8 6 pt, cluster 20 pt, binarize 30 pt: fragile, left out
    fragile = {"prune50": 0.1, "prune90": 0.4, "int8": 0.06, "int4": 0.2, "cluster4": 0.2, "binarize": 0.3}
    o = LayerOptions.from_drops("c", fragile, budget, last=False)
    assert (o.prune_max, o.neuron_max, o.bits, o.binary, o.cluster) == (0.0, 0.0, (16,), ("float",), False)
    # the last layer's neurons are the model's outputs: never pruned
    assert LayerOptions.from_drops("d", robust, budget, last=True).neuron_max == 0.0


def _sensitivity(drops: list[dict[str, float]]) -> Sensitivity:
    rows = [
        LayerRow(f"fc{i + 1}", f"fc{i + 1}.weight", 100, {t: Cell(0.9 - d, 30.0, 100) for t, d in row.items()})
        for i, row in enumerate(drops)
    ]
    return Sensitivity(0.9, 1000, list(drops[0]), rows)


def test_a_fragile_layer_gets_no_question_and_no_stage():
    techniques = ["prune50", "prune90", "int8", "int4", "cluster4", "binarize"]
    fine = dict.fromkeys(techniques, 0.0)
    space = Space.from_sensitivity(_sensitivity([dict.fromkeys(techniques, 0.5), fine, fine]), 0.01)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(100):
        trial = study.ask()
        text = suggest_pipeline(trial, space)
        assert build_pipeline(text)
        assert not any(k.endswith(":fc1") for k in trial.params), trial.params  # fc1 is fragile to everything
        if trial.params["storage"] == "cluster":
            assert r"skip='^(?:fc1)(?!\S)'" in text
        study.tell(trial, 0.0)


def test_the_space_round_trips_through_json_and_a_resumed_study_keeps_it(digits, tmp_path):
    space = Space.from_sensitivity(_sensitivity([{"prune50": 0.0, "int8": 0.02}, {"prune50": 0.3}]), 0.01)
    assert Space.from_json(space.to_json()) == space
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db'}", study_name="s")
    study.set_user_attr("space", space.to_json())
    # a later run with other options (no narrowing) asks the same questions as the first
    again = driver._study_space(
        study, digits["graph"], (digits["x_test"], digits["y_test"]), 0.05, False, io.StringIO()
    )
    assert again == space


def test_narrowing_measures_the_graph_itself(digits):
    data = (digits["x_train"][:64], digits["y_train"][:64])
    space, sensitivity = driver.narrowed_space(digits["graph"], data, 0.015, count=64)
    assert space.names == NAMES and [r["layer"] for r in sensitivity["layers"]] == NAMES
    assert space.layers[-1].neuron_max == 0.0  # the classifier's outputs stay
    assert all(16 in o.bits for o in space.layers)  # keeping a layer in float is always an option


ROW = {
    "pipeline": "quant8",
    "status": "ok",
    "weight_bytes": 2048,
    "latency_us": 0.5,
    "accuracy": 0.97,
    "feasible": True,
}
BASE = {"weight_bytes": 8192, "latency_us": 2.0, "accuracy": 0.98}


def test_progress_lines_name_each_trial_and_the_best_so_far():
    log = io.StringIO()
    bar = Progress(4, 1, BASE, log, "lines")
    bar.update(ROW, ROW)
    bar.close()
    assert log.getvalue() == "[2/4] quant8: 2.0 KiB, 0.50 µs, 97.00% | best 4.0x smaller, 4.0x faster, 97.00%\n"


def test_progress_bar_uses_tqdm_and_shows_the_best_so_far():
    pytest.importorskip("tqdm")
    log = io.StringIO()
    bar = Progress(2, 0, BASE, log, "bar")
    bar.update(ROW, ROW)
    bar.update({**ROW, "status": "fail", "error": "McirError: no"}, ROW)
    bar.close()
    text = log.getvalue()
    assert "[1/2] quant8" in text and "[2/2] quant8: failed: McirError: no" in text
    assert "2/2" in text and "best 4.0x smaller, 4.0x faster, 97.00%" in text


def test_progress_bar_without_tqdm_is_drawn_in_place(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm":
            raise ImportError("no tqdm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    log = io.StringIO()
    bar = Progress(2, 0, BASE, log, "bar")
    bar.update(ROW, None)
    bar.close()
    text = log.getvalue()
    assert "\rsearch [" in text and "1/2 best: none feasible yet" in text and "[1/2] quant8" in text


def test_two_bits_are_offered_only_where_int2_was_measured_robust():
    budget = 0.01
    robust = dict.fromkeys(["prune50", "prune90", "int8", "int4", "cluster4", "binarize"], 0.0)
    assert LayerOptions.from_drops("a", {**robust, "int2": 0.0}, budget, last=False).bits == (16, 8, 4, 2)
    # int4 costs nothing but int2 costs 3 pt (sensitive) or 40 pt: 2-bit is the strongest width, so not offered
    assert LayerOptions.from_drops("b", {**robust, "int2": 0.03}, budget, last=False).bits == (16, 8, 4)
    assert LayerOptions.from_drops("c", {**robust, "int2": 0.4}, budget, last=False).bits == (16, 8, 4)
    # not measured (an analysis without int2) is not evidence: no 2-bit
    assert LayerOptions.from_drops("d", robust, budget, last=False).bits == (16, 8, 4)


def test_pruning_is_judged_after_recovery_when_that_was_measured():
    budget = 0.01
    # pruning 90 % alone costs 16 pt (fragile), 50 % costs 2 pt (sensitive): without recovery, at most 0.7
    drops = dict.fromkeys(["int8", "int4", "int2", "cluster4", "binarize"], 0.0) | {"prune50": 0.02, "prune90": 0.16}
    assert LayerOptions.from_drops("a", drops, budget, last=False).prune_max == 0.7
    # fine-tuned after pruning 90 % the layer loses 0.5 pt: robust, the full range and neurons to 0.85
    o = LayerOptions.from_drops("a", {**drops, "prune90ft": 0.005}, budget, last=False)
    assert (o.prune_max, o.neuron_max) == (0.95, 0.85)
    assert "prune90ft robust" in o.why
    # and a layer still fragile after recovery keeps its unrecovered 50 % tier
    o = LayerOptions.from_drops("a", {**drops, "prune90ft": 0.2}, budget, last=False)
    assert o.prune_max == 0.7


def _asked(space: Space, params: dict, origin: str, train: bool = True):
    study = optuna.create_study()
    study.enqueue_trial(params, user_attrs={"origin": origin})
    trial = study.ask()
    text = suggest_pipeline(trial, space, train=train)
    assert trial.params == params  # the seed answers every question its trial asks, nothing else
    assert trial.user_attrs["origin"] == origin
    assert build_pipeline(text), text
    return text


def test_seed_trials_are_the_principled_corners_of_the_narrowed_space():
    a = LayerOptions("fc1", prune_max=0.95, neuron_max=0.6, bits=(16, 8, 4, 2))
    b = LayerOptions("fc2", prune_max=0.7, neuron_max=0.0, bits=(16, 8, 4), cluster=False)
    c = LayerOptions("fc3", prune_max=0.0, neuron_max=0.0, bits=(16,), binary=("float",), cluster=False)
    space = Space((a, b, c))
    seeds = dict(seed_trials(space))
    assert list(seeds) == ["mildest", "strongest-bits", "deep-compression", "neurons-int8"]
    texts = {name: _asked(space, params, name) for name, params in seeds.items()}
    # int8 where allowed; fc3 has one width (float): it is not asked and stays float
    float_fc3 = r"^(?:fc3)(?!\S):16"
    assert texts["mildest"] == f"quantize(bits=8,bits_for='{float_fc3}')"
    assert texts["strongest-bits"] == rf"finetune(epochs=20),quantize(bits=2,bits_for='^(?:fc2)(?!\S):4,{float_fc3}')"
    # pruned no further than measured (0.9 of fc1's 0.95), fc2 at its cap, fc3 not at all; clustering
    # leaves the layers it may not touch, and recovery is split: weights before, centroids after
    assert texts["deep-compression"] == (
        r"prune(sparsity=0.7,skip='^(?:fc1|fc3)(?!\S)'),prune(sparsity=0.9,skip='^(?:fc2|fc3)(?!\S)'),"
        r"finetune(epochs=10),cluster(bits=4,skip='^(?:fc2|fc3)(?!\S)'),finetune(epochs=10)"
    )
    assert texts["neurons-int8"] == (
        r"prune(granularity=neuron,sparsity=0.6,skip='^(?:fc2|fc3)(?!\S)'),finetune(epochs=20),"
        f"quantize(bits=8,bits_for='{float_fc3}')"
    )
    # without training data no recovery is given (the space does not ask for one)
    for name, params in seed_trials(space, train=False):
        assert "finetune" not in _asked(space, params, name, train=False)


def test_a_space_that_cannot_prune_or_quantize_gets_no_such_seed():
    only_float = Space((LayerOptions("fc1", prune_max=0.0, neuron_max=0.0, bits=(16,), cluster=False),))
    assert seed_trials(only_float) == []


def test_cluster_recovery_is_split_around_the_clustering():
    study = optuna.create_study()
    params = {"prune": "none", "lowrank": False, "recovery": "distill", "epochs": 5, "storage": "cluster"}
    study.enqueue_trial({**params, "cluster_bits": 3})
    text = suggest_pipeline(study.ask(), Space.unnarrowed(NAMES))
    assert text == "distill(epochs=3),cluster(bits=3),distill(epochs=2)"
