"""Shared helpers of the ONNX tests: the test models exported by torch, built once per session."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest


def export_torch(model, inputs, path: Path, opset: int = 17) -> Path:
    """``torch.onnx.export`` with the TorchScript exporter (the dynamo one needs onnxscript, not installed)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=opset)
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """name -> (torch model, example inputs, path of its ONNX export), for the models of tests/models.py."""
    import models

    folder = tmp_path_factory.mktemp("onnx_models")
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            model, inputs = models.build(name)
            cache[name] = (model, inputs, export_torch(model, inputs, folder / f"{name}.onnx"))
        return cache[name]

    return get
