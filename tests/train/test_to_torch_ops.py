"""``to_torch`` computes what the interpreter computes, op by op.

Every case of the op-reference table (``tests/test_op_reference.py``, at least one per registered
op) becomes a one-op graph; the torch module built by ``mcir.to_torch`` must give the
interpreter's output. Tolerance: float outputs within ``1e-5 · max|interpreter output|`` (the
references compute in float64, the module in float32), NaN and infinities at the same places;
integer and bool outputs exactly; same shape always.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_op_reference import CASES, Case

import mcir
from mcir import dtypes
from mcir.ir import Graph
from mcir.ops import all_ops
from mcir.types import tensor

RTOL = 1e-5


def one_op_graph(case: Case) -> Graph:
    g = Graph(case.op)
    if case.op == "const":
        g.set_outputs([g.const("c", case.extra["data"])])
        return g
    types = list(case.arg_types) + [None] * (len(case.args) - len(case.arg_types))
    inputs = [
        g.add_input(f"x{i}", t or tensor(a.shape, dtypes.from_numpy(a.dtype)))
        for i, (a, t) in enumerate(zip(case.args, types))
    ]
    g.set_outputs([g.add(case.op, inputs, case.attrs, type=case.result_type)])
    return g


def stored_to_logical(g: Graph, out: np.ndarray) -> np.ndarray:
    t = g.outputs[0].type
    return np.asarray(t.decode(out) if t.encoding is not None else out)


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype.kind != "f" or want.dtype.itemsize < 4:
        np.testing.assert_array_equal(got, want.astype(got.dtype) if want.dtype.itemsize < 4 else want)
        return
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.where(finite, 0, got), np.where(finite, 0, want))
    scale = float(np.abs(want[finite]).max()) if finite.any() else 0.0
    np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=RTOL * max(scale, 1e-30))


def test_every_registered_op_maps_to_torch():
    from mcir.train.to_torch import TORCH_OPS

    # const is not an op to run: constants are the parameters and buffers of the module
    assert sorted(set(all_ops()) - set(TORCH_OPS) - {"const"}) == []


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_module_matches_interpreter(case: Case):
    g = one_op_graph(case)
    (want,) = mcir.interpret(g, *case.args)
    want = stored_to_logical(g, np.asarray(want))
    module = mcir.to_torch(g)
    with torch.no_grad():
        (got,) = module.run(*case.args)
    got = got.detach()
    got = got.float() if got.dtype in (torch.float16, torch.bfloat16) and want.dtype == np.float32 else got
    got = got.numpy() if got.dtype != torch.bfloat16 else got.float().numpy()
    if want.dtype.kind == "f" and want.dtype.itemsize == 2:
        want = want.astype(np.float32)
        got = got.astype(np.float32)
    assert_close(got, want)
