"""Numbers tests compare: top-1 accuracy of a graph, SQNR of outputs."""

from __future__ import annotations

import numpy as np

import mcir


def accuracy(graph: mcir.Graph, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a graph whose single input is the whole of ``x``."""
    return float(np.mean(np.argmax(mcir.interpret(graph, x)[0], axis=1) == y))


def sqnr_db(reference: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantisation-noise ratio of ``got`` against ``reference``, in dB."""
    ref, got = np.asarray(reference, np.float64), np.asarray(got, np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)))
