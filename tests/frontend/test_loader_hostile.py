"""The model loader against hostile files (issue #17, finding 4): following mcir's advice never runs an
attacker's code, deciding never imports what a file names, and decompression is bounded."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from mcir.errors import ModelFileError
from mcir.frontend import model_file
from mcir.frontend.model_file import load_model


class _Payload:
    """Pickles to ``func(*args)``: what an attacker's file asks the unpickler to call."""

    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def hostile(tmp_path: Path, name: str, func, args) -> Path:
    """A torch.save file whose state dict carries a payload next to a real tensor."""
    path = tmp_path / f"{name}.pt"
    torch.save({"weight": torch.ones(2), "payload": _Payload(func, args)}, path)
    return path


def payloads(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (file, marker the payload would create if it ran)."""
    import runpy

    out = {}
    marker = tmp_path / "ran_run_code"
    out["runpy"] = (
        hostile(tmp_path, "runpy", runpy._run_code, (f"open({str(marker)!r}, 'w').write('x')", {})),
        marker,
    )
    marker = tmp_path / "ran_popen"
    out["subprocess"] = (hostile(tmp_path, "popen", subprocess.Popen, (["touch", str(marker)],)), marker)
    marker = tmp_path / "ran_eval"
    out["builtins"] = (hostile(tmp_path, "eval", eval, (f"open({str(marker)!r}, 'w')",)), marker)
    return out


@pytest.mark.parametrize("module", ["runpy", "subprocess", "builtins"])
def test_payloads_never_run_with_or_without_importing_their_module(tmp_path, module):
    path, marker = payloads(tmp_path)[module]
    with pytest.raises(ModelFileError) as info:
        load_model(path, inputs=["1x2"])
    assert "--import" not in str(info.value)  # no advice to name a module that holds no model class
    with pytest.raises(ModelFileError, match="refusing to unpickle"):
        load_model(path, imports=[module], inputs=["1x2"])  # naming the module does not allow its callables
    assert not marker.exists()


def test_user_model_classes_still_load_and_are_suggested(tmp_path):
    import models

    torch.save(models.mlp(), tmp_path / "mlp.pt")
    with pytest.raises(ModelFileError, match="--import models"):
        load_model(tmp_path / "mlp.pt", inputs=["x=4x32"])
    module, _ = load_model(tmp_path / "mlp.pt", imports=["models"], inputs=["x=4x32"])
    assert type(module).__name__ == "MLP"


def test_deciding_never_imports_a_torch_module_the_file_names(tmp_path):
    """A file naming torch.distributed.run is refused without importing it (importing runs its code)."""
    # a pickle that names the global without needing the module at write time
    data = io.BytesIO()
    data.write(b"\x80\x02ctorch.distributed.run\nmain\nq\x00.")
    path = tmp_path / "names.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("names/data.pkl", data.getvalue())
        z.writestr("names/version", "3\n")
        z.writestr("names/byteorder", "little")
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from mcir.frontend.model_file import load_model\n"
        "from mcir.errors import ModelFileError\n"
        "try:\n"
        f"    load_model({str(path)!r}, inputs=['1x2'])\n"
        "except ModelFileError as e:\n"
        "    print('refused', 'torch.distributed.run.main' in str(e))\n"
        "print('imported' if 'torch.distributed.run' in sys.modules else 'not imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.split() == ["refused", "True", "not", "imported"], out


def test_decompression_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(model_file, "UNPACK_SLACK", 1 << 20)
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/data.pkl", pickle.dumps({}) + b"\0" * (16 << 20))
        z.writestr("bomb/version", "3\n")
    assert path.stat().st_size < 100_000
    with pytest.raises(ModelFileError, match=r"unpack to 16,777,\d+ bytes from a \d+(,\d+)?-byte file"):
        load_model(path, inputs=["1x2"])
