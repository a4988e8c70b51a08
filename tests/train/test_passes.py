"""finetune, distill and quantize(qat=N): compress, then recover — on the bundled digits MLP.

Each test trains for a second or two (one or two epochs) and asserts a real recovery: the
accuracy on held-out digits after the training pass is higher than right after the lossy pass,
while the compression (nnz, shapes, encodings) is exactly what the lossy pass left.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import mcir
from mcir.train.data import Batches, Dataset
from mcir.train.loop import fit
from mcir.train.run import evaluate


def accuracies(g: mcir.Graph) -> list[float]:
    """The report's accuracy column: the input graph, then after each pass."""
    return [r.accuracy for r in g.meta["report"].rows]


def run(digits, pipeline: str, **extra) -> mcir.Graph:
    return mcir.run_passes(
        digits["graph"],
        pipeline,
        data=(digits["x_train"], digits["y_train"]),
        eval=(digits["x_test"], digits["y_test"]),
        **extra,
    )


def test_finetune_recovers_pruned_accuracy_and_keeps_the_sparsity(digits):
    g = run(digits, "prune(sparsity=0.95,storage=sparse),finetune(epochs=2,lr=0.003)")
    _, pruned_acc, tuned_acc = accuracies(g)
    assert tuned_acc > pruned_acc + 0.05
    pruned = mcir.run_passes(digits["graph"], "prune(sparsity=0.95,storage=sparse)")
    assert [op.result.type for op in g.constants()] == [op.result.type for op in pruned.constants()]


def test_distill_recovers_a_neuron_pruned_student(digits):
    g = run(digits, "prune(granularity=neuron,sparsity=0.75),distill(epochs=2,lr=0.003)")
    _, pruned_acc, distilled_acc = accuracies(g)
    assert distilled_acc > pruned_acc + 0.02
    assert g.value("fc1.weight").type.shape == (64, 64)


def test_finetune_after_binarize_trains_through_the_sign(digits):
    g = run(digits, "binarize(skip=none),finetune(epochs=2,lr=0.003)")
    _, binary_acc, tuned_acc = accuracies(g)
    assert tuned_acc > binary_acc + 0.05
    assert all(op.result.type.dtype.name == "b1" for op in g.constants() if op.result.name.endswith("weight"))


def test_qat_keeps_the_int8_types(digits):
    cal = [(digits["x_train"][i : i + 1],) for i in range(32)]
    g = run(digits, "quant8(qat=1)", calibration=cal)
    plain = mcir.run_passes(digits["graph"], "quant8", calibration=cal)
    assert [str(v.type) for v in g.values()] == [str(v.type) for v in plain.values()]
    float_acc, qat_acc = accuracies(g)
    assert qat_acc >= float_acc - 0.02


def test_distill_from_a_saved_teacher(digits, tmp_path):
    mcir.save(digits["graph"], tmp_path / "teacher")
    g = run(digits, f"prune(granularity=neuron,sparsity=0.5),distill(epochs=1,teacher='{tmp_path / 'teacher'}')")
    teacher_acc, _, student_acc = accuracies(g)
    assert student_acc > teacher_acc - 0.05


@pytest.mark.parametrize("pipeline", ["prune,finetune", "distill", "quant8(qat=2)"])
def test_a_training_pass_without_data_stops_before_anything_runs(digits, pipeline):
    with pytest.raises(mcir.McirError, match="needs data: pass data=... to run_passes or --data train.npz"):
        mcir.run_passes(digits["graph"], pipeline)


def test_training_is_deterministic_for_a_seed(digits):
    graphs = [run(digits, "prune(sparsity=0.9),finetune(epochs=1,seed=3)") for _ in range(2)]
    for a, b in zip(*(list(g.constants()) for g in graphs)):
        parts = a.data.keys() if isinstance(a.data, dict) else [None]
        for k in parts:
            assert np.array_equal(a.data[k] if k else a.data, b.data[k] if k else b.data)


def test_data_as_arrays_dict_batches_generator_or_dataloader(digits):
    x, y = digits["x_train"][:256], digits["y_train"][:256]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), 64)
    sources = [
        (x, y),
        {"x": x, "y": y},
        Dataset(x, y),
        [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)],
        ((x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)),
        loader,
    ]
    for source in sources:
        g = mcir.run_passes(digits["graph"], "finetune(epochs=2)", data=source)
        assert "finetune: 2 epoch(s)" in g.meta["train"][0]


def test_ctrl_c_keeps_the_best_weights_so_far_and_says_so(digits, capsys):
    module = mcir.to_torch(digits["graph"])
    data = Batches((digits["x_train"][:128], digits["y_train"][:128]))
    steps = {"n": 0}
    snapshots = []

    def loss(out, inputs, target):
        steps["n"] += 1
        if steps["n"] == 2:  # after epoch 1 (one batch per epoch): remember its weights
            snapshots.append({k: v.detach().clone() for k, v in module.state_dict().items()})
        if steps["n"] == 3:
            raise KeyboardInterrupt
        return torch.nn.functional.cross_entropy(out, target)

    result = fit(module, data, epochs=5, lr=0.01, batch_size=128, loss=loss)
    assert result.interrupted and result.best_epoch == 2 - 1
    for k, v in module.state_dict().items():
        assert torch.equal(v, snapshots[0][k])
    assert "interrupted; keeping the best weights so far (epoch 1)" in capsys.readouterr().err


def test_report_has_an_accuracy_column_with_eval(digits):
    g = run(digits, "prune(sparsity=0.5)")
    table = g.meta["report"].table()
    assert "accuracy" in table.splitlines()[0]
    assert accuracies(g)[0] == pytest.approx(evaluate(digits["graph"], (digits["x_test"], digits["y_test"])))


def test_cubic_schedule_reaches_the_final_sparsity_fast_then_slowly():
    from mcir.train.gradual import cubic_schedule

    s = cubic_schedule(0.9, 4)
    assert s[-1] == pytest.approx(0.9)
    assert s[0] == pytest.approx(0.9 * (1 - 0.75**3))
    steps = np.diff([0.0, *s])
    assert all(a > b for a, b in itertools.pairwise(steps))


def test_gradual_pruning_ends_at_the_one_shot_sparsity_and_recovers_better(digits):
    one_shot = run(digits, "prune(sparsity=0.95,storage=sparse)")
    gradual = run(digits, "prune(sparsity=0.95,storage=sparse,steps=3,step_epochs=1)")
    assert [op.result.type for op in gradual.constants()] == [op.result.type for op in one_shot.constants()]
    assert accuracies(gradual)[-1] > accuracies(one_shot)[-1] + 0.05
    assert [line.split(":")[0] for line in gradual.meta["train"]] == ["prune step 1/3", "prune step 2/3"]


def test_gradual_channel_pruning_removes_the_requested_fraction(digits):
    g = run(digits, "prune(granularity=neuron,sparsity=0.5,steps=2,step_epochs=1)")
    assert g.value("fc1.weight").type.shape == (128, 64) and g.value("fc2.weight").type.shape == (64, 128)
