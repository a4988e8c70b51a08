"""``--data`` and ``--eval`` on the command line: training passes run from ``mcir opt``/``compile``."""

from __future__ import annotations

import numpy as np
import pytest

import mcir
from mcir.cli import main


@pytest.fixture
def files(digits, tmp_path):
    mcir.save(digits["graph"], tmp_path / "mlp")
    np.savez(tmp_path / "train.npz", x=digits["x_train"], y=digits["y_train"])
    np.savez(tmp_path / "test.npz", x=digits["x_test"], y=digits["y_test"])
    return tmp_path


def test_opt_trains_on_data_and_reports_accuracy_per_pass(files, capsys):
    code = main(
        [
            "opt",
            str(files / "mlp"),
            "--passes",
            "prune(sparsity=0.95,storage=sparse),finetune(epochs=2,lr=0.003)",
            "--data",
            str(files / "train.npz"),
            "--eval",
            str(files / "test.npz"),
            "-o",
            str(files / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0
    assert "finetune 2/2 [" in err and "eval acc" in err
    rows = [line.split() for line in err.splitlines() if line.startswith(("prune(", "finetune(")) and "%" in line]
    pruned, tuned = (float(r[-1].rstrip("%")) for r in rows)
    assert tuned > pruned
    assert mcir.load(files / "out").value("fc1.weight").type.encoding.name == "csr"


def test_opt_without_data_names_the_option(files, capsys):
    code = main(["opt", str(files / "mlp"), "--passes", "prune,finetune", "-o", str(files / "out")])
    assert code == 2
    assert "--data train.npz" in capsys.readouterr().err


def test_a_data_file_without_y_is_a_clear_error(files, capsys):
    np.savez(files / "bad.npz", x=np.zeros((4, 64), np.float32))
    code = main(["opt", str(files / "mlp"), "--passes", "finetune", "--data", str(files / "bad.npz"), "-o", "x"])
    assert code == 2
    assert "needs a target array 'y'" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_reports_native_accuracy(files, capsys):
    code = main(
        [
            "compile",
            str(files / "mlp"),
            "--passes",
            "prune(sparsity=0.9),finetune(epochs=2),quant8",
            "--data",
            str(files / "train.npz"),
            "--eval",
            str(files / "test.npz"),
            "--no-compare",
            "-o",
            str(files / "build" / "mlp"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("native accuracy on"))
    assert float(line.rsplit(" ", 1)[1].rstrip("%")) > 90
