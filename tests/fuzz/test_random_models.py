"""Random torch models through trace, fold, quant8 and compile, against torch and the interpreter.

The generator (``random_models.py``) draws image nets (conv, batch norm, activations, pooling,
residual adds, channel concats) and vector nets (linear, layer norm, activations, residual adds,
concats, a reshape round trip). Each model: interpreter vs torch and fold vs the traced graph within
1e-4 of the output's scale; native f32 vs interpreter within 1e-4; native int8 vs the interpreter of
the quantised graph within 1e-3 and every u8 activation within 1 LSB. A model may be refused with a
McirError (an op mcir does not import, e.g. ``nn.ELU``); anything else is a bug.
``benchmarks/fuzz.py --models 200`` runs 200 of them (docs/benchmarks.md).
"""

from __future__ import annotations

import pytest

from tests.fuzz.random_models import check_model, random_model


def test_the_generator_is_deterministic_and_varied() -> None:
    assert random_model(3)[2] == random_model(3)[2]
    kinds = {random_model(s)[2].split(":")[0].split()[-1] for s in range(20)}
    assert kinds == {"image", "vector"}
    layers = " ".join(random_model(s)[2] for s in range(40))
    for layer in ("Conv2d", "BatchNorm2d", "Linear", "LayerNorm", "MaxPool2d", "AvgPool2d", "add", "cat", "reshape"):
        assert layer in layers


def test_a_random_model_agrees_with_torch_and_natively(tmp_path) -> None:
    # seed 5: a vector net with reshape round trips and a residual add, f32 and int8 compiled
    assert check_model(5, tmp_path) == "ok"


@pytest.mark.slow  # ~2-6 s per model
@pytest.mark.parametrize("seed", [0, *range(100, 112)])
def test_more_random_models_agree_or_are_refused_cleanly(tmp_path, seed: int) -> None:
    outcome = check_model(seed, tmp_path)
    assert outcome == "ok" or outcome.startswith("refused at trace"), outcome
