"""The backend's own exp/log/tanh/sigmoid/erf: maximum errors measured against float64
on dense grids, and the special values (documented in mcir/codegen/kernels/math_approx.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mcir.ir import Graph
from mcir.ops.elementwise import erf64
from mcir.types import tensor

from .helpers import build

N = 1 << 17


@pytest.fixture(scope="module")
def approx(tmp_path_factory):
    g = Graph("approx")
    x = g.add_input("x", tensor([N]))
    p = g.add_input("p", tensor([N]))
    g.set_outputs([g.add("exp", [x]), g.add("tanh", [x]), g.add("sigmoid", [x]), g.add("erf", [x]), g.add("log", [p])])
    lib = build(g, tmp_path_factory.mktemp("approx"))

    def run(xs: np.ndarray, ps: np.ndarray | None = None):
        xs = np.resize(xs.astype(np.float32), N)
        ps = np.resize((ps if ps is not None else np.ones(1)).astype(np.float32), N)
        return xs, ps, dict(zip(("exp", "tanh", "sigmoid", "erf", "log"), lib(xs, ps)))

    return run


def test_exp_relative_error(approx):
    xs, _, out = approx(np.linspace(-103.9, 88.72, N))
    ref = np.exp(xs.astype(np.float64))
    normal = ref > 1.2e-38  # below that the result is subnormal and only absolutely accurate
    rel = np.abs(out["exp"][normal] - ref[normal]) / ref[normal]
    assert rel.max() < 2e-7, rel.max()
    assert np.abs(out["exp"][~normal] - ref[~normal]).max() < 1e-44


def test_log_error(approx):
    ps = np.concatenate([np.geomspace(1e-44, 3.4e38, N // 2), np.linspace(0.5, 2.0, N // 2)])
    _, ps, out = approx(np.zeros(1), ps)
    ref = np.log(ps.astype(np.float64))
    err = np.abs(out["log"] - ref) / np.maximum(np.abs(ref), 1.0)
    assert err.max() < 2e-7, err.max()


@pytest.mark.parametrize(
    ("name", "ref", "bound"),
    [
        ("tanh", np.tanh, 2e-7),
        ("sigmoid", lambda x: 1 / (1 + np.exp(-x)), 2e-7),
        ("erf", erf64, 6e-7),
    ],
)
def test_bounded_functions_absolute_error(approx, name, ref, bound):
    xs, _, out = approx(np.linspace(-12, 12, N))
    err = np.abs(out[name] - ref(xs.astype(np.float64)))
    assert err.max() < bound, err.max()


def test_erf_and_tanh_are_relatively_accurate_near_zero(approx):
    xs, _, out = approx(np.linspace(-0.49, 0.49, N))
    nz = np.abs(xs) > 1e-6
    x64 = xs.astype(np.float64)[nz]
    assert (np.abs(out["erf"][nz] - erf64(x64)) / np.abs(erf64(x64))).max() < 4e-7
    assert (np.abs(out["tanh"][nz] - np.tanh(x64)) / np.abs(np.tanh(x64))).max() < 2e-7


def test_special_values(approx):
    inf, nan = np.inf, np.nan
    xs = np.array([inf, -inf, nan, 0.0, -0.0, 200.0, -200.0], np.float32)
    ps = np.array([inf, 0.0, nan, 1.0, -1.0, 1e-45, 3.4e38], np.float32)
    xs, ps, out = approx(xs, ps)
    k = 7
    np.testing.assert_array_equal(out["exp"][:k], [inf, 0.0, nan, 1.0, 1.0, inf, 0.0])
    np.testing.assert_array_equal(out["tanh"][:k], [1.0, -1.0, nan, 0.0, -0.0, 1.0, -1.0])
    np.testing.assert_array_equal(out["sigmoid"][:k], [1.0, 0.0, nan, 0.5, 0.5, 1.0, 0.0])
    np.testing.assert_array_equal(out["erf"][:k], [1.0, -1.0, nan, 0.0, -0.0, 1.0, -1.0])
    np.testing.assert_array_equal(out["log"][:5], [inf, -inf, nan, 0.0, nan])
    np.testing.assert_allclose(out["log"][5:7], np.log(ps[5:7].astype(np.float64)), rtol=2e-7)
