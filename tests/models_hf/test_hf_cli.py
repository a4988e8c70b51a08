"""``mcir compile`` of a saved HuggingFace model from the command line: a state dict plus the
factory that builds the model (``--model-def``), token inputs given as ``NAME=SHAPE:i64``."""

from __future__ import annotations

import sys

import pytest
import torch

from mcir.cli import main

from .hf_models import build

FACTORY_SOURCE = """
from tests.models_hf.hf_models import build


def bert():
    return build("bert")
"""


@pytest.mark.slow
def test_mcir_compile_of_a_saved_bert_with_quant8(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    (tmp_path / "hf_factory.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(build("bert", seed=3).state_dict(), tmp_path / "bert.pt")
    argv = [str(tmp_path / "bert.pt"), "--model-def", "hf_factory:bert", "-p", "fold,quant8"]
    argv += ["-i", "input_ids=2x8:i64", "-i", "attention_mask=2x8:i64", "-i", "token_type_ids=2x8:i64"]
    code = main(["compile", *argv, "-o", str(tmp_path / "out" / "bert")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (tmp_path / "out" / "bert.so").exists() and (tmp_path / "out" / "bert.h").exists()
    compared = next(line for line in out.splitlines() if line.startswith("native vs original"))
    sqnr = float(compared.split("SQNR")[1].split("dB")[0])  # "native vs original  max |Δ| ..., SQNR 66.9 dB"
    assert sqnr >= 30
    sys.modules.pop("hf_factory", None)
