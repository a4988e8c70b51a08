"""Model files: safe loading by default, clear refusals, state dict + factory, .pt2 with trust."""

from __future__ import annotations

import models
import numpy as np
import pytest
import torch
from torch import nn

import mcir
from mcir.errors import ModelFileError
from mcir.frontend.model_file import InputSpec, load_model, parse_input_spec


class WritesAFile:
    """Unpickling this calls open(path, "w"): what a malicious model file could do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def outputs_match(module: nn.Module, inputs: tuple[torch.Tensor, ...], reference: nn.Module) -> None:
    graph = mcir.trace(module, inputs)
    with torch.no_grad():
        expected = reference(*inputs).numpy()
    got = mcir.interpret(graph, *[x.numpy() for x in inputs])[0]
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("x=1x3x32x32:f32", InputSpec("x", (1, 3, 32, 32), "f32")),
        ("1x784", InputSpec(None, (1, 784), "f32")),
        ("tokens=1x128:i64", InputSpec("tokens", (1, 128), "i64")),
        ("7:bool", InputSpec(None, (7,), "bool")),
    ],
)
def test_parse_input_spec(text, spec):
    assert parse_input_spec(text) == spec
    assert parse_input_spec(str(spec)) == spec


@pytest.mark.parametrize(("text", "message"), [("x=1x:f32", "bad input spec"), ("1x2:f64", "unknown dtype 'f64'")])
def test_bad_input_spec(text, message):
    with pytest.raises(mcir.McirError, match=message):
        parse_input_spec(text)


def test_input_spec_examples_are_deterministic():
    spec = parse_input_spec("tokens=2x5:i64")
    assert spec.example().dtype == torch.int64 and spec.example().shape == (2, 5)
    assert torch.equal(parse_input_spec("3x4").example(), parse_input_spec("3x4").example())


def test_full_torch_nn_module_loads_safely(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 2)).eval()
    torch.save(model, tmp_path / "model.pt")
    module, inputs = load_model(tmp_path / "model.pt", inputs=["x=3x8"])
    assert isinstance(module, nn.Sequential) and not module.training
    assert inputs[0].shape == (3, 8)
    outputs_match(module, inputs, model)


def test_user_classes_need_their_module_named(tmp_path):
    torch.save(models.encoder(), tmp_path / "enc.pt")
    with pytest.raises(ModelFileError) as info:
        load_model(tmp_path / "enc.pt", inputs=["tokens=2x12:i64"])
    text = str(info.value)
    assert "models.EncoderClassifier" in text and "--import models" in text and "--trust" in text
    assert "torch.nn.modules" not in text  # torch.nn classes are allowed, so not listed
    module, inputs = load_model(tmp_path / "enc.pt", imports=["models"], inputs=["tokens=2x12:i64"])
    assert type(module).__name__ == "EncoderClassifier"
    outputs_match(module, inputs, models.encoder())


def test_pickle_that_would_write_a_file_is_refused_and_nothing_is_written(tmp_path):
    victim = tmp_path / "pwned.txt"
    torch.save({"weight": torch.ones(2), "payload": WritesAFile(str(victim))}, tmp_path / "evil.pt")
    with pytest.raises(ModelFileError) as info:
        load_model(tmp_path / "evil.pt", inputs=["1x2"])
    text = str(info.value)
    assert "refusing to unpickle" in text and "io.open" in text and "--trust" in text
    assert not victim.exists()
    # naming an unrelated module does not help, and torch globals that do I/O are not allowed either
    with pytest.raises(ModelFileError, match=r"io\.open"):
        load_model(tmp_path / "evil.pt", imports=["models"], inputs=["1x2"])
    assert not victim.exists()


def test_torch_globals_outside_torch_nn_are_refused(tmp_path):
    class SavesAFile:
        def __reduce__(self):
            return (torch.save, (torch.ones(1), str(tmp_path / "written.pt")))

    torch.save([SavesAFile()], tmp_path / "evil.pt")
    with pytest.raises(ModelFileError, match=r"torch\.serialization\.save"):
        load_model(tmp_path / "evil.pt", inputs=["1x2"])
    assert not (tmp_path / "written.pt").exists()


def test_trust_allows_a_full_load(tmp_path):
    torch.save(models.mlp(), tmp_path / "mlp.pt")
    module, _ = load_model(tmp_path / "mlp.pt", trust=True, inputs=["x=4x32"])
    assert type(module).__name__ == "MLP"


@pytest.mark.parametrize("cut", [0.5, 0.05])
def test_truncated_file_is_reported(tmp_path, cut):
    torch.save(models.mlp().state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelFileError, match=r"cut\.pt: cannot read the model file.*truncated"):
        load_model(tmp_path / "cut.pt", model_def="models:mlp", inputs=["4x32"])


def test_garbage_file_is_reported(tmp_path):
    (tmp_path / "noise.pt").write_bytes(b"this is not a model" * 10)
    with pytest.raises(ModelFileError, match=r"noise\.pt: a text file, not a model file mcir can load"):
        load_model(tmp_path / "noise.pt", inputs=["4x32"])
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "missing.pt")


def test_state_dict_with_factory(tmp_path):
    reference = models.cnn()
    torch.save(reference.state_dict(), tmp_path / "cnn.pt")
    module, inputs = load_model(tmp_path / "cnn.pt", model_def="models:cnn", inputs=["x=2x3x16x16"])
    outputs_match(module, inputs, reference)
    # a factory from a file path, and a checkpoint dict holding the state dict
    factory = tmp_path / "define.py"
    factory.write_text("import models\n\ndef build():\n    return models.CNN()\n")
    torch.save({"epoch": 3, "state_dict": reference.state_dict()}, tmp_path / "ckpt.pt")
    module, inputs = load_model(tmp_path / "ckpt.pt", model_def=f"{factory}:build", inputs=["2x3x16x16"])
    outputs_match(module, inputs, reference)


def test_state_dict_errors(tmp_path):
    torch.save(models.mlp().state_dict(), tmp_path / "mlp.pt")
    with pytest.raises(ModelFileError, match=r"state dict.*--model-def"):
        load_model(tmp_path / "mlp.pt", inputs=["4x32"])
    with pytest.raises(ModelFileError, match="does not fit the model built by models:cnn: missing stem"):
        load_model(tmp_path / "mlp.pt", model_def="models:cnn", inputs=["4x32"])
    with pytest.raises(ModelFileError, match="has no callable 'nothing'"):
        load_model(tmp_path / "mlp.pt", model_def="models:nothing", inputs=["4x32"])
    with pytest.raises(ModelFileError, match="cannot import module 'no_such_pkg'"):
        load_model(tmp_path / "mlp.pt", model_def="no_such_pkg:f", inputs=["4x32"])


def test_inputs_are_needed_and_checked_against_forward(tmp_path):
    torch.save(models.mlp().state_dict(), tmp_path / "mlp.pt")
    with pytest.raises(ModelFileError, match="--input"):
        load_model(tmp_path / "mlp.pt", model_def="models:mlp")

    class TwoInputs(nn.Module):
        def forward(self, tokens, mask):
            return tokens.float() * mask

    torch.save(TwoInputs().state_dict(), tmp_path / "two.pt")
    (tmp_path / "two.py").write_text(
        "import torch\n\nclass TwoInputs(torch.nn.Module):\n    def forward(self, tokens, mask):\n"
        "        return tokens.float() * mask\n\ndef build():\n    return TwoInputs()\n"
    )
    two = f"{tmp_path / 'two.py'}:build"
    _, inputs = load_model(tmp_path / "two.pt", model_def=two, inputs=["mask=2x3", "tokens=2x3:i64"])
    assert [x.dtype for x in inputs] == [torch.int64, torch.float32]  # ordered like forward(tokens, mask)
    with pytest.raises(ModelFileError, match=r"input\(s\) y are not parameters of TwoInputs.forward"):
        load_model(tmp_path / "two.pt", model_def=two, inputs=["tokens=2x3:i64", "y=2x3"])


def test_pt2_archive_needs_trust_and_brings_its_example_inputs(tmp_path):
    reference = models.mlp()
    torch.export.save(torch.export.export(reference, models.mlp_inputs()), tmp_path / "mlp.pt2")
    with pytest.raises(ModelFileError, match=r"\.pt2 archive.*can run code.*--trust"):
        load_model(tmp_path / "mlp.pt2")
    program, inputs = load_model(tmp_path / "mlp.pt2", trust=True)
    assert isinstance(program, torch.export.ExportedProgram)
    assert torch.equal(inputs[0], models.mlp_inputs()[0])
    graph = mcir.trace(program, inputs)
    assert str(graph).replace("@main", "@MLP") == str(mcir.trace(reference, inputs))
