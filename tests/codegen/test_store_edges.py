"""Edge stores never write past a result: the last partial vector of a u8 result is stored
lane by lane exactly (LLVM 22 miscompiles a one-lane masked store of a truncated vector)."""

from __future__ import annotations

import numpy as np
import pytest

import mcir

from .test_int8_gemm import qlinear


@pytest.mark.parametrize("n", [1, 17, 33, 49])
def test_u8_result_with_a_one_lane_tail_leaves_the_next_bytes_alone(tmp_path, n):
    g, x = qlinear(np.random.default_rng(n), (1,), n, 40, out="u8")
    lib = mcir.compile(g, tmp_path / f"edge{n}")
    buf = np.full(n + 64, 0xA5, np.uint8)  # the result, then sentinel bytes
    out = buf[:n].reshape(1, n)
    lib.run_into([x], [out])
    assert (buf[n:] == 0xA5).all(), "the kernel wrote past the end of its result"
    np.testing.assert_allclose(out.astype(int), mcir.interpret(g, x)[0].astype(int), atol=1)
