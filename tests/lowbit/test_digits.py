"""Issue #14's acceptance on the digits MLP, natively, without fine-tuning.

Each technique is compiled to a native library and run on the 450 held-out digits; its
accuracy is compared with the fp32 model's and its embedded weight bytes (``lib.weight_bytes``,
equal to ``mcir.stats``) with the fp32 parameter bytes (203,304):

=================================== ============ ================
pipeline                            accuracy     bytes / fp32
=================================== ============ ================
``cluster(bits=4)``                 within 1 pt  <= 0.16
``quantize(bits=4)``                within 1.5   <= 0.16
``quantize(scheme=pow2, bits=4)``   within 2     <= 0.16
``quantize(activations=dynamic)``   within 0.5   (int8: 0.28)
=================================== ============ ================
"""

from __future__ import annotations

import numpy as np
import pytest

import mcir
from tests.codegen.helpers import build
from tests.lowbit.digits import accuracy, digits_graph, digits_split, fp32_param_bytes, trained_mlp

CASES = [
    ("cluster(bits=4)", 0.01, 0.16),
    # a table of 16 f32 per 64-weight row of fc1 costs twice its indices: channel scope is for wide rows
    ("cluster(bits=4,scope=channel,init=density)", 0.01, 0.26),
    ("cluster(bits=4,init='kmeans++')", 0.01, 0.16),
    ("quantize(bits=4)", 0.015, 0.16),
    ("quantize(bits=4,group=64)", 0.015, 0.16),
    ("quantize(scheme=pow2,bits=4)", 0.02, 0.16),
    ("quantize(activations=dynamic)", 0.005, 0.28),  # int8: 1/4 of the bytes; the bar is accuracy only
    ("quantize(activations=dynamic,bits=4)", 0.015, 0.16),  # W4A8
    ("cluster(bits=4,activations=dynamic)", 0.01, 0.16),  # int8-grid centroids, vpermb + VNNI
]


pytestmark = pytest.mark.slow  # trains the MLP (a few seconds on a loaded machine) and compiles 6 libraries


@pytest.fixture(scope="module")
def fp32():
    g = digits_graph()
    x = digits_split()[2]
    return g, accuracy(mcir.interpret(g, x)[0])


@pytest.mark.parametrize(("pipeline", "max_drop", "max_bytes"), CASES)
def test_digits_accuracy_and_bytes(tmp_path, fp32, pipeline, max_drop, max_bytes):
    g, acc32 = fp32
    x = digits_split()[2]
    q = mcir.run_passes(g, pipeline)
    lib = build(q, tmp_path)
    native = lib(x)[0]
    ref = mcir.interpret(q, x)[0]
    # weights-only pipelines: the f32 contract; dynamic ones re-quantise every layer's input, where a
    # last-bit difference of the previous layer can move a u8 code by one: 1e-3, as for quant8 models
    rtol = 1e-3 if "dynamic" in pipeline else 1e-5
    assert np.abs(native - ref).max() <= rtol * np.abs(ref).max()
    acc = accuracy(native)
    ratio = lib.weight_bytes / fp32_param_bytes(trained_mlp())
    assert lib.weight_bytes == mcir.stats(q).weight_bytes
    assert acc >= acc32 - max_drop, f"{pipeline}: accuracy {acc:.4f} vs fp32 {acc32:.4f}"
    assert ratio <= max_bytes, f"{pipeline}: {ratio:.4f} of the fp32 bytes"
