"""The bytes mcir reports are the bytes the library embeds, and no compression makes a library bigger.

For an MLP, a ResNet-style CNN (7x7 stem, 3x3 residual blocks, BatchNorm) and a transformer
encoder, under every compression pipeline (after ``fold``):

* the pipeline runs and the result compiles natively;
* ``mcir.stats(g).weight_bytes == lib.weight_bytes`` exactly;
* the ``.so`` is no larger than the fold-only ``.so`` (both record the same pipeline text in
  their metadata string, so a longer pipeline name does not count as growth).

The models are sized so that weights, not kernel code, dominate the libraries (int8 and
sparse kernels are more code than f32 ones; on a toy model that alone would outweigh the
weights saved).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

import mcir
from mcir import dtypes
from mcir.encodings import NM, Csr, Quant, to_csr
from mcir.stats import GraphStats, has_kernel, kernel_exists, try_kernel
from mcir.types import TensorType

PIPELINES = [
    "prune(sparsity=0.5)",
    "prune(sparsity=0.9)",
    "prune(pattern=2:4)",
    "lowrank(energy=0.9)",
    "binarize",
    "ternarize",
    "quant8",
    "prune(sparsity=0.9),quant8",
    "prune(sparsity=0.9),cluster(bits=5)",
    "share",
]


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class ResNetStyle(nn.Module):
    """7x7 stride-2 stem (rows of 147 weights: no 2:4 groups), two 3x3 residual blocks, BN, linear head."""

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, c, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(c)
        self.block1, self.block2 = _Residual(c), _Residual(c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(x.mean(dim=(2, 3)))


class Encoder(nn.Module):
    def __init__(self, d: int = 64, ffn: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, d)
        layer = nn.TransformerEncoderLayer(d, 4, ffn, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def _build(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name == "mlp":
            model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
            inputs = (torch.randn(1, 128, generator=gen),)
        elif name == "resnet":
            model = ResNetStyle()
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
            inputs = (torch.randn(1, 3, 32, 32, generator=gen),)
        else:
            model = Encoder()
            # distinct layers: the clones TransformerEncoder makes are identical until trained
            for p in model.encoder.layers[1].parameters():
                p.data.normal_(0, 0.1)
            inputs = (torch.randint(0, 50, (1, 16), generator=gen),)
    return model.eval(), inputs


@pytest.fixture(scope="module", params=["mlp", "resnet", "encoder"])
def model_case(request, tmp_path_factory):
    model, inputs = _build(request.param)
    g = mcir.trace(model, inputs)
    xs = tuple(t.numpy() for t in inputs)
    out = tmp_path_factory.mktemp(request.param)
    folded = mcir.run_passes(g, "fold")
    folded.meta["pipeline"] = "compared"
    # the same library name everywhere: it is spelt in every exported symbol
    lib = mcir.compile(folded, out / "fold" / "m")
    return {"name": request.param, "graph": g, "inputs": xs, "dir": out, "fold": lib, "fold_so": out / "fold" / "m.so"}


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_compression_compiles_reports_library_bytes_and_never_grows(model_case, pipeline):
    g = mcir.run_passes(model_case["graph"], "fold," + pipeline, calibration=[model_case["inputs"]])
    stem = model_case["dir"] / pipeline.replace(",", "+").replace(":", "_") / "m"
    g.meta["pipeline"] = "compared"
    lib = mcir.compile(g, stem)
    assert mcir.stats(g).weight_bytes == lib.weight_bytes
    assert lib.weight_bytes <= model_case["fold"].weight_bytes
    assert os.path.getsize(f"{stem}.so") <= os.path.getsize(model_case["fold_so"])
    (y,) = lib(*model_case["inputs"])
    assert np.all(np.isfinite(y))


def test_stats_equal_library_bytes_for_a_shared_constant_with_two_layouts(tmp_path):
    # one weight read by a linear (packed GEMM panels) and returned as is (raw bytes):
    # the library holds two copies, and stats counts both
    g = mcir.parse(
        "graph @two(%x: f32[1,32]) -> (f32[1,16], f32[16,32]) {\n"
        "  %w = const : f32[16,32]\n"
        "  %y = linear(%x, %w) : f32[1,16]\n"
        "  return %y, %w\n"
        "}\n"
    )
    g.ops[0].data = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    lib = mcir.compile(g, tmp_path / "two")
    s = mcir.stats(g)
    assert s.weight_bytes == lib.weight_bytes
    assert s.weight_bytes >= 2 * 16 * 32 * 4
    assert s.params == 16 * 32 and s.macs == s.f32_macs == 16 * 32


def test_stats_counts_sparse_macs_and_stored_parameters_only():
    dense = np.zeros((8, 64), np.float32)
    dense[:, ::8] = 1.0
    t, data = to_csr(dense)
    g = mcir.parse(
        f"graph @s(%x: f32[1,64]) -> (f32[1,8]) {{\n  %w = const : {t}\n  %y = linear(%x, %w) : f32[1,8]\n"
        "  return %y\n}\n"
    )
    g.ops[0].data = data
    s = mcir.stats(g)
    assert s.params == 64 and s.sparse_macs == s.macs == 64
    assert s.macs_by_kind == {"f32": 0, "int8": 0, "bit": 0, "sparse": 64}


def test_graph_stats_fall_back_to_storage_bytes_when_the_graph_does_not_compile():
    # a constant without its weights cannot be embedded: the report shows storage bytes, marked inexact
    g = mcir.parse(
        "graph @u(%x: f32[1,8]) -> (f32[1,4]) {\n  %w = const : f32[4,8]\n"
        "  %y = linear(%x, %w) : f32[1,4]\n  return %y\n}\n"
    )
    s = GraphStats.of(g)
    assert not s.exact and s.weight_bytes == 4 * 8 * 4
    with pytest.raises(mcir.McirError, match="no data"):
        mcir.stats(g)


def test_kernel_availability_comes_from_the_registry():
    g = mcir.parse(
        "graph @k(%x: f32[1,4,8,8], %v: f32[1,36]) -> (f32[1,4,8,8], f32[1,4]) {\n"
        "  %w = const : f32[4,4,3,3]\n"
        "  %y = conv2d(%x, %w) {padding=[1, 1]} : f32[1,4,8,8]\n"
        "  %w2 = const : f32[4,36]\n"
        "  %z = linear(%v, %w2) : f32[1,4]\n"
        "  return %y, %z\n}\n"
    )
    conv, lin = g.ops[1], g.ops[3]
    csr_lin = to_csr(np.eye(4, 36, dtype=np.float32))[0]
    assert has_kernel(lin, 1, csr_lin)
    assert kernel_exists(lin, {1: csr_lin})
    nm_t = TensorType((4, 36), dtypes.f32, NM(2, 4))
    assert has_kernel(lin, 1, nm_t)
    # the answer for a 3x3 convolution is whatever the registry says, and try_kernel agrees with it
    csr_conv = to_csr(np.ones((4, 4, 3, 3), np.float32))
    trial = try_kernel(conv, {1: csr_conv})
    assert trial.ok == has_kernel(conv, 1, csr_conv[0])


def test_quantize_stores_int8_sparse_weights_dense_where_sparse_embeds_more(tmp_path):
    # an 8x8 layer pruned to 90 % and forced sparse: as int8, the sparse kernel's layout (header,
    # row blocks) is bigger than the dense int8 weight, so quant8 stores it dense (exactly: same
    # per-row scales and values) and says so
    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    w[np.abs(w) < 1.6] = 0
    g = mcir.Graph("g")
    x = g.add_input("x", mcir.tensor([1, 64]))
    g.set_outputs([g.add("linear", [x, g.const("w", w), g.const("b", np.ones(8, np.float32))], result="y")])
    sparse = mcir.run_passes(g, "prune(threshold=0,storage=sparse,skip=none)")
    assert isinstance(sparse.value("w").type.encoding, Csr)
    xs = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    q = mcir.run_passes(sparse, "quant8", calibration=[(xs,)])
    wt = next(op for op in q.compute_ops() if op.name == "linear").operands[1].type
    assert wt.encoding is not None and wt.encoding.name == "quant" and wt.dtype == dtypes.i8
    assert any("int8 sparse weights stored dense: y" in note for note in q.meta["report"].warnings)
    lib = mcir.compile(q, tmp_path / "q")
    assert mcir.stats(q).weight_bytes == lib.weight_bytes
    np.testing.assert_allclose(lib(xs)[0], mcir.interpret(q, xs)[0], atol=1e-5)


def test_compile_report_says_when_stated_and_embedded_bytes_differ():
    from mcir.compile_driver import _weights_line

    g = mcir.parse("graph @w(%x: f32[1,4]) -> (f32[1,4]) {\n  %y = relu(%x) : f32[1,4]\n  return %y\n}\n")

    class Lib:  # a library whose embedded bytes disagree with mcir.stats (0 B for this graph)
        weight_bytes = 64

    assert "stated" not in _weights_line(type("Same", (), {"weight_bytes": 0})(), None, "x", "native", False, g)
    line = _weights_line(Lib(), None, "x", "native", False, g)
    assert "the pipeline report stated 0 B, the library embeds 64 B" in line


def _with_data(g: mcir.Graph, **arrays) -> mcir.Graph:
    for op in g.constants():
        op.data = arrays[op.result.name]
    return g


def test_stats_count_views_of_constants_as_the_library_stores_them(tmp_path):
    # a reshaped constant (a view: no copy) packed by the linear, and a leading-block slice of
    # another constant returned as is (raw bytes of the whole root, the view points into it)
    rng = np.random.default_rng(3)
    g = _with_data(
        mcir.parse(
            "graph @v(%x: f32[1,32]) -> (f32[1,16], f32[2,8]) {\n"
            "  %w = const : f32[16,2,16]\n"
            "  %w2 = reshape(%w) {shape=[16, 32]} : f32[16,32]\n"
            "  %y = linear(%x, %w2) : f32[1,16]\n"
            "  %t = const : f32[6,8]\n"
            "  %s = slice(%t) {axis=0, start=0, end=2} : f32[2,8]\n"
            "  return %y, %s\n"
            "}\n"
        ),
        w=rng.standard_normal((16, 2, 16)).astype(np.float32),
        t=rng.standard_normal((6, 8)).astype(np.float32),
    )
    lib = mcir.compile(g, tmp_path / "v")
    assert mcir.stats(g).weight_bytes == lib.weight_bytes


@pytest.mark.parametrize("target", ["native", "x86-64-v3"])
def test_stats_follow_the_targets_layout_of_sparse_int8_weights(tmp_path, target):
    # int8 #csr is laid out per target (VBMI gap layout vs int8 windows): stats follow the target
    dense = _sparse_csr_dense()
    t, data = to_csr(dense, dtypes.i8)
    g = mcir.Graph("s")
    x = g.add_input("x", mcir.tensor([1, 256]))
    xq = g.add("quantize", [x], type=TensorType((1, 256), dtypes.u8, Quant(scale=0.02, zero_point=128)))
    g.set_outputs([g.add("linear", [xq, g.const("w", data, t)], result="y")])
    lib = mcir.compile(g, tmp_path / "s", target=target)
    assert mcir.stats(g, target).weight_bytes == lib.weight_bytes


def _sparse_csr_dense() -> np.ndarray:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    return np.where(rng.random(w.shape) < 0.1, w, 0).astype(np.float32)
