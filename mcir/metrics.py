"""How far one set of outputs is from another: the numbers every report states."""

from __future__ import annotations

import numpy as np


def compare_outputs(reference: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    """(max |Δ|, SQNR in dB) of ``got`` against ``reference`` over all outputs."""
    err = 0.0
    sig = noise = 0.0
    for r, g in zip(reference, got):
        r64 = np.asarray(r, np.float64)
        d = np.asarray(g, np.float64) - r64
        if d.size:
            err = max(err, float(np.nanmax(np.abs(d))))
        sig += float(np.sum(r64 * r64))
        noise += float(np.sum(d * d))
    sqnr = float("inf") if noise == 0 else 10.0 * np.log10(max(sig, 1e-300) / noise)
    return err, sqnr
