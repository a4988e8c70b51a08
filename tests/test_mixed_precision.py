"""quantize(bits_for=...): per-layer bit widths in one pass (mixed precision).

Each layer's weight gets exactly the encoding its bit width gives when the whole model is
quantised at that width: the same bytes as the uniform pass, layer by layer.
"""

from __future__ import annotations

import numpy as np
import pytest

import mcir


def encodings(g: mcir.Graph) -> dict[str, str]:
    """Weight name -> its stored type (dtype and encoding)."""
    return {op.result.name: str(op.result.type) for op in g.constants() if op.result.name.endswith("weight")}


def test_bits_for_gives_each_layer_its_own_width(digits):
    g, cal = digits["batch_graph"], digits["batch_calibration"]
    names = sorted(encodings(g))
    assert names == ["fc1.weight", "fc2.weight", "fc3.weight"]
    mixed = mcir.run_passes(g, "quantize(bits=8,bits_for='fc1:4,fc3:16')", calibration=cal)
    int8 = encodings(mcir.run_passes(g, "quantize(bits=8)", calibration=cal))
    int4 = encodings(mcir.run_passes(g, "quantize(bits=4)"))
    got = encodings(mixed)
    assert got["fc1.weight"] == int4["fc1.weight"] and "#int4" in got["fc1.weight"]
    assert got["fc2.weight"] == int8["fc2.weight"] and got["fc2.weight"].startswith("i8")
    assert got["fc3.weight"] == encodings(g)["fc3.weight"]  # 16: kept float
    assert "layers per bit width: 16: 1, 8: 1, 4: 1" in " ".join(mixed.meta["report"].warnings)

    # the weights are the uniform passes' weights, so the output stays close to the float model's
    x = digits["x_test"]
    ref, out = mcir.interpret(g, x)[0], mcir.interpret(mixed, x)[0]
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.97


def test_the_first_matching_rule_wins_and_unnamed_layers_take_bits(digits):
    g = digits["batch_graph"]
    got = encodings(mcir.run_passes(g, "quantize(bits=4,bits_for='fc[12]:2,fc1:16')"))
    assert "#int2" in got["fc1.weight"] and "#int2" in got["fc2.weight"] and "#int4" in got["fc3.weight"]


@pytest.mark.parametrize(
    ("bits_for", "message"),
    [
        ("fc1:3", "must be REGEX:BITS with BITS 16"),
        ("fc1", "must be REGEX:BITS"),
        ("fc(:4", "is not a regular expression"),
        ("conv9:4", "names no layer; the layers are: fc1, fc2, fc3"),
    ],
)
def test_bad_bits_for_is_refused_with_the_item(digits, bits_for, message):
    with pytest.raises(mcir.McirError, match=message):
        mcir.run_passes(digits["graph"], f"quantize(bits_for='{bits_for}')")
