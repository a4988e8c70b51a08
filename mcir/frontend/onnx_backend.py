"""mcir as an ONNX backend (``onnx.backend.base.Backend``), for the conformance suite in the ``onnx`` wheel.

Two modes run the imported graph: ``"interp"`` (the numpy reference interpreter, the
semantics every backend is measured against) and ``"native"`` (compiled with llvmlite into a
shared library in a temporary folder, run through ctypes)::

    from mcir.frontend.onnx_backend import McirBackend
    rep = McirBackend.prepare(model, mode="native")
    outputs = rep.run([x])

``NativeBackend`` is the same class with ``mode="native"`` as its default, for runners that
take a backend class (``onnx.backend.test.BackendTest``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from onnx.backend.base import Backend, BackendRep

from mcir.errors import McirError
from mcir.ir import Graph


class McirRep(BackendRep):
    """An imported (and, in native mode, compiled) model ready to run.

    mcir graphs have static shapes: an input the model uses as a shape, axes or pads (ONNX's
    node tests feed ``Reshape``'s shape as an input) is bound to the value it is run with, and
    the model is imported once per distinct set of such values (kept in a small cache).
    """

    def __init__(self, model: Any, mode: str, input_shapes: Any = None) -> None:
        from mcir.frontend.onnx_import import NeedsValue, from_onnx

        if mode not in ("interp", "native"):
            raise McirError(f"unknown backend mode '{mode}': use 'interp' or 'native'")
        self.model = model
        self.mode = mode
        self.input_shapes = input_shapes
        self.bound: list[str] = []  # ONNX inputs whose values specialise the graph
        self._cache: dict[bytes, tuple[Graph, Any]] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="mcir-onnx-") if mode == "native" else None
        self.names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        self.graph: Graph | None = None
        try:
            self.graph = from_onnx(model, input_shapes=input_shapes)
            self._cache[b""] = (self.graph, self._build(self.graph))
        except NeedsValue as e:
            self.bound.append(e.name)  # imported at run time, with the values

    def _build(self, graph: Graph) -> Any:
        if self.mode != "native":
            return None
        import mcir

        return mcir.compile(graph, f"{self._tmp.name}/{graph.name}_{len(self._cache)}")

    def _specialised(self, arrays: dict[str, np.ndarray]) -> tuple[Graph, Any]:
        from mcir.frontend.onnx_import import NeedsValue, from_onnx

        while True:
            key = b"".join(n.encode() + arrays[n].tobytes() + str(arrays[n].dtype).encode() for n in self.bound)
            if key in self._cache:
                return self._cache[key]
            try:
                graph = from_onnx(
                    self.model, input_shapes=self.input_shapes, constant_inputs={n: arrays[n] for n in self.bound}
                )
            except NeedsValue as e:
                if e.name in self.bound:
                    raise
                self.bound.append(e.name)
                continue
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = (graph, self._build(graph))
            return self._cache[key]

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Outputs for ``inputs`` (a list of arrays in ONNX input order, a dict by ONNX name, or one array)."""
        from mcir.interp import check_input, interpret

        if isinstance(inputs, dict):
            named = {k: np.asarray(v) for k, v in inputs.items()}
        else:
            arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            named = {n: np.asarray(a) for n, a in zip(self.names, arrays)}
        graph, lib = self._cache[b""] if not self.bound else self._specialised(named)
        free = [n for n in self.names if n not in self.bound]
        arrays = [check_input(v, named[n]) for v, n in zip(graph.inputs, free)]
        outs = lib(*arrays) if lib is not None else interpret(graph, *arrays)
        return tuple(np.asarray(o) for o in outs)


class McirBackend(Backend):
    """mcir behind ONNX's backend interface; CPU only."""

    mode: ClassVar[str] = "interp"

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", mode: str | None = None, **kwargs: Any) -> McirRep:
        """Import ``model`` (an ``onnx.ModelProto``) and, in native mode, compile it."""
        if not cls.supports_device(device):
            raise McirError(f"mcir runs on the CPU only, not on device '{device}'")
        return McirRep(model, mode or cls.mode, kwargs.get("input_shapes"))

    @classmethod
    def run_model(cls, model: Any, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(
        cls,
        node: Any,
        inputs: Any,
        device: str = "CPU",
        outputs_info: Sequence[tuple[Any, tuple[int, ...]]] | None = None,
        **kwargs: Any,
    ) -> tuple[np.ndarray, ...]:
        """Run one node on ``inputs`` by wrapping it in a one-node model."""
        from onnx import helper

        arrays = [np.asarray(a) for a in inputs]
        graph_inputs = [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for name, a in zip(node.input, arrays)
        ]
        graph_outputs = [helper.make_tensor_value_info(name, 0, None) for name in node.output]
        model = helper.make_model(helper.make_graph([node], "node", graph_inputs, graph_outputs))
        return cls.run_model(model, arrays, device, **kwargs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return str(device).upper().startswith("CPU")


class NativeBackend(McirBackend):
    """``McirBackend`` compiling every model to a native library."""

    mode: ClassVar[str] = "native"


# -- conformance with the node tests in the onnx wheel ----------------------------------------------------------


def node_cases(pattern: str | None = None) -> list[Any]:
    """The backend node test cases the installed ``onnx`` generates (``onnx.backend.test.case.node``),
    optionally only those whose name contains ``pattern``."""
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # the generators of some cases overflow casts on purpose
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    return [c for c in cases if pattern is None or pattern in c.name]


def case_op(case: Any) -> str:
    """The op a node case tests: its node's op type, or ``"<function>"`` for expanded multi-node cases."""
    nodes = case.model.graph.node
    return nodes[0].op_type if len(nodes) == 1 else "<function>"


def run_case(case: Any, mode: str = "interp") -> tuple[str, str]:
    """(outcome, detail) of one node case: ``pass``, ``fail`` (wrong numbers, dtype or shape),
    ``unsupported`` (mcir says what it does not import) or ``error`` (anything else)."""
    from mcir.errors import UnsupportedError

    try:
        rep = McirBackend.prepare(case.model, mode=mode)
    except UnsupportedError as e:
        return "unsupported", str(e).splitlines()[0]
    except Exception as e:
        return "error", f"import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    for inputs, expected in case.data_sets:
        try:
            outs = rep.run(inputs)
        except UnsupportedError as e:  # found when the values of shape inputs are known
            return "unsupported", str(e).splitlines()[0]
        except Exception as e:
            return "error", f"run: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if len(outs) != len(expected):
            return "fail", f"{len(outs)} outputs, expected {len(expected)}"
        for got, want in zip(outs, expected):
            want = np.asarray(want)
            if got.dtype != want.dtype or got.shape != want.shape:
                return "fail", f"got {got.dtype}{list(got.shape)}, expected {want.dtype}{list(want.shape)}"
            if want.dtype.kind in "fc":
                ok = np.allclose(got, want, rtol=case.rtol, atol=case.atol, equal_nan=True)
            else:
                ok = np.array_equal(got, want)
            if not ok:
                return "fail", "values differ"
    return "pass", ""
