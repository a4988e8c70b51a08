"""The low-bit encodings as IR (printed, parsed, saved, loaded, verified) and the passes that make them.

* ``#codebook``, ``#int4``/``#int2``, ``#pow2`` and ``#dynamic`` print and re-parse byte for byte,
  survive ``mcir.save``/``mcir.load`` with their components, and bad parameters are McirErrors;
* ``cluster``: 1-D k-means gives ascending centroids, nearest-centroid indices, keeps zeros exact,
  never has more error than its linear initialisation, and is seeded;
* ``quantize(bits=4|2, scheme=pow2, activations=dynamic)``: option errors name the fix; a layer whose
  compressed weight would embed more bytes than the dense one stays float, with a warning.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mcir
from mcir import dtypes
from mcir.encodings import Int2, Int4, Pow2
from mcir.encodings.pow2 import levels
from mcir.errors import McirError
from mcir.passes.cluster import kmeans
from mcir.types import TensorType


def small_model() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 4)).eval()
    return model, torch.randn(2, 64)


@pytest.mark.parametrize(
    "pipeline",
    [
        "cluster(bits=3)",
        "cluster(bits=5,scope=channel)",
        "quantize(bits=4,group=32)",
        "quantize(bits=2)",
        "quantize(scheme=pow2,bits=3)",
        "quantize(activations=dynamic,bits=4)",
    ],
)
def test_round_trips_through_text_and_files(tmp_path, pipeline):
    model, x = small_model()
    g = mcir.run_passes(mcir.trace(model, (x,)), pipeline)
    text = str(g)
    assert str(mcir.parse(text)) == text
    mcir.save(g, tmp_path / "m")
    back = mcir.load(tmp_path / "m")
    assert str(back) == text
    np.testing.assert_array_equal(mcir.interpret(back, x.numpy())[0], mcir.interpret(g, x.numpy())[0])


@pytest.mark.parametrize(
    "text",
    [
        'f32[4,8] #codebook<bits=9, scope="layer">',
        'f32[4,8] #codebook<bits=4, scope="row">',
        "i8[4,8] #int4<group=48>",
        "f32[4,8] #pow2<bits=6>",
        "u8[4,8] #dynamic<axis=1>",
    ],
)
def test_bad_parameters_are_errors(text):
    body = f"  %w = const : {text}\n  %y = linear(%x, %w) : f32[1,4]\n  return %y\n"
    src = "graph @g(%x: f32[1,8]) -> (f32[1,4]) {\n" + body + "}"
    with pytest.raises(McirError):
        mcir.parse(src)


def test_int_and_pow2_decode_exactly():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 40)).astype(np.float32)
    for enc in (Int4(0), Int4(32), Int2(0)):
        t = TensorType(w.shape, dtypes.i8, enc)
        q = enc.values(t, t.encode(w))
        assert np.abs(q).max() <= enc.qmax
        err = np.abs(t.decode(t.encode(w)) - w).reshape(6, -1)
        assert (err <= np.abs(w).max() / enc.qmax / 2 + 1e-6).all()  # half a step of the largest scale
    t = TensorType(w.shape, dtypes.f32, Pow2(4))
    d = t.decode(t.encode(w))
    mags = np.abs(d[d != 0])
    assert np.array_equal(mags, np.exp2(np.round(np.log2(mags))))  # every nonzero weight is a power of two
    assert sorted(set(np.abs(levels(4)))) == [0.0] + [2.0**e for e in range(-6, 1)]


def test_kmeans_is_lloyd_on_sorted_values():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((3, 500)).astype(np.float32)
    rows[1, :100] = 0.0
    for init in ("linear", "density", "kmeans++"):
        c, idx = kmeans(rows, 8, init)
        assert (np.diff(c, axis=1) >= 0).all()
        dec = np.take_along_axis(c, idx.astype(np.int64), 1)
        nearest = np.abs(rows[:, :, None] - c[:, None, :]).min(axis=2)
        np.testing.assert_allclose(np.abs(dec - rows), nearest, atol=1e-6)  # every value takes its nearest
        assert (dec[1, :100] == 0).all()  # pruned zeros stay exactly zero
        for i in range(3):  # Lloyd's fixed point: each centroid is the mean of its values
            for j in np.unique(idx[i]):
                assert abs(rows[i][idx[i] == j].mean() - c[i, j]) < 1e-4 or (i == 1 and c[i, j] == 0)
    a, _ = kmeans(rows, 8, "kmeans++", seed=3)
    b, _ = kmeans(rows, 8, "kmeans++", seed=3)
    np.testing.assert_array_equal(a, b)


def test_option_errors_name_the_fix():
    for bad, hint in [
        ("quantize(bits=3)", "use 8"),
        ("quantize(scheme=pow2)", "bits=4"),
        ("quantize(bits=8,group=32)", "group"),
        ("quantize(activations=dynamic,bits=2)", "dynamic"),
        ("cluster(bits=9)", "1..8"),
        ("cluster(init=random)", "kmeans++"),
    ]:
        with pytest.raises(McirError, match=hint):
            model, x = small_model()
            mcir.run_passes(mcir.trace(model, (x,)), bad)


def test_a_layer_that_would_grow_stays_float():
    model, x = small_model()
    g = mcir.trace(model, (x,))
    out = mcir.run_passes(g, "cluster(bits=8,scope=channel)")
    # 1 KiB of centroids per row: more than a 48-wide f32 row (192 bytes) and a 64-wide one
    assert "#codebook" not in str(out)
    assert any("more bytes" in w for w in out.meta["report"].warnings)


def test_stats_count_macs_by_how_the_kernel_does_them():
    model, x = small_model()
    g = mcir.trace(model, (x,))
    macs = 2 * (64 * 48 + 48 * 4)
    assert mcir.stats(mcir.run_passes(g, "quantize(bits=4)")).macs_by_kind["f32"] == macs  # lookup + f32 FMA
    assert mcir.stats(mcir.run_passes(g, "cluster(bits=4)")).macs_by_kind["f32"] == macs
    assert mcir.stats(mcir.run_passes(g, "quantize(activations=dynamic,bits=4)")).macs_by_kind["int8"] == macs
