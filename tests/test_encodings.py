"""The encodings package: registration, the facts each encoding states, and agreement with the backend.

* every encoding is registered by importing ``mcir.encodings`` (no import at the bottom of
  ``mcir/types.py``), and ``mcir.types`` does not need the encodings at import time;
* ``storage_bytes`` is the sum of the components, ``stored_fraction`` and ``mac_kind`` are
  what ``mcir.stats`` counts;
* on every encoding x op form, ``mcir.stats.has_kernel`` (the kernel registry) agrees with what
  ``mcir.compile`` does, and where it compiles ``mcir.stats`` counts exactly the library's bytes
  (the pack hooks and the stats agree by construction: they share ``constant_layout``; this
  test keeps it so).
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mcir
from mcir import dtypes
from mcir.encodings import ENCODINGS, NM, Binary, Csr, Int4, Pow2, Quant, Ternary, to_csr, to_nm
from mcir.errors import CodegenError
from mcir.stats import embedded_bytes, has_kernel
from mcir.types import TensorType

ROOT = Path(__file__).resolve().parents[1]


def test_every_encoding_module_registers_itself_when_the_package_is_imported():
    assert set(ENCODINGS) == {
        "quant",
        "binary",
        "ternary",
        "csr",
        "nm",
        "codebook",
        "int4",
        "int2",
        "pow2",
        "dynamic",
        "sparse_codebook",
        "round",
    }
    for name, cls in ENCODINGS.items():
        assert cls.__module__ == f"mcir.encodings.{ {'int2': 'int4'}.get(name, name) }"  # int2 shares int4.py


def test_types_imports_no_encoding_at_run_time():
    tree = ast.parse((ROOT / "mcir" / "types.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert not any("encodings" in (getattr(n, "module", "") or "") for n in top_level)
    # and a fresh interpreter can import mcir.types first, then the encodings, without a circle
    code = "import mcir.types, mcir.encodings; print(sorted(mcir.encodings.ENCODINGS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == str(sorted(ENCODINGS))


def _sparse_weight(shape: tuple[int, ...], density: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    return np.where(rng.random(shape) < density, w, 0).astype(np.float32)


def _nm_weight(shape: tuple[int, ...]) -> np.ndarray:
    w = np.random.default_rng(1).standard_normal(shape).astype(np.float32).reshape(shape[0], -1, 4)
    w[:, :, 1::2] = 0  # 2 of every 4
    return w.reshape(shape)


def _weight(kind: str, shape: tuple[int, ...]) -> tuple[TensorType, object]:
    """A weight of ``shape`` in encoding ``kind`` (type, stored components)."""
    dense = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    if kind == "f32":
        return TensorType(shape, dtypes.f32), dense
    if kind == "quant":
        scale = np.abs(dense).reshape(shape[0], -1).max(axis=1) / 127
        q = np.rint(dense / scale.reshape((-1,) + (1,) * (len(shape) - 1))).astype(np.int8)
        return TensorType(shape, dtypes.i8, Quant(axis=0)), {"data": q, "scale": scale.astype(np.float32)}
    if kind == "binary":
        t = TensorType(shape, dtypes.b1, Binary(0))
        return t, t.encode(dense)
    if kind == "ternary":
        t = TensorType(shape, dtypes.t2, Ternary(0))
        return t, t.encode(dense)
    if kind == "csr":
        return to_csr(_sparse_weight(shape))
    if kind == "nm":
        return to_nm(_nm_weight(shape), 2, 4)
    if kind == "sparse_codebook":  # Deep Compression's storage: codes of the non-zeros at relative gaps
        from mcir.passes.cluster import cluster_sparse_weight

        return cluster_sparse_weight(_sparse_weight(shape), 5)
    if kind in ("codebook", "int4", "pow2"):  # the low-bit weights of issue #14
        from mcir.passes.cluster import cluster_weight

        if kind == "codebook":
            return cluster_weight(dense, 4, "layer")
        t = TensorType(shape, dtypes.i8 if kind == "int4" else dtypes.f32, Int4(32) if kind == "int4" else Pow2(4))
        return t, t.encode(dense)
    raise AssertionError(kind)


# op forms: (name, input shape, weight shape, attrs)
FORMS = {
    "linear batch 1": ("linear", (1, 64), (32, 64), {}),
    "linear batch 8": ("linear", (8, 64), (32, 64), {}),
    "conv2d 1x1": ("conv2d", (1, 16, 6, 6), (32, 16, 1, 1), {}),
    "conv2d 3x3": ("conv2d", (1, 16, 6, 6), (32, 16, 3, 3), {"padding": (1, 1)}),
}


def _graph(form: str, kind: str, quantized_input: bool) -> tuple[mcir.Graph, object]:
    op, xshape, wshape, attrs = FORMS[form]
    g = mcir.Graph("e")
    x = g.add_input("x", mcir.tensor(list(xshape)))
    src = x
    if quantized_input:
        src = g.add("quantize", [x], type=TensorType(xshape, dtypes.u8, Quant(scale=0.03, zero_point=128)))
    wt, stored = _weight(kind, wshape)
    w = g.const("w", stored, wt)
    y = g.add(op, [src, w], attrs, result="y")
    if y.type.encoding is not None:
        y = g.add("dequantize", [y])
    g.set_outputs([y])
    return g, w.producer


CASES = [
    (form, kind, q)
    for form in FORMS
    for kind in ("f32", "quant", "binary", "ternary", "csr", "nm", "codebook", "int4", "pow2", "sparse_codebook")
    for q in (False, True)
]


@pytest.mark.slow
@pytest.mark.parametrize("form, kind, quantized_input", CASES)
def test_has_kernel_agrees_with_compile_and_stats_with_the_library(tmp_path, form, kind, quantized_input):
    g, _ = _graph(form, kind, quantized_input)
    layer = next(op for op in g.compute_ops() if op.name in ("linear", "conv2d"))
    w = layer.operands[1]
    says = has_kernel(layer, 1, w.type) if w.type.encoding is not None else None
    try:
        lib = mcir.compile(g, tmp_path / "e")
    except CodegenError:
        compiled = False
    else:
        compiled = True
        assert mcir.stats(g).weight_bytes == lib.weight_bytes
        if w.type.encoding is not None:  # the weight is the graph's only constant
            assert embedded_bytes(layer, 1, w.type, w.producer.data) == lib.weight_bytes
    if says is not None:
        assert says == compiled
        if not compiled:
            assert embedded_bytes(layer, 1, w.type, w.producer.data) is None, (
                f"has_kernel says {says}, compile {'succeeded' if compiled else 'failed'}"
            )


@pytest.mark.parametrize("kind", ["quant", "binary", "ternary", "csr", "nm"])
def test_storage_bytes_are_the_components_and_fractions_scale_params(kind):
    t, stored = _weight(kind, (32, 64))
    parts = t.encoding.components(t)
    assert set(parts) == set(stored) if isinstance(stored, dict) else set(parts) == {"data"}
    assert t.nbytes == sum(math.ceil(math.prod(s) * dt.bits / 8) for dt, s in parts.values())
    expected = {"quant": 1.0, "binary": 1.0, "ternary": 1.0, "csr": t.encoding.params().get("nnz", 0) / t.numel}
    expected["nm"] = 0.5
    assert t.encoding.stored_fraction(t) == pytest.approx(expected[kind])
    assert t.encoding.mac_kind == {"quant": "int8", "binary": "bit", "ternary": "bit"}.get(kind, "sparse")


def test_nm_on_rows_it_does_not_divide_is_refused_with_the_reason():
    assert not NM(2, 4).fits(TensorType((16, 147), dtypes.f32))
    with pytest.raises(mcir.McirError, match="row length 147 .* is not a multiple of 4"):
        TensorType((16, 3, 7, 7), dtypes.f32, NM(2, 4))
    assert Csr(nnz=3).storage_bytes(TensorType((2, 8), dtypes.f32, Csr(nnz=3))) == 3 * 4 + 3 * 4 + 3 * 4
